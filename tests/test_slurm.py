"""`snakemake --profile slurm` against a real single-node SLURM cluster on 127.0.0.1.

The cluster (scripts/local-slurm.sh: munge, slurmctld, slurmd from Debian's packages) declares two
fake GPUs as a GRES, so pretrain jobs are scheduled the way a GPU cluster schedules them and then
run on the CPU. Skipped where the cluster cannot be started (not root, no apt), unless
SCENCODE_REQUIRE_SLURM=1 (as in CI), where that is a failure.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import REPO
from workflow_helpers import edit_datasets, planned_jobs, small_config, snakemake

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def cluster():
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "local-slurm.sh"), "start"], capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0 or not shutil.which("sbatch"):
        if os.environ.get("SCENCODE_REQUIRE_SLURM") == "1":
            pytest.fail(f"local SLURM cluster did not start: {result.stderr[-2000:]}")
        pytest.skip("no local SLURM cluster (needs root and Debian's slurm packages)")
    return result.stdout


def tiny_config(folder):
    """Two configurations of 200-cell datasets; the first trains on 2 processes (the cluster's two
    fake GPUs), with 2 micro-batches a step and no dropout, so its loss curve can be compared."""

    def three_datasets_of_200_cells(rows):
        rows = [row for row in rows if row["dataset"] in {"sim_lung_1", "sim_kidney_1", "sim_lung_eval"}]
        for row in rows:
            row["n_cells"] = 200
            if row["role"] == "train":
                row["label_key"] = ""  # no in-distribution set: the submission is what this test checks
        return rows

    config = edit_datasets(small_config(), folder, three_datasets_of_200_cells)
    config["pretrain"]["configurations"] = config["pretrain"]["configurations"][:2]
    first = config["pretrain"]["configurations"][0]
    first.update(gpus=2, train_cells=["all"], train={"grad_accum": 2})
    config["pretrain"]["model"]["dropout"] = 0.0
    return config


def node_sized_profile(tmp_path):
    """The project's workflow profile with memory, CPUs and runtime shrunk to the 2-CPU test node,
    as a site would override the rules' computed requests (scencode.plan); the GPU requests
    (pretrain, embed, reconstruction) stay as the rules compute them."""
    from helpers import GPU_RULES as GPU_STAGES

    profile = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    shrink = {"mem_mb": 1500, "cpus_per_task": 1, "runtime": 20}
    profile["default-resources"].update(shrink)
    profile.setdefault("set-resources", {})
    sized = ("download", "qc", "tokenize", *GPU_STAGES, "evaluate", "scib_benchmarker")
    for rule in sized:
        profile["set-resources"].setdefault(rule, {}).update(mem_mb=1500, runtime=20)
    profile["set-threads"] = {rule: 1 for rule in sized}
    folder = tmp_path / "node_profile"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


def test_profile_submits_every_job_to_slurm_with_gpus_for_pretraining(cluster, tmp_path):
    config = tiny_config(tmp_path)
    models = [
        f"results/models/{e['gene']}-{e['expression']}-s0/model.json" for e in config["pretrain"]["configurations"]
    ]
    result = snakemake(
        tmp_path,
        config,
        "--profile",
        str(REPO / "slurm"),
        "--workflow-profile",
        str(node_sized_profile(tmp_path)),
        "--jobs",
        "4",
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "2",
        *models,
        timeout=1500,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    job_ids = re.findall(r"SLURM jobid (\d+)", output)
    planned = planned_jobs(result)
    assert planned["pretrain"] == 2 and len(job_ids) == sum(planned.values())  # every job went through sbatch
    pretrain_jobs = []
    for job in job_ids:
        info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        if "pretrain" in info:
            pretrain_jobs.append(info)
    assert len(pretrain_jobs) == 2
    one_gpu = next(info for info in pretrain_jobs if "esm2-hard" in info)
    assert re.search(r"TresPerJob=gres[:/]gpu[:=]1", one_gpu), one_gpu
    for entry in config["pretrain"]["configurations"]:
        best = tmp_path / "results" / "models" / f"{entry['gene']}-{entry['expression']}-s0" / "best.pt"
        assert torch.load(best, weights_only=True)["model"]
    two_gpus = next(info for info in pretrain_jobs if "learned-soft" in info)
    assert re.search(r"TresPerJob=gres[:/]gpu[:=]2", two_gpus) and re.search(r"NumTasks=1\b", two_gpus), two_gpus
    the_same_on_one_process(tmp_path, output, "learned-soft-s0")


def the_same_on_one_process(workdir, output, run):
    """The 2-process job's loss curve is the one its own command gives on one process."""
    command = next(
        shlex.split(line[line.index("scencode pretrain") :])
        for line in output.splitlines()
        if "scencode pretrain" in line and f"--name {run} " in line
    )
    command = [sys.executable, "-m", *command[: command.index(">")]]
    command[command.index("--gpus") + 1] = "1"
    command[command.index("--out") + 1] = str(workdir / "one_process")
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    status = json.loads((workdir / "results" / "models" / run / "model.json").read_text())
    assert status["ranks"] == {"world_size": 2}
    two = pd.read_parquet(workdir / "results" / "models" / run / "train_log.parquet")
    one = pd.read_parquet(workdir / "one_process" / "train_log.parquet")
    assert len(two) == len(one) > 2
    np.testing.assert_allclose(two.train_loss, one.train_loss, rtol=1e-5, equal_nan=True)


