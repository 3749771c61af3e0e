# Config validation and the small functions that turn config into paths and per-rule settings.
# Each rule gets exactly the slice of config it reads (as params), so changing a setting reruns
# only the jobs that depend on it.
import json
import os
import re

from scencode import workflow_config
from scencode.run_config import LoaderConfig, needs_gene_medians, needs_gene_table, run_settings
from scencode.errors import ScencodeError
from scencode.plan import baseline_run, job_resources

try:  # the checks `scencode plan` runs too: no key twice in a config file, the schemas, the DAG's needs
    for configfile_path in workflow.configfiles:
        workflow_config.read_yaml(configfile_path)
    DATASETS = workflow_config.check(config)  # the dataset sheets' rows: name → settings
except ScencodeError as exc:
    raise ValueError(str(exc)) from None

RESOURCES = config["resources_dir"]
RESULTS = config["results_dir"]
LOGS = config["logs_dir"]
TRAIN_DATASETS = sorted(d for d, spec in DATASETS.items() if spec["role"] == "train")
EVAL_DATASETS = sorted(d for d, spec in DATASETS.items() if spec["role"] == "eval")
TRAIN_CORPUS = workflow_config.TRAIN_CORPUS
CORPORA = [TRAIN_CORPUS, *EVAL_DATASETS]  # every token corpus: the training datasets together, each evaluation one
# The training corpus keeps labels where its datasets name a label column; its held-out test split is
# then scored like an evaluation dataset, in distribution (ID_TEST), beside the near and far shifts.
ID_TEST = workflow_config.ID_TEST
TRAIN_LABELED = any(DATASETS[d].get("label_key") for d in TRAIN_DATASETS)
# pretrain.unseen_genes: a fraction of the genes held out of every training cell; the test split is
# then scored again with them in the input (ID_TEST_UNSEEN), where transfer should win
UNSEEN_FRACTION = config["pretrain"].get("unseen_genes", 0)
ID_TEST_UNSEEN = workflow_config.ID_TEST_UNSEEN
IN_DISTRIBUTION = [ID_TEST, *([ID_TEST_UNSEEN] if UNSEEN_FRACTION else [])]
SCORED = [*EVAL_DATASETS, *(IN_DISTRIBUTION if TRAIN_LABELED else [])]  # what every trained run is scored on
# the shift levels are decided by the tables job from the tissues QC found in the data (a sheet's
# `tissue` overrides): what the tables step needs to decide them
SHIFT = {
    "datasets": {
        d: {"role": spec["role"], "tissue": spec.get("tissue"), "organism": workflow_config.organism(spec)}
        for d, spec in DATASETS.items()
    },
    "scored": SCORED,
    "min_cells": config["evaluate"].get("shift_min_cells", workflow_config.TISSUE_MIN_CELLS),
}
ESM = config["esm"]
ESM_TABLE = f"{RESULTS}/esm/{ESM['name']}/gene_embeddings.parquet"
# evaluation datasets of another organism (the sheet's organism column; scencode.species): organism →
# its datasets. Each gets a species folder (gene table, proteins, orthologs) and its genes their own tokens.
SPECIES = config.get("species") or {}
SPECIES_DATASETS = {
    organism: sorted(d for d in EVAL_DATASETS if workflow_config.organism(DATASETS[d]) == organism)
    for organism in sorted({workflow_config.organism(DATASETS[d]) for d in EVAL_DATASETS})
    if organism != workflow_config.PRIMARY_ORGANISM
}


wildcard_constraints:
    dataset="|".join([*DATASETS, ID_TEST, ID_TEST_UNSEEN]),
    organism="[a-z][a-z0-9_]*",
    corpus="|".join(CORPORA),
    run="[A-Za-z0-9_]+-[A-Za-z0-9_]+(-[nf][0-9p]+)?-s[0-9]+",


