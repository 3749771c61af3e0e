"""The Snakemake workflow: config validation, the paper DAG offline, reruns, and a full demo run."""

import copy
import json
import re
import shlex

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from helpers import REPO
from workflow_helpers import (
    DIVERGING_NAME,
    datasets_of,
    demo_config,
    edit_datasets,
    planned_jobs,
    set_cell,
    small_config,
    snakemake,
)

from scencode.shards import verify_corpus
from scencode.workflow_config import configurations

pytestmark = pytest.mark.workflow


def test_lint_is_clean():
    result = snakemake(None, None, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda c: c["qc"].update(min_gene=5), "min_gene"),  # unknown key
        (lambda c: c["qc"].update(min_genes="many"), "min_genes"),  # wrong type
        (lambda c: c.pop("tokenize"), "tokenize"),  # missing required key
        (lambda c: c["vocab"].update(policy="everything"), "everything"),  # bad choice
    ],
)
def test_malformed_config_stops_with_a_message_naming_the_key(tmp_path, edit, key):
    config = demo_config()
    edit(config)
    result = snakemake(tmp_path, config, "-n")
    assert result.returncode != 0
    assert key in result.stderr + result.stdout


def test_demo_gpu_config_layers_model_sizes_over_the_demo(tmp_path):
    configs = [str(REPO / "config" / name) for name in ("config.yaml", "demo_gpu.yaml")]
    result = snakemake(tmp_path, None, "-n", "-p", "--configfile", *configs)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    commands = [line for line in output.splitlines() if "scencode pretrain" in line]
    assert len(commands) == len(configurations(demo_config()))  # every configuration at every size
    overlay = yaml.safe_load((REPO / "config" / "demo_gpu.yaml").read_text())["pretrain"]
    for line in commands:
        settings = json.loads(shlex.split(line)[shlex.split(line).index("--params") + 1])
        # the overlay's sizes, key by key; what it leaves out stays the demo's
        assert {k: settings["model"][k] for k in overlay["model"]} == overlay["model"]
        assert settings["train"]["max_steps"] == overlay["train"]["max_steps"]
        assert settings["train"]["weight_decay"] == demo_config()["pretrain"]["train"]["weight_decay"]
    assert planned_jobs(result)["download"] == len(datasets_of(demo_config()))


def test_a_cpu_machine_asks_no_gpu_unless_told(tmp_path):
    """use_gpus: auto asks CUDA (none here); the SLURM profile and `--config use_gpus=true` ask for GPUs."""
    import torch

    assert not torch.cuda.is_available()
    local = snakemake(tmp_path, small_config(), "-n")
    assert local.returncode == 0, local.stderr
    jobs = _job_blocks(local.stdout)
    assert {j["rule"] for j in jobs} >= {"pretrain", "embed"} and all(
        j["resources"].get("gpu", "0") == "0" for j in jobs
    )
    # on CPUs, the GPU stages' jobs take one core each, so that two cores run two jobs at once
    gpu_stages = {"pretrain", "embed", "reconstruction"}
    assert all(j["threads"] == 1 for j in jobs if j["rule"] in gpu_stages)
    told = _job_blocks(snakemake(tmp_path, small_config(), "-n", "--config", "use_gpus=true").stdout)
    gpu_jobs = {j["rule"] for j in told if j["resources"].get("gpu") == "1"}
    assert gpu_jobs == gpu_stages  # the demo's tiny ESM-2 runs on a CPU


@pytest.fixture(scope="module")
def paper_dry_run(tmp_path_factory):
    """The paper's run planned offline through the SLURM profile (one dry run for the tests that read it)."""
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    workdir = tmp_path_factory.mktemp("paper_dry_run")
    result = snakemake(workdir, config, "-n", "-p", "--profile", str(REPO / "slurm"), "--cores", "64")
    assert result.returncode == 0, result.stderr
    return config, result


