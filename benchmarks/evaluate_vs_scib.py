"""scencode's study metrics side by side with what a user would run instead, on the same embeddings:
`scib.metrics` 1.1.7's functions with the study's settings (the study's library), and scib-metrics'
``Benchmarker`` (its own default set). Wall time of each, values compared with scib's; prints one
JSON object on its last line with the ratios.

    pip install --no-deps scib==1.1.7 && pip install deprecated    # scib is a check, not a dependency
    python benchmarks/evaluate_vs_scib.py [--cells 50000] [--data ../shared/data] [--benchmarker synthetic|all|none]

Sets: the five real settings of ``tests/test_scib_golden.py`` (PCA and PCA + noise of CellBench,
pancreas and pbmc68k_reduced) and a synthetic embedding of ``--cells`` cells (30 long-tailed cell
types, 8 batches, 30 dimensions; ``benchmarks/evaluate.py``'s generator). Each tool gets a fresh
AnnData and builds its own neighbour graph, as a user would call it; scencode's time is its study
metrics alone (``evaluate.scib_rows``), as scib's is. scib's graph LISI runs its compiled
helper (rebuilt from the wheel's knn_graph.cpp with g++ when the wheel's does not load).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np

from scencode.evaluate import EvalParams, scib_rows

ROOT = Path(__file__).resolve().parents[1]


def _sibling(name: str):
    """A sibling benchmark script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"scencode_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


AGREEMENT, SYNTHETIC = _sibling("scib_agreement"), _sibling("evaluate")


def ensure_scib_lisi_helper() -> str:
    """scib's LISI helper binary: the wheel's, or rebuilt from its knn_graph.cpp (as the golden values were)."""
    import scib

    folder = Path(scib.__file__).parent / "knn_graph"
    binary = folder / "knn_graph.o"
    probe = subprocess.run([str(binary)], capture_output=True) if binary.exists() else None
    if probe is None or probe.returncode != 0:
        subprocess.run(["g++", "-O3", "-std=c++11", "-o", str(binary), str(folder / "knn_graph.cpp")], check=True)
        return "rebuilt with g++ -O3"
    return "wheel"


def scencode_study(x, labels, batches, threads: int = 1) -> tuple[dict, float]:
    start = time.perf_counter()
    rows = scib_rows(x, labels, batches, EvalParams(min_cells_per_type=1, max_cells_scib=10**9), threads)
    seconds = time.perf_counter() - start
    return {m: v for m, g, v, _ in rows if g in ("batch", "bio")}, seconds


def shim_scipy_for_scanpy() -> None:
    """scanpy 1.11 calls ``getnnz`` on pynndescent's ``csr_array``, gone from scipy 1.17's sparse
    arrays: from 8,192 cells ``sc.pp.neighbors`` fails (scencode passes scanpy the same transformer
    with a csr_matrix output, ``evaluate.scanpy_large_data_transformer``). scib calls scanpy's
    default, so for scib this benchmark restores the method; the neighbours are the same."""
    import scipy.sparse as sp

    if not hasattr(sp.csr_array, "getnnz"):
        sp.csr_array.getnnz = lambda self, axis=None: self._getnnz(axis=axis)


def scib_study(x, labels, batches) -> tuple[dict, float]:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = AGREEMENT.scib_values(x, labels, batches)
    return values, time.perf_counter() - start


def benchmarker(x, labels, batches) -> float:
    """scib-metrics' Benchmarker with its default metric sets on this one embedding."""
    import anndata as ad
    import pandas as pd
    from scib_metrics.benchmark import Benchmarker

    adata = ad.AnnData(
        obs=pd.DataFrame({"label": labels, "batch": batches}, index=np.arange(len(x)).astype(str)),
        obsm={"X_emb": x, "X_pca": x},
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bench = Benchmarker(
            adata,
            batch_key="batch",
            label_key="label",
            embedding_obsm_keys=["X_emb"],
            pre_integrated_embedding_obsm_key="X_pca",
            n_jobs=1,
            progress_bar=False,
        )
        bench.benchmark()
    return time.perf_counter() - start


def compare(name: str, x, labels, batches, with_benchmarker: bool, threads: int) -> dict:
    ours, ours_s = scencode_study(x, labels, batches, threads)
    theirs, scib_s = scib_study(x, labels, batches)
    diff = {m: abs(ours[m] - theirs[m]) for m in AGREEMENT.STUDY if np.isfinite(ours[m]) and np.isfinite(theirs[m])}
    out = {
        "cells": len(x),
        "scencode_threads": threads,
        "seconds": {"scencode": ours_s, "scib": scib_s},
        "speedup_vs_scib": scib_s / ours_s,
        "max_abs_difference": max(diff.values(), default=0.0),
        "both_nan": sorted(m for m in AGREEMENT.STUDY if m not in diff),
    }
    if with_benchmarker and len(np.unique(batches)) > 1:
        out["seconds"]["scib_metrics_benchmarker"] = bench_s = benchmarker(x, labels, batches)
        out["speedup_vs_benchmarker"] = bench_s / ours_s
    print(name, json.dumps(out), flush=True)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=50_000, help="cells of the synthetic set")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument(
        "--benchmarker",
        choices=["synthetic", "all", "none"],
        default="synthetic",
        help="where scib-metrics' Benchmarker runs too (its JAX compilation costs about a minute per set)",
    )
    p.add_argument("--no-real", action="store_true", help="the synthetic set only")
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="scencode's threads (Leiden's resolutions side by side, as an evaluate job runs them; "
        "scib runs them one after the other)",
    )
    args = p.parse_args(argv)
    import scib

    shim_scipy_for_scanpy()
    result = {"scib": scib.__version__, "lisi_helper": ensure_scib_lisi_helper(), "sets": {}}
    if not args.no_real:
        for name in AGREEMENT.DATASETS:
            file = AGREEMENT.DATASETS[name][0]
            if file is not None and not (args.data / file).exists():
                continue
            adata, label, batch = AGREEMENT.load(name, args.data)
            labels = adata.obs[label].astype(str).to_numpy()
            batches = adata.obs[batch].astype(str).to_numpy() if batch else np.full(adata.n_obs, name)
            for kind, x in AGREEMENT.embeddings(adata).items():
                result["sets"][f"{name}/{kind}"] = compare(
                    f"{name}/{kind}", x, labels, batches, args.benchmarker == "all", args.threads
                )
    x, labels, batches = SYNTHETIC.realistic(args.cells, 30)
    result["sets"][f"synthetic_{args.cells}"] = compare(
        f"synthetic_{args.cells}",
        x.astype(np.float32),
        labels.astype(str),
        batches.astype(str),
        args.benchmarker != "none",
        args.threads,
    )
    synthetic = result["sets"][f"synthetic_{args.cells}"]
    result["summary"] = {
        "cells": args.cells,
        "speedup_vs_scib": synthetic["speedup_vs_scib"],
        "speedup_vs_benchmarker": synthetic.get("speedup_vs_benchmarker"),
        "max_abs_difference_all_sets": max(s["max_abs_difference"] for s in result["sets"].values()),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
