"""`scencode plan`: priced from what the project measured, each figure labelled measured or assumed."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from helpers import REPO

from scencode.corpus_stats import run as corpus_stats
from scencode.plan import ASSUMED, measured_throughputs
from scencode.plan import run as plan


def test_the_demo_plan_prices_training_from_the_measured_corpus(demo_corpus, tmp_path, monkeypatch):
    corpus, vocab = demo_corpus
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    context = config["pretrain"]["loader"]["context"]
    stats = corpus_stats(
        [corpus], vocab, context, tmp_path / "results" / "tables" / "corpus_stats.csv", tmp_path / "corpus_stats.png"
    )
    monkeypatch.chdir(tmp_path)  # results_dir is relative, as the workflow runs it
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    before = plan(tmp_path / "c.yaml")
    train = stats.filter(stats["split"] == "train")
    tokens = train["tokens"].sum() / train["cells"].sum()
    assert f"tokens per cell: {tokens:,.1f} (measured: results/tables/corpus_stats.csv" in before
    assert f"training cells: {train['cells'].sum():,} (measured" in before
    (tmp_path / "results" / "tables" / "corpus_stats.csv").unlink()
    after = plan(tmp_path / "c.yaml")
    assert f"tokens per cell: min(context, 2,000) = {context} (assumed" in after
    assert before != after  # the pretrain estimate follows the measured tokens


def test_every_throughput_says_measured_or_assumed(tmp_path):
    text = plan(REPO / "config" / "paper.yaml")
    lines = text.split("throughputs:\n", 1)[1].splitlines()
    assert len(lines) >= len(ASSUMED) + 1
    assert all(
        re.search(r"\((measured|assumed): ", line)
        for line in lines
        if line.startswith("  ") and ":" in line and "dataset(s)" not in line
    )


def test_a_recorded_measurement_replaces_the_assumption(tmp_path):
    path = tmp_path / "measured.json"
    path.write_text(
        json.dumps(
            {
                "qc_cells_per_s": {
                    "value": 7777,
                    "unit": "cells/s",
                    "benchmark": "b.py",
                    "detail": "10 cells",
                    "machine": "2 cores",
                    "date": "2026-12-01",
                    "commit": "abc1234",
                }
            }
        )
    )
    rates = measured_throughputs(path)
    assert rates["qc_cells_per_s"].value == 7777
    assert rates["qc_cells_per_s"].source == "measured: b.py, 10 cells, 2 cores, 2026-12-01, commit abc1234"
    assert rates["download_bytes_per_s"] == ASSUMED["download_bytes_per_s"]


def test_evaluate_jobs_take_leiden_threads_only_on_datasets_stated_to_be_large():
    from scencode import workflow_config
    from scencode.evaluate import SCANPY_APPROXIMATE_FROM
    from scencode.plan import LEIDEN_THREADS, job_resources, stated_cells

    paper = workflow_config.load(REPO / "config" / "paper.yaml")
    for name, spec in paper["datasets"].items():
        if spec["role"] == "eval":
            large = (stated_cells(paper, name) or 0) >= SCANPY_APPROXIMATE_FROM  # unstated: not claimed large
            assert job_resources("evaluate", paper, name)["threads"] == (LEIDEN_THREADS if large else 1)
    # the demo's sheet states no sizes: costed at an assumed size, its jobs must still run side by side
    demo = workflow_config.load(REPO / "config" / "config.yaml")
    assert all(job_resources("evaluate", demo, name)["threads"] == 1 for name in [*demo["datasets"], "train_test"])


def test_evaluate_jobs_are_priced_from_the_rehearsals_size_fit(tmp_path):
    """Evaluation grows faster than its cells (Leiden, graph LISI): the plan prices it from a fit over
    measured sizes, names where the fit comes from, and says when it extrapolates."""
    from scencode.plan import measured_fit

    (tmp_path / "m.json").write_text(
        json.dumps(
            {
                "evaluate_minutes": {
                    "value": {"a": 0.2, "b": 1.75, "c": 0.2, "low": 200, "high": 7000},
                    "unit": "minutes = c + a·(cells/1000)^b",
                    "benchmark": "benchmarks/rehearsal.py",
                    "detail": "test",
                    "date": "2026-12-07",
                    "commit": "abc",
                    "machine": "2 cores",
                }
            }
        )
    )
    fit = measured_fit("evaluate_minutes", tmp_path / "m.json")
    assert fit.minutes(7000) == pytest.approx(0.2 + 0.2 * 7**1.75)
    assert fit.minutes(70_000) / fit.minutes(7000) > 40  # 10× the cells: far more than 10× the time
    assert "benchmarks/rehearsal.py" in fit.describe() and "beyond 7,000 cells extrapolated" in fit.describe()
    assert measured_fit("evaluate_minutes", tmp_path / "none.json") is None


def test_a_pretraining_job_on_several_gpus_is_shorter_and_costs_more_gpu_hours():
    """--gpus-per-job: the job's wall time is its one-GPU time / (GPUs × the assumed efficiency),
    its GPU-hours grow by 1 / efficiency, its memory per node holds every process."""
    from scencode.plan import SCALING_EFFICIENCY, plan_jobs, with_gpus_per_job
    from scencode.workflow_config import load

    config = load(REPO / "config" / "paper.yaml")
    one = [j for j in plan_jobs(config) if j.stage == "pretrain"]
    four = [j for j in plan_jobs(with_gpus_per_job(config, 4)) if j.stage == "pretrain"]
    efficiency = SCALING_EFFICIENCY["one node"]
    for a, b in zip(one, four):
        assert (a.gpu, b.gpu, b.nodes) == (1, 4, 1)
        assert b.estimate_min == pytest.approx(a.estimate_min / (4 * efficiency))
        assert b.gpu_hours == pytest.approx(a.gpu_hours / efficiency)
        assert b.runtime_min < a.runtime_min and b.mem_mb > a.mem_mb


def test_gpus_per_job_that_do_not_divide_grad_accum_are_refused():
    from scencode.errors import ScencodeError
    from scencode.plan import with_gpus_per_job
    from scencode.workflow_config import load

    with pytest.raises(ScencodeError, match="grad_accum 32 .* 3 processes"):
        with_gpus_per_job(load(REPO / "config" / "paper.yaml"), 3)


def test_the_plan_says_how_pretraining_is_spread_over_gpus(capsys):
    text = plan(REPO / "config" / "paper.yaml", gpus=32, gpus_per_job=8)
    assert "pretrain jobs: 8 GPUs × 1 node (assumed: DDP scaling efficiency one node 90%" in text


def test_the_expressions_own_embeddings_are_priced_apart_from_models_and_the_random_baseline(monkeypatch):
    """Leiden on an embedding without clusters iterates far longer than on one with them (measured
    at 72,290 cells: ~4 h for the random baseline, 24 min for PCA's). PCA's evaluation is priced
    from its own curve; a model's from the structureless one, since its ask must cover a model that
    learned nothing; without a recorded clustered curve every embedding gets the structureless one."""
    from scencode import plan, workflow_config
    from scencode.evaluate import EvalParams

    paper = workflow_config.load(REPO / "config" / "paper.yaml")
    evals = {d: plan.stated_cells(paper, d) or 0 for d, s in paper["datasets"].items() if s["role"] == "eval"}
    largest = max(evals, key=evals.get)
    n = min(evals[largest], paper["evaluate"].get("metrics", {}).get("max_cells_scib", EvalParams.max_cells_scib))
    structureless = plan.SizeFit(0.2, 2.0, 0.1, 2000, 40_000, "random")
    clustered = plan.SizeFit(0.02, 1.6, 0.1, 2000, 40_000, "pca")
    monkeypatch.setitem(plan.FITS, "evaluate", structureless)
    monkeypatch.setitem(plan.FITS, "evaluate_clustered", clustered)
    seed, model = paper["seed"], next(iter(workflow_config.configurations(paper)))
    runs = {"model": model, "random": f"baseline-random-s{seed}", "pca": f"baseline-pca-s{seed}"}
    asked = {kind: plan.job_resources("evaluate", paper, largest, run) for kind, run in runs.items()}
    assert asked["model"]["estimate_min"] == asked["random"]["estimate_min"] == pytest.approx(structureless.minutes(n))
    assert asked["pca"]["estimate_min"] == pytest.approx(clustered.minutes(n))
    assert asked["pca"]["runtime"] < asked["random"]["runtime"] == asked["model"]["runtime"]
    # the plan counts each (embedding, dataset) once, priced by its embedding
    jobs = sorted(j.estimate_min for j in plan.plan_jobs(paper) if j.stage == "evaluate" and j.name == largest)
    models = len(workflow_config.configurations(paper))
    assert jobs == pytest.approx(sorted([clustered.minutes(n)] + [structureless.minutes(n)] * (models + 1)))
    monkeypatch.setitem(plan.FITS, "evaluate_clustered", None)
    assert plan.job_resources("evaluate", paper, largest, runs["pca"]) == asked["random"]
