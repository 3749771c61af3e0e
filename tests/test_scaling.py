"""Scaling: smaller training sets are nested, proportional and shared by every configuration; runs
carry their size; the tables keep sizes apart and say whether the ranking holds (Kendall's τ)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl
import pytest

from scencode.errors import ScencodeError
from scencode.formats import RunIdentity, metric_table
from scencode.loader import LoaderConfig, ShardBatches, draw_train_subset
from scencode.shards import read_manifest
from scencode.tables import rank_stability, summary_table, write_tables
from scencode.workflow_config import configurations, size_tag


def _cells(corpus, subset) -> set[str]:
    cfg = LoaderConfig(batch_size=16, context=32, seed=0)
    return {
        cell
        for batch in ShardBatches(corpus, "train", cfg, subset=subset, with_cell_ids=True)
        for cell in batch.meta["cell_id"]
    }


def test_smaller_training_sets_are_nested_and_drawn_per_dataset_in_proportion(demo_corpus):
    corpus, _ = demo_corpus
    available = read_manifest(corpus)["splits"]["train"]
    sizes = [60, 150, 0.6, available - 5]
    subsets = [draw_train_subset(corpus, n) for n in sizes]
    cells = [_cells(corpus, s) for s in subsets]
    targets = [60, 150, round(0.6 * available), available - 5]
    for subset, seen, target in zip(subsets, cells, targets):
        assert len(seen) == subset.n_cells  # the loader delivers exactly the drawn cells
        for dataset, n in subset.cells.items():  # each dataset in proportion to its training cells
            assert abs(n - target * subset.available[dataset] / available) <= 0.5
        assert abs(subset.n_cells - target) <= len(subset.cells) / 2  # rounding per dataset
    for small, large in zip(cells, cells[1:]):
        assert small < large  # nested
    assert _cells(corpus, None) > cells[-1]
    # the same draw whatever the run (configuration, seed): it depends on the cells alone
    assert draw_train_subset(corpus, 150) == subsets[1]


def test_the_loader_counts_a_subsets_batches_as_it_delivers_them(demo_corpus):
    corpus, _ = demo_corpus
    subset = draw_train_subset(corpus, 100)
    cfg = LoaderConfig(batch_size=16, context=32, seed=3, bucket_batches=2)
    counted = ShardBatches(corpus, "train", cfg, subset=subset).count_batches()
    delivered = [
        sum(1 for _ in ShardBatches(corpus, "train", cfg, rank=r, world_size=2, subset=subset)) for r in range(2)
    ]
    assert counted == sum(delivered) and delivered[0] - delivered[1] in (0, 1)


@pytest.mark.parametrize("size, message", [(10**9, "exceeds the"), (12.5, "whole number"), (0.0, "fraction")])
def test_a_size_the_corpus_cannot_give_is_refused(demo_corpus, size, message):
    with pytest.raises(ScencodeError, match=message):
        draw_train_subset(demo_corpus[0], size)


def test_every_size_is_a_run_whose_name_carries_it():
    config = {
        "pretrain": {
            "seeds": [0, 1],
            "train_cells": ["all", 1000],
            "configurations": [
                {"gene": "learned", "expression": "soft"},
                {"gene": "esm2", "expression": "hard", "train_cells": [0.25]},
            ],
        }
    }
    runs = configurations(config)
    assert sorted(runs) == [
        "esm2-hard-f0p25-s0",
        "esm2-hard-f0p25-s1",
        "learned-soft-n1000-s0",
        "learned-soft-n1000-s1",
        "learned-soft-s0",
        "learned-soft-s1",
    ]
    assert runs["learned-soft-n1000-s1"][1:] == (1, 1000) and runs["learned-soft-s0"][2] is None
    assert (size_tag(None), size_tag(2000), size_tag(0.1)) == ("", "-n2000", "-f0p1")


def _sized_metrics(scores: dict[int, dict[str, list[float]]]) -> pd.DataFrame:
    """Metric tables of configurations at several sizes: size → configuration → bio per dataset."""
    frames = []
    for size, by_config in scores.items():
        for config, values in by_config.items():
            gene, expr = config.split("-")
            identity = RunIdentity(f"{config}-n{size}-s0", gene, expr, 0)
            rows = pd.DataFrame({"metric": "bio_score", "group": "study", "value": values, "note": ""})
            for d, row in rows.iterrows():
                frames.append(metric_table(row.to_frame().T, identity, f"ds{d}"))
            frames.append(
                metric_table(
                    pd.DataFrame({"metric": ["train_cells"], "group": "training", "value": [float(size)], "note": ""}),
                    identity,
                    "*",
                )
            )
    return pd.concat(frames, ignore_index=True).astype({"value": float})


def test_kendall_tau_says_whether_the_ranking_holds_with_a_bootstrap_interval():
    same = {
        "learned-soft": [0.9, 0.8, 0.85, 0.9],
        "learned-hard": [0.6, 0.5, 0.55, 0.6],
        "esm2-soft": [0.3, 0.2, 0.25, 0.3],
    }
    reversed_ = {
        "learned-soft": [0.1, 0.2, 0.1, 0.1],
        "learned-hard": [0.5, 0.5, 0.4, 0.5],
        "esm2-soft": [0.9, 0.9, 0.8, 0.9],
    }
    shifted = {k: [v + 0.05 for v in vals] for k, vals in same.items()}
    table = rank_stability(_sized_metrics({100: same, 1000: shifted, 10000: reversed_}), n_boot=200)
    bio = table.filter(pl.col("score") == "bio_score").to_pandas().set_index(["train_cells_a", "train_cells_b"])
    assert bio.loc[(100, 1000)].kendall_tau == pytest.approx(1.0)  # same order, other values
    assert bio.loc[(100, 10000)].kendall_tau == pytest.approx(-1.0)
    assert bio.loc[(100, 10000)].tau_high == pytest.approx(-1.0)  # every dataset agrees: a tight interval
    assert (bio.configurations == 3).all() and (bio.datasets == 4).all()
    mixed = {
        "learned-soft": [0.9, 0.1, 0.9, 0.1],
        "learned-hard": [0.5, 0.5, 0.5, 0.5],
        "esm2-soft": [0.1, 0.9, 0.1, 0.9],
    }
    wide = rank_stability(_sized_metrics({100: same, 1000: mixed}), n_boot=200).to_pandas().iloc[0]
    assert wide.tau_low < wide.kendall_tau < wide.tau_high or wide.tau_high - wide.tau_low >= 1


def test_sizes_stay_apart_in_the_summary_and_the_tests(tmp_path):
    metrics = _sized_metrics(
        {
            100: {"learned-soft": [0.5, 0.6, 0.7], "esm2-soft": [0.4, 0.5, 0.6]},
            1000: {"learned-soft": [0.8, 0.9, 0.7], "esm2-soft": [0.6, 0.7, 0.6]},
        }
    )
    summary = summary_table(metrics).to_pandas().set_index(["gene_encoding", "train_cells"])
    assert summary.loc[("learned", 100)].bio_score == pytest.approx(0.6)
    assert summary.loc[("learned", 1000)].bio_score == pytest.approx(0.8)
    metrics.to_parquet(tmp_path / "m.parquet")
    write_tables([tmp_path / "m.parquet"], tmp_path)
    tests = pd.read_csv(tmp_path / "tests.csv")
    learned_vs_esm2 = tests[(tests.comparison == "learned vs esm2") & (tests.metric == "bio_score")]
    assert sorted(learned_vs_esm2.train_cells) == [100, 1000]
    assert learned_vs_esm2.set_index("train_cells").mean_a.to_dict() == pytest.approx({100: 0.6, 1000: 0.8})
    assert len(pd.read_csv(tmp_path / "rank_stability.csv")) == 1  # bio only: one pair of sizes


def test_the_scaling_figure_draws_one_line_per_configuration_on_a_log_axis(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from scencode import figures

    summary = pd.DataFrame(
        {
            "gene_encoding": ["learned", "learned", "esm2", "esm2", "baseline"],
            "expression_encoding": ["soft", "soft", "soft", "soft", "pca"],
            "train_cells": [100, 1000, 100, 1000, np.nan],
            "bio_score": [0.5, 0.7, 0.4, 0.6, 0.55],
            "batch_score": [0.3, 0.4, 0.3, 0.35, 0.2],
            "accuracy": [0.6, 0.8, 0.5, 0.7, 0.65],
        }
    )
    axes = figures.fig_scaling(summary).axes
    assert [ax.get_ylabel() for ax in axes] == list(figures.SCALING_SCORES.values())
    for ax in axes:
        assert ax.get_xscale() == "log" and ax.get_xlabel() == "training cells"
        assert [list(c.lines[0].get_xdata()) for c in ax.containers] == [[100, 1000], [100, 1000]]
        assert [c.get_label() for c in ax.containers] == ["esm2 · soft", "learned · soft"]  # one per configuration
    main = figures.main_size(summary)
    assert sorted(main.train_cells.fillna(0)) == [0, 1000, 1000]  # the study's figures: largest size + baselines


def test_plan_prices_each_training_set_size_by_the_cells_it_trains_on():
    from helpers import REPO

    from scencode.plan import plan_jobs
    from scencode.workflow_config import load

    config = load(REPO / "config" / "paper.yaml")
    config["pretrain"]["train_cells"] = ["all", 1_000_000, 3_000_000]
    jobs = {job.name: job for job in plan_jobs(config) if job.stage == "pretrain"}
    assert len(jobs) == 3 * len(config["pretrain"]["configurations"])
    full, small, mid = (jobs[f"learned-soft{tag}-s777"] for tag in ("", "-n1000000", "-n3000000"))
    all_cells = sum(spec["n_cells"] for spec in config["datasets"].values() if spec["role"] == "train")
    assert small.estimate_min == pytest.approx(full.estimate_min * 1_000_000 / all_cells)
    assert mid.estimate_min == pytest.approx(3 * small.estimate_min)