# the rules between the data and the models (proteins → ESM-2 → vocabulary → tokens → pretrain) go
# first when cores are free: on the CPU demo the scheduler otherwise fills both cores with baselines
# and their scoring while the one job every model waits for has not started (measured: ESM-2 began
# 56 s into the demo, tokenize waited 28 s behind a baseline's scoring)
CRITICAL_PATH = 10


SIZED_CONFIG = {**config, "datasets": DATASETS}  # plan reads the datasets' sizes from the sheets' rows
USE_GPUS = workflow_config.use_gpus(config)  # 'use_gpus': auto (this machine has CUDA), true (slurm profile), false
# embed and evaluate: one job per run for all its datasets, its steps in one process (`scencode batch`),
# or one job per (run, dataset), the cluster's parallelism
JOBS_PER_RUN = bool(config.get("jobs_per_run", False))


def _sized(stage, wildcards, key, datasets=None):
    run = getattr(wildcards, "run", None)  # evaluate: the embedding it scores decides its time
    if datasets is not None:  # one job for several datasets (jobs_per_run): their runtimes add up
        each = [_sized_one(stage, dataset, run) for dataset in datasets]
        return {
            "gpu": max(r["gpu"] for r in each),
            "threads": max(r["threads"] for r in each),
            "mem_mb": max(r["mem_mb"] for r in each),
            "runtime": sum(r["runtime"] for r in each),
        }
    return _sized_one(stage, getattr(wildcards, key) if key else None, run)


def _sized_one(stage, name, run=None):
    resources = job_resources(stage, SIZED_CONFIG, name, run)
    if resources["gpu"] and not USE_GPUS:
        # a GPU stage on CPUs (the demo): one core per job, so that jobs run side by side. The threads
        # a GPU job gets feed its loader; on CPUs a job of the demo's tiny models gains little from a
        # second thread (measured: 2 cores ran one job at a time and the demo took 25 min, not 12)
        return {**resources, "gpu": 0, "threads": 1}
    return resources


def sized(stage, key=None, datasets=None):
    """gpu, mem_mb and runtime of a rule's jobs (``resources: **sized(stage, key)``), computed from the
    run's size by scencode.plan (`scencode plan` prints the same figures); ``key``: the wildcard that
    names the job's dataset or corpus; ``datasets``: a job that does several (jobs_per_run). No GPU
    is asked where none is expected. A site overrides them in the workflow profile."""
    return {name: (lambda w, name=name: _sized(stage, w, key, datasets)[name]) for name in ("gpu", "mem_mb", "runtime")}


def sized_threads(stage, key=None, datasets=None):
    return lambda w: _sized(stage, w, key, datasets)["threads"]


def as_json(value):
    return json.dumps(value, sort_keys=True)


def dataset_source(dataset):
    """The source entry; demo data are seeded by the global seed, census by the pinned version."""
    source = dict(DATASETS[dataset]["source"])
    if source["type"] == "demo":
        source.setdefault("seed", config["seed"])
    if source["type"] == "census":
        source.setdefault("census_version", config.get("census_version"))
    return source


def qc_settings(dataset):
    spec = DATASETS[dataset]
    settings = {**config["qc"], **spec.get("qc", {})}
    for key in ("label_key", "batch_key"):
        if spec.get(key):
            settings[key] = spec[key]
    return settings


def corpus_datasets(corpus):
    return TRAIN_DATASETS if corpus == TRAIN_CORPUS else [corpus]


def embedded_corpus(wildcards):
    return embedded_corpus_of(wildcards.dataset)


def embedded_corpus_of(dataset):
    """The corpus a dataset's embedding is read from: its own, or the training corpus's test split."""
    return corpus_dir(TRAIN_CORPUS if dataset in IN_DISTRIBUTION else dataset)


def step_log(stage, run, dataset):
    """A per-dataset step's log: the job's own, or one step's of a `scencode batch` job."""
    return f"{LOGS}/{stage}/{run}/{dataset}.log"