def test_paper_config_plans_every_download_offline(paper_dry_run):
    config, result = paper_dry_run
    jobs = planned_jobs(result)
    datasets = datasets_of(config)  # the study's lists, now one row each in config/datasets/paper_*.tsv
    roles = [spec["role"] for spec in datasets.values()]
    mouse = sorted(name for name, spec in datasets.items() if spec.get("organism") == "mus_musculus")
    assert roles.count("train") == 101 and roles.count("eval") == 26 + len(mouse) and len(mouse) == 3
    assert sum(spec["n_cells"] for spec in datasets.values() if spec["role"] == "train") == 10_010_855
    assert sum(spec.get("n_cells", 0) for spec in datasets.values() if spec["role"] == "eval") == 548_977
    # the same jobs as when the lists were inline in paper.yaml, with the corpus statistics, provenance,
    # gene probes, and each model embedded and scored on the training corpus's test split (in distribution),
    # again with the genes held out of training in the input, the field's three gene tasks fetched, and
    # three mouse tissues (another species: one species job, each tissue scored like the human ones)
    assert jobs == {
        "download": 127 + 3,
        "gene_table": 1,
        "species": 1,
        "proteins": 1,
        "esm_embeddings": 1,
        "qc": 127 + 3,
        "baseline": 52 + 2 * 3,
        "esm_coverage": 1,
        "leakage": 1,
        "vocab": 1,
        "evaluate": 338 + 11 + 11 + 13 * 3,
        "tokenize": 27 + 3,
        "pretrain": 11,
        "embed": 286 + 11 + 11 + 11 * 3,
        "reconstruction": 11,
        "scib_benchmarker": 26 + 3,
        "tables": 1,
        "figures": 1,
        "all": 1,
        "corpus_stats": 1,
        "provenance": 1,
        "gene_probes": 1,
        "gene_medians": 1,
        "unseen_genes": 1,
        "gene_task": 3,
    }
    sources = [spec["source"] for spec in datasets.values()]
    assert all(s["type"] == "census" for s in sources)
    # the study's 8 configurations, the esm2_permuted control and Geneformer's rank encoding with
    # either gene encoding, each a pretrain job asking for a GPU
    assert jobs["pretrain"] == 11 and jobs["leakage"] == 1
    blocks = [b for b in result.stdout.split("\n\n") if "rule pretrain:" in b]
    assert len(blocks) == 11 and all("gpu=1" in b for b in blocks)
    # run from the root without -s, Snakemake found ./Snakefile and the workflow profile beside it
    assert "workflow specific profile profiles/default" in result.stderr
    vocab = [b for b in result.stdout.split("\n\n") if "rule vocab:" in b]
    assert vocab and "runtime=60" in vocab[0]  # the profile's default: the vocab rule sets no runtime
    # embedding 549k cells per configuration through the model is GPU work too
    embeds = [b for b in result.stdout.split("\n\n") if "rule embed:" in b]
    # + the ID test split, as trained and with the unseen genes in the input
    assert len(embeds) == 11 * (26 + 3 + 2) and all("gpu=1" in b for b in embeds)
    # the vocabulary appends the mouse tissues' genes, with their species folder's orthologs
    assert "--species" in vocab[0] and "resources/species/mus_musculus" in vocab[0]
    assert all(f"results/qc/{name}.h5ad" in vocab[0] for name in mouse)
    esm = [b for b in result.stdout.split("\n\n") if "rule esm_embeddings:" in b]
    assert "resources/species/mus_musculus/proteins.pep.fa.gz" in esm[0]
    unseen = [b for b in embeds if "train_test_unseen" in b]
    assert len(unseen) == 11 and all("--split test --unseen-genes include" in b for b in unseen)
    assert all("--unseen-genes results/tokens/train.unseen_genes.parquet" in b for b in blocks)
    names = {line.split("run=")[1].strip() for b in blocks for line in b.splitlines() if "wildcards:" in line}
    study = {f"{g}-{e}-s777" for g in ("learned", "esm2") for e in ("hard", "soft", "log", "continuous")}
    assert names == study | {"esm2_permuted-soft-s777", "learned-rank-s777", "esm2-rank-s777"}
    ranked = [b for b in blocks if "-rank-" in b]
    assert all("--gene-medians results/tokens/train.gene_medians.parquet" in b for b in ranked)


