"""scib-metrics' own Benchmarker beside the study's metrics (``scencode.scib_benchmark``)."""

import numpy as np
import pandas as pd
from helpers import blobs

from scencode.formats import RunIdentity, write_embedding


def test_scib_benchmarker_labels_its_rows_and_says_why_values_are_missing(tmp_path):
    from scencode.scib_benchmark import benchmark_dataset, metric_names

    x, labels, batches = blobs(n=120)
    cells = pd.DataFrame({"cell_id": [f"c{i}" for i in range(120)], "label": labels, "batch": "only"})
    write_embedding(cells, x, tmp_path / "pca.parquet")
    write_embedding(cells.iloc[::-1], x[::-1], tmp_path / "model.parquet")  # other order: aligned by cell id
    write_embedding(cells.iloc[:0], np.zeros((0, 1), np.float32), tmp_path / "gone.parquet", missing="no model: x")
    rows = benchmark_dataset(
        {
            RunIdentity("learned-soft-s0", "learned", "soft", 0): tmp_path / "model.parquet",
            RunIdentity("esm2-soft-s0", "esm2", "soft", 0): tmp_path / "gone.parquet",
        },
        tmp_path / "pca.parquet",
        "lung",
        max_cells=100,
    )
    assert set(rows.group) == {"scib_metrics"}
    assert rows.groupby("configuration").metric.apply(list).map(lambda m: m == metric_names()).all()
    gone = rows[rows.configuration == "esm2-soft-s0"]
    assert gone.value.isna().all() and (gone.note == "no model: x").all()
    model = rows[rows.configuration == "learned-soft-s0"].set_index("metric")
    # one batch: scib-metrics' bio set is computed, its batch set and total are not, with the reason
    assert model.loc["silhouette_label", "value"] > 0.7 and model.loc["bio_conservation", "value"] > 0.7
    assert model.loc["silhouette_label", "note"] == "scored on 100 of 120 labeled cells (seeded subsample)"
    for metric in ("ilisi_knn", "kbet_per_label", "batch_correction", "total"):
        assert np.isnan(model.loc[metric, "value"]) and "single batch" in model.loc[metric, "note"]


def test_a_dataset_too_small_for_the_benchmarkers_neighbours_says_so(tmp_path):
    """Below 91 cells scikit-learn refused the Benchmarker's 90 neighbours with a traceback: found by
    the rehearsal (benchmarks/rehearsal.py) at its smallest size."""
    from scencode.scib_benchmark import BENCHMARKER_NEIGHBORS, benchmark_dataset

    x, labels, batches = blobs(n=80)
    cells = pd.DataFrame({"cell_id": [f"c{i}" for i in range(80)], "label": labels, "batch": batches})
    write_embedding(cells, x, tmp_path / "pca.parquet")
    rows = benchmark_dataset(
        {RunIdentity("learned-soft-s0", "learned", "soft", 0): tmp_path / "pca.parquet"}, tmp_path / "pca.parquet", "d"
    )
    assert rows.value.isna().all()
    assert (rows.note == f"80 labelled cells: the Benchmarker needs {BENCHMARKER_NEIGHBORS} neighbours per cell").all()