def test_sbatch_asks_for_the_gpus_and_nodes_of_a_multi_gpu_job_as_the_plugin_maps_them(tmp_path):
    """The pretrain rule's resources for 1 node × 4 GPUs and 2 nodes × 4 GPUs, through the SLURM
    executor plugin's own submit-string code: one task (no --ntasks-per-gpu: with it the plugin ran
    a 2-GPU job's command twice, its issues #316/#459), GPUs per node across nodes."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    config = small_config()
    config["pretrain"]["train"]["grad_accum"] = 8
    config["pretrain"]["configurations"] = [
        {"gene": "learned", "expression": "soft", "gpus": 4},
        {"gene": "esm2", "expression": "hard", "gpus": 4, "nodes": 2},
    ]
    result = snakemake(tmp_path, config, "-n", "-p", "--config", "use_gpus=true", "--forcerun", "pretrain")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = pretrain_jobs_of(result.stdout)
    one_node, two_nodes = jobs["learned-soft-s0"], jobs["esm2-hard-s0"]

    one = sbatch(get_submit_command, set_gres_string, one_node["resources"])
    assert "--gpus=4" in one and "--nodes=1" in one and "--gres" not in one and "--ntasks-per-gpu" not in one
    assert "torchrun" not in one_node["shell"] and "--gpus 4 --nodes 1" in one_node["shell"]
    assert not one_node["shell"].startswith("srun")

    two = sbatch(get_submit_command, set_gres_string, two_nodes["resources"])
    assert "--gres=gpu:4" in two and "--nodes=2" in two and "--ntasks=2" in two
    assert "--gpus=" not in two and "--ntasks-per-gpu" not in two  # 4 on each node, one task (torchrun) per node
    assert two_nodes["shell"].startswith("srun --nodes 2 --ntasks-per-node 1 ")
    assert "--gpus 4 --nodes 2" in two_nodes["shell"]

    # the pitfall guarded against: a site's default `tasks: 1` on the same job without tasks_per_gpu
    # gives --ntasks-per-gpu=1, four tasks, and the command run once per task
    pitfall = {k: v for k, v in one_node["resources"].items() if k != "tasks_per_gpu"}
    assert "--ntasks-per-gpu=1" in sbatch(get_submit_command, set_gres_string, {**pitfall, "tasks": 1})
    assert "--ntasks-per-gpu" not in sbatch(get_submit_command, set_gres_string, {**one_node["resources"], "tasks": 1})


class _Resources(dict):
    __getattr__ = dict.__getitem__


def sbatch(get_submit_command, set_gres_string, resources: dict) -> str:
    job = SimpleNamespace(resources=_Resources(resources), threads=int(resources.get("_cores", 8)))
    params = dict(run_uuid="u", slurm_logfile="log", comment_str="c", account="", partition="", workdir="")
    return get_submit_command(job, params) + set_gres_string(job)


def pretrain_jobs_of(dry_run: str) -> dict[str, dict]:
    """Each pretrain job's resources and shell command from a dry run's listing."""
    jobs, current = {}, None
    for line in dry_run.splitlines():
        line = line.strip()
        if line.startswith("rule "):
            current = {} if line == "rule pretrain:" else None
        elif current is not None and line.startswith("wildcards: run="):
            jobs[line.split("=", 1)[1]] = current
        elif current is not None and line.startswith("resources:"):
            current["resources"] = dict(_resource(item) for item in line.split(":", 1)[1].split(", "))
        elif current is not None and line.startswith("Shell command:"):
            current["shell"] = line.removeprefix("Shell command:").strip()
    return jobs


def _resource(item: str) -> tuple[str, object]:
    key, value = item.strip().split("=", 1)
    return key, int(value) if value.isdigit() else value