def corpus_inputs(corpus):
    return [
        {
            "dataset_id": d,
            "path": qc_h5ad(d),
            "label_key": DATASETS[d].get("label_key"),
            "batch_key": DATASETS[d].get("batch_key"),
        }
        for d in corpus_datasets(corpus)
    ]


# One function per file between stages: a wildcard pattern by default, a concrete path when named.
def raw_h5ad(dataset="{dataset}"):
    return f"{RESOURCES}/raw/{dataset}.h5ad"


def qc_h5ad(dataset="{dataset}"):
    return f"{RESULTS}/qc/{dataset}.h5ad"


def species_dir(organism="{organism}"):
    return f"{RESOURCES}/species/{organism}"


def gene_table_of(dataset):
    """The gene table QC maps a dataset's genes with: its organism's."""
    organism = workflow_config.organism(DATASETS[dataset])
    if organism == workflow_config.PRIMARY_ORGANISM:
        return f"{RESOURCES}/genes/genes.parquet"
    return f"{species_dir(organism)}/genes.parquet"


def species_proteins():
    """Each other organism's proteome, embedded beside the training organism's."""
    return [f"{species_dir(organism)}/proteins.pep.fa.gz" for organism in SPECIES_DATASETS]


def vocab_species(wildcards, input):
    """The vocabulary step's --species JSON: per other organism, its folder and its datasets' QC outputs."""
    folders = {organism: os.path.dirname(path) for organism, path in zip(SPECIES_DATASETS, input.orthologs)}
    return as_json(
        {
            organism: {"folder": folders[organism], "qc": [qc_h5ad(d) for d in datasets]}
            for organism, datasets in SPECIES_DATASETS.items()
        }
    )


def corpus_dir(corpus="{corpus}"):
    return f"{RESULTS}/tokens/{corpus}"


def model_status(run="{run}"):
    return f"{RESULTS}/models/{run}/model.json"


def train_log(run="{run}"):
    return f"{RESULTS}/models/{run}/train_log.parquet"


def esm_weights_input():
    """The model file the embedding job reads: the demo's tiny model, local weights, or none
    (a released model is fetched inside the job)."""
    model = ESM["model"]
    if model["type"] == "tiny":
        return f"{RESOURCES}/esm/{ESM['name']}.pt"
    if model["type"] == "local":
        return model["path"]
    return []


def esm_model_arg(wildcards, input):
    pin = ["--sha256", ESM["model"]["sha256"]] if ESM["model"].get("sha256") else []
    if input.weights:
        return ["--weights", input.weights, *pin]
    return ["--model", ESM["model"]["name"], *pin]


def vocab_protein_genes():
    """Genes with a protein embedding, for the 'protein' vocabulary policy."""
    if config["vocab"]["policy"] != "protein":
        return []
    return config["vocab"].get("protein_genes") or ESM_TABLE


PRETRAIN = config["pretrain"]


CONFIGURATIONS = workflow_config.configurations(config)  # run name → (entry, seed, training-set size)


def pretrain_settings(name):
    """The model, loader and train settings of one configuration: shared ones, then its overrides."""
    return run_settings(config, *CONFIGURATIONS[name])


def pretrain_layout(run):
    """GPUs per node and nodes of a run's pretraining job (``pretrain.gpus``, ``pretrain.nodes``)."""
    return workflow_config.pretrain_processes(config, CONFIGURATIONS[run][0])


MULTI_NODE = any(workflow_config.pretrain_processes(config, e)[1] > 1 for e in PRETRAIN["configurations"])