def test_evaluation_options_reach_their_jobs(tmp_path):
    config = small_config()
    config["evaluate"].update(
        baselines=["pca", "scvi"],
        scvi_epochs=7,
        embedding={"gene_sampling": "top_expressed", "context": 128},
        scib_benchmarker={"max_cells_scib": 5000},
    )
    result = snakemake(tmp_path, config, "-n", "-p")
    assert result.returncode == 0, result.stderr
    commands = result.stdout
    assert commands.count("scencode baseline --kind scvi") == 3 and "--scvi-epochs 7" in commands
    steps = _step_commands(commands)  # a job's command, or a step of a `scencode batch` job (jobs_per_run)
    embeds = [" ".join(argv) for argv in steps if argv[0] == "embed"]
    assert embeds and all('"gene_sampling": "top_expressed"' in line and '"context": 128' in line for line in embeds)
    assert commands.count("scencode scib-benchmark") == 3 and "baseline-scvi-s0/pbmc68k.parquet" in commands
    benchmarker = [line for line in commands.splitlines() if "scencode scib-benchmark" in line]
    assert all('"max_cells_scib": 5000' in line for line in benchmarker)
    evaluations = [" ".join(argv) for argv in steps if argv[0] == "evaluate"]
    assert evaluations and not any("5000" in line for line in evaluations)  # the study's metrics: max_cells_scib
    # embedded otherwise than trained: the reconstruction step measures the held-out split itself
    reconstructions = [line for line in commands.splitlines() if "scencode reconstruction" in line]
    assert reconstructions and not any("--test-errors" in line for line in reconstructions)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo_run")
    config = small_config()
    result = snakemake(workdir, config, "--cores", "2")
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir, config


def test_demo_workflow_trains_every_configuration(demo_run):
    workdir, config = demo_run
    for entry in config["pretrain"]["configurations"]:
        folder = workdir / "results" / "models" / f"{entry['gene']}-{entry['expression']}-s0"
        status = json.loads((folder / "model.json").read_text())
        if folder.name == DIVERGING_NAME:
            assert status["status"] == "diverged" and status["checkpoint"] is None
            continue
        assert status["status"] == "completed" and torch.load(folder / "best.pt", weights_only=True)["model"]
        logged = pq.read_table(folder / "train_log.parquet").to_pandas()
        assert logged.step.max() == 4 and logged.val_loss.notna().any()
    # the smaller training set (.test: half the training split) is each sized run's, recorded in model.json
    sized = [name for name, (_, _, size) in configurations(config).items() if size is not None]
    assert sized == ["learned-soft-f0p5-s0", "esm2-hard-f0p5-s0"]
    full = json.loads((workdir / "results" / "models" / "learned-soft-s0" / "model.json").read_text())["train_cells"]
    for name in sized:
        half = json.loads((workdir / "results" / "models" / name / "model.json").read_text())["train_cells"]
        assert full["requested"] == "all" and half["requested"] == 0.5
        assert abs(half["cells"] - full["cells"] / 2) <= len(half["per_dataset"]) / 2
    coverage = json.loads((workdir / "results" / "esm" / "esm2_tiny_demo" / "coverage.json").read_text())
    assert coverage["embedded_genes"] == 1200 and coverage["dataset_genes_with_embedding"] > 1000


