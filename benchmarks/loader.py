"""Loader throughput from real token shards at the study's context (K = 1024), per expression
encoding: reading shards, K-of-M sampling, masking, padding, x̃, and the encoding's own batch
preprocessing (quantile bins for hard, log2 bins for log; the learned encodings need only x̃).
One process, no DataLoader workers, after one warm-up epoch: the figure is per worker. Prints one JSON object last.

    python benchmarks/loader.py [--cells 20000] [--nnz 2000] [--batch-size 512]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from synthetic import write_synthetic_h5ad  # benchmarks/synthetic.py

from scencode.encodings import EXPRESSION_ENCODERS, log_bins, quantile_bins
from scencode.formats import write_vocab
from scencode.loader import LoaderConfig, ShardBatches
from scencode.tokenize import DatasetInput, TokenizeParams, tokenize_corpus
from scencode.vocab import build_vocab

PREPROCESS = {
    "hard": lambda b: quantile_bins(b.xnorm, b.layout(), 50),
    "log": lambda b: log_bins(b.counts),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--nnz", type=int, default=2_000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--context", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synthetic_h5ad(tmp / "cells.h5ad", args.cells, args.nnz)
        write_vocab(build_vocab([tmp / "cells.h5ad"]), tmp / "vocab.parquet")
        tokenize_corpus(
            "bench",
            [DatasetInput("bench", tmp / "cells.h5ad")],
            tmp / "vocab.parquet",
            tmp / "tokens",
            TokenizeParams(val_fraction=0, test_fraction=0, row_group_cells=2048),
        )
        cfg = LoaderConfig(batch_size=args.batch_size, context=args.context)
        # one dataset object, as in a worker process: its buffers are warm after the first pass
        data = ShardBatches(tmp / "tokens", "train", cfg)
        for _ in data:
            pass
        for name in sorted(EXPRESSION_ENCODERS):
            preprocess = PREPROCESS.get(name, lambda b: None)
            cells = tokens = 0
            start = time.perf_counter()
            for batch in data:
                preprocess(batch)
                cells += batch.n_cells
                tokens += int(batch.real.sum())
            seconds = time.perf_counter() - start
            results[name] = {"cells_per_s": cells / seconds, "tokens_per_s": tokens / seconds}
    print(
        json.dumps(
            {
                "cells": args.cells,
                "mean_nnz": args.nnz,
                "context": args.context,
                "batch_size": args.batch_size,
                "per_encoding": results,
                "min_cells_per_s": min(r["cells_per_s"] for r in results.values()),
            }
        )
    )


if __name__ == "__main__":
    main()
