from __future__ import annotations

import contextlib
import http.server
import threading
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scencode.genes import packaged_gene_table
from scencode.reference import GeneTable

REPO = Path(__file__).resolve().parents[1]

# Real Ensembl ids / symbols used across tests (GENCODE 48)
GENES = {
    "TP53": "ENSG00000141510",
    "GAPDH": "ENSG00000111640",
    "ACTB": "ENSG00000075624",
    "CD3E": "ENSG00000198851",
    "MS4A1": "ENSG00000156738",
    "MT-CO1": "ENSG00000198804",
    "MT-ND1": "ENSG00000198888",
    "ALB": "ENSG00000163631",
}


@pytest.fixture(scope="session")
def gene_table_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("genes")
    packaged_gene_table(folder)
    return folder


@pytest.fixture(scope="session")
def gene_table(gene_table_dir) -> GeneTable:
    return GeneTable.load(gene_table_dir)


def make_counts(n_cells: int = 60, n_genes: int = len(GENES), seed: int = 0, mean: float = 40.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(mean, (n_cells, n_genes)).astype(np.float32)


def tiny_adata(counts: np.ndarray | None = None, by_symbol: bool = False, **obs_columns) -> ad.AnnData:
    counts = make_counts() if counts is None else counts
    symbols = list(GENES)[: counts.shape[1]]
    ids = [GENES[s] for s in symbols]
    obs = pd.DataFrame(obs_columns, index=[f"cell{i}" for i in range(counts.shape[0])])
    var = pd.DataFrame(index=symbols if by_symbol else ids)
    return ad.AnnData(sp.csr_matrix(counts), obs=obs, var=var)


def leftovers(folder: Path) -> list[str]:
    """Temporary files an interrupted atomic write would leave behind."""
    return [p.name for p in Path(folder).rglob("*") if ".tmp" in p.name]


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory, gene_table):
    """A small training corpus from two simulated demo datasets: (corpus dir, vocab path)."""
    from scencode.demo import make_demo_dataset
    from scencode.formats import write_vocab
    from scencode.qc import QCParams, run_qc
    from scencode.tokenize import DatasetInput, TokenizeParams, tokenize_corpus
    from scencode.vocab import build_vocab

    folder = tmp_path_factory.mktemp("corpus")
    inputs = []
    for name in ("sim_lung_1", "sim_blood_1"):
        make_demo_dataset(name, n_cells=300).write_h5ad(folder / f"{name}_raw.h5ad")
        run_qc(
            folder / f"{name}_raw.h5ad", folder / f"{name}.h5ad", folder / f"{name}.json", gene_table, QCParams(), name
        )
        inputs.append(DatasetInput(name, folder / f"{name}.h5ad"))
    vocab = folder / "vocab.parquet"
    write_vocab(build_vocab([d.path for d in inputs]), vocab)
    tokenize_corpus(
        "train",
        inputs,
        vocab,
        folder / "train",
        TokenizeParams(val_fraction=0.1, test_fraction=0.05, cells_per_shard=150, row_group_cells=25),
    )
    return folder / "train", vocab


class _Handler(http.server.BaseHTTPRequestHandler):
    """A local HTTP server's behaviours: ``routes`` (path → body), ``failures`` (path → how many
    503s first), and /truncated, /endless, /drip."""

    routes: dict = {}
    failures: dict = {}
    hits: dict = {}

    def do_GET(self):
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if self.failures.get(self.path, 0) > 0:
            self.failures[self.path] -= 1
            self.send_error(503)
            return
        if self.path == "/endless":  # no Content-Length, never ends
            self.send_response(200)
            self.end_headers()
            with contextlib.suppress(OSError):
                while True:
                    self.wfile.write(b"x" * 65536)
            return
        if self.path == "/drip":  # one byte every 0.2 s: never idle long enough for a per-read timeout
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            with contextlib.suppress(OSError):
                for _ in range(1000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            return
        if self.path == "/truncated":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            return
        body = self.routes.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """(base URL, handler class) of a server on 127.0.0.1; set ``handler.routes`` to serve files."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _Handler.routes, _Handler.failures, _Handler.hits = {}, {}, {}
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler
    httpd.shutdown()
