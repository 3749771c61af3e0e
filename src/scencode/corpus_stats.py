"""What the tokenized corpora hold: per corpus, dataset and split the cells, the distribution of
non-zero genes per cell and the tokens a model sees after the context cap; per dataset, the share
of the vocabulary its cells hold (coverage).

One polars scan per shard (three columns), checked against the manifest first; memory is bounded
by one shard. ``scencode plan`` prices training from this table when it exists.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.compute as pc

from .atomic import OutputFile, atomic_path
from .errors import ScencodeError
from .formats import HASH_KEY, SPECIAL_TOKENS, load_vocab
from .parquet_io import polars_frame, read_parquet
from .shards import open_shard, read_shard, verify_corpus

log = logging.getLogger(__name__)
QUANTILES = {"p05": 0.05, "p25": 0.25, "median": 0.5, "p75": 0.75, "p95": 0.95}
KEYS = ["corpus", "dataset_id", "split"]


def corpus_stats(
    corpora: dict[str, Path], vocab_size: int, context: int, vocab_hash: str | None = None
) -> pl.DataFrame:
    """One row per (corpus, dataset, split). ``context``: the loader's cap on genes per cell;
    ``vocab_hash``: the vocabulary every corpus must have been tokenized with."""
    if context < 1:
        raise ScencodeError(f"--context must be at least 1 gene per cell, got {context}")
    tables = [_one_corpus(name, Path(folder), vocab_size, context, vocab_hash) for name, folder in corpora.items()]
    return pl.concat(tables).with_columns(context=pl.lit(context)).sort(KEYS)


def _one_corpus(name: str, folder: Path, vocab_size: int, context: int, vocab_hash: str | None) -> pl.DataFrame:
    manifest = verify_corpus(folder, checksums=False, vocab_hash=vocab_hash)
    seen: dict[str, np.ndarray] = {}
    with ThreadPoolExecutor(max_workers=1) as reader:  # the next shard is read while this one is counted
        frames = reader.map(lambda shard: _scan(folder, shard), manifest["shards"])
        lengths = pl.concat([_count_shard(frame, seen, vocab_size) for frame in frames])
    n_genes = pl.col("n_genes")
    table = lengths.group_by("dataset_id", "split").agg(
        cells=pl.len(),
        genes_per_cell_mean=n_genes.mean(),
        genes_per_cell_min=n_genes.min(),
        **{f"genes_per_cell_{k}": n_genes.quantile(q, "linear") for k, q in QUANTILES.items()},
        genes_per_cell_max=n_genes.max(),
        tokens_per_cell_mean=n_genes.clip(upper_bound=context).mean(),
        tokens=n_genes.clip(upper_bound=context).sum(),
    )
    coverage = pl.DataFrame(
        {"dataset_id": list(seen), "dataset_genes_seen": [int(b.sum()) for b in seen.values()]},
        schema={"dataset_id": pl.String, "dataset_genes_seen": pl.Int64},
    )
    return (
        table.join(coverage, on="dataset_id", how="left")
        .with_columns(
            corpus=pl.lit(name),
            dataset_vocab_coverage=pl.col("dataset_genes_seen") / (vocab_size - len(SPECIAL_TOKENS)),
        )
        .select(
            *KEYS,
            "cells",
            "genes_per_cell_mean",
            "genes_per_cell_min",
            *(f"genes_per_cell_{k}" for k in QUANTILES),
            "genes_per_cell_max",
            "tokens_per_cell_mean",
            "tokens",
            "dataset_genes_seen",
            "dataset_vocab_coverage",
        )
    )


def _scan(folder: Path, shard: dict) -> pl.DataFrame:
    return polars_frame(read_shard(folder, shard, ["dataset_id", "split", "gene_ids"]))


def _count_shard(frame: pl.DataFrame, seen: dict, vocab_size: int) -> pl.DataFrame:
    """Genes per cell of one shard, marking in a bitmap the genes each dataset holds: a dataset's
    cells are one run of rows, so its tokens are one slice of the shard's values, with no copy and
    one pass (hashing every token, polars' n_unique, was 2.3x slower than reading the shard).
    Memory is bounded by two shards, whatever the corpus's size."""
    lengths = frame.select("dataset_id", "split", n_genes=pl.col("gene_ids").list.len())
    values = frame["gene_ids"].explode().to_numpy()
    ends = np.concatenate([[0], np.cumsum(lengths["n_genes"].to_numpy(), dtype=np.int64)])
    runs = frame["dataset_id"].rle()
    row = 0
    for length, dataset in runs.struct.unnest().iter_rows():
        bitmap = seen.setdefault(dataset, np.zeros(vocab_size, bool))
        bitmap[values[ends[row] : ends[row + length]]] = True
        row += length
    return lengths


def read_stats(path: str | Path) -> pl.DataFrame:
    return pl.read_csv(path)


def training_figures(stats: pl.DataFrame, corpus: str = "train") -> dict:
    """What the plan prices training from: the training split's cells and mean tokens per cell."""
    train = stats.filter((pl.col("corpus") == corpus) & (pl.col("split") == "train"))
    if train.is_empty():
        return {}
    cells = int(train["cells"].sum())
    return {
        "train_cells": cells,
        "tokens_per_cell": float(train["tokens"].sum() / cells),
        "cells_by_split": dict(
            stats.filter(pl.col("corpus") == corpus)
            .group_by("split")
            .agg(pl.col("cells").sum())
            .sort("split")
            .iter_rows()
        ),
    }


def draw(stats: pl.DataFrame, path: Path, caveat: str = "") -> list[Path]:
    """Genes per cell per dataset (median, 25–75 % and 5–95 % ranges, all splits pooled by cells)
    beside the context cap, and each dataset's vocabulary coverage."""
    from . import plotting

    rows = (
        stats.group_by("corpus", "dataset_id")
        .agg(
            *(
                ((pl.col(f"genes_per_cell_{k}") * pl.col("cells")).sum() / pl.col("cells").sum()).alias(k)
                for k in QUANTILES
            ),
            coverage=pl.col("dataset_vocab_coverage").max(),
            cells=pl.col("cells").sum(),
        )
        .sort("corpus", "dataset_id")
    )
    labels = [f"{c} · {d}" if c != d else d for c, d in zip(rows["corpus"], rows["dataset_id"])]
    height = 1.2 + 0.35 * len(labels)
    fig, (left, right) = plotting.figure(10, height, 1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 1]})
    y = range(len(labels))
    left.hlines(y, rows["p05"], rows["p95"], color="0.7", lw=2, label="5–95 %")
    left.hlines(y, rows["p25"], rows["p75"], color="#0072B2", lw=6, label="25–75 %")
    left.plot(rows["median"], y, "k|", ms=12, label="median")
    left.axvline(stats["context"][0], color="#D55E00", ls="--", label=f"context cap {stats['context'][0]}")
    left.set(yticks=list(y), yticklabels=labels, xlabel="non-zero vocabulary genes per cell")
    plotting.legend_outside(right, handles=left.get_legend_handles_labels()[0])
    right.barh(list(y), rows["coverage"], color="#009E73")
    right.set(xlabel="vocabulary coverage", xlim=(0, 1))
    plotting.caveat(fig, caveat)
    return plotting.save(fig, path)


