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
from .workflow_config import PRIMARY_ORGANISM

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
    qc_paths: Sequence[str | Path],
    policy: str = "union",
    protein_genes: str | Path | None = None,
    species: Sequence[tuple[str, Sequence[str | Path], str | Path]] = (),
) -> pd.DataFrame:
    """Vocabulary from the training datasets' QC outputs.

    ``union``: genes seen in any dataset; ``intersection``: in every dataset; ``protein``: genes
    seen in any dataset that also have a protein embedding (``protein_genes``), so learned and
    ESM-2 models see the same tokens.

    ``species``: (organism, its evaluation datasets' QC outputs, its species folder) of each other
    organism (scencode.species): their genes are appended as tokens of their own (the protein policy
    applies to them too), ``organism`` says whose each token is, and ``ortholog`` names a foreign
    gene's one-to-one human ortholog where the vocabulary holds it ("" otherwise).
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
    genes = genes.assign(organism=PRIMARY_ORGANISM, ortholog="")
    foreign = [_species_genes(genes, *entry, protein_genes if policy == "protein" else None) for entry in species]
    genes = pd.concat([genes, *foreign]).sort_index()
    special = pd.DataFrame(
        {
            "gene_id": list(SPECIAL_TOKENS),
            "gene_symbol": "",
            "gene_type": "special",
            "n_datasets": 0,
            "organism": "",
            "ortholog": "",
        }
    )
    vocab = pd.concat([special, genes.reset_index()], ignore_index=True)
    vocab.insert(0, "token_id", np.arange(len(vocab), dtype=np.int32))
    vocab["n_datasets"] = vocab.n_datasets.astype(np.int32)
    return vocab


def _species_genes(
    primary: pd.DataFrame,
    organism: str,
    qc_paths: Sequence[str | Path],
    folder: str | Path,
    protein_genes: str | Path | None,
) -> pd.DataFrame:
    """One other organism's tokens: its evaluation datasets' genes (with a protein embedding under
    the protein policy), each with its human ortholog where the vocabulary holds that gene."""
    from .species import read_orthologs

    genes = pd.concat([dataset_genes(p) for p in qc_paths], ignore_index=True)
    n_datasets = genes.groupby("gene_id").size().rename("n_datasets")
    genes = genes.drop_duplicates("gene_id").set_index("gene_id").join(n_datasets)
    if protein_genes is not None:
        genes = genes[genes.index.isin(read_gene_list(protein_genes))]
    clash = genes.index.intersection(primary.index)
    if len(clash):
        raise ScencodeError(f"{organism} genes share ids with {PRIMARY_ORGANISM}'s (e.g. {clash[0]})", folder)
    orthologs = read_orthologs(folder).set_index("gene_id").human_gene_id
    ortholog = orthologs.reindex(genes.index)
    genes["ortholog"] = ortholog.where(ortholog.isin(primary.index), "").fillna("").to_numpy()
    genes["organism"] = organism
    log.info(
        "%s: %d genes, %d with a human ortholog in the vocabulary", organism, len(genes), (genes.ortholog != "").sum()
    )
    return genes


def species_tokens(vocab: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(foreign, alias) per token id: whether the token is a gene of another organism than the one
    models train on, and the token whose learned row it reads (its human ortholog's; itself where it
    has none, and for every other token). A vocabulary written before species existed has none."""
    token = np.arange(len(vocab))
    if "organism" not in vocab.columns:
        return np.zeros(len(vocab), bool), token
    foreign = (vocab.organism != PRIMARY_ORGANISM).to_numpy() & (vocab.gene_type != "special").to_numpy()
    row = pd.Series(token, index=vocab.gene_id)
    ortholog = vocab.ortholog.where(foreign, "")
    target = row.reindex(ortholog).to_numpy()
    alias = np.where(ortholog.ne("").to_numpy() & ~np.isnan(target), target, token).astype(np.int64)
    return foreign, alias


def run(
    qc: list[Path],
    out: Path,
    policy: str = "union",
    protein_genes: Path | None = None,
    species: dict | None = None,
) -> str:
    """The shared gene vocabulary of the training datasets' QC'd h5ad files; returns its hash.
    ``species`` (JSON): other organism → {"folder": its species folder, "qc": its evaluation
    datasets' QC'd h5ad files}."""
    try:
        entries = [(name, entry["qc"], entry["folder"]) for name, entry in (species or {}).items()]
    except (KeyError, TypeError):
        raise ScencodeError('--species: expected {"<organism>": {"folder": ..., "qc": [...]}, ...}') from None
    vocab = build_vocab(qc, policy, protein_genes, entries)
    digest = write_vocab(vocab, out)
    log.info("vocabulary: %d tokens (hash %s)", len(vocab), digest[:12])
    return digest
