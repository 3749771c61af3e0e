"""The paper's run rehearsed on Census-shaped data: every job's wall time and peak memory against
what its rule asked of the cluster (``runtime``, ``mem_mb``) and against ``scencode plan``'s
estimate. Prints, as its last line, one JSON object with per stage: jobs, the largest
measured/asked for runtime and memory, and measured/estimate (none for the GPU stages, whose tiny
models on CPUs are not what is rehearsed, and for stages the plan does not size).

    python benchmarks/rehearsal.py --train-scale 0.01 --eval-scale 0.1 [--workdir rehearsal] [--cores 2]

It writes the data (benchmarks/census_shaped.py) into ``<workdir>/data`` (kept between runs of the
same scales), ``config/paper.yaml`` with ``config/rehearsal.yaml`` over it into
``<workdir>/config.yaml`` (merged key by key, as Snakemake merges config files, but its ``esm``
section replaces the paper's whole) and runs Snakemake on it in the work folder, resuming where an
earlier run stopped. Asked resources are read from Snakemake's own log
(what it gave each job), measured ones from each job's benchmark file, estimates from
``scencode.plan`` (the same function the rules size their jobs with). ``--record`` keeps the fit of
evaluation time over the datasets' sizes in ``benchmarks/measured.json``, which the plan prices
evaluate jobs from.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [REPO / "config" / "paper.yaml", REPO / "config" / "rehearsal.yaml"]
_spec = importlib.util.spec_from_file_location("census_shaped", REPO / "benchmarks" / "census_shaped.py")
census_shaped = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(census_shaped)


REPLACED = ("esm",)  # sections rehearsal.yaml replaces whole (ESM-2's model and proteins are swapped, not edited)


def merged_config() -> dict:
    """paper.yaml with rehearsal.yaml over it, key by key as Snakemake merges ``--configfile``
    files, except the :data:`REPLACED` sections."""

    def merge(base: dict, over: dict, top: bool = False) -> dict:
        out = dict(base)
        for key, value in over.items():
            deeper = isinstance(value, dict) and isinstance(out.get(key), dict) and not (top and key in REPLACED)
            out[key] = merge(out[key], value) if deeper else value
        return out

    paper, overlay = (yaml.safe_load(path.read_text()) for path in CONFIGS)
    return merge(paper, overlay, top=True)


def rule_stages() -> dict[str, tuple[str, str | None]]:
    """Rule → (the plan's stage, the wildcard naming its dataset or corpus) for rules sized by the plan."""
    out = {}
    for path in (REPO / "workflow" / "rules").glob("*.smk"):
        # a rule may be indented under an `if` (embed and evaluate: one job per dataset, or per run)
        for rule, body in re.findall(r"^\s*rule (\w+):\n(.*?)(?=^\s*rule |\Z)", path.read_text(), re.M | re.S):
            sized = re.search(r'sized\("(\w+)"(?:, "(\w+)")?\)', body)
            if sized:
                out[rule] = (sized.group(1), sized.group(2))
    return out


def jobs_from_log(log: str) -> list[dict]:
    """Each job Snakemake started: rule, wildcards, benchmark file and the resources it was given."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", log):
        head = re.match(r"(?:local)?rule (\w+):", block)
        benchmark = re.search(r"^\s+benchmark: (\S+)", block, re.M)
        if not head or not benchmark:
            continue
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        jobs.append(
            {
                "rule": head.group(1),
                "benchmark": benchmark.group(1),
                "wildcards": dict(kv.split("=", 1) for kv in wildcards.group(1).split(", ")) if wildcards else {},
                "resources": dict(kv.split("=", 1) for kv in resources.group(1).split(", ")) if resources else {},
            }
        )
    return jobs


def measure(workdir: Path, log: str, config: dict) -> pd.DataFrame:
    """One row per finished job: measured wall minutes and peak MB, asked runtime and mem_mb, estimate."""
    from scencode.plan import job_resources
    from scencode.workflow_config import check

    sized_config = {**config, "datasets": check(config)}
    stages = rule_stages()
    rows = []
    for job in jobs_from_log(log):
        path = workdir / job["benchmark"]
        if not path.exists():
            continue
        bench = pd.read_csv(path, sep="\t").iloc[-1]
        stage, key = stages.get(job["rule"], (None, None))
        run = job["wildcards"].get("run")
        asked = job_resources(stage, sized_config, job["wildcards"].get(key), run) if stage else {}
        # a GPU stage runs a tiny model on CPUs here: its estimate (the paper's model on a GPU) is not rehearsed
        estimate = None if asked.get("gpu") else asked.get("estimate_min")
        dataset = job["wildcards"].get(key) if key else None
        rows.append(
            {  # a job run again (after a change) appears twice in the log: the last one counts
                "rule": job["rule"],
                "cells": _cells(sized_config, dataset),
                "job": job["benchmark"],
                "run": run,
                "wall_min": float(bench["s"]) / 60,
                "peak_mb": float(bench["max_rss"]) if str(bench["max_rss"]) != "-" else float("nan"),
                "runtime_min": float(job["resources"].get("runtime", "nan")),
                "mem_mb": float(job["resources"].get("mem_mb", "nan")),
                "estimate_min": estimate,
            }
        )
    return pd.DataFrame(rows).drop_duplicates("job", keep="last")


def _cells(config: dict, dataset: str | None) -> int | None:
    """A job's cells: its dataset's, or the training corpus's (its datasets together: tokenize)."""
    from scencode.workflow_config import TRAIN_CORPUS

    datasets = config["datasets"]
    if dataset == TRAIN_CORPUS:
        return sum(spec.get("n_cells") or 0 for spec in datasets.values() if spec["role"] == "train")
    return datasets.get(dataset, {}).get("n_cells") if dataset else None


# the size fits the plan takes a CPU stage's minutes from (scencode.plan.FITS) → the rule they fit
FITTED = {"qc": "qc", "tokenize": "tokenize", "evaluate": "evaluate", "evaluate_clustered": "evaluate"}


def fit_jobs(jobs: pd.DataFrame, fit: str) -> pd.DataFrame:
    """The jobs a fit is made from; evaluate's split as the plan prices them (scencode.plan.FITS):
    the expression's own embeddings (clustered) apart from models and the random baseline."""
    from scencode.plan import is_clustered

    part = jobs[(jobs.rule == FITTED[fit]) & jobs.cells.notna()]
    if FITTED[fit] == "evaluate":
        clustered = part.run.map(lambda run: isinstance(run, str) and is_clustered(run))
        part = part[clustered] if fit == "evaluate_clustered" else part[~clustered]
    return part


def fit_sizes(jobs: pd.DataFrame, fit: str) -> dict | None:
    """minutes = c + a·(n/1000)^b over a fit's jobs (per size, the slowest: the plan asks for every
    job what the slowest needs), least squares in scipy. The constant is the job's start-up (imports,
    reading the inputs' headers), which dominates small jobs. Absolute, not relative, errors: the
    largest jobs set the curve, as the extrapolation to the largest datasets must be safe (Leiden on
    a structureless embedding: 8 min at 25,834 cells, 26 at 36,715, ~3.5 h at 72,290; a curve
    through the small sizes extrapolates to 43 min there, and SLURM would kill the job)."""
    from scipy.optimize import curve_fit

    per = fit_jobs(jobs, fit).groupby("cells").wall_min.max()
    if len(per) < 4:
        return None
    n, minutes = per.index.to_numpy(float), per.to_numpy()
    (a, b, c), _ = curve_fit(
        lambda x, a, b, c: c + a * (x / 1000) ** b, n, minutes, p0=(0.3, 1.2, 0.1), bounds=([0, 0.5, 0], [100, 4, 10])
    )
    return {"a": float(a), "b": float(b), "c": float(c), "low": int(n.min()), "high": int(n.max())}


def per_stage(jobs: pd.DataFrame) -> dict:
    out = {}
    for rule, part in jobs.groupby("rule"):
        estimate = part.estimate_min.dropna()
        out[rule] = {
            "jobs": len(part),
            "wall_min_median": round(float(part.wall_min.median()), 3),
            "wall_min_max": round(float(part.wall_min.max()), 3),
            "peak_mb_max": round(float(part.peak_mb.max()), 1),
            "runtime_asked_min": float(part.runtime_min.max()),
            "mem_asked_mb": float(part.mem_mb.max()),
            "max_runtime_ratio": round(float((part.wall_min / part.runtime_min).max()), 4),
            "max_memory_ratio": round(float((part.peak_mb / part.mem_mb).max()), 4),
            "measured_over_estimate": (
                round(float(part.wall_min[estimate.index].sum() / estimate.sum()), 3) if estimate.sum() > 0 else None
            ),
        }
    return out


def priced_by_fit(jobs: pd.DataFrame) -> dict:
    """This run's jobs against the plan's estimate, per size fit that priced them: measured/estimate
    over the fit's jobs (summed) and its range over single jobs (evaluate: each embedding's own)."""
    out = {}
    for fit in FITTED:
        part = fit_jobs(jobs, fit).dropna(subset=["estimate_min"])
        ratio = part.wall_min / part.estimate_min
        if len(part):
            out[fit] = {
                "jobs": len(part),
                "cells": [int(part.cells.min()), int(part.cells.max())],
                "measured_over_estimate": round(float(part.wall_min.sum() / part.estimate_min.sum()), 3),
                "per_job": [round(float(ratio.min()), 3), round(float(ratio.max()), 3)],
            }
    return out


def generate(data: Path, stamp: dict) -> None:
    """The Census-shaped data of these scales, unless the folder holds them already."""
    if (data / "stamp.json").exists() and json.loads((data / "stamp.json").read_text()) == stamp:
        return
    scales = ["--train-scale", str(stamp["train_scale"]), "--eval-scale", str(stamp["eval_scale"])]
    census_shaped.main(["--out", str(data), *scales] + (["--limit", str(stamp["limit"])] if stamp["limit"] else []))
    (data / "stamp.json").write_text(json.dumps(stamp))


def run_snakemake(workdir: Path, cores: int, targets: list[str]) -> None:
    """Snakemake on the work folder, resuming where an earlier run stopped; its log is appended to."""
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(workdir / "config.yaml"), "--cores", str(cores), "--rerun-incomplete", *targets,
    ]  # fmt: skip
    # the rules call `scencode`: the one beside this interpreter, activated or not
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    with open(workdir / "snakemake.log", "a") as log:  # every run's jobs: a resumed run starts only the rest
        log.write(run.stdout + run.stderr)
    if run.returncode != 0:
        print(run.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"rehearsal: snakemake failed (exit {run.returncode}); log: {workdir / 'snakemake.log'}")


