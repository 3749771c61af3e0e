import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from scencode.baselines import pca_baseline
from scencode.demo import pbmc68k_counts
from scencode.errors import ScencodeError
from scencode.evaluate import (
    EvalParams,
    evaluate_embedding,
    isolated_label_f1,
    isolated_labels,
    label_silhouettes,
    silhouette_batch,
)
from scencode.figures import draw_all
from scencode.formats import RunIdentity, metric_table, write_embedding
from scencode.tables import paired_tests, summary_table

PARAMS = EvalParams(min_cells_per_type=20)


def blobs(n_types=4, n_batches=2, n=400, seed=0, separation=6.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_types, n)
    batches = rng.integers(0, n_batches, n)
    x = rng.normal(size=(n, 8)) + separation * np.eye(8)[labels % 8]
    return x.astype(np.float32), np.array([f"type{label}" for label in labels]), np.array([f"b{b}" for b in batches])


def values(rows):
    return rows.set_index(["group", "metric"]).value


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


def test_pca_of_real_pbmc_counts_beats_a_random_embedding():
    adata = pbmc68k_counts()
    labels, batches = adata.obs.bulk_labels.astype(str).to_numpy(), np.full(adata.n_obs, "pbmc")
    pca = values(evaluate_embedding(pca_baseline(adata), labels, batches, PARAMS))
    noise = values(evaluate_embedding(np.random.default_rng(0).normal(size=(adata.n_obs, 32)), labels, batches, PARAMS))
    assert pca["study", "bio_score"] > noise["study", "bio_score"] + 0.1
    assert pca["knn_k10", "accuracy"] > noise["knn_k10", "accuracy"] + 0.2


