"""Shift levels in the tables: the study's summary over the evaluation datasets, each level beside it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import synthetic_metrics, with_a_configuration_without_a_model

from scencode.tables import paired_tests, summary_table, write_tables
from scencode.workflow_config import shift_levels

LEVELS = {"ds0": "id", "ds1": "near", "ds2": "near", "ds3": "far", "ds4": "far", "ds5": "far"}


def test_levels_come_from_the_sheets_tissues():
    datasets = {
        "a": {"role": "train", "tissue": "lung"},
        "b": {"role": "train", "tissue": "blood"},
        "c": {"role": "eval", "tissue": "lung"},
        "d": {"role": "eval", "tissue": "pancreas"},
        "e": {"role": "eval"},
    }
    assert shift_levels(datasets) == {
        "train_test": "id",
        "train_test_unseen": "unseen_genes",
        "c": "near",
        "d": "far",
        "e": "unknown",
    }
    datasets["f"] = {"role": "train"}  # a training dataset of unknown tissue could hold the pancreas
    assert shift_levels(datasets) == {
        "train_test": "id",
        "train_test_unseen": "unseen_genes",
        "c": "near",
        "d": "unknown",
        "e": "unknown",
    }


def test_levels_come_from_the_tissues_qc_found_when_the_sheet_has_none():
    """Issue 37, item 7: the paper's training rows leave ``tissue`` empty; the data's tissue_general
    decides, a tissue counting once the training data hold ``min_cells`` of its cells."""
    datasets = {
        "a": {"role": "train"},
        "b": {"role": "train"},
        "near": {"role": "eval"},
        "far": {"role": "eval"},
        "sparse": {"role": "eval"},
        "named": {"role": "eval", "tissue": "kidney"},  # the sheet overrides the data
    }
    measured = {
        "a": {"lung": 900, "blood": 40},
        "b": {"blood": 30, "kidney": 600},
        "near": {"lung": 70, "blood": 5},
        "far": {"pancreas": 80},
        "sparse": {"blood": 50},  # 70 training cells of blood: below min_cells
        "named": {"pancreas": 10},
    }
    assert shift_levels(datasets, measured, min_cells=500) == {
        "train_test": "id",
        "train_test_unseen": "unseen_genes",
        "near": "near",
        "far": "far",
        "sparse": "far",
        "named": "near",
    }
    assert shift_levels(datasets, measured, min_cells=50)["sparse"] == "near"
    del measured["b"]  # a training dataset with no tissue at all: far cannot be claimed
    assert shift_levels(datasets, measured, min_cells=500)["far"] == "unknown"


def test_the_tables_step_decides_the_levels_from_the_qc_reports(tmp_path):
    import json

    from scencode.tables import run

    metrics = synthetic_metrics(3)
    metrics.to_parquet(tmp_path / "m.parquet")
    reports = []
    for name, tissues in {"t": {"lung": 1000}, "ds0": {"lung": 50}, "ds1": {"liver": 60}, "ds2": {}}.items():
        reports.append(tmp_path / f"{name}.json")
        reports[-1].write_text(json.dumps({"dataset_id": name, "tissues": tissues}))
    shift = {
        "datasets": {"t": {"role": "train"}, **{f"ds{i}": {"role": "eval"} for i in range(3)}},
        "scored": ["ds0", "ds1", "ds2"],
        "min_cells": 500,
    }
    run([tmp_path / "m.parquet"], tmp_path / "out", shift=shift, qc_reports=reports)
    levels = pd.read_csv(tmp_path / "out" / "shift_levels.csv").set_index("dataset").level.to_dict()
    assert levels == {"ds0": "near", "ds1": "far", "ds2": "unknown"}
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert {"bio_score_near", "bio_score_far"} <= set(summary.columns)


def test_each_level_is_summarised_and_tested_beside_the_evaluation_datasets(tmp_path):
    metrics = synthetic_metrics(6)
    metrics.to_parquet(tmp_path / "m.parquet")
    write_tables([tmp_path / "m.parquet"], tmp_path, "soft", LEVELS)
    summary = pd.read_csv(tmp_path / "summary.csv").set_index(["gene_encoding", "expression_encoding"])
    rows = metrics[(metrics.metric == "bio_score")].groupby(["gene_encoding", "expression_encoding", "dataset"]).value
    per = rows.mean().unstack("dataset")
    row = summary.loc[("learned", "soft")]
    # the study's columns leave the in-distribution set out
    assert row.datasets == 5 and row.bio_score == pytest.approx(
        per.loc[("learned", "soft"), ["ds1", "ds2", "ds3", "ds4", "ds5"]].mean()
    )
    assert row.bio_score_id == pytest.approx(per.loc[("learned", "soft"), "ds0"])
    assert row.bio_score_far == pytest.approx(per.loc[("learned", "soft"), ["ds3", "ds4", "ds5"]].mean())
    assert row.bio_score_gap_far == pytest.approx(row.bio_score_id - row.bio_score_far)
    assert row.bio_score_near_sd == pytest.approx(per.loc[("learned", "soft"), ["ds1", "ds2"]].std())
    tests = pd.read_csv(tmp_path / "tests.csv")
    assert set(tests.level) == {"evaluation", "id", "near", "far"}
    far = tests[(tests.level == "far") & (tests.comparison == "learned vs esm2") & (tests.metric == "bio_score")]
    assert (far.datasets == 3).all() and (far.min_attainable_p == 0.25).all()
    assert (tests[tests.level == "id"].datasets == 1).all()  # one in-distribution set: described, not tested


def test_summary_has_mean_and_sd_across_datasets():
    summary = summary_table(synthetic_metrics()).to_pandas().set_index(["gene_encoding", "expression_encoding"])
    row = summary.loc["learned", "soft"]
    assert row.datasets == 6 and row.bio_score == pytest.approx(0.8, abs=0.03) and 0 < row.bio_score_sd < 0.05
    assert row.min_train_mse == pytest.approx(0.04) and np.isnan(row.min_train_mse_sd)
    assert np.isnan(row.bio_score_seed_sd)  # one seed


def test_seeds_are_averaged_per_dataset_and_their_spread_reported():
    one = synthetic_metrics()
    other = one.assign(seed=1, configuration=one.configuration.str.replace("-s0", "-s1"), value=one.value + 0.1)
    summary = summary_table(pd.concat([one, other])).to_pandas().set_index(["gene_encoding", "expression_encoding"])
    single = summary_table(one).to_pandas().set_index(["gene_encoding", "expression_encoding"])
    row = summary.loc["learned", "soft"]
    assert row.seeds == 2 and row.bio_score == pytest.approx(single.loc[("learned", "soft"), "bio_score"] + 0.05)
    assert row.bio_score_sd == pytest.approx(single.loc[("learned", "soft"), "bio_score_sd"])
    assert row.bio_score_seed_sd == pytest.approx(0.1 / np.sqrt(2))


def test_paired_wilcoxon_tests_with_effect_sizes():
    tests = paired_tests(synthetic_metrics()).to_pandas()
    learned = tests[(tests.comparison == "learned vs esm2") & (tests.metric == "bio_score")]
    assert len(learned) == 2 and (learned.rank_biserial == 1.0).all() and (learned.p_value < 0.05).all()
    best = tests[tests.comparison == "reference (soft) vs other expression encoding"]
    assert set(best.a) == {"learned-soft", "esm2-soft"} and (best.mean_difference > 0).all()
    # the reference is declared, not picked from the results: declaring the worse one keeps it
    declared = paired_tests(synthetic_metrics(), reference="hard").to_pandas()
    declared = declared[declared.comparison == "reference (hard) vs other expression encoding"]
    assert set(declared.a) == {"learned-hard", "esm2-hard"} and (declared.mean_difference < 0).all()
    # six datasets all in one direction: the exact test's floor, 2/2^6, and BH within each family
    assert learned.p_value.to_numpy() == pytest.approx(2 / 2**6) and (learned.min_attainable_p == 2 / 2**6).all()
    assert (tests.q_value >= tests.p_value).all() and (tests.q_value <= 1).all()


def test_q_values_are_benjamini_hochberg_within_each_family():
    from scipy.stats import false_discovery_control

    tests = paired_tests(synthetic_metrics(n_datasets=8)).to_pandas()
    for _, family in tests.groupby(["comparison", "metric"]):
        assert family.q_value.to_numpy() == pytest.approx(false_discovery_control(family.p_value.to_numpy()))


def test_too_few_datasets_say_no_difference_can_be_significant():
    tests = paired_tests(synthetic_metrics(n_datasets=3)).to_pandas()
    assert (tests.min_attainable_p == 0.25).all() and (tests.p_value >= 0.25).all()


def test_a_configuration_without_a_model_is_summarised_with_the_reason():
    metrics = with_a_configuration_without_a_model(synthetic_metrics())
    summary = summary_table(metrics).to_pandas().set_index(["gene_encoding", "expression_encoding"])
    assert np.isnan(summary.loc[("esm2", "log"), "bio_score"])
    assert summary.loc[("esm2", "log"), "note"].startswith("no model for esm2-log-s0 (*, ds0")
    tests = paired_tests(metrics).to_pandas()
    best = tests[(tests.comparison == "reference (soft) vs other expression encoding") & tests.a.str.startswith("esm2")]
    assert set(best.a) == {"esm2-soft"} and set(best.b) == {"esm2-hard"}  # nothing to test without a model


def test_the_summary_does_not_depend_on_the_order_of_the_metric_rows():
    """Bit for bit: the sums run in one canonical order whatever order the files were read in."""
    metrics = synthetic_metrics()
    one = summary_table(metrics).to_pandas()
    shuffled = summary_table(metrics.sample(frac=1, random_state=3)).to_pandas()
    pd.testing.assert_frame_equal(one, shuffled, check_exact=True)


def test_unseen_genes_get_their_table_and_per_gene_tests(tmp_path):
    """Issue 34, part 1: the test split scored with the unseen genes left out (train_test) and in the
    input (train_test_unseen); the diagnostic per gene group, and learned vs esm2 paired over genes."""
    import polars as pl

    from scencode.evaluate import reconstruction_rows
    from scencode.formats import RunIdentity
    from scencode.formats import metric_table as table_of

    rng = np.random.default_rng(0)
    genes = range(10, 60)
    paths = []
    runs = (("learned", 0.9, (0.60, 0.58)), ("esm2", 0.5, (0.55, 0.62)), ("esm2_permuted", None, (0.5, 0.5)))
    for gene, unseen_error, knn in runs:
        identity = RunIdentity(f"{gene}-soft-s0", gene, "soft", 0)
        for dataset, accuracy in zip(("train_test", "train_test_unseen"), knn):
            rows = pd.DataFrame(
                {
                    "metric": ["accuracy", "bio_score"],
                    "group": ["knn_k10", "study"],
                    "value": [accuracy, 0.5],
                    "note": "",
                }
            )
            recon = {"masked_mse": 0.4, "masked_mse_no_context": 0.5, "gene_mean_mse": 0.45, "cells": 100}
            if unseen_error is None:  # an empty test split (the rehearsal's smallest size): nothing measured
                recon = {"masked_mse": None, "masked_mse_no_context": None, "gene_mean_mse": None, "cells": 0}
            elif dataset == "train_test_unseen":
                per_gene = {str(t): [20, unseen_error + rng.normal(0, 0.05)] for t in genes}
                recon |= {"masked_mse_seen": 0.3, "gene_mean_mse_seen": 0.4, "masked_mse_no_context_seen": 0.5}
                recon |= {"masked_mse_unseen": unseen_error, "gene_mean_mse_unseen": 0.6, "global_mean_mse_unseen": 1.0}
                recon |= {"global_mean_mse_seen": 0.9}
                recon |= {"masked_mse_no_context_unseen": 0.7, "unseen_gene_mse": per_gene}
            path = tmp_path / f"{gene}-{dataset}.parquet"
            table_of(pd.concat([rows, reconstruction_rows(recon)]), identity, dataset).to_parquet(path)
            paths.append(path)
    levels = {"train_test": "id", "train_test_unseen": "unseen_genes"}
    write_tables(paths, tmp_path / "tables", levels=levels)
    unseen = pl.read_csv(tmp_path / "tables" / "unseen_genes.csv").sort("gene_encoding")
    assert unseen["gene_encoding"].to_list() == ["esm2", "esm2_permuted", "learned"]
    assert unseen["unseen_vs_gene_mean"].to_list() == pytest.approx([0.5 / 0.6, None, 0.9 / 0.6], nan_ok=True)
    assert unseen["accuracy_difference"].to_list() == pytest.approx([0.62 - 0.55, 0.0, 0.58 - 0.60])
    assert unseen["masked_mse_seen"].to_list() == pytest.approx([0.3, None, 0.3], nan_ok=True)
    assert unseen["unseen_vs_global_mean"].to_list() == pytest.approx([0.5, None, 0.9], nan_ok=True)
    # a configuration measured on no cell is a row with its values missing, and the figure still draws
    from scencode.figures import fig_unseen_genes
    from scencode.formats import read_unseen_genes_table
    from scencode.plotting import layout_problems

    assert layout_problems(fig_unseen_genes(read_unseen_genes_table(tmp_path / "tables" / "unseen_genes.csv"))) == []
    tests = pl.read_csv(tmp_path / "tables" / "tests.csv").filter(pl.col("metric") == "unseen_gene_mse")
    row = tests.filter(pl.col("comparison").str.starts_with("learned vs esm2")).row(0, named=True)
    assert row["datasets"] == len(genes) and row["mean_difference"] > 0.3 and row["p_value"] < 1e-6
    summary = pl.read_csv(tmp_path / "tables" / "summary.csv")
    assert summary.is_empty()  # the in-distribution sets are not the study's evaluation datasets
    assert "accuracy_gap_unseen_genes" in summary.columns
    assert not pl.read_csv(tmp_path / "tables" / "metrics.csv")["group"].is_in(["unseen_gene_mse"]).any()
