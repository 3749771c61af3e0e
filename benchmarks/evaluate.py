"""Seconds and peak memory of the full metric set (the study's scIB batch and bio metrics, kNN
k = 10/5/15, logistic-regression probe) on one embedding of ``--cells`` cells × ``--dim``
dimensions with realistic labels (30 cell types, long-tailed sizes) and batches (8 runs), and an
estimate for the study's full evaluation: 8 configurations × 26 Tabula Sapiens datasets (548,977
cells).

The estimate measures the metric set at ``--cells``/4, /2 and ``--cells``, fits
seconds = a·n + b·n² (kNN and silhouettes are O(n²), the rest about linear) and sums the fit over
the 26 datasets' sizes (config/paper/evaluation_tissues.csv), × 8 configurations. A 16-core node
runs 8 such jobs at once (2 cores each, as measured here), which ``node_hours_16_cores`` divides
out. ``--scib-benchmarker`` also times scib-metrics' own default set (its Benchmarker, one job per
dataset over all embeddings) at --cells/10 and /5 and estimates the study's run of it, with and
without the paper config's ``scib_benchmarker_max_cells``; it is not in the main estimate.
Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from scencode.evaluate import EvalParams, evaluate_embedding
from scencode.workflow_config import PRIMARY_ORGANISM, organism, read_datasets

PAPER = Path(__file__).resolve().parents[1] / "config" / "paper.yaml"


def paper_tissues() -> pd.DataFrame:
    """The study's evaluation datasets and their sizes, from the paper config's dataset sheets (the
    Tabula Sapiens tissues: another species' datasets are not the study's)."""
    datasets = read_datasets(yaml.safe_load(PAPER.read_text()))
    return pd.DataFrame(
        [
            {"dataset": name, "n_cells": spec["n_cells"]}
            for name, spec in datasets.items()
            if spec["role"] == "eval" and organism(spec) == PRIMARY_ORGANISM
        ]
    )


def realistic(n: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    sizes = rng.zipf(1.6, 30).astype(float)
    labels = rng.choice(30, n, p=sizes / sizes.sum())
    batches = rng.integers(0, 8, n)
    centres = rng.normal(size=(30, dim)) * 0.8
    shifts = rng.normal(size=(8, dim)) * 0.3
    x = centres[labels] + shifts[batches] + rng.normal(size=(n, dim))
    return x.astype(np.float32), np.array([f"type{label}" for label in labels]), np.array([f"run{b}" for b in batches])


def timed(cells: int, dim: int) -> tuple[float, int]:
    x, labels, batches = realistic(cells, dim)
    start = time.perf_counter()
    rows = evaluate_embedding(x, labels, batches, EvalParams())
    return time.perf_counter() - start, int(rows.value.notna().sum())


def scib_benchmarker_seconds(cells: int, dim: int) -> float:
    import tempfile

    from scencode.formats import RunIdentity, write_embedding
    from scencode.scib_benchmark import benchmark_dataset

    x, labels, batches = realistic(cells, dim)
    frame = pd.DataFrame({"cell_id": np.arange(cells).astype(str), "label": labels, "batch": batches})
    with tempfile.TemporaryDirectory() as folder:
        paths = {name: Path(folder) / f"{name}.parquet" for name in ("model", "pca")}
        write_embedding(frame, x, paths["model"])
        write_embedding(frame, x[:, :50], paths["pca"])
        start = time.perf_counter()
        benchmark_dataset(
            {RunIdentity("model-x-s0", "model", "x", 0): paths["model"]}, paths["pca"], "bench", threads=os.cpu_count()
        )
        return time.perf_counter() - start


def paper_models(paper: dict) -> int:
    """Trained models in the paper config: configurations × seeds (the study's 8)."""
    return len(paper["pretrain"]["configurations"]) * len(paper["pretrain"].get("seeds", [0]))


def scib_benchmarker_estimate(cells: int, dim: int, dataset_sizes: pd.Series) -> dict:
    """The Benchmarker on one embedding at cells/10 and cells/5, a fit seconds = c + b·n² (JAX
    compilation, then its elementwise O(n²) distances), and from it the study's run: 10 embeddings
    (the paper config's models and baselines) per dataset, each dataset capped at
    ``scib_benchmarker_max_cells`` (config/paper.yaml) or not."""
    sizes = [cells // 10, cells // 5]
    seconds = [scib_benchmarker_seconds(n, dim) for n in sizes]
    n = np.array(sizes, float)
    (c, b), *_ = np.linalg.lstsq(np.stack([np.ones_like(n), n**2], 1), np.array(seconds), rcond=None)
    paper = yaml.safe_load(PAPER.read_text())
    cap = paper["evaluate"].get("scib_benchmarker_max_cells")
    embeddings = paper_models(paper) + len(paper["evaluate"]["baselines"])

    def hours(sizes: pd.Series) -> dict:
        per_dataset = embeddings * (c + b * sizes.astype(float) ** 2)
        return {
            "largest_dataset_hours": float(per_dataset.max()) / 3600,
            "total_hours": float(per_dataset.sum()) / 3600,
        }

    return {
        "embeddings_per_dataset": embeddings,
        "seconds_by_cells": dict(zip(map(str, sizes), seconds)),
        "fit_seconds": {"constant": c, "per_cell_squared": b},
        "study_uncapped": hours(dataset_sizes),
        "study_capped": {"max_cells": cap, **hours(dataset_sizes.clip(upper=cap))},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--scib-benchmarker", action="store_true")
    args = parser.parse_args()
    sizes = [args.cells // 4, args.cells // 2, args.cells]
    runs = [timed(n, args.dim) for n in sizes]
    seconds = [t for t, _ in runs]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = np.array(sizes, float)
    (a, b), *_ = np.linalg.lstsq(np.stack([n, n**2], 1), np.array(seconds), rcond=None)
    tissues = paper_tissues()
    per_dataset = a * tissues.n_cells + b * tissues.n_cells**2
    models = paper_models(yaml.safe_load(PAPER.read_text()))
    total_s = models * float(per_dataset.sum())
    result = {
        "cells": args.cells,
        "dim": args.dim,
        "metrics": runs[-1][1],
        "seconds": seconds[-1],
        "seconds_by_cells": dict(zip(map(str, sizes), seconds)),
        "peak_rss_mb": peak_mb,
        "cores": os.cpu_count(),
        "fit_seconds": {"per_cell": a, "per_cell_squared": b},
        "study_estimate": {
            "configurations": models,
            "datasets": len(tissues),
            "cells": int(tissues.n_cells.sum()),
            "largest_dataset_seconds": float(per_dataset.max()),
            "hours_on_this_machine": total_s / 3600,
            "node_hours_16_cores": total_s / 3600 / (16 / max(1, os.cpu_count())),
        },
    }
    if args.scib_benchmarker:
        result["scib_benchmarker"] = scib_benchmarker_estimate(args.cells, args.dim, tissues.n_cells)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
