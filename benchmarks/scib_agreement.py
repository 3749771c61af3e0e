"""The study's metrics (``scencode.evaluate``, group ``study``) against the `scib` package the study
used, on the same embeddings of real datasets; prints one JSON object with per-metric values and
absolute differences.

    pip install --no-deps scib==1.1.7 && pip install deprecated    # scib is a check, not a dependency
    python benchmarks/scib_agreement.py [--data ../shared/data] [--write-golden tests/data/scib_golden.json]

Embeddings: PCA of log-normalised HVGs (``scencode.baselines.pca_baseline``, seeded) and the same
with Gaussian noise (SD 1.5 × each component's SD, seeded), so that values away from 1 are checked
too. Datasets: the real sets in ``../shared/data`` (CellBench 3 cell lines × 2 technologies,
CellBench 5 cell lines × 3 plates, Baron pancreas human/mouse) and scanpy's pbmc68k_reduced (one
batch: bio metrics only). ``--write-golden golden.json`` stores scib's values for the golden tests
and, beside them (``golden_inputs.npz``), the exact embeddings, labels and batches scib scored: the
golden test scores those arrays, so it does not depend on the BLAS kernels of the machine it runs on
(a PCA recomputed elsewhere differs at ~1e-7, which moves graph LISI where path lengths tie; see
``benchmarks/scib_sensitivity.py``). ``--from-inputs golden_inputs.npz`` scores stored arrays
instead of computing them. scib's own values still depend on the CPU where scanpy's neighbour
distances are BLAS products (fewer than 8,192 cells): ``--add-variant golden.json --variant NAME``
scores the golden file's arrays on this machine (e.g. under ``OPENBLAS_CORETYPE=Prescott``) and
records, under ``variants/NAME``, every scib value that differs from the golden one.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np

from scencode.baselines import pca_baseline
from scencode.demo import pbmc68k_counts
from scencode.evaluate import EvalParams, evaluate_embedding

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {  # name: (file under --data, label key, batch key, obs filter)
    "cellbench_3cl": ("cellbench/cellbench_3cl_celseq2_dropseq.h5ad", "cell_line", "batch", None),
    "cellbench_5cl": (
        "cellbench/cellbench_5cl_celseq2_3plates.h5ad",
        "cell_line_demuxlet",
        "batch",
        ("demuxlet_cls", "SNG"),
    ),
    "pancreas": ("cider_pancreas/cider_pancreas_350.h5ad", "Group", "Batch", None),
    # one cell type kept in the human batch only: an isolated label, as scib selects them
    "pancreas_isolated": ("cider_pancreas/cider_pancreas_350.h5ad", "Group", "Batch", "isolate"),
    "pbmc68k": (None, "bulk_labels", None, None),
}
STUDY = (
    "ilisi",
    "graph_connectivity",
    "asw_batch",
    "asw_label",
    "clisi",
    "nmi",
    "ari",
    "isolated_label_f1",
    "isolated_label_asw",
)
LISI = ("ilisi", "clisi")
NOISE_SD = 1.5


def load(name: str, data: Path) -> tuple[ad.AnnData, str, str | None]:
    file, label, batch, keep = DATASETS[name]
    adata = pbmc68k_counts() if file is None else ad.read_h5ad(data / file)
    if keep == "isolate":
        first_label, other_batch = sorted(adata.obs[label].astype(str).unique())[0], "mouse"
        drop = (adata.obs[label].astype(str) == first_label) & (adata.obs[batch].astype(str) == other_batch)
        adata = adata[~drop.to_numpy()].copy()
    elif keep:
        adata = adata[adata.obs[keep[0]] == keep[1]].copy()
    adata.obs_names_make_unique()
    return adata, label, batch


def embeddings(adata: ad.AnnData) -> dict[str, np.ndarray]:
    pca = pca_baseline(adata, n_comps=30, seed=0)
    noise = np.random.default_rng(0).normal(size=pca.shape) * pca.std(0) * NOISE_SD
    return {"pca": pca, "pca_noisy": (pca + noise).astype(np.float32)}


def inputs_path(golden: Path) -> Path:
    """Where the arrays behind a golden file are stored: ``scib_golden.json`` → ``scib_golden_inputs.npz``."""
    return golden.with_name(golden.stem + "_inputs.npz")


def computed_inputs(names: list[str], data: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``dataset/kind`` → (embedding, labels, batches), computed on this machine."""
    out = {}
    for name in names:
        adata, label, batch = load(name, data)
        labels = adata.obs[label].astype(str).to_numpy()
        batches = adata.obs[batch].astype(str).to_numpy() if batch else np.full(adata.n_obs, name)
        for kind, x in embeddings(adata).items():
            out[f"{name}/{kind}"] = (x, labels, batches)
    return out


def save_inputs(inputs: dict, path: Path) -> None:
    arrays = {}
    for key, (x, labels, batches) in inputs.items():
        stem = key.replace("/", "__")
        arrays |= {f"{stem}__x": x.astype(np.float32), f"{stem}__labels": labels.astype(str)}
        arrays[f"{stem}__batches"] = batches.astype(str)
    np.savez_compressed(path, **arrays)


