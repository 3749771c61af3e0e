"""The corpus-statistics step (one lazy polars scan per corpus) against reading the same shards'
columns with pyarrow, over a synthetic tokenized corpus. Prints one JSON object last.

    python benchmarks/corpus_statistics.py [--cells 1000000] [--nnz 300]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from scencode.corpus_stats import corpus_stats
from scencode.formats import load_vocab, write_vocab
from scencode.tokenize import DatasetInput, TokenizeParams, tokenize_corpus
from scencode.vocab import build_vocab
from synthetic import write_synthetic_h5ad  # benchmarks/synthetic.py


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--nnz", type=int, default=300)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synthetic_h5ad(tmp / "d.h5ad", args.cells, args.nnz, spread=0.5)
        write_vocab(build_vocab([tmp / "d.h5ad"]), tmp / "vocab.parquet")
        tokenize_corpus("train", [DatasetInput("d", tmp / "d.h5ad")], tmp / "vocab.parquet", tmp / "train",
                        TokenizeParams(val_fraction=0.01, test_fraction=0.01))
        (tmp / "d.h5ad").unlink()
        vocab_size = len(load_vocab(tmp / "vocab.parquet")[0])
        shards = sorted((tmp / "train").glob("part-*.parquet"))
        columns = ["dataset_id", "split", "gene_ids"]
        pyarrow_s = best_of(args.repeats, lambda: pq.read_table(shards, columns=columns))
        polars_s = best_of(args.repeats, lambda: corpus_stats({"train": tmp / "train"}, vocab_size, args.context))
        size = sum(p.stat().st_size for p in shards)
    print(json.dumps({"cells": args.cells, "nnz": args.nnz, "shard_bytes": size,
                      "pyarrow_read_s": round(pyarrow_s, 3), "corpus_stats_s": round(polars_s, 3),
                      "ratio_pyarrow_over_stats": round(pyarrow_s / polars_s, 3),
                      "stats_cells_per_s": round(args.cells / polars_s)}))


if __name__ == "__main__":
    main()