def pretrain_resources():
    """A pretraining job's resources in the SLURM executor plugin's terms: ``gpu`` → ``--gpus`` (one
    node), ``gres`` → ``--gres=gpu:G`` (G on each node, several nodes), ``nodes`` → ``--nodes``, the
    rule's threads → ``--cpus-per-task``, ``mem_mb`` → ``--mem`` (per node). ``tasks_per_gpu: 0``
    keeps ``--ntasks-per-gpu`` out: with it a job of 2 GPUs ran its command twice, once per task
    (the plugin's issues #316, #459). Several nodes: an ``mpi`` job (the plugin runs the command in
    the batch script, not under its own srun), one task per node, and the rule's srun starts one
    torchrun per node."""
    each = lambda w: pretrain_layout(w.run)
    resources = {
        **{k: v for k, v in sized("pretrain", "run").items() if k != "gpu"},
        "gpu": lambda w: each(w)[0] * USE_GPUS if each(w)[1] == 1 else 0,
        "gres": lambda w: f"gpu:{each(w)[0]}" if USE_GPUS and each(w)[1] > 1 else "",
        "nodes": lambda w: each(w)[1],
        "tasks_per_gpu": 0,
    }
    if MULTI_NODE:  # the plugin treats a job as MPI wherever the key exists, so only then
        resources.update(mpi=lambda w: "srun" if each(w)[1] > 1 else "", tasks=lambda w: each(w)[1])
    return resources


def pretrain_threads(w):
    """Threads per node: the plan's, and at least one per process (CPU runs)."""
    return max(_sized("pretrain", w, "run")["threads"], pretrain_layout(w.run)[0])


def pretrain_launch(w, threads):
    """The command's start and its process flags: srun (one task per node) across nodes."""
    gpus, nodes = pretrain_layout(w.run)
    srun = f"srun --nodes {nodes} --ntasks-per-node 1 --kill-on-bad-exit=1 " if nodes > 1 else ""
    return {"srun": srun, "flags": f"--gpus {gpus} --nodes {nodes} --threads {max(1, threads // gpus)}"}


GENE_MEDIANS = f"{RESULTS}/tokens/{TRAIN_CORPUS}.gene_medians.parquet"  # beside the corpus it summarises


def pretrain_gene_medians(wildcards):
    """The training corpus's gene medians, for an expression encoding that reads them (rank)."""
    entry, _, _ = CONFIGURATIONS[wildcards.run]
    return [GENE_MEDIANS] if needs_gene_medians(entry["expression"]) else []


UNSEEN_GENES = f"{RESULTS}/tokens/{TRAIN_CORPUS}.unseen_genes.parquet"  # drawn once: every run holds out the same


def pretrain_unseen_genes(wildcards):
    return [UNSEEN_GENES] if UNSEEN_FRACTION else []


def pretrain_gene_embeddings(wildcards):
    entry, _, _ = CONFIGURATIONS[wildcards.run]
    return ESM_TABLE if needs_gene_table(entry["gene"]) else []


EVALUATE = config["evaluate"]
# each section is one settings dataclass, passed to its step unchanged (missing keys: its defaults)
EVAL_METRICS = EVALUATE.get("metrics", {})  # scencode.evaluate.EvalParams
SCIB_BENCHMARKER = EVALUATE.get("scib_benchmarker", {})  # None: skip
# the evaluation datasets the Benchmarker runs on (its own key); the rest is BenchmarkerParams
BENCHMARKER_DATASETS = [] if SCIB_BENCHMARKER is None else SCIB_BENCHMARKER.get("datasets") or EVAL_DATASETS
BENCHMARKER_SETTINGS = {k: v for k, v in (SCIB_BENCHMARKER or {}).items() if k != "datasets"}
REFERENCE_EXPRESSION = EVALUATE.get("reference_expression", "soft")
GENE_TASKS = EVALUATE.get("gene_tasks") or {}  # the field's gene tasks: name → sha256 (null: the pinned URL alone)


def gene_task_file(task):
    return f"{RESOURCES}/gene_tasks/{task}.labels"


def embed_loader(name):
    """The configuration's training loader with the evaluation's embedding overrides
    (evaluate.embedding: gene sampling, and context if set)."""
    overrides = {k: v for k, v in EVALUATE.get("embedding", {}).items() if v is not None}
    return {**pretrain_settings(name)["loader"], **overrides}


