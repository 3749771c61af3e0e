"""Run the workflow in a scratch folder with a small version of the demo config."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO

# diverges at its first step, before any validation: no model, which the tables must report
DIVERGING = {"gene": "learned", "expression": "continuous",
             "train": {"lr": 1.0e30, "warmup_steps": 1, "on_nonfinite": "finish"}}
DIVERGING_NAME = "learned-continuous-s0"


def demo_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def small_config(n_cells: int = 300) -> dict:
    config = copy.deepcopy(demo_config())
    for spec in config["datasets"].values():
        if spec["source"]["type"] == "demo" and spec["source"]["name"] != "pbmc68k_reduced":
            spec["source"]["n_cells"] = n_cells
    config["tokenize"]["cells_per_shard"] = 200
    pretrain = config["pretrain"]
    # the reference expression encoding (soft), a frozen-table gene encoding with per-cell bins, and a
    # run that diverges; every other encoding is covered by the registry-parametrised unit tests
    pretrain["configurations"] = [{"gene": "learned", "expression": "soft"}, {"gene": "esm2", "expression": "hard"},
                                  DIVERGING]
    pretrain["train"].update(max_steps=4, val_every=2, checkpoint_every=2, log_every=2)
    del config["datasets"]["sim_blood_eval"]  # one simulated and the real (pbmc68k) evaluation dataset
    return config


def snakemake(workdir: Path | None, config: dict | None, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Snakemake run from the repository root, as a user runs it (./Snakefile and the workflow profile
    in ./profiles/default found without flags), in ``workdir`` (None: the repository itself)."""
    cmd = [sys.executable, "-m", "snakemake"]
    if workdir is not None:
        cmd += ["--directory", str(workdir)]
    if config is not None:
        path = workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        cmd += ["--configfile", str(path)]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts from a dry run's 'Job stats' table."""
    counts, in_table = {}, False
    for line in (result.stdout + "\n" + result.stderr).splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if not parts or parts[0] == "total":
                if counts:
                    break
                continue
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
    return counts