def test_demo_workflow_evaluates_every_configuration_on_every_dataset(demo_run):
    workdir, config = demo_run
    tables = workdir / "results" / "tables"
    metrics = pd.read_csv(tables / "metrics.csv")
    evaluation = sorted(d for d, s in datasets_of(config).items() if s["role"] == "eval")
    models = list(configurations(config))  # every configuration at every training-set size
    runs = models + ["baseline-pca-s0", "baseline-random-s0"]
    present = metrics[metrics.dataset != "*"].groupby("configuration").dataset.unique()
    # every run on every evaluation dataset; trained runs also on the training corpus's test split (ID)
    assert all(sorted(present[c]) == sorted([*evaluation, "train_test"]) for c in models)
    assert all(sorted(present[c]) == evaluation for c in runs if c not in models)
    scores = metrics[metrics.metric.isin(["bio_score", "batch_score", "accuracy", "macro_f1", "asw_label", "nmi"])]
    assert scores.value.dropna().between(0, 1 + 1e-6).all()  # a perfect clustering's NMI can be 1 + 1e-16
    # pbmc68k has one batch: its batch metrics are recorded as not applicable, with the reason
    pbmc_batch = metrics[
        (metrics.dataset == "pbmc68k") & (metrics.group == "batch") & (metrics.configuration != DIVERGING_NAME)
    ]
    assert pbmc_batch.value.isna().all() and pbmc_batch.note.str.contains("single batch").all()
    bio = metrics[metrics.metric == "bio_score"].groupby("configuration").value.mean()
    assert bio["baseline-pca-s0"] > bio["baseline-random-s0"]
    # scib-metrics' own default set and aggregate, labelled, for every configuration, on the datasets
    # evaluate.scib_benchmarker.datasets names (.test: sim_lung_eval)
    scib = metrics[metrics.group == "scib_metrics"]
    # each configuration at its largest training set, and the baselines (the smaller sets: scaling only)
    assert sorted(scib.configuration.unique()) == sorted(r for r in runs if "-f0p5-" not in r)
    benchmarked = config["evaluate"]["scib_benchmarker"]["datasets"]
    assert all(sorted(d) == benchmarked for d in scib.groupby("configuration").dataset.unique())
    lung = scib[scib.dataset == "sim_lung_eval"].pivot_table(index="configuration", columns="metric", values="value")
    lung = lung.drop(DIVERGING_NAME, errors="ignore")
    # scores in [0, 1] up to float rounding (a perfect clustering's NMI can come out as 1 + 1e-7)
    assert (
        lung.notna().all().all()
        and lung.drop(columns="nmi_ari_cluster_labels_kmeans_ari").stack().between(0, 1 + 1e-6).all()
    )
    assert lung.nmi_ari_cluster_labels_kmeans_ari.between(-0.5, 1).all()  # ARI is negative below chance
    assert np.allclose(lung.total, 0.6 * lung.bio_conservation + 0.4 * lung.batch_correction)
    # the configuration without a model is in every table, as NaN with the reason
    diverged = metrics[metrics.configuration == DIVERGING_NAME]
    assert diverged.dataset.nunique() == len(evaluation) + 2  # + the ID set and the reconstruction rows ("*")
    # what it was set up with and what it cost stay (train_cells, cost rows); every score is NaN
    no_model = diverged[~diverged.metric.isin(["min_train_mse", "train_cells"]) & (diverged.group != "cost")]
    assert no_model.value.isna().all() and no_model.note.str.contains("diverged at step").all()
    assert diverged[diverged.metric == "wall_hours"].value.gt(0).all()  # a diverged run cost compute all the same
    # reconstruction: the study's minimum training loss is the training log's, test MSE on held-out cells
    recon = metrics[metrics.group == "reconstruction"].pivot_table(
        index=["configuration", "dataset"], columns="metric", values="value"
    )
    for name in set(models) - {DIVERGING_NAME}:
        logged = pq.read_table(workdir / "results" / "models" / name / "train_log.parquet").to_pandas()
        assert recon.loc[(name, "*"), "min_train_mse"] == pytest.approx(logged.train_loss.min())
        assert recon.loc[(name, "*"), "test_mse"] > 0
        assert (recon.loc[name].masked_mse.dropna() > 0).sum() == len(evaluation) + 1  # and the ID set
    summary = pd.read_csv(tables / "summary.csv")
    assert {
        "gene_encoding",
        "expression_encoding",
        "batch_score",
        "bio_score",
        "accuracy",
        "macro_f1",
        "min_train_mse",
        "test_mse",
        "eval_mse",
        "bio_score_sd",
    } <= set(summary.columns)
    models_only = summary[summary.gene_encoding != "baseline"].set_index(["gene_encoding", "expression_encoding"])
    assert models_only.drop(("learned", "continuous")).eval_mse.gt(0).all()  # the diverged one has none
    assert len(summary) == len(runs)  # one seed: a row per configuration and size, and per baseline
    assert sorted(summary.train_cells.dropna().unique()) == sorted(
        json.loads((workdir / "results" / "models" / name / "model.json").read_text())["train_cells"]["cells"]
        for name in ("learned-soft-f0p5-s0", "learned-soft-s0")
    )
    row = summary[(summary.gene_encoding == "learned") & (summary.expression_encoding == "continuous")].iloc[0]
    assert np.isnan(row.bio_score) and "diverged" in row.note
    assert (workdir / "results" / "tables" / "tests.csv").exists()
    for name in (
        "fig1_batch_vs_bio",
        "fig2_classification",
        "fig3_min_train_mse",
        "loss_curves",
        "heatmap_per_dataset",
        "paper_comparison",
        "fig4_cost_vs_bio",
        "fig5_shift",
        "fig6_scaling",
        "corpus_stats",
    ):
        assert (workdir / "results" / "figures" / f"{name}.png").stat().st_size > 5000
    # what each result cost, beside its quality; the corpus it was trained on; what produced it
    trained = models_only.drop(("learned", "continuous"))
    assert trained.wall_hours.gt(0).all() and trained.device_hours.gt(0).all() and trained.mfu.isna().all()
    assert trained.tokens_per_s.gt(0).all()
    stats = pd.read_csv(tables / "corpus_stats.csv")
    assert set(stats.corpus) == {"train", *evaluation} and stats.cells.sum() > 0
    # in distribution, near (lung, blood: training tissues) and far (pancreas: none trained on it)
    for level in ("id", "near", "far"):
        assert trained[f"bio_score_{level}"].between(0, 1).all(), level
    assert np.allclose(trained.bio_score_gap_far, trained.bio_score_id - trained.bio_score_far)
    assert {"level", "train_cells"} <= set(pd.read_csv(tables / "tests.csv").columns)
    # does the ranking hold as data grow: two configurations at two sizes, τ with its bootstrap interval
    stability = pd.read_csv(tables / "rank_stability.csv")
    assert len(stability) and (stability.train_cells_a < stability.train_cells_b).all()
    assert (stability.configurations == 2).all() and stability.kendall_tau.dropna().isin([-1.0, 1.0]).all()
    probes = pd.read_csv(tables / "gene_probes.csv")
    assert {"reference-esm2_table", "reference-esm2_table_permuted", "reference-random_table"} <= set(
        probes.configuration
    )
    assert set(probes.group) == {"gene_probe_family", "gene_probe_protein_length", "gene_probe_chromosome"}
    provenance = json.loads((workdir / "results" / "provenance.json").read_text())
    assert provenance["scencode"]["commit"] and provenance["versions"]["polars"]
    h5ad = workdir / "results" / "embeddings" / models[0] / "pbmc68k.h5ad"
    assert ad.read_h5ad(h5ad).obsm["X_scencode"].shape[0] == 700


