"""The gene vocabulary shared by every model configuration.

Token ids: 0 = ``<pad>`` (padding in batches), 1 = ``<cls>`` (reserved for models that prepend a
cell token), then genes sorted by Ensembl id from 2 on. The order depends only on the gene set,
so the same datasets and policy give the same ids. The vocabulary hash (sha256 of the token list)
is stored in the Parquet metadata and in every corpus manifest; loaders refuse a mismatch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ScencodeError
from .formats import SPECIAL_TOKENS, dataset_genes, write_vocab

log = logging.getLogger(__name__)

POLICIES = ("union", "intersection", "protein")


def read_gene_list(path: str | Path) -> pd.Index:
    """Genes with a protein embedding: a Parquet/CSV/TSV table with a ``gene_id`` column."""
    path = Path(path)
    if not path.exists():
        raise ScencodeError("gene list not found", path)
    reader = (
        pd.read_parquet
        if path.suffix == ".parquet"
        else (lambda p: pd.read_csv(p, sep="\t" if p.suffix == ".tsv" else ","))
    )
    table = reader(path)
    if "gene_id" not in table.columns:
        raise ScencodeError("gene list has no 'gene_id' column", path)
    return pd.Index(table.gene_id.astype(str))


def build_vocab(
    qc_paths: Sequence[str | Path], policy: str = "union", protein_genes: str | Path | None = None
) -> pd.DataFrame:
    """Vocabulary from the training datasets' QC outputs.

    ``union``: genes seen in any dataset; ``intersection``: in every dataset; ``protein``: genes
    seen in any dataset that also have a protein embedding (``protein_genes``), so learned and
    ESM-2 models see the same tokens.
    """
    if policy not in POLICIES:
        raise ScencodeError(f"unknown vocabulary policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if not qc_paths:
        raise ScencodeError("no training dataset to build the vocabulary from")
    per_dataset = [dataset_genes(p) for p in qc_paths]
    genes = pd.concat(per_dataset, ignore_index=True)
    n_datasets = genes.groupby("gene_id").size().rename("n_datasets")
    genes = genes.drop_duplicates("gene_id").set_index("gene_id").join(n_datasets)
    if policy == "intersection":
        genes = genes[genes.n_datasets == len(qc_paths)]
    elif policy == "protein":
        if protein_genes is None:
            raise ScencodeError("vocabulary policy 'protein' needs a list of genes with a protein embedding")
        genes = genes[genes.index.isin(read_gene_list(protein_genes))]
    if genes.empty:
        raise ScencodeError(f"the vocabulary is empty under policy {policy!r}")
    genes = genes.sort_index()
    special = pd.DataFrame(
        {"gene_id": list(SPECIAL_TOKENS), "gene_symbol": "", "gene_type": "special", "n_datasets": 0}
    )
    vocab = pd.concat([special, genes.reset_index()], ignore_index=True)
    vocab.insert(0, "token_id", np.arange(len(vocab), dtype=np.int32))
    vocab["n_datasets"] = vocab.n_datasets.astype(np.int32)
    return vocab


def run(qc: list[Path], out: Path, policy: str = "union", protein_genes: Path | None = None) -> str:
    """The shared gene vocabulary of the training datasets' QC'd h5ad files; returns its hash."""
    vocab = build_vocab(qc, policy, protein_genes)
    digest = write_vocab(vocab, out)
    log.info("vocabulary: %d tokens (hash %s)", len(vocab), digest[:12])
    return digest
