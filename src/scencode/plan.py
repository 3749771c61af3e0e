"""What a configured run costs before any job is submitted, and what each job asks the cluster for.

Estimate = work (from config: cells per dataset, model size, epochs, ESM-2 parameters × residues)
÷ throughput. Every throughput in :data:`THROUGHPUT` says where it comes from: ``measured`` (the
benchmark and the machine) or ``assumed`` (to be replaced by a measurement). The workflow's rules
take their resources from :func:`job_resources`, so the plan and the submitted jobs agree by
construction; a site overrides any of them in one place, the workflow profile's ``set-resources``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .run_config import RunSettings, block_params, needs_gene_medians, parsed_run_settings
from .workflow_config import ID_TEST, ID_TEST_UNSEEN, pretrain_processes

IN_DISTRIBUTION = (ID_TEST, ID_TEST_UNSEEN)  # the training corpus's test split, as trained and with unseen genes

MEASURED_MODEL = {"d_model": 512, "n_layers": 12, "d_ff": 1024}  # the model the GPU rate was measured on


@dataclass(frozen=True)
class Rate:
    value: float
    unit: str
    source: str  # "measured: …" or "assumed: …"


# What each throughput is assumed to be until a benchmark measures it: benchmarks/measured.json
# (written by the benchmarks' --record) replaces these with measured figures, dated, with their commit.
ASSUMED = {
    "train_real_tokens_per_gpu_s": Rate(
        500_000, "real tokens/s (forward + backward)", "assumed: d 512 x 12 layers, bf16, one recent GPU"
    ),
    "esm_flop_per_gpu_s": Rate(
        1.0e14, "FLOP/s", "assumed: 10% of an H100's dense bf16 peak (fp32 weights, ragged batches)"
    ),
    "qc_cells_per_s": Rate(2_000, "cells/s", "assumed: chunked h5ad read, filter, write on one core"),
    "tokenize_cells_per_s": Rate(5_000, "cells/s", "assumed: 2 cores"),
    "download_bytes_per_s": Rate(50e6, "bytes/s", "assumed: 50 MB/s from CELLxGENE's S3"),
    "evaluate_cells_per_s": Rate(300, "cells/s", "assumed: 2 cores"),
    "gene_medians_cells_per_s": Rate(20_000, "cells/s", "assumed: one thread, ≈2,000 genes a cell"),
}
MEASURED = Path(__file__).resolve().parents[2] / "benchmarks" / "measured.json"


def measured_throughputs(path: Path = MEASURED) -> dict[str, Rate]:
    """The assumed throughputs, each replaced by the project's own measurement where one exists."""
    import json

    measured = json.loads(path.read_text()) if path.exists() else {}
    rates = dict(ASSUMED)
    for key, m in measured.items():
        if key in rates:
            rates[key] = Rate(
                m["value"],
                m["unit"],
                f"measured: {m['benchmark']}, {m['detail']}, {m['machine']}, {m['date']}, commit {m['commit']}",
            )
    return rates


THROUGHPUT = measured_throughputs()


@dataclass(frozen=True)
class SizeFit:
    """A job's minutes as a function of its cells, fitted over measured jobs of ``low``–``high``
    cells: ``c + a·(n/1000)^b`` (evaluation grows faster than n: Leiden, the graph LISI)."""

    a: float
    b: float
    c: float
    low: int
    high: int
    source: str

    def minutes(self, n: float) -> float:
        return self.c + self.a * (n / 1000) ** self.b

    def describe(self) -> str:
        return (
            f"{self.c:.2f} + {self.a:.3g}·(cells/1000)^{self.b:.2f} minutes, fitted on {self.low:,}–{self.high:,} "
            f"cells ({self.source}); beyond {self.high:,} cells extrapolated"
        )