def measured_test_errors(wildcards):
    """The embed step's diagnostic on the held-out test split, where it read the split as training
    did (no embedding overrides): the same numbers, so it is read rather than measured again."""
    trained_with = LoaderConfig(**pretrain_settings(wildcards.run)["loader"])
    as_trained = LoaderConfig(**embed_loader(wildcards.run)) == trained_with
    if ID_TEST in SCORED and as_trained:
        return f"{RESULTS}/embeddings/{wildcards.run}/{ID_TEST}.reconstruction.json"
    return []


# Baselines are runs too (their metrics sit beside the models'), but their embeddings come from the
# QC'd counts, under results/baselines/, so no rule has to choose between embed and baseline.
BASELINES = {baseline_run(kind, config["seed"]): (kind, config["seed"]) for kind in EVALUATE["baselines"]}
RUNS = [*CONFIGURATIONS, *BASELINES]  # every run evaluated: trained configurations, then baselines
# the unintegrated reference for scib-metrics' PCR comparison, made whether or not pca is a baseline
PCA_REFERENCE = baseline_run("pca", config["seed"])


def run_identity(run):
    """What a run is, passed to every job explicitly (nothing parses it back out of the name)."""
    if run in CONFIGURATIONS:
        entry, seed, _ = CONFIGURATIONS[run]
        return {"gene_encoding": entry["gene"], "expression_encoding": entry["expression"], "seed": seed}
    kind, seed = BASELINES[run]
    return {"gene_encoding": "baseline", "expression_encoding": kind, "seed": seed}


def identity_args(wildcards):
    return run_args(wildcards.run)


def run_args(run):
    identity = run_identity(run)
    return [
        "--run",
        run,
        "--gene-encoding",
        identity["gene_encoding"],
        "--expression-encoding",
        identity["expression_encoding"],
        "--seed",
        str(identity["seed"]),
    ]


def embedding_path(run, dataset):
    folder = "embeddings" if run in CONFIGURATIONS else "baselines"
    return f"{RESULTS}/{folder}/{run}/{dataset}.parquet"


def largest_size_runs():
    """Every run but the smaller training sets of a configuration: the study's comparison (and
    scib-metrics' Benchmarker beside it) is at each configuration's largest training set; the smaller
    ones answer the scaling question through the study's metrics."""
    largest = {}
    for name, (entry, seed, size) in CONFIGURATIONS.items():
        key = (entry["gene"], entry["expression"], seed)
        rank = float("inf") if size is None else size  # fractions < 1 < counts; 'all' is largest
        if key not in largest or rank > largest[key][1]:
            largest[key] = (name, rank)
    return [*(name for name, _ in largest.values()), *BASELINES]


BENCHMARKED_RUNS = largest_size_runs()


def embeddings_of(wildcards):
    return [embedding_path(run, wildcards.dataset) for run in BENCHMARKED_RUNS]


def metric_tables():
    return [
        *expand(f"{RESULTS}/metrics/{{run}}/{{dataset}}.parquet", run=RUNS, dataset=EVAL_DATASETS),
        *expand(
            f"{RESULTS}/metrics/{{run}}/{{dataset}}.parquet",
            run=CONFIGURATIONS,
            dataset=[d for d in SCORED if d not in EVAL_DATASETS],
        ),
        *expand(f"{RESULTS}/metrics/{{run}}/reconstruction.parquet", run=CONFIGURATIONS),
        *expand(f"{RESULTS}/metrics/scib_benchmarker/{{dataset}}.parquet", dataset=BENCHMARKER_DATASETS),
    ]


def all_targets():
    return [
        *[corpus_dir(c) for c in CORPORA],
        f"{RESULTS}/tables/corpus_stats.csv",
        f"{RESULTS}/esm/{ESM['name']}/coverage.json",
        *[model_status(run) for run in CONFIGURATIONS],
        f"{RESULTS}/tables/summary.csv",
        f"{RESULTS}/figures/fig1_batch_vs_bio.png",
        f"{RESULTS}/leakage.json",
        f"{RESULTS}/provenance.json",
        f"{RESULTS}/tables/gene_probes.csv",
    ]