def pooled_jobs(path: Path) -> pd.DataFrame:
    """Another rehearsal's jobs.csv; one written before jobs had a ``run`` column takes it from the
    benchmark file's path (logs/benchmarks/evaluate/<run>/<dataset>.tsv)."""
    jobs = pd.read_csv(path)
    if "run" not in jobs:
        jobs["run"] = jobs.job.str.extract(r"/evaluate/([^/]+)/", expand=False)
    return jobs


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-scale", type=float, default=0.01)
    p.add_argument("--eval-scale", type=float, default=0.1)
    p.add_argument("--workdir", type=Path, default=Path("rehearsal"))
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--limit", type=int, help="only the first N datasets of each paper sheet (smoke runs)")
    p.add_argument("--target", nargs="*", default=[], help="Snakemake targets (default: the whole run)")
    p.add_argument(
        "--record",
        nargs="*",
        metavar="FIT",
        help=f"keep these size fits (none named: all) in benchmarks/measured.json: {', '.join(FITTED)}",
    )
    p.add_argument(
        "--measure-only", action="store_true",
        help="run nothing: price the work folder's jobs so far (its Snakemake log) under today's plan",
    )  # fmt: skip
    p.add_argument(
        "--pool", nargs="*", type=Path, default=[], metavar="JOBS_CSV",
        help="other rehearsals' jobs.csv, pooled into the fits (e.g. the training side at train scale 0.1 "
        "with the evaluation side at eval scale 1); the stages' table stays this run's",
    )  # fmt: skip
    args = p.parse_args(argv)
    workdir, pool = args.workdir.resolve(), [path.resolve() for path in args.pool]
    data = workdir / "data"
    stamp = {"train_scale": args.train_scale, "eval_scale": args.eval_scale, "limit": args.limit}
    config = merged_config()
    start = time.perf_counter()
    if not args.measure_only:
        generate(data, stamp)
        (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        run_snakemake(workdir, args.cores, args.target)
    os.chdir(workdir)  # the config's relative paths (sheets, protein genes) are the work folder's
    jobs = measure(workdir, (workdir / "snakemake.log").read_text(), config)
    jobs.to_csv(workdir / "jobs.csv", index=False)
    result = {
        **stamp,
        "cells": {role: int(pd.read_csv(data / f"{role}.tsv", sep="\t").n_cells.sum()) for role in ("train", "eval")},
        "wall_s": round(time.perf_counter() - start, 1),
        "jobs": len(jobs),
        "stages": per_stage(jobs),
    }
    pooled = pd.concat([jobs, *(pooled_jobs(path) for path in pool)], ignore_index=True)
    result["fits"] = {fit: fit_sizes(pooled, fit) for fit in FITTED}
    result["priced_by_fit"] = priced_by_fit(jobs)
    if args.record is not None:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from record import record

        runs = [f"train scale {args.train_scale}, eval scale {args.eval_scale}"] + [str(path) for path in pool]
        for name, fit in result["fits"].items():
            if fit and (not args.record or name in args.record):
                jobs_of = fit_jobs(pooled, name)
                detail = (
                    f"rehearsal ({'; '.join(runs)}): {len(jobs_of)} jobs on {fit['low']:,}–{fit['high']:,} "
                    f"cells, the slowest job per size"
                )
                record(f"{name}_minutes", fit, "minutes = c + a·(cells/1000)^b", "benchmarks/rehearsal.py", detail)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