def measured_fit(key: str, path: Path = MEASURED) -> SizeFit | None:
    """A size fit a benchmark recorded in measured.json (``value``: {a, b, c, low, high})."""
    import json

    entry = (json.loads(path.read_text()) if path.exists() else {}).get(key)
    if entry is None:
        return None
    v = entry["value"]
    source = f"measured: {entry['benchmark']}, {entry['detail']}, {entry['machine']}, {entry['date']}, commit {entry['commit']}"
    return SizeFit(float(v["a"]), float(v["b"]), float(v["c"]), int(v["low"]), int(v["high"]), source)


# a job's minutes from its cells where the rehearsal measured them (None: the linear rate above); QC
# and tokenize carry a per-job constant (start-up, imports) that a rate alone leaves out. Evaluation
# has two: Leiden on an embedding without clusters (the random baseline, a model that learned
# nothing) iterates far longer than on one with clusters (measured at 72,290 cells: ~4 h of Leiden
# against 24 min for the PCA baseline's). Models are priced as the former: their ask must cover a
# model that learned nothing, since SLURM kills a job at its ask.
FITS = {stage: measured_fit(f"{stage}_minutes") for stage in ("qc", "tokenize", "evaluate", "evaluate_clustered")}
CLUSTERED_BASELINES = ("pca", "scvi")  # embeddings of the expression itself: its clusters are the data's
FIT_LABELS = {
    "evaluate": "evaluate job (models, random baseline)",
    "evaluate_clustered": f"evaluate job ({', '.join(CLUSTERED_BASELINES)})",
}


def baseline_run(kind: str, seed: int) -> str:
    """A baseline's run name, as its embeddings and metrics are filed: ``baseline-pca-s777``."""
    return f"baseline-{kind}-s{seed}"


def is_clustered(run: str | None) -> bool:
    """Whether a run's embedding is one of the expression's own (a clustered baseline)."""
    return bool(run and run.startswith("baseline-") and run.split("-")[1] in CLUSTERED_BASELINES)


def evaluate_fit_key(run: str | None) -> str:
    """Which evaluate fit prices a run's evaluation: the clustered one for the expression's own
    embeddings (where measured), else the structureless one (models, the random baseline)."""
    return "evaluate_clustered" if is_clustered(run) and FITS["evaluate_clustered"] else "evaluate"


def _minutes(fit_key: str, cells: float, rate_key: str) -> float:
    fit = FITS.get(fit_key)
    return fit.minutes(cells) if fit else cells / THROUGHPUT[rate_key].value / 60


ASSUMED_CELLS = 50_000  # a dataset whose size config does not give (n_cells)
ASSUMED_RESIDUES = 60e6  # Ensembl 114 peptides, every isoform (≈120,000 sequences)
BYTES_PER_CELL_H5AD = 8_000  # ≈2,000 non-zero genes × (4 B value + 4 B index), before compression
LEIDEN_THREADS = 5  # an evaluate job's threads on large datasets: scib's ten Leiden resolutions in two rounds
SAFETY = 2.0  # runtime asked = estimate × SAFETY + 10 minutes


# DDP's scaling efficiency (assumed: no multi-GPU machine measured it here). The gradient all-reduce
# overlaps the backward pass; for a model of the study's size (~40M weights, 160 MB of fp32 gradients
# per step of 32 micro-batches) ~90 % within a node (NVLink) and ~80 % across nodes (InfiniBand) are
# what DDP reaches on such models. A job on G GPUs runs G × efficiency times as fast as on one and
# costs 1 / efficiency times its GPU-hours.
SCALING_EFFICIENCY = {"one node": 0.9, "several nodes": 0.8}


def scaling_efficiency(gpus_per_node: int, nodes: int) -> float:
    if gpus_per_node * nodes == 1:
        return 1.0
    return SCALING_EFFICIENCY["one node" if nodes == 1 else "several nodes"]


@dataclass
class Job:
    stage: str
    name: str
    gpu: int  # all the job's GPUs (nodes × per node)
    threads: int  # per node
    mem_mb: int  # per node
    runtime_min: int  # asked for
    estimate_min: float  # expected
    nodes: int = 1

    @property
    def gpu_hours(self) -> float:
        return self.gpu * self.estimate_min / 60

    @property
    def cpu_hours(self) -> float:
        return self.threads * self.estimate_min / 60


