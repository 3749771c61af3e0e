from __future__ import annotations

import contextlib
import http.server
import os
import threading
import time
from pathlib import Path

import pytest
import torch

from scencode.genes import packaged_gene_table
from scencode.reference import GeneTable

# The suite runs on two pytest-xdist workers (pyproject.toml), one module per worker at a time.
LONGEST_FIRST = ("test_workflow.py", "test_slurm.py")  # minutes each: started first, on both workers
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # two workers on two cores: more intra-op threads would only contend


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def gene_table_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("genes")
    packaged_gene_table(folder)
    return folder


@pytest.fixture(scope="session")
def gene_table(gene_table_dir) -> GeneTable:
    return GeneTable.load(gene_table_dir)


def qc_and_tokenize(folder: Path, names, gene_table, vocab: Path | None, corpus: str, labelled: bool, **params):
    """Simulated demo datasets through QC into one tokenized corpus (building the vocabulary from
    them when ``vocab`` does not exist yet): the corpus folder."""
    from scencode.demo import make_demo_dataset
    from scencode.formats import write_vocab
    from scencode.qc import QCParams, run_qc
    from scencode.tokenize import DatasetInput, TokenizeParams, tokenize_corpus
    from scencode.vocab import build_vocab

    inputs = []
    for name, n_cells in names.items():
        make_demo_dataset(name, n_cells=n_cells).write_h5ad(folder / f"{name}_raw.h5ad")
        run_qc(
            folder / f"{name}_raw.h5ad", folder / f"{name}.h5ad", folder / f"{name}.json", gene_table, QCParams(), name
        )
        labels = ("cell_type", "batch") if labelled else ()
        inputs.append(DatasetInput(name, folder / f"{name}.h5ad", *labels))
    if not vocab.exists():
        write_vocab(build_vocab([d.path for d in inputs]), vocab)
    tokenize_corpus(corpus, inputs, vocab, folder / corpus, TokenizeParams(**params), with_labels=labelled)
    return folder / corpus


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory, gene_table):
    """A small training corpus from two simulated demo datasets: (corpus dir, vocab path)."""
    folder = tmp_path_factory.mktemp("corpus")
    vocab = folder / "vocab.parquet"
    corpus = qc_and_tokenize(
        folder,
        {"sim_lung_1": 300, "sim_blood_1": 300},
        gene_table,
        vocab,
        "train",
        labelled=False,
        val_fraction=0.1,
        test_fraction=0.05,
        cells_per_shard=150,
        row_group_cells=25,
    )
    return corpus, vocab


@pytest.fixture(scope="session")
def labelled_corpus(tmp_path_factory, gene_table, demo_corpus):
    """An evaluation corpus (cell types, batches) on the demo corpus's vocabulary, with a held-out
    test split as a labelled training corpus has (embedding an evaluation corpus reads every cell)."""
    folder = tmp_path_factory.mktemp("labelled")
    return qc_and_tokenize(
        folder,
        {"sim_lung_eval": 120},
        gene_table,
        demo_corpus[1],
        "lung",
        labelled=True,
        test_fraction=0.25,
        cells_per_shard=50,
        row_group_cells=10,
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, demo_corpus) -> Path:
    """A small model (learned genes, soft bins) trained four steps on the demo corpus: its model.json."""
    from scencode.loader import LoaderConfig
    from scencode.model import ModelConfig
    from scencode.pretrain import RunSpec, TrainConfig, fit, setup

    corpus, vocab = demo_corpus
    out = tmp_path_factory.mktemp("model")
    model = ModelConfig(
        0, "learned", "soft", d_model=16, n_layers=2, n_heads=2, d_ff=32, expression_options={"hidden": 16}
    )
    train = TrainConfig(grad_accum=2, max_steps=4, warmup_steps=2, val_every=4, val_cells=100, num_workers=0)
    loader = LoaderConfig(batch_size=16, context=64, bucket_batches=2, seed=3)
    fit(setup(RunSpec("learned-soft-s3", corpus, vocab, out, model, loader, train)))
    return out / "model.json"


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


@pytest.fixture
def h5ad_bytes(tmp_path):
    """A small real h5ad file's bytes (what a server serves)."""
    from helpers import tiny_adata

    path = tmp_path / "src.h5ad"
    tiny_adata().write_h5ad(path)
    return path.read_bytes()
