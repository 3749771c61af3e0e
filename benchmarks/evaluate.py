"""Seconds and peak memory of the full metric set (scIB batch and bio metrics, kNN k = 10/5/15,
logistic-regression probe) on one embedding of ``--cells`` cells × ``--dim`` dimensions with
realistic labels (30 cell types, long-tailed sizes) and batches (8 runs), and an estimate for the
study's full evaluation: 8 configurations × 26 Tabula Sapiens datasets (548,977 cells).

The estimate scales the measured time to each dataset's size (config/paper/evaluation_tissues.csv)
quadratically (exact kNN and silhouettes are O(n²); an upper bound for the linear parts) and
multiplies by the 8 configurations, on this machine's cores; a 16-core node runs 8 such jobs at
once (2 cores each), which the estimate divides out as ``node_hours_16_cores``.
Prints one JSON object on its last line.
"""

from __future__ import annotations

import os
import sys

# benchmarks/tokenize.py shadows the standard library's `tokenize`, which numpy imports
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd

from scencode.evaluate import EvalParams, evaluate_embedding

TISSUES = Path(__file__).resolve().parents[1] / "config" / "paper" / "evaluation_tissues.csv"


def realistic(n: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    sizes = rng.zipf(1.6, 30).astype(float)
    labels = rng.choice(30, n, p=sizes / sizes.sum())
    batches = rng.integers(0, 8, n)
    centres = rng.normal(size=(30, dim)) * 0.8
    shifts = rng.normal(size=(8, dim)) * 0.3
    x = centres[labels] + shifts[batches] + rng.normal(size=(n, dim))
    return x.astype(np.float32), np.array([f"type{l}" for l in labels]), np.array([f"run{b}" for b in batches])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    x, labels, batches = realistic(args.cells, args.dim)
    start = time.perf_counter()
    rows = evaluate_embedding(x, labels, batches, EvalParams())
    seconds = time.perf_counter() - start
    tissues = pd.read_csv(TISSUES)
    per_dataset = seconds * (tissues.n_cells / args.cells) ** 2
    total_s = 8 * float(per_dataset.sum())
    print(json.dumps({
        "cells": args.cells, "dim": args.dim, "metrics": int(rows.value.notna().sum()), "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cores": os.cpu_count(),
        "study_estimate": {"configurations": 8, "datasets": len(tissues), "cells": int(tissues.n_cells.sum()),
                           "hours_on_this_machine": total_s / 3600,
                           "node_hours_16_cores": total_s / 3600 / (16 / max(1, os.cpu_count()))},
    }))


if __name__ == "__main__":
    main()
