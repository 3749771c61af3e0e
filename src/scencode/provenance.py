"""What produced a run's results: scencode's version and commit, the versions of the libraries
that compute them, the config's hash (settings and dataset sheets), the Census release, the hardware.
Written as ``results/provenance.json`` and shown in the Snakemake report."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from .atomic import OutputFile, write_json
from .errors import ScencodeError

log = logging.getLogger(__name__)
PACKAGES = (
    "scencode",
    "torch",
    "numpy",
    "scipy",
    "pandas",
    "polars",
    "pyarrow",
    "anndata",
    "scanpy",
    "scib-metrics",
    "scikit-learn",
    "leidenalg",
    "snakemake",
    "fair-esm",
    "cellxgene-census",
)
REPOSITORY = Path(__file__).resolve().parents[2]


def versions() -> dict[str, str | None]:
    """Installed versions (None: not installed)."""
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_commit(folder: Path = REPOSITORY) -> dict:
    """The commit scencode runs from, and whether its tracked files differ from it."""

    def git(*args):
        result = subprocess.run(["git", *args], capture_output=True, text=True, cwd=folder)
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None}


def config_hash(config: dict, sheets: list[Path]) -> str:
    """sha256 over the config's settings and its sheets' contents: equal hashes, same inputs."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for sheet in sheets:
        digest.update(Path(sheet).read_bytes())
    return digest.hexdigest()


def hardware() -> dict:
    import torch

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "memory_gb": round(memory / 2**30, 1) if memory else None,
        "gpus": gpus,
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def provenance(config: dict, sheets: list[Path]) -> dict:
    return {
        "scencode": {"version": versions()["scencode"], **git_commit()},
        "versions": versions(),
        "config_sha256": config_hash(config, sheets),
        "dataset_sheets": [str(s) for s in sheets],
        "census_version": config.get("census_version"),
        "hardware": hardware(),
    }


def run(config: dict, sheets: list[Path], out: OutputFile) -> dict:
    """``results/provenance.json``: what produced this run (``config``: the workflow's config as JSON;
    ``sheets``: its dataset sheets, hashed with it)."""
    from .workflow_config import read_sheet

    if not isinstance(config, dict):
        raise ScencodeError(f"--config must be the workflow's config as a JSON object, not {type(config).__name__}")
    for sheet in sheets:
        if Path(sheet).is_dir():
            raise ScencodeError("is a folder, not a dataset sheet", sheet)
        list(read_sheet(Path(sheet)))  # a sheet the workflow would refuse is named here too
    record = provenance(config, sheets)
    write_json(record, out)
    log.info(
        "provenance: scencode %s at %s, config %s",
        record["scencode"]["version"],
        record["scencode"]["commit"],
        record["config_sha256"][:12],
    )
    return record
