"""Genes a model never sees in training (``pretrain.unseen_genes``): where transfer should win.

A seeded fraction of the vocabulary's genes is held out of every training cell's inputs and
targets, for every configuration alike (one draw per corpus and seed). At evaluation the
in-distribution test cells are embedded twice: with the unseen genes left out, as trained (the
study's protocol, ``train_test``), and with them in the input (``train_test_unseen``), where a
learned table has nothing to say about them and a protein embedding still does.

The draw is stratified by expression level: genes are cut into ``STRATA`` quantile bins of how many
training cells express them (the gene medians table's ``cells``), and the same fraction is drawn in
each bin (the genes with the smallest keyed hashes of (seed, gene id)), so the unseen genes are
neither the rare ones nor the common ones. Genes no training cell expresses are not drawn: every
model has nothing to learn about them anyway.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

from .atomic import OutputFile, atomic_path
from .errors import ScencodeError
from .formats import HASH_KEY, SPECIAL_TOKENS, load_vocab
from .parquet_io import read_parquet
from .sampling import splitmix

log = logging.getLogger(__name__)
STRATA = 10  # expression-level bins (deciles of cells expressing the gene)
COLUMNS = ("token_id", "gene_id", "stratum", "cells")


def draw(vocab: pd.DataFrame, cells: np.ndarray, fraction: float, seed: int) -> pl.DataFrame:
    """The unseen genes: per expression stratum, ``fraction`` of its genes (rounded), seeded.
    ``cells``: per token id, the training cells expressing it."""
    if not 0 < fraction < 1:
        raise ScencodeError(f"pretrain.unseen_genes must be a fraction in (0, 1) (0: off), got {fraction!r}")
    if len(cells) != len(vocab):
        raise ScencodeError(f"the gene medians table holds {len(cells)} tokens, the vocabulary {len(vocab)}")
    token = np.arange(len(vocab))
    eligible = (token >= len(SPECIAL_TOKENS)) & (cells > 0)
    ranks = pd.Series(cells[eligible]).rank(method="first").to_numpy()  # ties cut evenly
    stratum = np.full(len(vocab), -1)
    stratum[eligible] = np.minimum(((ranks - 1) * STRATA / eligible.sum()).astype(int), STRATA - 1)
    key = splitmix(pd.util.hash_pandas_object(vocab.gene_id, index=False).to_numpy() ^ np.uint64(seed))
    chosen = []
    for s in range(STRATA):
        members = token[stratum == s]
        take = int(round(fraction * len(members)))
        chosen.append(members[np.argsort(key[members], kind="stable")[:take]])
    picked = np.sort(np.concatenate(chosen))
    return pl.DataFrame(
        {
            "token_id": picked,
            "gene_id": vocab.gene_id.to_numpy()[picked],
            "stratum": stratum[picked],
            "cells": cells[picked],
        },
        schema={"token_id": pl.Int64, "gene_id": pl.String, "stratum": pl.Int64, "cells": pl.Int64},
    )


def read_unseen_genes(path: str | Path, vocab_hash: str, vocab_size: int) -> np.ndarray:
    """A boolean mask over token ids, True for an unseen gene; the table checked against the
    vocabulary the model trains with."""
    table = read_parquet(path, "unseen genes table", COLUMNS)
    stored = (table.schema.metadata or {}).get(HASH_KEY, b"").decode()
    if stored != vocab_hash:
        raise ScencodeError("unseen genes were drawn from another vocabulary; rerun unseen_genes", path)
    tokens = table.column("token_id").to_numpy()
    if len(tokens) and (tokens.min() < len(SPECIAL_TOKENS) or tokens.max() >= vocab_size):
        raise ScencodeError(
            f"unseen genes table holds token ids outside the vocabulary's genes (0 … {vocab_size})", path
        )
    mask = np.zeros(vocab_size, bool)
    mask[tokens] = True
    return mask


def run(gene_medians: Path, vocab: Path, fraction: float, seed: int, out: OutputFile) -> pl.DataFrame:
    """The unseen genes (``out`` Parquet: token_id, gene_id, stratum, cells) drawn from the training
    corpus's gene medians table (its ``cells`` column: training cells expressing each gene)."""
    vocabulary, digest = load_vocab(vocab)
    medians = read_parquet(gene_medians, "gene medians table", ("token_id", "cells"))
    if (medians.schema.metadata or {}).get(HASH_KEY, b"").decode() != digest:
        raise ScencodeError("gene medians were computed with another vocabulary; rerun gene_medians", gene_medians)
    unseen = draw(vocabulary, medians.column("cells").to_numpy(), fraction, seed)
    table = unseen.to_arrow().replace_schema_metadata({HASH_KEY: digest.encode()})
    import pyarrow.parquet as pq

    with atomic_path(out, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    log.info(
        "unseen genes: %d of %d expressed genes held out of training (fraction %.3g, %d strata, seed %d)",
        unseen.height,
        int((medians.column("cells").to_numpy()[len(SPECIAL_TOKENS) :] > 0).sum()),
        fraction,
        STRATA,
        seed,
    )
    return unseen