def test_figures_target_redraws_from_the_tables_alone(demo_run):
    workdir, config = demo_run
    result = snakemake(workdir, config, "-n", "--forcerun", "figures", "figures")
    jobs = planned_jobs(result)
    assert jobs["figures"] == 1 and set(jobs) <= {"figures", "all"}  # `all` only collects targets


def test_report_holds_figures_and_summary(demo_run):
    workdir, config = demo_run
    result = snakemake(workdir, config, "--report", str(workdir / "report.html"))
    assert result.returncode == 0, result.stderr[-3000:]
    html = (workdir / "report.html").read_text()
    for name in (
        "fig1_batch_vs_bio.png",
        "fig2_classification.png",
        "fig3_min_train_mse.png",
        "loss_curves.png",
        "heatmap_per_dataset.png",
        "paper_comparison.png",
        "summary.csv",
        "tests.csv",
        "fig4_cost_vs_bio.png",
        "corpus_stats.png",
        "corpus_stats.csv",
        "provenance.json",
        "gene_probes.csv",
        "gene_probes.png",
        "fig5_shift.png",
        "fig6_scaling.png",
        "rank_stability.csv",
    ):
        assert name in html, name
    assert "Benjamini-Hochberg" in html  # the captions travel with the results


def test_demo_workflow_writes_every_corpus_with_logs_and_benchmarks(demo_run):
    workdir, config = demo_run
    evaluation = [d for d, s in datasets_of(config).items() if s["role"] == "eval"]
    for corpus in ["train", *evaluation]:
        manifest = verify_corpus(workdir / "results" / "tokens" / corpus)
        assert manifest["n_cells"] > 0
        assert (workdir / "logs" / "tokenize" / f"{corpus}.log").exists()
        assert (workdir / "logs" / "benchmarks" / "tokenize" / f"{corpus}.tsv").exists()
    train = json.loads((workdir / "results" / "tokens" / "train" / "manifest.json").read_text())
    assert set(train["datasets"]) == {d for d, s in datasets_of(config).items() if s["role"] == "train"}
    pbmc = json.loads((workdir / "results" / "tokens" / "pbmc68k" / "manifest.json").read_text())
    assert pbmc["kind"] == "evaluation" and pbmc["n_cells"] == 700
    liver = json.loads((workdir / "results" / "qc" / "sim_liver_1.json").read_text())
    assert liver["genes"]["unmatched"] == 5 and liver["genes"]["gene_id_source"].startswith("symbols")