def _runtime(estimate_min: float, floor: int = 30) -> int:
    return max(floor, math.ceil(estimate_min * SAFETY + 10))


def stated_cells(config: dict, name: str) -> int | None:
    """The dataset's size as its sheet row (or source) states it; None where it does not."""
    spec = config["datasets"][name]
    stated = spec.get("n_cells") or spec["source"].get("n_cells")
    return int(stated) if stated else None


def dataset_cells(config: dict, name: str) -> int:
    return stated_cells(config, name) or ASSUMED_CELLS


def _cells(config: dict, role: str) -> dict[str, int]:
    return {d: dataset_cells(config, d) for d, s in config["datasets"].items() if s["role"] == role}


ASSUMED_GENES_PER_CELL = 2_000  # droplet cells hold ≈1,000–3,000 non-zero genes


def _tokens_per_cell(config: dict) -> float:
    """K = min(context, non-zero genes): the corpus's measured mean when its statistics exist."""
    corpus = config.get("_corpus_stats")
    if corpus:
        return corpus["tokens_per_cell"]
    return min(config["pretrain"]["loader"]["context"], ASSUMED_GENES_PER_CELL)


def with_corpus_stats(config: dict, path: Path) -> dict:
    """The config with the training corpus's measured figures (results/tables/corpus_stats.csv),
    when the corpus has been tokenized and its context matches the config's."""
    if not path.exists():
        return config
    from .corpus_stats import read_stats, training_figures

    stats = read_stats(path)
    if stats.is_empty() or int(stats["context"][0]) != config["pretrain"]["loader"]["context"]:
        return config
    return {**config, "_corpus_stats": {**training_figures(stats), "path": str(path)}}


def _proteomes(config: dict) -> int:
    """The proteomes ESM-2 embeds: the training organism's and each other species' with datasets
    (scencode.species), each assumed the size of Ensembl's human pep.all (mouse's is about as large)."""
    from .workflow_config import organism

    return len({organism(spec) for spec in config["datasets"].values()})


def esm2_params(name: str) -> float:
    from .esm.embed import ESM2_MODELS

    layers, dim, _ = ESM2_MODELS[name]
    return block_params(layers, dim, 4 * dim)  # 3B: 2.8e9, 650M: 6.5e8, 15B: 1.5e10


def _model_params(config: dict, run: RunSettings | None = None) -> float:
    m = run.model if run else parsed_run_settings(config, *_first_run(config)).model  # shared: the first's
    return block_params(m.n_layers, m.d_model, m.d_ff)


def _first_run(config: dict) -> tuple:
    from .workflow_config import configurations

    return next(iter(configurations(config).values()))


def run_settings_of(config: dict, run: str | None) -> RunSettings:
    """The settings a run trains with, as the workflow passes them to the trainer (overrides, seed,
    size): the plan prices exactly what runs."""
    from .workflow_config import configurations

    runs = configurations(config)
    return parsed_run_settings(config, *(runs[run] if run in runs else _first_run(config)))


def _loader_mem_mb(config: dict, workers: int) -> float:
    """Host memory of the shuffle pools: batch × bucket_batches cells × tokens × (ids, counts, x̃,
    flags ≈ 16 B), one pool per DataLoader worker and one in flight."""
    loader = config["pretrain"]["loader"]
    pool = loader["batch_size"] * loader.get("bucket_batches", 50) * _tokens_per_cell(config) * 16
    return pool * (workers + 1) / 2**20


def _train_seconds(
    config: dict, cells: float, passes: float, forward_only: bool = False, run: RunSettings | None = None
) -> float:
    rate = THROUGHPUT["train_real_tokens_per_gpu_s"].value
    # the measured rate is at d 512 × 12 layers; other sizes scale with the non-embedding parameters
    scale = _model_params(config, run) / block_params(**MEASURED_MODEL)
    seconds = cells * passes * _tokens_per_cell(config) / rate * scale
    return seconds / 3 if forward_only else seconds


