import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import blobs, values

from scencode.errors import ScencodeError
from scencode.evaluate import (
    EvalParams,
    evaluate_embedding,
    isolated_label_f1,
    isolated_labels,
    label_silhouettes,
    leiden_clusterings,
    silhouette_batch,
    study_graph,
)
from scencode.formats import write_embedding

PARAMS = EvalParams(min_cells_per_type=20)


IDENTITY = ("--run", "esm2-soft-s0", "--gene-encoding", "esm2", "--expression-encoding", "soft", "--seed", "0")


def test_leiden_resolutions_side_by_side_give_the_partitions_of_one_after_the_other(caplog):
    x, _, _ = blobs()
    graph = study_graph(x + np.random.default_rng(2).normal(scale=1.5, size=x.shape))  # blobs that touch
    with caplog.at_level("INFO", logger="scencode.evaluate"):
        one_by_one = leiden_clusterings(graph, 0)
    assert len([r for r in caplog.records if r.getMessage().startswith("Leiden at resolution")]) == len(one_by_one)
    side_by_side = leiden_clusterings(graph, 0, threads=3)
    assert list(side_by_side) == list(one_by_one)  # scib's resolutions, in order
    assert all(np.array_equal(side_by_side[r], one_by_one[r]) for r in one_by_one)
    assert len({len(set(c)) for c in one_by_one.values()}) > 1  # the resolutions cut the graph differently


def test_separated_cell_types_score_high_and_noise_low():
    x, labels, batches = blobs()
    good = values(evaluate_embedding(x, labels, batches, PARAMS))
    noise = values(evaluate_embedding(np.random.default_rng(1).normal(size=x.shape), labels, batches, PARAMS))
    assert good["study", "bio_score"] > 0.8
    for classifier in ("knn_k10", "knn_k5", "knn_k15", "logreg"):
        assert good[classifier, "accuracy"] > 0.95 and noise[classifier, "accuracy"] < 0.5
    assert noise["study", "bio_score"] < good["study", "bio_score"] - 0.3
    assert noise["knn_k10", "macro_f1"] < 0.5
    for metric in ("ilisi", "graph_connectivity", "asw_batch", "asw_label", "nmi", "ari"):
        assert 0 <= good[:, metric].iloc[0] <= 1


def test_single_batch_records_batch_metrics_as_not_applicable():
    x, labels, _ = blobs()
    rows = evaluate_embedding(x, labels, np.full(len(x), "only"), PARAMS)
    batch = rows[rows.group == "batch"]
    assert batch.value.isna().all() and batch.note.str.contains("single batch").all()
    assert values(rows)["study", "bio_score"] > 0.8
    assert np.isnan(values(rows)["study", "batch_score"])


def test_single_cell_type_and_too_small_types_are_explained():
    x, _, batches = blobs()
    rows = evaluate_embedding(x, np.full(len(x), "T cell"), batches, PARAMS)
    bio = rows[rows.group == "bio"]
    assert bio.value.isna().all() and bio.note.str.contains("single cell type").all()
    x, labels, batches = blobs(n=60)
    rows = evaluate_embedding(x, labels, batches, EvalParams(min_cells_per_type=250))
    knn = rows[rows.group == "knn_k10"]
    assert knn.value.isna().all() and knn.note.str.contains("at least 250 cells").all()


def test_large_datasets_are_subsampled_for_scib_and_say_so():
    x, labels, batches = blobs(n=400)
    batches[labels == "type3"] = "b0"  # an isolated label: every metric is defined
    rows = evaluate_embedding(x, labels, batches, EvalParams(min_cells_per_type=20, max_cells_scib=200))
    scib = rows[rows.group.isin(["batch", "bio", "study"])]
    assert scib.value.notna().all() and (scib.note == "scored on 200 of 400 labeled cells (seeded subsample)").all()
    assert values(scib)["study", "bio_score"] > 0.7
    knn = rows[rows.group == "knn_k10"]
    assert (knn.note == "4 cell types, 400 cells").all()  # classification uses every cell


def test_unlabeled_cells_are_left_out():
    x, labels, batches = blobs()
    labels = labels.astype(object)
    labels[:50] = "unknown"
    rows = evaluate_embedding(x, labels, batches, PARAMS)
    assert "350 cells" in rows[rows.group == "knn_k10"].note.iloc[0]


def test_nonfinite_embeddings_are_refused():
    x, labels, batches = blobs()
    x[3, 2] = np.nan
    with pytest.raises(ScencodeError, match="NaN or infinite"):
        evaluate_embedding(x, labels, batches, PARAMS)


