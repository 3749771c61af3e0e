"""Every benchmark command docs/benchmarks.md documents runs as documented, at its smallest sizes, and
prints its JSON last (its figures are never asserted: wall time is not a test). Benchmarks that compare
with a package scencode does not install (scib, scDataset) run where it is installed."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
from helpers import REPO

BENCHMARKS = REPO / "benchmarks"

# script → (smallest arguments, keys its last line holds, a package it needs beyond scencode's own)
SMOKE = {
    "corpus_statistics.py": (
        ["--cells", "2000", "--nnz", "40", "--context", "32", "--repeats", "1"],
        {"stats_cells_per_s", "speedup_vs_reading_shards"},
        None,
    ),
    "esm_embedding.py": (["--sequences", "6", "--batch-size", "2", "--token-budget", "512"], {"speedup"}, None),
    "evaluate.py": (["--cells", "400", "--dim", "8"], {"seconds", "peak_rss_mb", "study_estimate"}, None),
    "loader.py": (
        ["--cells", "600", "--nnz", "80", "--batch-size", "64", "--context", "32"],
        {"per_encoding", "min_cells_per_s"},
        None,
    ),
    "loader_vs_peers.py": (
        ["--cells", "600", "--nnz", "40", "--batch-size", "64", "--context", "32", "--peers", "scencode", "annloader"],
        {"loaders"},
        None,
    ),
    "qc_throughput.py": (["--cells", "500", "--nnz", "300"], {"cells_per_s", "cells_kept"}, None),
    "tokenize_throughput.py": (["--cells", "500", "--nnz", "60"], {"cells_per_s", "ratio_to_read_limit"}, None),
    "train_step.py": (
        ["--batch", "1", "--length", "16", "--steps", "2", "--cells", "16"],
        {"tokens_per_s", "ratio"},
        None,
    ),
    "census_shaped.py": (
        ["--out", "data", "--limit", "1", "--train-scale", "0.0005", "--eval-scale", "0.002"],
        {"datasets", "cells", "features", "sheets"},
        None,
    ),
    "rehearsal.py": (
        ["--limit", "1", "--train-scale", "0.0005", "--eval-scale", "0.002", "--workdir", "run", "--cores", "1"],
        {"stages", "jobs", "cells"},
        None,
    ),
    "scib_sensitivity.py": (["--datasets", "pancreas"], {"scencode_max", "datasets", "scale"}, None),
    "evaluate_vs_scib.py": (
        ["--cells", "300", "--benchmarker", "none", "--no-real"],
        {"sets", "summary"},
        "scib",
    ),
}
# documented, but not smoke-run here: GPU work (gpu_check has its own --smoke test) and runs that
# need a finished demo or hours of training
NOT_SMOKED = {"gpu_check.py", "cell_identity.py", "identity_sweep.py", "scib_agreement.py"}


def test_every_documented_benchmark_is_smoke_run_or_says_why_not():
    documented = set(re.findall(r"benchmarks/(\w+\.py)", (REPO / "docs" / "benchmarks.md").read_text()))
    documented -= {"synthetic.py", "record.py"}  # helpers, not benchmarks
    assert documented == set(SMOKE) | NOT_SMOKED


def smoke_run(script: str, folder) -> subprocess.CompletedProcess | None:
    args, _, needs = SMOKE[script]
    if needs and importlib.util.find_spec(needs) is None:
        return None
    folder.mkdir()
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Every smoke command, two at a time (each is one process, mostly one thread)."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path_factory.mktemp("benchmarks")
    with ThreadPoolExecutor(2) as pool:
        runs = {script: pool.submit(smoke_run, script, root / script.removesuffix(".py")) for script in SMOKE}
        return {script: future.result() for script, future in runs.items()}


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_a_benchmark_prints_its_json_last(script, smoke_runs):
    result = smoke_runs[script]
    if result is None:
        pytest.skip(f"{script} compares with {SMOKE[script][2]}, which is not installed")
    assert result.returncode == 0, result.stderr[-3000:]
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert SMOKE[script][1] <= set(last), f"{script}: {sorted(last)}"


ANNBATCH_PYTHON = REPO / ".venv-annbatch" / "bin" / "python"


@pytest.mark.skipif(
    not ANNBATCH_PYTHON.exists(),
    reason="annbatch needs Python >= 3.12 in .venv-annbatch (.ci/run builds it where pyenv has a 3.12)",
)
def test_annbatch_runs_beside_scencode_on_the_same_cells(tmp_path):
    """annbatch in its own interpreter: its collection is written once, then one shuffled epoch of
    every cell, per core and with its preparation reported."""
    args = ["--cells", "600", "--nnz", "40", "--batch-size", "64", "--context", "32", "--peers", "scencode", "annbatch"]
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "loader_vs_peers.py"), *args, "--annbatch-python", str(ANNBATCH_PYTHON)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for name in ("scencode", "annbatch"):
        loader = figures["loaders"][name]
        assert loader["cells"] == 600, (name, loader)  # one epoch: every cell once
        assert loader["cores_used"] > 0 and loader["cells_per_s_per_core"] > 0
    assert figures["annbatch_preparation"]["seconds"] > 0 and "annbatch" in figures["speedup_per_core"]


def test_the_rehearsals_jobs_stay_within_what_they_asked(smoke_runs):
    """The paper's run on Census-shaped data at its smallest size: every stage ran, and no job used
    more wall time or memory than its rule asked of the cluster."""
    result = smoke_runs["rehearsal.py"]
    assert result.returncode == 0, result.stderr[-3000:]
    last = json.loads(result.stdout.strip().splitlines()[-1])
    stages = last["stages"]
    assert {"qc", "tokenize", "pretrain", "embed", "evaluate", "tables", "figures"} <= set(stages)
    for stage, figures in stages.items():
        assert figures["max_runtime_ratio"] <= 1 and figures["max_memory_ratio"] <= 1, (stage, figures)
    # every CPU stage the plan prices by size was matched to its estimate (a rule written under an
    # `if`, as embed and evaluate are, was once missed, and its jobs went unpriced)
    assert all(stages[stage]["measured_over_estimate"] is not None for stage in ("qc", "tokenize", "evaluate"))
    # evaluation is checked against each embedding's own curve: PCA's apart from the model's and random's
    assert {"qc", "evaluate", "evaluate_clustered"} <= set(last["priced_by_fit"])


def test_the_rehearsals_evaluate_fits_split_as_the_plan_prices_them(tmp_path):
    """The evaluate jobs of the expression's own embeddings (PCA) make one size fit, the models' and
    the random baseline's another (the plan prices each from its own); a jobs.csv of an earlier
    rehearsal, written before jobs had a run column, is pooled with the run read from its path."""
    import pandas as pd

    spec = importlib.util.spec_from_file_location("rehearsal", BENCHMARKS / "rehearsal.py")
    rehearsal = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rehearsal)
    sizes = [2000, 8000, 16000, 32000]
    rows = [
        {"rule": "evaluate", "cells": n, "wall_min": minutes(n), "job": f"logs/benchmarks/evaluate/{run}/d{n}.tsv"}
        for n in sizes
        for run, minutes in (
            ("baseline-random-s7", lambda n: 0.1 + 0.2 * (n / 1000) ** 2.0),
            ("learned-soft-s7", lambda n: 0.1 + 0.1 * (n / 1000) ** 2.0),
            ("baseline-pca-s7", lambda n: 0.1 + 0.02 * (n / 1000) ** 1.6),
        )
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "jobs.csv", index=False)
    jobs = rehearsal.pooled_jobs(tmp_path / "jobs.csv")
    assert set(jobs.run) == {"baseline-random-s7", "learned-soft-s7", "baseline-pca-s7"}
    slow, fast = rehearsal.fit_sizes(jobs, "evaluate"), rehearsal.fit_sizes(jobs, "evaluate_clustered")
    assert (slow["a"], slow["b"]) == pytest.approx((0.2, 2.0), rel=1e-3)  # per size the slowest: random
    assert (fast["a"], fast["b"]) == pytest.approx((0.02, 1.6), rel=1e-3)
    assert (slow["low"], slow["high"]) == (2000, 32000)