def job_resources(stage: str, config: dict, key: str | None = None, run: str | None = None) -> dict:
    """gpu, threads, mem_mb and runtime (minutes) of one job: ``key`` is its dataset or corpus,
    ``run`` the model's run or baseline it scores (evaluate: the embedding decides the time)."""
    job = _job(stage, config, key, run)
    return {
        "gpu": job.gpu,
        "threads": job.threads,
        "mem_mb": job.mem_mb,
        "runtime": job.runtime_min,
        "estimate_min": job.estimate_min,
        "nodes": job.nodes,
    }


def _job(stage: str, config: dict, key: str | None, embedding: str | None = None) -> Job:
    name = key or ""  # the dataset, corpus or run (none: the ESM-2 table, the shared configuration)
    train, evals = _cells(config, "train"), _cells(config, "eval")
    if stage == "download":
        minutes = dataset_cells(config, name) * BYTES_PER_CELL_H5AD / THROUGHPUT["download_bytes_per_s"].value / 60
        return Job(stage, name, 0, 1, 4000, _runtime(minutes), minutes)
    if stage == "qc":
        from .qc import QCParams  # the defaults are written once, in the stages' settings

        n: float = dataset_cells(config, name)
        chunk = config["qc"].get("chunk_cells", QCParams.chunk_cells)
        # streamed in chunks: one chunk's matrix (in, out, product) + per-cell metrics
        mem = 3000 + 3 * chunk * BYTES_PER_CELL_H5AD * 4 / 2**20 + n * 400 / 2**20
        minutes = _minutes("qc", n, "qc_cells_per_s")
        return Job(stage, name, 0, 1, math.ceil(mem), _runtime(minutes), minutes)
    if stage == "tokenize":
        from .tokenize import TokenizeParams

        n = sum(train.values()) if name == "train" else evals.get(name, ASSUMED_CELLS)
        chunk = config["tokenize"].get("chunk_cells", TokenizeParams.chunk_cells)
        mem = 3000 + 3 * chunk * BYTES_PER_CELL_H5AD * 2 / 2**20
        minutes = _minutes("tokenize", n, "tokenize_cells_per_s")
        return Job(stage, name, 0, 2, math.ceil(mem), _runtime(minutes), minutes)  # a second thread writes
    if stage == "gene_medians":
        n = sum(train.values())
        minutes = n / THROUGHPUT["gene_medians_cells_per_s"].value / 60
        # one histogram of 1,024 counts per gene (≈20,000 in a protein-coding vocabulary), twice, and a shard
        return Job(stage, "train", 0, 1, math.ceil(3000 + 2 * 20_000 * 1024 * 8 / 2**20), _runtime(minutes), minutes)
    if stage == "esm_embeddings":
        model = config["esm"]["model"]
        if model["type"] in ("tiny", "import"):
            return Job(stage, "table", 0, 1, 4000, 60, 5.0)
        params = esm2_params(model["name"]) if model["type"] == "released" else 3e9  # local: size unknown
        minutes = 2 * params * ASSUMED_RESIDUES * _proteomes(config) / THROUGHPUT["esm_flop_per_gpu_s"].value / 60
        # weights in fp32 are loaded once on the host and copied to the GPU
        mem = math.ceil(3 * params * 4 / 2**20 + 16_000)
        return Job(stage, "table", 1, 8, mem, _runtime(minutes, floor=60), minutes)
    if stage == "pretrain":
        run = run_settings_of(config, key)
        cells = _run_train_cells(
            config, name, (config.get("_corpus_stats") or {}).get("train_cells") or sum(train.values())
        )
        steps = run.train.max_steps  # set: the trainer stops there, whatever the epochs
        passes = steps * run.train.grad_accum * run.loader.batch_size / max(cells, 1) if steps else run.train.epochs
        gpus, nodes = pretrain_processes(config, _configuration_of(config, key)[0])
        one_gpu = _train_seconds(config, cells, passes, run=run) / 60
        minutes = one_gpu / (gpus * nodes * scaling_efficiency(gpus, nodes))
        # per node: each process holds its loader's pools and the weights with AdamW's moments
        per_process = 2 * _loader_mem_mb(config, run.train.num_workers) + _model_params(config, run) * 16 / 2**20
        mem = math.ceil(8000 + gpus * per_process)
        return Job(stage, key or "configuration", gpus * nodes, 8 * gpus, mem, _runtime(minutes, 60), minutes, nodes)
    if stage == "embed":
        n = evals.get(name) or (_id_test_cells(config, train) if name in IN_DISTRIBUTION else ASSUMED_CELLS)
        minutes = _train_seconds(config, n, 1, forward_only=True) / 60
        return Job(stage, name, 1, 4, math.ceil(8000 + 2 * _loader_mem_mb(config, 0)), _runtime(minutes), minutes)
    if stage == "reconstruction":
        from .tokenize import TokenizeParams

        fraction = config["tokenize"].get("test_fraction", TokenizeParams.test_fraction)
        minutes = _train_seconds(config, sum(train.values()) * fraction, 1, forward_only=True) / 60
        return Job(
            stage,
            key or "configuration",
            1,
            4,
            math.ceil(8000 + 2 * _loader_mem_mb(config, 0)),
            _runtime(minutes),
            minutes,
        )
    if stage == "evaluate":
        from .evaluate import SCANPY_APPROXIMATE_FROM, EvalParams

        metrics = config["evaluate"].get("metrics", {})
        n = evals.get(name) or (_id_test_cells(config, train) if name in IN_DISTRIBUTION else ASSUMED_CELLS)
        n = min(n, metrics.get("max_cells_scib", EvalParams.max_cells_scib))
        minutes = _minutes(evaluate_fit_key(embedding), n, "evaluate_cells_per_s")
        # 90 exact neighbours (LISI) and the 15-NN graph: float32 distances in blocks, int64 indices
        mem = math.ceil(4000 + n * 90 * 16 * 3 / 2**20)
        # Leiden's ten resolutions side by side from scanpy's approximate-neighbour size on, where
        # they are most of the job; on smaller datasets, or where the sheet states no size (the demo),
        # one thread: jobs then run side by side instead
        stated = all(stated_cells(config, d) for d in (train if name in IN_DISTRIBUTION else [name]))
        threads = LEIDEN_THREADS if stated and n >= SCANPY_APPROXIMATE_FROM else 1
        return Job(stage, name, 0, threads, mem, _runtime(minutes), minutes)
    raise ValueError(f"no resource model for stage {stage!r}")