def test_nonfinite_embedding_file_error_names_model_and_dataset(tmp_path):
    x, labels, batches = blobs(n=50)
    x[0, 0] = np.inf
    cells = pd.DataFrame({"cell_id": [f"c{i}" for i in range(50)], "label": labels, "batch": batches})
    write_embedding(cells, x, tmp_path / "e.parquet")
    (tmp_path / "r.json").write_text('{"masked_mse": null}')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scencode",
            "evaluate",
            "--embedding",
            str(tmp_path / "e.parquet"),
            "--reconstruction",
            str(tmp_path / "r.json"),
            *IDENTITY,
            "--dataset",
            "lung",
            "--out",
            str(tmp_path / "m.parquet"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "esm2-soft-s0 on lung" in result.stderr and "NaN or infinite" in result.stderr
    assert not (tmp_path / "m.parquet").exists()


def test_silhouettes_equal_scib_metrics():
    import scib_metrics

    x, labels, batches = blobs(n_types=5, n_batches=3, n=300, separation=2.0)
    batches[labels == "type4"] = "b0"  # an isolated label, in one batch only
    ours = label_silhouettes(x, labels, isolated_labels(labels, batches))
    assert ours["asw_label"] == pytest.approx(scib_metrics.silhouette_label(x, labels), abs=1e-5)
    assert ours["isolated_label_asw"] == pytest.approx(scib_metrics.isolated_labels(x, labels, batches), abs=1e-5)
    assert silhouette_batch(x, labels, batches) == pytest.approx(
        scib_metrics.silhouette_batch(x, labels, batches), abs=1e-5
    )


def test_batch_asw_of_types_each_in_one_batch_is_explained():
    x, labels, _ = blobs()
    rows = evaluate_embedding(x, labels, np.where(labels < "type2", "b0", "b1"), PARAMS)
    asw = rows[rows.metric == "asw_batch"].iloc[0]
    assert np.isnan(asw.value) and "one batch" in asw.note


def test_isolated_label_f1_takes_the_best_resolution_for_each_isolated_label():
    labels = np.array(["a"] * 5 + ["b"] * 5 + ["c"] * 5)
    batches = np.array(["x"] * 5 + ["x", "y"] * 2 + ["x"] + ["x", "y"] * 2 + ["y"])
    isolated = isolated_labels(labels, batches)
    assert isolated == ["a"]  # the only label in one batch
    perfect, one = np.repeat([0, 1, 2], 5).astype(str), np.zeros(15, int).astype(str)
    assert isolated_label_f1({0.2: one, 1.0: perfect}, labels, isolated) == 1.0
    assert isolated_label_f1({0.2: one}, labels, isolated) == pytest.approx(2 * 5 / (5 + 15))


def test_no_isolated_labels_when_every_type_is_in_every_batch_as_scib_says():
    x, labels, batches = blobs(n_types=4, n_batches=2, n=200)
    assert isolated_labels(labels, batches) == []
    rows = evaluate_embedding(x, labels, batches, PARAMS).set_index("metric")
    for metric in ("isolated_label_f1", "isolated_label_asw"):
        assert np.isnan(rows.loc[metric, "value"]) and "no isolated labels" in rows.loc[metric, "note"]
    bio = rows.loc["bio_score"]
    defined = rows.loc[["asw_label", "clisi", "nmi", "ari"], "value"]
    assert bio.value == pytest.approx(defined.mean()) and "without isolated_label_f1" in bio.note


def test_large_datasets_get_scanpys_approximate_neighbours_in_a_form_scanpy_reads(monkeypatch):
    """From 8,192 cells scanpy switches to pynndescent, whose csr_array output scanpy 1.11 cannot read
    with scipy 1.17 (every large evaluation dataset failed); study_graph passes the same transformer
    with a csr_matrix output. Checked at 600 cells by lowering the switch point."""
    import scencode.evaluate as evaluate

    x = np.random.default_rng(0).normal(size=(600, 10)).astype(np.float32)
    exact = evaluate.study_graph(x).obsp["distances"]
    monkeypatch.setattr(evaluate, "SCANPY_APPROXIMATE_FROM", 500)
    approximate = evaluate.study_graph(x).obsp["distances"]
    assert (np.diff(approximate.indptr) == 16).all()  # as scanpy keeps pynndescent's rows: 15 + the cell
    same = sum(len(set(exact[i].indices) & (set(approximate[i].indices) - {i})) for i in range(600)) / (600 * 14)
    assert same > 0.98  # pynndescent finds (almost) the exact neighbours on 600 cells