def run(
    corpora: list[Path], vocab: Path, context: int, out: OutputFile, figure: OutputFile, caveat: str = ""
) -> pl.DataFrame:
    """Statistics of token corpora (their folders; the name is the folder's) as a table at ``out``
    and a figure at ``figure``; ``context``: the training loader's cap on genes per cell."""
    vocabulary, digest = load_vocab(vocab)
    stats = corpus_stats({Path(c).name: Path(c) for c in corpora}, len(vocabulary), context, digest)
    with atomic_path(out, suffix=".csv") as tmp:
        stats.write_csv(tmp)
    draw(stats, Path(figure), caveat)
    log.info("corpus statistics: %d corpora, %d cells", len(corpora), int(stats["cells"].sum()))
    return stats


# ---------------------------------------------------------------- gene medians (rank-value encoding)

MEDIAN_BINS = 1024  # log-spaced over 1e-3 … 1e5: bins 1.8 % wide, a median within 0.9 %
LOG_LOW, LOG_HIGH = np.log(1e-3), np.log(1e5)
NORMALISED_TOTAL = 10_000  # Geneformer's: counts / cell total × 10,000
COUNT_TOKENS = 1 << 24  # tokens binned per bincount: its vocabulary × 1,024 output is the fixed cost


def gene_medians(folder: Path, vocab_size: int, vocab_hash: str | None = None, split: str = "train") -> pl.DataFrame:
    """Per vocabulary token, the median of count / cell total × 10,000 over the ``split`` cells that
    express the gene (Geneformer's non-zero median) and how many cells that is. One histogram of
    log-spaced bins per gene, filled row group by row group (memory: vocabulary × 1,024 counts and
    one row group's tokens, whatever the corpus's and its shards' sizes); the median is its bin's centre. A gene no training cell expresses gets the median
    of the others' medians (``cells`` 0 says so); the special tokens get 1."""
    manifest = verify_corpus(folder, checksums=False, vocab_hash=vocab_hash)
    histogram = np.zeros(vocab_size * MEDIAN_BINS, np.int64)
    width = (LOG_HIGH - LOG_LOW) / MEDIAN_BINS
    pending: list[np.ndarray] = []  # (gene, bin) indices of row groups not yet counted
    for shard in manifest["shards"]:
        # row group by row group: a whole shard's per-token temporaries (~50 bytes a token) were
        # 7.6 GB at the paper's 100,000 cells a shard (the rehearsal's 1M-cell corpus)
        for group in range(open_shard(folder / shard["file"]).metadata.num_row_groups):
            table = read_shard(folder, shard, ["split", "gene_ids", "counts", "total_counts"], row_group=group)
            table = table.filter(pc.equal(table.column("split"), split))
            if table.num_rows:
                pending.append(_histogram_index(table, width))
            if sum(map(len, pending)) >= COUNT_TOKENS:  # one bincount per ~16M tokens, not per row group
                histogram += np.bincount(np.concatenate(pending), minlength=len(histogram))
                pending.clear()
    if pending:
        histogram += np.bincount(np.concatenate(pending), minlength=len(histogram))
    per_gene = histogram.reshape(vocab_size, MEDIAN_BINS)
    cells = per_gene.sum(1)
    middle = np.argmax(per_gene.cumsum(1) >= (cells[:, None] + 1) / 2, axis=1)
    medians = np.exp(LOG_LOW + (middle + 0.5) * width)
    expressed = cells > 0
    medians[~expressed] = np.median(medians[expressed]) if expressed.any() else 1.0
    medians[: len(SPECIAL_TOKENS)] = 1.0
    return pl.DataFrame({"token_id": np.arange(vocab_size), "median": medians, "cells": cells})