def test_changing_one_setting_reruns_only_what_depends_on_it(demo_run):
    workdir, config = demo_run
    assert planned_jobs(snakemake(workdir, config, "-n")) == {}
    changed = edit_datasets(config, workdir, set_cell("pbmc68k", "qc_min_genes", 60))
    jobs = planned_jobs(snakemake(workdir, changed, "-n"))
    # pbmc68k's QC, its corpus, and its embeddings (5 trained runs) and metrics (+ 2 baselines), one job
    # per run (jobs_per_run: each run's datasets together); no training, no other dataset's QC
    assert jobs["qc"] == 1 and jobs["tokenize"] == 1 and jobs["embed"] == 5 and jobs["baseline"] == 2
    assert jobs["evaluate_models"] == 5 and jobs["evaluate_baselines"] == 2
    # the cost of that cut: each run's job embeds its other datasets again, the held-out split's
    # diagnostic among them, which the reconstruction table reads (one job per dataset reruns none)
    assert jobs["reconstruction"] == 5 and not {"download", "vocab", "pretrain"} & set(jobs)
    changed = copy.deepcopy(config)
    changed["pretrain"]["configurations"][1]["train"] = {"lr": 0.01}  # esm2-hard only, at both its sizes
    result = snakemake(workdir, changed, "-n")
    jobs = planned_jobs(result)
    # its embeddings and metrics on the three evaluation datasets and the ID set (a job per run), its gene probes
    assert jobs["pretrain"] == 2 and jobs["reconstruction"] == 2 and jobs["embed"] == 2 and jobs["evaluate_models"] == 2
    assert jobs["gene_probes"] == 1
    planned = {
        line.split("run=")[1].split(",")[0].strip()
        for line in result.stdout.splitlines()
        if "wildcards:" in line and "run=" in line
    }
    assert planned == {"esm2-hard-s0", "esm2-hard-f0p5-s0"}


def test_failed_job_leaves_no_output(demo_run, tmp_path):
    workdir, config = demo_run
    broken = edit_datasets(config, tmp_path, set_cell("sim_lung_eval", "label_key", "no_such_column"))
    result = snakemake(workdir, broken, "--cores", "1", "results/tokens/sim_lung_eval", "--forcerun", "qc")
    assert result.returncode != 0
    log = (workdir / "logs" / "qc" / "sim_lung_eval.log").read_text()
    assert "label column 'no_such_column' is missing from obs" in log
    assert not (workdir / "results" / "qc" / "sim_lung_eval.h5ad").exists()