def test_scvi_baseline_of_real_pbmc_counts_beats_a_random_embedding(tmp_path):
    pytest.importorskip("scvi", reason="the optional scvi extra (scvi-tools) is not installed")
    from scencode.baselines import baseline_embedding

    adata = pbmc68k_counts()
    adata.obs["run"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    adata.write_h5ad(tmp_path / "pbmc.h5ad")
    cells, latent = baseline_embedding(
        "scvi", tmp_path / "pbmc.h5ad", "pbmc", "bulk_labels", "run", seed=0, scvi_epochs=30
    )
    assert latent.shape == (adata.n_obs, 10) and np.isfinite(latent).all()
    assert cells.cell_id.iloc[0] == f"pbmc:{adata.obs_names[0]}"
    labels = cells.label.to_numpy()
    scvi = values(evaluate_embedding(latent, labels, cells.batch.to_numpy(), PARAMS))
    noise = values(
        evaluate_embedding(np.random.default_rng(0).normal(size=latent.shape), labels, cells.batch.to_numpy(), PARAMS)
    )
    assert scvi["knn_k10", "accuracy"] > noise["knn_k10", "accuracy"] + 0.2


def test_scvi_baseline_without_scvi_tools_says_how_to_install(tmp_path, monkeypatch):
    import builtins

    from scencode.baselines import scvi_baseline

    real_import = builtins.__import__
    monkeypatch.setattr(
        builtins,
        "__import__",
        lambda name, *a, **k: (
            (_ for _ in ()).throw(ImportError(name)) if name == "scvi" else real_import(name, *a, **k)
        ),
    )
    with pytest.raises(ScencodeError, match=r"pip install 'scencode\[scvi\]'"):
        scvi_baseline(pbmc68k_counts(), None)


def synthetic_metrics(n_datasets=6):
    rng = np.random.default_rng(0)
    frames = []
    for gene, offset in (("learned", 0.1), ("esm2", 0.0)):
        for expr, level in (("soft", 0.7), ("hard", 0.4)):
            for d in range(n_datasets):
                rows = pd.DataFrame(
                    {
                        "metric": ["batch_score", "bio_score", "accuracy", "macro_f1"],
                        "group": ["study", "study", "knn_k10", "knn_k10"],
                        "value": level + offset + rng.normal(0, 0.02, 4),
                        "note": "",
                    }
                )
                frames.append(metric_table(rows, RunIdentity(f"{gene}-{expr}-s0", gene, expr, 0), f"ds{d}"))
            recon = pd.DataFrame(
                {
                    "metric": ["min_train_mse", "test_mse"],
                    "group": "reconstruction",
                    "value": [0.05 - offset / 10, 0.06],
                    "note": "",
                }
            )
            frames.append(metric_table(recon, RunIdentity(f"{gene}-{expr}-s0", gene, expr, 0), "*"))
    return pd.concat(frames, ignore_index=True)


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


def with_a_configuration_without_a_model(metrics):
    gone = metrics[metrics.configuration == "esm2-hard-s0"].assign(
        configuration="esm2-log-s0", expression_encoding="log", value=np.nan, note="no model for esm2-log-s0"
    )
    return pd.concat([metrics, gone], ignore_index=True)


def test_a_configuration_without_a_model_is_summarised_with_the_reason():
    metrics = with_a_configuration_without_a_model(synthetic_metrics())
    summary = summary_table(metrics).to_pandas().set_index(["gene_encoding", "expression_encoding"])
    assert np.isnan(summary.loc[("esm2", "log"), "bio_score"])
    assert summary.loc[("esm2", "log"), "note"].startswith("no model for esm2-log-s0 (*, ds0")
    tests = paired_tests(metrics).to_pandas()
    best = tests[(tests.comparison == "reference (soft) vs other expression encoding") & tests.a.str.startswith("esm2")]
    assert set(best.a) == {"esm2-soft"} and set(best.b) == {"esm2-hard"}  # nothing to test without a model


def test_figures_are_drawn_from_the_tables(tmp_path):
    metrics = with_a_configuration_without_a_model(synthetic_metrics())
    metrics.to_csv(tmp_path / "metrics.csv", index=False)
    summary_table(metrics).to_pandas().to_csv(tmp_path / "summary.csv", index=False)
    log = pd.DataFrame(
        {
            "step": [1, 2, 3],
            "epoch": 0,
            "lr": 1e-3,
            "train_loss": [1.0, 0.5, 0.3],
            "val_loss": [np.nan, 0.6, np.nan],
            "grad_norm": 1.0,
            "tokens_per_s": 1.0,
            "cells_per_s": 1.0,
        }
    )
    (tmp_path / "learned-soft-s0").mkdir()
    log.to_parquet(tmp_path / "learned-soft-s0" / "train_log.parquet")
    (tmp_path / "learned-soft-s0" / "model.json").write_text(
        '{"configuration": "learned-soft-s0", "gene_encoding": "learned", "expression_encoding": "soft", "seed": 0}'
    )
    paths = draw_all(
        tmp_path / "summary.csv",
        tmp_path / "metrics.csv",
        [tmp_path / "learned-soft-s0" / "train_log.parquet"],
        tmp_path / "figures",
    )
    names = {p.name for p in paths}
    assert {
        "fig1_batch_vs_bio.png",
        "fig2_classification.pdf",
        "fig3_min_train_mse.png",
        "loss_curves.png",
        "heatmap_per_dataset.png",
        "paper_comparison.png",
    } <= names
    assert all(p.stat().st_size > 5000 for p in paths)
    comparison = pd.read_csv(tmp_path / "figures" / "paper_comparison.csv")
    assert set(comparison.metric) == {"macro_f1", "accuracy", "batch_score", "bio_score", "min_train_mse"}


def test_colours_of_unknown_encodings_agree_across_processes():
    code = "from scencode.figures import colour; print(colour('my_new_encoding'))"
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(seen) == 1


IDENTITY = ("--run", "esm2-soft-s0", "--gene-encoding", "esm2", "--expression-encoding", "soft", "--seed", "0")


def _scencode(*args):
    return subprocess.run([sys.executable, "-m", "scencode", *map(str, args)], capture_output=True, text=True)


def test_a_deleted_checkpoint_gives_empty_outputs_and_nan_metrics_that_say_why(tmp_path):
    import anndata as ad

    from scencode.formats import read_embedding

    model = tmp_path / "models" / "esm2-soft-s0"
    model.mkdir(parents=True)
    (model / "model.json").write_text(
        '{"configuration": "esm2-soft-s0", "status": "completed", "checkpoint": "best.pt", "note": ""}'
    )  # best.pt was deleted
    out = tmp_path / "lung.parquet"
    result = _scencode(
        "embed",
        "--model",
        model / "model.json",
        "--corpus",
        tmp_path / "no_corpus_needed",
        "--run",
        "esm2-soft-s0",
        "--dataset",
        "lung",
        "--out",
        out,
        "--h5ad",
        tmp_path / "lung.h5ad",
        "--reconstruction",
        tmp_path / "lung.json",
    )
    assert result.returncode == 0, result.stderr
    cells, matrix, missing = read_embedding(out)
    assert len(cells) == 0 and "best.pt is missing" in missing
    assert "best.pt is missing" in ad.read_h5ad(tmp_path / "lung.h5ad").uns["scencode"]["missing"]
    result = _scencode(
        "evaluate",
        "--embedding",
        out,
        "--reconstruction",
        tmp_path / "lung.json",
        *IDENTITY,
        "--dataset",
        "lung",
        "--out",
        tmp_path / "m.parquet",
    )
    assert result.returncode == 0, result.stderr
    metrics = pd.read_parquet(tmp_path / "m.parquet")
    assert {"bio_score", "batch_score", "accuracy", "macro_f1", "masked_mse"} <= set(metrics.metric)
    assert metrics.value.isna().all() and metrics.note.str.contains("no model for esm2-soft-s0").all()


def test_a_checkpoint_path_that_does_not_exist_is_an_error(tmp_path):
    result = _scencode(
        "embed",
        "--model",
        tmp_path / "best.pt",
        "--corpus",
        tmp_path,
        "--run",
        "esm2-soft-s0",
        "--dataset",
        "lung",
        "--out",
        tmp_path / "e.parquet",
        "--h5ad",
        tmp_path / "e.h5ad",
        "--reconstruction",
        tmp_path / "r.json",
    )
    assert result.returncode == 1 and "best.pt: model checkpoint not found" in result.stderr
    assert not (tmp_path / "e.parquet").exists()


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