def comparison_caveat():
    """Why this run's numbers are not comparable with the study's (printed on every figure)."""
    reasons = []
    training = [DATASETS[d] for d in TRAIN_DATASETS]
    if any(d["source"]["type"] == "demo" for d in training):
        reasons.append("demo data (simulated cells)")
    model = PRETRAIN["model"]
    if (model["d_model"], model["n_layers"]) != (512, 12):
        reasons.append(f"model d {model['d_model']}, {model['n_layers']} layers (study: 512, 12)")
    if PRETRAIN["train"].get("max_steps"):
        reasons.append(f"{PRETRAIN['train']['max_steps']} training steps")
    if not reasons:
        return ""
    return "Not the study's setup: " + "; ".join(reasons) + ". Agreement here is not a reproduction."


LEAKAGE = config.get("leakage", {"policy": "report"})


def leakage_inputs():
    """What the leakage audit reads of each dataset (roles, QC and raw files, the config source)."""
    return [
        {"name": d, "role": DATASETS[d]["role"], "qc": qc_h5ad(d), "raw": raw_h5ad(d), "source": DATASETS[d]["source"]}
        for d in [*TRAIN_DATASETS, *EVAL_DATASETS]
    ]


def tokenize_exclusions(wildcards):
    """The training corpus waits for the audit: under 'drop' it leaves the cells listed there out,
    under 'error' the audit must pass first."""
    if wildcards.corpus == TRAIN_CORPUS and LEAKAGE["policy"] in ("drop", "error"):
        return f"{RESULTS}/leakage.json"
    return []


# the embed and evaluate steps' commands: a job's own (one per run and dataset), or a step of a
# `scencode batch` job (jobs_per_run: one per run)
def embed_outputs(run, dataset):
    base = f"{RESULTS}/embeddings/{run}/{dataset}"
    return {"parquet": f"{base}.parquet", "h5ad": f"{base}.h5ad", "reconstruction": f"{base}.reconstruction.json"}


def embed_argv(run, dataset, threads):
    """`scencode embed` of one run on one dataset: the job's command, or one step of a batch."""
    corpus = embedded_corpus_of(dataset)
    out = embed_outputs(run, dataset)
    return [
        *["embed", "--model", model_status(run), "--corpus", corpus, "--run", run, "--dataset", dataset],
        *(["--split", "test"] if dataset in IN_DISTRIBUTION else []),
        *(["--unseen-genes", "include"] if dataset == ID_TEST_UNSEEN else []),
        *["--params", as_json(embed_loader(run)), "--threads", str(threads)],
        *["--out", out["parquet"], "--h5ad", out["h5ad"], "--reconstruction", out["reconstruction"]],
    ]


def scored_datasets(run):
    """Models are scored in distribution too (their training corpus's test split); baselines are not."""
    return SCORED if run in CONFIGURATIONS else EVAL_DATASETS


def metrics_path(run, dataset):
    return f"{RESULTS}/metrics/{run}/{dataset}.parquet"


def evaluate_inputs(run, dataset):
    # models only: the context diagnostic of the embed job (baselines reconstruct nothing)
    reconstruction = embed_outputs(run, dataset)["reconstruction"] if run in CONFIGURATIONS else None
    return embedding_path(run, dataset), reconstruction


def evaluate_argv(run, dataset, threads):
    """`scencode evaluate` of one run's embedding of one dataset: the job's command, or one step of a batch."""
    embedding, reconstruction = evaluate_inputs(run, dataset)
    return [
        *["evaluate", "--embedding", embedding, *(["--reconstruction", reconstruction] if reconstruction else [])],
        *[*run_args(run), "--dataset", dataset, "--params", as_json(EVAL_METRICS)],
        *["--threads", str(threads), "--out", metrics_path(run, dataset)],
    ]