def test_a_bad_sheet_row_stops_the_dry_run_naming_sheet_row_and_column(tmp_path):
    config = edit_datasets(small_config(), tmp_path, set_cell("sim_kidney_1", "n_cells", "3k"))
    result = snakemake(tmp_path, config, "-n")
    assert result.returncode != 0
    assert (
        f"{tmp_path / 'datasets.tsv'}: row 3, column n_cells: '3k' is not an integer" in result.stdout + result.stderr
    )
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c: c["pretrain"]["configurations"].append({"gene": "foo", "expression": "soft"}),
            "unknown gene encoding 'foo'; registered: esm2, esm2_permuted, learned, random_frozen",
        ),
        (
            lambda c: c["pretrain"]["configurations"].append(
                {"gene": "learned", "expression": "soft", "seeds": [5], "model": {"expression_options": {"n_bin": 10}}}
            ),
            "expression encoding 'soft' takes no option 'n_bin'; its options: hidden, n_bins",
        ),
        (lambda c: c["pretrain"]["model"].update(d_model=30, n_heads=4), "d_model 30 is not divisible by n_heads 4"),
        (lambda c: c["qc"].update(counts="layer/counts"), "layer/counts"),
        (
            lambda c: c["pretrain"]["configurations"].append(dict(c["pretrain"]["configurations"][0])),
            "pretrain.configurations lists learned-soft-s0 twice",
        ),
    ],
)
def test_configuration_errors_stop_the_dry_run_before_any_job(tmp_path, change, message):
    config = small_config()
    change(config)
    result = snakemake(tmp_path, config, "-n")
    assert result.returncode != 0 and message in result.stderr + result.stdout


def test_config_values_and_paths_reach_commands_quoted(tmp_path):
    """Settings and paths are single shell words: a space in a results folder or a label key, or a
    command substitution in a gene-table value, reaches the step as text and never runs."""
    config = small_config()
    config["results_dir"] = "res ults"
    config = edit_datasets(config, tmp_path, set_cell("sim_lung_eval", "label_key", "cell type"))
    config["gene_table"].update(gencode="$(touch PWNED)genes.csv", gencode_sha256="0" * 64)
    result = snakemake(tmp_path, config, "-n", "-p")
    assert result.returncode == 0, result.stderr
    commands = [
        shlex.split(line.split("Shell command:", 1)[1])
        for line in result.stdout.splitlines()
        if "Shell command: scencode " in line
    ]
    by_step = {}
    for words in commands:
        by_step.setdefault(words[1], []).append(words)
    baseline = next(w for w in by_step["baseline"] if "sim_lung_eval" in w)
    assert baseline[baseline.index("--label-key") + 1] == "cell type"
    gene_table = by_step["gene-table"][0]
    assert gene_table[gene_table.index("--gencode") + 1] == "$(touch PWNED)genes.csv"
    qc = by_step["qc"][0]
    assert qc[qc.index("--out") + 1].startswith("res ults/qc/")
    # embedded as trained (the default): the held-out split's diagnostic is the embed step's, read
    for words in by_step["reconstruction"]:
        run = words[words.index("--run") + 1]
        assert words[words.index("--test-errors") + 1] == f"res ults/embeddings/{run}/train_test.reconstruction.json"
    assert not (tmp_path / "PWNED").exists()


def _job_blocks(stdout: str) -> list[dict]:
    """Each planned job of a dry run: rule, wildcards, resources, threads and --threads of its command."""
    jobs = []
    for block in re.split(r"\n(?=(?:\[[^\]]*\]\n)?rule \w+:)", stdout):
        rule = re.search(r"^rule (\w+):", block, re.M)
        if not rule:
            continue
        resources = dict(re.findall(r"(\w+)=([^,\s]+)", (re.search(r"resources: (.*)", block) or ["", ""])[1]))
        wildcards = dict(re.findall(r"(\w+)=([^,\s]+)", (re.search(r"wildcards: (.*)", block) or ["", ""])[1]))
        threads = re.search(r"^\s+threads: (\d+)", block, re.M)
        command = re.search(r"--threads (\d+)", block)
        jobs.append(
            {
                "rule": rule[1],
                "wildcards": wildcards,
                "resources": resources,
                "threads": int(threads[1]) if threads else 1,
                "command_threads": command and int(command[1]),
            }
        )
    return jobs