def _configuration_of(config: dict, run: str | None) -> tuple[dict, int | None, int | float | None]:
    """(entry, seed, training-set size) of a run; a run the config does not name: ({}, None, None)."""
    from .workflow_config import configurations

    return configurations(config).get(run, ({}, None, None)) if run else ({}, None, None)


def _run_train_cells(config: dict, run: str | None, available: float) -> float:
    """The cells a run trains on: its training-set size (``pretrain.train_cells``) of the split."""
    size = _configuration_of(config, run)[2]
    if size is None:
        return available
    return size * available if size < 1 else min(size, available)


def _id_test_cells(config: dict, train: dict[str, int]) -> float:
    """Cells of the training corpus's held-out test split (the in-distribution evaluation set)."""
    from .tokenize import TokenizeParams

    return sum(train.values()) * config["tokenize"].get("test_fraction", TokenizeParams.test_fraction)


def plan_jobs(config: dict) -> list[Job]:
    """Every GPU- or data-heavy job of the run, with its resources and estimate."""
    from .workflow_config import configurations

    runs = list(configurations(config))
    baselines = [baseline_run(kind, config["seed"]) for kind in config["evaluate"].get("baselines", [])]
    datasets = list(config["datasets"])
    evals = [d for d in datasets if config["datasets"][d]["role"] == "eval"]
    jobs = [_job("download", config, d) for d in datasets] + [_job("qc", config, d) for d in datasets]
    jobs += [_job("tokenize", config, c) for c in ["train", *evals]]
    jobs.append(_job("esm_embeddings", config, None))
    unseen = config["pretrain"].get("unseen_genes", 0)
    if unseen or any(needs_gene_medians(entry["expression"]) for entry in config["pretrain"]["configurations"]):
        jobs.append(_job("gene_medians", config, None))
    for run in runs:
        jobs.append(_job("pretrain", config, run))
        jobs.append(_job("reconstruction", config, run))
        jobs += [_job("embed", config, d) for d in evals]
    jobs += [_job("evaluate", config, d, run) for d in evals for run in [*runs, *baselines]]
    if any(config["datasets"][d].get("label_key") for d in datasets if config["datasets"][d]["role"] == "train"):
        scored = IN_DISTRIBUTION if unseen else (ID_TEST,)
        jobs += [_job(stage, config, d, run) for d in scored for run in runs for stage in ("embed", "evaluate")]
    return jobs


