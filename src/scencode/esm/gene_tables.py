"""Gene-embedding tables: imports of published tables, and coverage of the vocabulary.

Every table ends up in one format (``esm_embed.write_gene_table``): Parquet with ``gene_id``
(Ensembl, no version), ``gene_symbol``, ``n_isoforms`` and ``embedding`` (fixed-size list of
float32), model details in the schema metadata.

Imported layouts:

* ``transcriptformer``: HDF5 (TranscriptFormer's ESM-2 gene embeddings), either one dataset per
  gene keyed by Ensembl id (``f["ENSG..."]`` → vector), or a ``keys``/``gene_ids`` dataset of ids
  beside an ``arrays``/``embeddings`` matrix (genes × dim).
* ``uce``: a torch file holding a dict symbol → 1-D tensor (UCE's per-species protein embeddings,
  e.g. ``Homo_sapiens.GRCh38.gene_symbol_to_embedding_ESM2.pt``), loaded with ``weights_only=True``;
  symbols are mapped to Ensembl ids through the gene table, unmatched ones are counted.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from ..atomic import OutputFile, write_json
from ..errors import ScencodeError
from ..formats import write_gene_table
from ..reference import ENSEMBL_GENE_RE, GeneTable, strip_version

log = logging.getLogger(__name__)
IMPORT_FORMATS = ("transcriptformer", "uce")
_ID_KEYS = ("keys", "gene_ids", "ids")
_MATRIX_KEYS = ("arrays", "embeddings", "embedding")


def import_table(
    fmt: str, path: str | Path, out: str | Path, gene_table: GeneTable | None = None, expected_dim: int | None = None
) -> dict:
    path = Path(path)
    if not path.exists():
        raise ScencodeError("embedding table to import not found", path)
    if fmt == "transcriptformer":
        ids, matrix = _read_transcriptformer(path)
        report: dict = {}
    elif fmt == "uce":
        if gene_table is None:
            raise ScencodeError("importing UCE embeddings needs the gene table to map symbols")
        ids, matrix, report = _read_uce(path, gene_table)
    else:
        raise ScencodeError(f"unknown import format {fmt!r}; choose one of {', '.join(IMPORT_FORMATS)}")
    if expected_dim is not None and matrix.shape[1] != expected_dim:
        raise ScencodeError(f"embeddings have dimension {matrix.shape[1]}, config expects {expected_dim}", path)
    if not np.isfinite(matrix).all():
        raise ScencodeError("embeddings contain NaN or infinite values", path)
    genes = pd.DataFrame({"gene_id": ids, "embedding": list(matrix)}).drop_duplicates("gene_id")
    genes = genes.sort_values("gene_id").reset_index(drop=True)
    write_gene_table(genes, out, {"source": f"import:{fmt}", "file": path.name})
    return {"genes": len(genes), "dim": int(matrix.shape[1]), **report}


def _read_transcriptformer(path: Path) -> tuple[list[str], np.ndarray]:
    if not h5py.is_hdf5(path):
        raise ScencodeError("not an HDF5 file (TranscriptFormer tables are HDF5)", path)
    with h5py.File(path, "r") as f:
        id_key = next((k for k in _ID_KEYS if k in f), None)
        matrix_key = next((k for k in _MATRIX_KEYS if k in f), None)
        if id_key and matrix_key:
            ids = [k.decode() if isinstance(k, bytes) else str(k) for k in f[id_key][()]]
            matrix = np.asarray(f[matrix_key][()], dtype=np.float32)
            if matrix.ndim != 2 or matrix.shape[0] != len(ids):
                raise ScencodeError(f"{matrix_key!r} is {matrix.shape}, expected ({len(ids)}, dim)", path)
        else:
            ids = list(f.keys())
            vectors = [np.asarray(f[k][()], dtype=np.float32) for k in ids if isinstance(f[k], h5py.Dataset)]
            if not ids or len(vectors) != len(ids) or len({v.shape for v in vectors}) != 1 or vectors[0].ndim != 1:
                raise ScencodeError("expected one 1-D dataset per gene id, or 'keys' + 'arrays' datasets", path)
            matrix = np.stack(vectors)
    ids = strip_version(pd.Series(ids))
    bad = ~ids.str.match(ENSEMBL_GENE_RE)
    if bad.any():
        raise ScencodeError(f"{int(bad.sum())} keys are not Ensembl gene ids (e.g. {ids[bad].iloc[0]!r})", path)
    return ids.tolist(), matrix


def _read_uce(path: Path, gene_table: GeneTable) -> tuple[list[str], np.ndarray, dict]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ScencodeError(f"not a readable torch file of tensors ({type(exc).__name__})", path) from exc
    if not isinstance(data, dict) or not data or not all(torch.is_tensor(v) for v in data.values()):
        raise ScencodeError("expected a dict mapping gene symbols to 1-D tensors", path)
    shapes = {tuple(v.shape) for v in data.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ScencodeError(f"embeddings have inconsistent shapes {sorted(shapes)[:3]}", path)
    symbols = pd.Series(list(data.keys()), dtype=str)
    ids, status = gene_table.map_symbols(symbols)
    keep = (status == "matched").to_numpy()
    if not keep.any():
        raise ScencodeError("no symbol maps to an Ensembl gene id", path)
    matrix = torch.stack(list(data.values())).float().numpy()[keep]
    report = {
        "symbols": len(symbols),
        "unmatched": int((status == "unmatched").sum()),
        "ambiguous": int((status == "ambiguous").sum()),
    }
    return ids[keep].tolist(), matrix, report


def coverage_report(embedded: pd.Index, vocab_candidates: pd.Index, gene_table: GeneTable) -> dict:
    """Genes with and without an embedding, by biotype, and which candidate vocabulary genes miss one."""
    genes = gene_table.genes.assign(embedded=gene_table.genes.gene_id.isin(embedded))
    by_type = genes.groupby("gene_type").embedded.agg(["sum", "size"])
    covered = vocab_candidates.isin(embedded)
    if len(vocab_candidates) and not covered.any():
        raise ScencodeError(
            f"no gene of the {len(vocab_candidates)} dataset genes has a protein embedding "
            "(do the FASTA's gene ids match the datasets'?)"
        )
    missing = vocab_candidates[~covered]
    return {
        "embedded_genes": int(len(embedded)),
        "embedded_not_in_gene_table": int((~embedded.isin(genes.gene_id)).sum()),
        "by_biotype": {
            t: {"with_embedding": int(r["sum"]), "without_embedding": int(r["size"] - r["sum"])}
            for t, r in by_type.iterrows()
            if r["sum"] > 0 or t == "protein_coding"
        },
        "dataset_genes": int(len(vocab_candidates)),
        "dataset_genes_with_embedding": int(covered.sum()),
        "dataset_genes_missing": int((~covered).sum()),
        "dataset_genes_missing_by_biotype": genes.set_index("gene_id")
        .gene_type.reindex(missing)
        .fillna("unknown")
        .value_counts()
        .to_dict(),
        "dataset_genes_missing_examples": missing[:20].tolist(),
    }


def import_run(
    format: str, input: Path, out: OutputFile, gene_table: Path | None = None, expected_dim: int | None = None
) -> dict:
    """Import a published gene/protein embedding table (``format``: transcriptformer | uce; UCE's symbols
    are mapped with the gene table folder)."""
    table = GeneTable.load(gene_table) if gene_table else None
    report = import_table(format, input, out, table, expected_dim)
    log.info("imported %s table: %s", format, report)
    return report


def coverage(table: Path, qc: list[Path], gene_table: Path, out: OutputFile, expected_dim: int | None = None) -> dict:
    """Which genes of the QC'd datasets have a protein embedding in ``table`` (JSON report at ``out``)."""
    from ..formats import dataset_genes, read_gene_table

    embedded, matrix, meta = read_gene_table(table)
    if expected_dim is not None and matrix.shape[1] != expected_dim:
        raise ScencodeError(f"embeddings have dimension {matrix.shape[1]}, config expects {expected_dim}", table)
    candidates = pd.Index(sorted(set().union(*(dataset_genes(p).gene_id for p in qc))))
    report = {"table": str(table), "model": meta, **coverage_report(embedded, candidates, GeneTable.load(gene_table))}
    write_json(report, out)
    log.info(
        "coverage: %d of %d dataset genes have an embedding",
        report["dataset_genes_with_embedding"],
        report["dataset_genes"],
    )
    return report