def stored_inputs(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The arrays :func:`save_inputs` wrote, by ``dataset/kind``."""
    with np.load(path, allow_pickle=False) as stored:
        keys = sorted({name.rsplit("__", 1)[0] for name in stored.files})
        return {
            key.replace("__", "/"): tuple(stored[f"{key}__{part}"] for part in ("x", "labels", "batches"))
            for key in keys
        }


def add_variant(path: Path, name: str, values: dict[str, dict[str, float]]) -> None:
    """Record under ``variants/name`` of the golden file the scib values that differ from its own."""
    golden = json.loads(path.read_text())
    differing = {
        key: {m: v for m, v in metrics.items() if not _same(v, golden["datasets"][key][m])}
        for key, metrics in values.items()
    }
    golden.setdefault("variants", {})[name] = {key: d for key, d in differing.items() if d}
    path.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")


def _same(a: float, b: float) -> bool:
    return (np.isnan(a) and np.isnan(b)) or abs(a - b) <= 1e-12


def ours(x: np.ndarray, labels: np.ndarray, batches: np.ndarray) -> dict[str, float]:
    rows = evaluate_embedding(x, labels, batches, EvalParams(min_cells_per_type=1, max_cells_scib=10**9))
    rows = rows[rows.group.isin(["batch", "bio"])]
    return dict(zip(rows.metric, rows.value.astype(float)))


def scib_values(x: np.ndarray, labels: np.ndarray, batches: np.ndarray) -> dict[str, float]:
    import pandas as pd
    import scanpy as sc
    import scib

    adata = ad.AnnData(
        obs=pd.DataFrame({"label": labels, "batch": batches}, index=np.arange(len(x)).astype(str)), obsm={"X_emb": x}
    )
    adata.obs = adata.obs.astype("category")
    sc.pp.neighbors(adata, use_rep="X_emb")
    out = {
        "asw_label": scib.me.silhouette(adata, "label", "X_emb"),
        "clisi": _lisi(scib.me.clisi_graph, adata, label_key="label", type_="embed", use_rep="X_emb"),
    }
    scib.cl.cluster_optimal_resolution(
        adata, label_key="label", cluster_key="cluster", use_rep="X_emb", metric=scib.me.nmi, force=True, verbose=False
    )
    out |= {"nmi": scib.me.nmi(adata, "cluster", "label"), "ari": scib.me.ari(adata, "cluster", "label")}
    several = len(np.unique(batches)) > 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out |= {
            "isolated_label_f1": scib.me.isolated_labels_f1(adata, "label", "batch", "X_emb", verbose=False),
            "isolated_label_asw": scib.me.isolated_labels_asw(adata, "label", "batch", "X_emb", verbose=False),
        }
    if several:
        out |= {
            "graph_connectivity": scib.me.graph_connectivity(adata, "label"),
            "asw_batch": scib.me.silhouette_batch(adata, "batch", "label", "X_emb", verbose=False),
            "ilisi": _lisi(scib.me.ilisi_graph, adata, batch_key="batch", type_="embed", use_rep="X_emb"),
        }
    else:
        out |= {"graph_connectivity": np.nan, "asw_batch": np.nan, "ilisi": np.nan}
    return {k: float(v) for k, v in out.items()}


def _lisi(function, adata, **kwargs) -> float:
    """scib's graph LISI runs a helper binary from its wheel; NaN (with a warning) where it cannot."""
    try:
        return function(adata, **kwargs)
    except Exception as exc:  # e.g. the binary needs a newer GLIBC
        warnings.warn(f"scib LISI failed: {type(exc).__name__}: {exc}", stacklevel=2)
        return np.nan


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--datasets", nargs="*", default=list(DATASETS))
    p.add_argument("--write-golden", type=Path)
    p.add_argument("--from-inputs", type=Path, help="score these stored arrays (a golden file's _inputs.npz)")
    p.add_argument("--add-variant", type=Path, help="a golden file: record scib's values here where they differ")
    p.add_argument("--variant", help="the variant's name (e.g. the BLAS kernel), with --add-variant")
    args = p.parse_args(argv)
    import scib

    result = {"scib": scib.__version__, "datasets": {}}
    golden = {"made_with": f"scib {scib.__version__}, benchmarks/scib_agreement.py", "datasets": {}}
    if args.add_variant:
        args.from_inputs = inputs_path(args.add_variant)
    if args.from_inputs:
        inputs = {k: v for k, v in stored_inputs(args.from_inputs).items() if k.split("/")[0] in args.datasets}
    else:
        inputs = computed_inputs(args.datasets, args.data)
    for key, (x, labels, batches) in inputs.items():
        start = time.perf_counter()
        a = ours(x, labels, batches)
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        b = scib_values(x, labels, batches)
        scib_s = time.perf_counter() - start
        diff = {m: abs(a[m] - b[m]) for m in STUDY if np.isfinite(a[m]) and np.isfinite(b[m])}
        agree = {m: (np.isnan(a[m]) and np.isnan(b[m])) for m in STUDY if m not in diff}
        result["datasets"][key] = {
            "cells": int(len(x)),
            "scencode": a,
            "scib": b,
            "abs_difference": diff,
            "both_nan": agree,
            "max_abs_difference_without_lisi": max((d for m, d in diff.items() if m not in LISI), default=0.0),
            "seconds": {"scencode": ours_s, "scib": scib_s},
        }
        golden["datasets"][key] = b
    if args.write_golden:
        args.write_golden.parent.mkdir(parents=True, exist_ok=True)
        args.write_golden.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        save_inputs(inputs, inputs_path(args.write_golden))
    if args.add_variant:
        add_variant(args.add_variant, args.variant or "unnamed", golden["datasets"])
    print(json.dumps(result, default=lambda v: None))
    return result


if __name__ == "__main__":
    main()
