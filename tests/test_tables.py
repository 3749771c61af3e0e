"""Shift levels in the tables: the study's summary over the evaluation datasets, each level beside it."""

from __future__ import annotations

import pandas as pd
import pytest
from test_evaluate import synthetic_metrics

from scencode.tables import write_tables
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
    assert shift_levels(datasets) == {"train_test": "id", "c": "near", "d": "far", "e": "unknown"}
    datasets["f"] = {"role": "train"}  # a training dataset of unknown tissue could hold the pancreas
    assert shift_levels(datasets) == {"train_test": "id", "c": "near", "d": "unknown", "e": "unknown"}


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
