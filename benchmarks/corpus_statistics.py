"""The corpus-statistics step (polars) against reading the same shards with pyarrow: the whole
shards (what a user reading the corpus does), only the three columns the statistics need (the I/O
floor), and those columns plus the same statistics in numpy (the hand-written alternative), over a
synthetic tokenized corpus; and the gene medians of the rank encoding (``--record`` writes their
rate to measured.json, which ``scencode plan`` prices the gene_medians job from). Prints one JSON
object last.

    python benchmarks/corpus_statistics.py [--cells 1000000] [--nnz 300] [--record]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from synthetic import write_synthetic_h5ad  # benchmarks/synthetic.py

from scencode.corpus_stats import corpus_stats, gene_medians
from scencode.formats import load_vocab, write_vocab
from scencode.tokenize import DatasetInput, TokenizeParams, tokenize_corpus
from scencode.vocab import build_vocab


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def numpy_stats(shards: list[Path], vocab_size: int, context: int) -> dict:
    """The same figures from a pyarrow read: genes per cell quantiles, capped tokens, coverage."""
    table = pq.read_table(shards, columns=["dataset_id", "split", "gene_ids"])
    lengths = pc.list_value_length(table["gene_ids"]).to_numpy()
    values = pc.list_flatten(table["gene_ids"]).to_numpy()
    groups = pc.binary_join_element_wise(table["dataset_id"], table["split"], "/").to_numpy(zero_copy_only=False)
    keys, codes = np.unique(groups, return_inverse=True)
    token_codes = np.repeat(codes, lengths)
    out = {}
    for code, key in enumerate(keys):
        n = lengths[codes == code]
        seen = np.zeros(vocab_size, bool)
        seen[values[token_codes == code]] = True
        out[key] = (
            len(n),
            n.mean(),
            np.quantile(n, [0.05, 0.25, 0.5, 0.75, 0.95]),
            np.minimum(n, context).sum(),
            int(seen.sum()),
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--nnz", type=int, default=300)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="write the gene medians' rate to measured.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synthetic_h5ad(tmp / "d.h5ad", args.cells, args.nnz, spread=0.5)
        write_vocab(build_vocab([tmp / "d.h5ad"]), tmp / "vocab.parquet")
        tokenize_corpus(
            "train",
            [DatasetInput("d", tmp / "d.h5ad")],
            tmp / "vocab.parquet",
            tmp / "train",
            TokenizeParams(val_fraction=0.01, test_fraction=0.01),
        )
        (tmp / "d.h5ad").unlink()
        vocab_size = len(load_vocab(tmp / "vocab.parquet")[0])
        shards = sorted((tmp / "train").glob("part-*.parquet"))
        columns = ["dataset_id", "split", "gene_ids"]
        timings = {
            "pyarrow_read_shards_s": best_of(args.repeats, lambda: pq.read_table(shards)),
            "pyarrow_read_columns_s": best_of(args.repeats, lambda: pq.read_table(shards, columns=columns)),
            "pyarrow_numpy_stats_s": best_of(args.repeats, lambda: numpy_stats(shards, vocab_size, args.context)),
            "corpus_stats_s": best_of(
                args.repeats, lambda: corpus_stats({"train": tmp / "train"}, vocab_size, args.context)
            ),
            "gene_medians_s": best_of(args.repeats, lambda: gene_medians(tmp / "train", vocab_size)),
        }
        size = sum(p.stat().st_size for p in shards)
    stats_s = timings["corpus_stats_s"]
    print(
        json.dumps(
            {
                "cells": args.cells,
                "nnz": args.nnz,
                "shard_bytes": size,
                **{k: round(v, 3) for k, v in timings.items()},
                "speedup_vs_reading_shards": round(timings["pyarrow_read_shards_s"] / stats_s, 3),
                "speedup_vs_reading_columns": round(timings["pyarrow_read_columns_s"] / stats_s, 3),
                "speedup_vs_pyarrow_numpy": round(timings["pyarrow_numpy_stats_s"] / stats_s, 3),
                "stats_cells_per_s": round(args.cells / stats_s),
                "vocab_size": vocab_size,
                "gene_medians_cells_per_s": round(args.cells / timings["gene_medians_s"]),
            }
        )
    )
    if args.record:
        from record import record

        record(
            "gene_medians_cells_per_s",
            round(args.cells / timings["gene_medians_s"]),
            "cells/s",
            "benchmarks/corpus_statistics.py",
            f"gene medians of {args.cells:,} cells x {args.nnz:,} genes, vocabulary {vocab_size:,}, one thread",
        )


if __name__ == "__main__":
    main()