def summarise(jobs: list[Job], gpus: int) -> list[dict]:
    """Per stage: jobs, GPU-hours, CPU-hours, peak memory per job, and the stage's wall time on
    ``gpus`` GPUs (GPU stages) or with every CPU job in parallel."""
    rows = []
    for stage in dict.fromkeys(j.stage for j in jobs):
        these = [j for j in jobs if j.stage == stage]
        gpu_h = sum(j.gpu_hours for j in these)
        longest = max(j.estimate_min for j in these) / 60
        # GPU jobs side by side: as many as the GPUs hold at the widest job's size
        side_by_side = max(1, gpus // max(j.gpu for j in these)) if these[0].gpu else 0
        wall = max(sum(j.estimate_min for j in these) / 60 / side_by_side, longest) if side_by_side else longest
        rows.append(
            {
                "stage": stage,
                "jobs": len(these),
                "gpu": bool(these[0].gpu),
                "gpu_hours": gpu_h,
                "cpu_hours": sum(j.cpu_hours for j in these),
                "peak_mem_gb": max(j.mem_mb for j in these) / 1024,
                "max_runtime_asked_h": max(j.runtime_min for j in these) / 60,
                "wall_hours": wall,
            }
        )
    return rows


def disk_gb(config: dict) -> dict[str, float]:
    cells = sum(dataset_cells(config, d) for d in config["datasets"])
    train = sum(_cells(config, "train").values())
    raw = cells * BYTES_PER_CELL_H5AD / 2 / 1e9  # gzip ≈ 2×
    return {"resources": raw, "results": raw * 1.5 + train * _tokens_per_cell(config) * 6 / 1e9}


def render(config: dict, gpus: int = 8) -> str:
    jobs = plan_jobs(config)
    rows = summarise(jobs, gpus)
    out = [f"{'stage':<16}{'jobs':>6}{'GPU-h':>9}{'CPU-h':>9}{'mem/job GB':>12}{'asked h':>9}{'wall h':>9}"]
    for r in rows:
        out.append(
            f"{r['stage']:<16}{r['jobs']:>6}{r['gpu_hours']:>9.1f}{r['cpu_hours']:>9.1f}"
            f"{r['peak_mem_gb']:>12.1f}{r['max_runtime_asked_h']:>9.1f}{r['wall_hours']:>9.2f}"
        )
    # stages run one after the other on the critical path: data → ESM-2 → pretrain → embed → evaluate
    total_wall = sum(r["wall_hours"] for r in rows)
    disk = disk_gb(config)
    out += [
        "",
        f"total: {sum(r['gpu_hours'] for r in rows):.1f} GPU-hours, {sum(r['cpu_hours'] for r in rows):.1f} "
        f"CPU-hours; critical path ≈ {total_wall:.1f} h on {gpus} GPUs (CPU jobs in parallel)",
        f"disk: resources/ ≈ {disk['resources']:.0f} GB, results/ ≈ {disk['results']:.0f} GB",
        "",
        "throughputs:",
    ]
    fitted = {f"{stage}_cells_per_s" for stage, fit in FITS.items() if fit}  # a size fit replaces the rate
    out += [
        f"  {name}: {rate.value:g} {rate.unit} ({rate.source})"
        for name, rate in THROUGHPUT.items()
        if name not in fitted
    ]
    out += [f"  {FIT_LABELS.get(stage, stage + ' job')}: {fit.describe()}" for stage, fit in FITS.items() if fit]
    out.append(pretrain_gpus_line(config))
    corpus = config.get("_corpus_stats")
    if corpus:
        splits = ", ".join(f"{split} {cells:,}" for split, cells in corpus["cells_by_split"].items())
        out.append(
            f"  tokens per cell: {corpus['tokens_per_cell']:,.1f} (measured: {corpus['path']}, the training "
            f"split after the context cap)"
        )
        out.append(f"  training cells: {corpus['train_cells']:,} (measured: same table; cells by split: {splits})")
    else:
        out.append(
            f"  tokens per cell: min(context, {ASSUMED_GENES_PER_CELL:,}) = {_tokens_per_cell(config):g} "
            "(assumed: droplet cells hold ≈1,000–3,000 non-zero genes; tokenize the corpus to measure it)"
        )
    unsized = [d for d, s in config["datasets"].items() if not (s.get("n_cells") or s["source"].get("n_cells"))]
    if unsized:
        out.append(f"  {len(unsized)} dataset(s) without n_cells in config: assumed {ASSUMED_CELLS:,} cells each")
    return "\n".join(out)


def pretrain_gpus_line(config: dict) -> str:
    """How the pretraining jobs are spread over GPUs, and what that is assumed to cost."""
    layouts = sorted({pretrain_processes(config, entry) for entry in config["pretrain"]["configurations"]})
    shown = ", ".join(f"{g} GPU{'s' if g > 1 else ''} × {n} node{'s' if n > 1 else ''}" for g, n in layouts)
    efficiency = ", ".join(f"{k} {v:.0%}" for k, v in SCALING_EFFICIENCY.items())
    return (
        f"  pretrain jobs: {shown} (assumed: DDP scaling efficiency {efficiency} for a job on several GPUs; "
        "its wall time = one GPU's / (GPUs × efficiency); scencode plan --gpus-per-job G shows the trade)"
    )


def with_gpus_per_job(config: dict, gpus: int) -> dict:
    """The config with every configuration's pretraining on ``gpus`` GPUs of one node (a what-if)."""
    from .workflow_config import check_models

    pretrain = {**config["pretrain"], "gpus": gpus, "nodes": 1}
    pretrain["configurations"] = [
        {k: v for k, v in entry.items() if k not in ("gpus", "nodes")} for entry in pretrain["configurations"]
    ]
    config = {**config, "pretrain": pretrain}
    check_models(config)  # grad_accum must still divide over the processes
    return config


def run(configfile: Path = Path("config/config.yaml"), gpus: int = 8, gpus_per_job: int | None = None) -> str:
    """Print what a configured run costs (GPU-/CPU-hours, memory, disk, wall time) on ``gpus`` GPUs
    shared by the pretraining and embedding jobs, before any job is submitted. The config is checked
    as ``snakemake -n`` checks it: a config the workflow refuses is not priced. ``gpus_per_job``:
    price every pretraining job on that many GPUs of one node instead of the config's
    ``pretrain.gpus`` (fewer wall hours, more GPU-hours: the trade)."""
    from .workflow_config import load

    config = load(configfile)
    if gpus_per_job is not None:
        config = with_gpus_per_job(config, gpus_per_job)
    config = with_corpus_stats(config, Path(config["results_dir"]) / "tables" / "corpus_stats.csv")
    text = render(config, gpus=gpus)
    print(text)
    return text
