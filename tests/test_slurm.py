"""`snakemake --profile slurm` against a real single-node SLURM cluster on 127.0.0.1.

The cluster (scripts/local-slurm.sh: munge, slurmctld, slurmd from Debian's packages) declares two
fake GPUs as a GRES, so pretrain jobs are scheduled the way a GPU cluster schedules them and then
run on the CPU. Skipped where the cluster cannot be started (not root, no apt), unless
SCENCODE_REQUIRE_SLURM=1 (as in CI), where that is a failure.
"""

import os
import re
import shutil
import subprocess

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
    def three_datasets_of_200_cells(rows):
        rows = [row for row in rows if row["dataset"] in {"sim_lung_1", "sim_kidney_1", "sim_lung_eval"}]
        for row in rows:
            row["n_cells"] = 200
            if row["role"] == "train":
                row["label_key"] = ""  # no in-distribution set: the submission is what this test checks
        return rows

    config = edit_datasets(small_config(), folder, three_datasets_of_200_cells)
    config["pretrain"]["configurations"] = config["pretrain"]["configurations"][:2]
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
    assert all(re.search(r"TresPerJob=gres[:/]gpu[:=]1", info) for info in pretrain_jobs), pretrain_jobs[0]
    for entry in config["pretrain"]["configurations"]:
        best = tmp_path / "results" / "models" / f"{entry['gene']}-{entry['expression']}-s0" / "best.pt"
        assert torch.load(best, weights_only=True)["model"]