_LOG_COUNTS = np.log(np.arange(1, 2**16 + 1)).astype(np.float32)  # log(count), counts 1 … 65,536


def _histogram_index(table, width: float) -> np.ndarray:
    """Each token's (gene, bin) as gene × bins + bin. Counts are whole numbers: their logarithms are
    looked up (faster than computing them), and the cell's log total is one number per cell."""
    genes = table.column("gene_ids").combine_chunks()
    counts = table.column("counts").combine_chunks().flatten().to_numpy()
    log_counts = _LOG_COUNTS[np.minimum(counts, len(_LOG_COUNTS)) - 1]
    large = counts > len(_LOG_COUNTS)
    log_counts[large] = np.log(counts[large])
    totals = table.column("total_counts").to_numpy().astype(np.float64)
    shift = ((np.log(NORMALISED_TOTAL / totals) - LOG_LOW) / width).astype(np.float32)
    position = log_counts * np.float32(1 / width) + np.repeat(shift, np.diff(genes.offsets))
    bins = np.clip(position, 0, MEDIAN_BINS - 1).astype(np.int64)
    return genes.flatten().to_numpy().astype(np.int64) * MEDIAN_BINS + bins


def read_gene_medians(path: str | Path, vocab_hash: str) -> np.ndarray:
    """The medians of ``gene_medians_run``'s table, by token id, checked against the vocabulary."""
    table = read_parquet(path, "gene medians table", ("token_id", "median"))
    stored = (table.schema.metadata or {}).get(HASH_KEY, b"").decode()
    if stored != vocab_hash:
        raise ScencodeError("gene medians were computed with another vocabulary; rerun gene_medians", path)
    tokens = table.column("token_id").to_numpy()
    if not np.array_equal(tokens, np.arange(len(tokens))):
        raise ScencodeError("gene medians table does not hold one row per token id in order", path)
    return table.column("median").to_numpy()


def gene_medians_run(corpus: Path, vocab: Path, out: OutputFile) -> pl.DataFrame:
    """Per-gene non-zero medians of the training corpus's ``train`` split (rank-value encoding)."""
    import pyarrow.parquet as pq

    vocabulary, digest = load_vocab(vocab)
    medians = gene_medians(Path(corpus), len(vocabulary), digest)
    table = medians.to_arrow()
    table = table.replace_schema_metadata({HASH_KEY: digest.encode(), b"scencode_corpus": str(corpus).encode()})
    with atomic_path(out, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    expressed = medians.filter(pl.col("cells") > 0)
    log.info(
        "gene medians: %d of %d genes expressed in the training split; median of medians %.3g",
        expressed.height,
        len(vocabulary) - len(SPECIAL_TOKENS),
        float(np.median(expressed["median"].to_numpy())) if expressed.height else float("nan"),
    )
    return medians
