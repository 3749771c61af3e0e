"""How much the study's metrics move when the embedding moves by ~1e-7: for scencode and, where it
is installed, for scib alike. Prints one JSON object.

    pip install --no-deps scib==1.1.7 && pip install deprecated    # optional: scib's side too
    python benchmarks/scib_sensitivity.py [--inputs tests/data/scib_golden_inputs.npz] [--scale 1e-7] [--datasets ...]

The inputs are the golden test's stored arrays (real datasets: CellBench, Baron pancreas, PBMC);
each embedding gets Gaussian noise of ``scale`` × each component's SD (seeded), the size by which
two CPUs' BLAS kernels disagree on a PCA. A metric that moves by more than that is sensitive to
ties, not to the embedding: the graph LISI is (its path lengths tie on a kNN graph), which is why
the golden test scores stored arrays instead of recomputing them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("scib_agreement", ROOT / "scib_agreement.py")
AGREEMENT = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(AGREEMENT)


def perturbed(x: np.ndarray, scale: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(size=x.shape) * x.std(0) * scale
    return (x.astype(np.float64) + noise).astype(np.float32)


def shifts(score, inputs: dict, scale: float) -> dict[str, dict[str, float]]:
    """dataset/kind → metric → |value on the perturbed embedding − value on the stored one|."""
    out = {}
    for key, (x, labels, batches) in inputs.items():
        a, b = score(x, labels, batches), score(perturbed(x, scale), labels, batches)
        out[key] = {m: abs(a[m] - b[m]) for m in AGREEMENT.STUDY if np.isfinite(a[m]) and np.isfinite(b[m])}
    return out


def summary(per_key: dict[str, dict[str, float]]) -> dict[str, float]:
    """metric → the largest shift over datasets."""
    return {
        m: max(d[m] for d in per_key.values() if m in d)
        for m in AGREEMENT.STUDY
        if any(m in d for d in per_key.values())
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inputs", type=Path, default=ROOT.parent / "tests" / "data" / "scib_golden_inputs.npz")
    p.add_argument("--scale", type=float, default=1e-7)
    p.add_argument("--datasets", nargs="*", help="dataset names (default: every one stored)")
    args = p.parse_args(argv)
    inputs = AGREEMENT.stored_inputs(args.inputs)
    if args.datasets:
        inputs = {k: v for k, v in inputs.items() if k.split("/")[0] in args.datasets}
    start = time.perf_counter()
    result = {
        "scale": args.scale,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "datasets": sorted(inputs),
        "scencode": shifts(AGREEMENT.ours, inputs, args.scale),
    }
    result["scencode_max"] = summary(result["scencode"])
    if importlib.util.find_spec("scib") is not None:
        result["scib"] = shifts(AGREEMENT.scib_values, inputs, args.scale)
        result["scib_max"] = summary(result["scib"])
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