def test_paper_jobs_ask_for_what_their_work_needs(paper_dry_run):
    """Offline dry run of the paper through the SLURM profile: GPU-heavy jobs carry a GPU, no job asks
    for less runtime or memory than its own estimate, rule threads are the command's threads."""
    from helpers import GPU_RULES as GPU_STAGES

    from scencode.plan import job_resources

    config, result = paper_dry_run
    config = {**config, "datasets": datasets_of(config)}  # sizes from the sheets' rows
    jobs = _job_blocks(result.stdout)
    keys = {"download": "dataset", "qc": "dataset", "tokenize": "corpus", "embed": "dataset", "evaluate": "dataset"}
    checked = set()
    for job in jobs:
        stage = job["rule"]
        if stage in GPU_STAGES:
            assert job["resources"].get("gpu") == "1", job
        if stage in keys or stage in GPU_STAGES:
            key = job["wildcards"].get(keys.get(stage, ""), None)
            need = job_resources(stage, config, key, job["wildcards"].get("run"))
            assert int(job["resources"]["runtime"]) >= need["estimate_min"], job
            assert int(job["resources"]["mem_mb"]) >= need["mem_mb"], job
            checked.add(stage)
        if job["command_threads"] is not None:
            assert job["threads"] == job["command_threads"], job
    assert checked == set(keys) | set(GPU_STAGES)
    esm = next(j for j in jobs if j["rule"] == "esm_embeddings")
    # ESM-2 3B: 3e9 fp32 parameters (12 GB) loaded on the host; weeks on one CPU thread, ≈1 h on a GPU
    assert int(esm["resources"]["mem_mb"]) >= 3 * 12_000 and esm["threads"] >= 4
    assert int(esm["resources"]["runtime"]) >= job_resources("esm_embeddings", config)["estimate_min"] >= 30


def test_plan_prints_the_paper_run_cost():
    import contextlib
    import io

    from scencode.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["plan", "--configfile", str(REPO / "config" / "paper.yaml"), "--gpus", "8"]) == 0
    text = out.getvalue()
    for stage in ("download", "qc", "tokenize", "esm_embeddings", "pretrain", "embed", "evaluate"):
        assert f"\n{stage} " in f"\n{text}"
    pretrain = next(line.split() for line in text.splitlines() if line.startswith("pretrain "))
    assert int(pretrain[1]) == 11 and float(pretrain[2]) > 50  # jobs, GPU-hours
    assert any(line.startswith("gene_medians ") for line in text.splitlines())
    assert "measured:" in text and "assumed:" in text and "critical path" in text


def _step_commands(stdout: str, steps=("embed", "evaluate")) -> set[tuple[str, ...]]:
    """The embed and evaluate steps a dry run (-p) would run: each a job's command, or a step of a
    `scencode batch` job; the log redirection left out."""
    import json
    import shlex

    commands = set()
    for line in stdout.splitlines():
        line = line.strip().removeprefix("Shell command: ")
        if not line.startswith("scencode "):
            continue
        argv = shlex.split(line.split(" > ")[0])[1:]
        if argv[0] == "batch":
            commands |= {tuple(job["argv"]) for job in json.loads(argv[argv.index("--jobs") + 1])}
        elif argv[0] in steps:
            commands.add(tuple(argv))
    return commands


def test_jobs_per_run_runs_the_steps_one_job_per_dataset_runs(tmp_path):
    """The demo's cut (one job per run, its datasets' steps in one `scencode batch` process) runs
    exactly the embed and evaluate commands of one job per (run, dataset), the paper's cut."""
    plans = {}
    for per_run in (False, True):
        config = small_config()
        config["jobs_per_run"] = per_run
        (tmp_path / str(per_run)).mkdir()
        result = snakemake(tmp_path / str(per_run), config, "-n", "-p")
        assert result.returncode == 0, result.stderr
        plans[per_run] = result
    jobs = {per_run: planned_jobs(result) for per_run, result in plans.items()}
    runs = len(small_config()["pretrain"]["configurations"]) + 2  # two of them at two training-set sizes
    assert jobs[True]["embed"] == runs and jobs[False]["embed"] == runs * 4  # 3 evaluation datasets + the ID test
    assert jobs[True]["evaluate_models"] == runs and jobs[True]["evaluate_baselines"] == 2
    commands = _step_commands(plans[False].stdout)
    assert len(commands) == runs * 4 * 2 + 2 * 3 and _step_commands(plans[True].stdout) == commands
