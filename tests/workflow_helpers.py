"""Run the workflow in a scratch folder with the checked-in test config (.test/), or the demo's."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import yaml
from helpers import REPO

from scencode.workflow_config import read_datasets, sheet_paths

TEST_CONFIG = REPO / ".test" / "config" / "config.yaml"  # Snakemake's convention: the tests' small config
DIVERGING_NAME = "learned-continuous-s0"  # the .test config's run that diverges at its first step


def demo_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def small_config() -> dict:
    """The checked-in test config (.test/config/config.yaml), fresh for each test to edit."""
    return yaml.safe_load(TEST_CONFIG.read_text())


def datasets_of(config: dict) -> dict[str, dict]:
    """The config's datasets as the workflow reads them from its sheet(s)."""
    return read_datasets(config)


def edit_datasets(config: dict, folder: Path, edit) -> dict:
    """A copy of ``config`` whose sheet is the original's rows after ``edit(rows)`` (rows: a list of
    dicts of the sheet's cells, as text), written to ``folder``."""
    rows = []
    for path in sheet_paths(config):
        lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
        header = lines[0].split("\t")
        rows += [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    rows = edit(rows) or rows
    columns = list(dict.fromkeys(key for row in rows for key in row))
    sheet = Path(folder) / "datasets.tsv"
    sheet.write_text(
        "\n".join(["\t".join(columns), *("\t".join(str(row.get(c, "")) for c in columns) for row in rows)]) + "\n"
    )
    return {**copy.deepcopy(config), "datasets": str(sheet)}


def set_cell(dataset: str, column: str, value):
    """An ``edit`` for :func:`edit_datasets`: one cell of one dataset's row."""

    def edit(rows):
        next(row for row in rows if row["dataset"] == dataset)[column] = value

    return edit


def snakemake(
    workdir: Path | None, config: dict | None, *args: str, timeout: int = 1500
) -> subprocess.CompletedProcess:
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
