"""One pretraining job on several processes: ``scencode pretrain --gpus G --nodes N`` starts itself
again under torchrun, one process per GPU.

One node: ``torchrun --standalone`` (a local rendezvous on a free port). Several nodes: the workflow
starts one ``scencode pretrain`` per node under ``srun --ntasks-per-node 1``; each becomes a torchrun
that meets the others at the allocation's first node (c10d rendezvous, keyed by the SLURM job id).
On a machine without CUDA the processes run on the CPU with gloo (what the tests run).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

from .errors import ScencodeError

RDZV_PORT = 29400  # torchrun's default c10d port


def under_torchrun(environ: Mapping[str, str] = os.environ) -> bool:
    return "LOCAL_RANK" in environ and "WORLD_SIZE" in environ


def torchrun_args(gpus: int, nodes: int, environ: Mapping[str, str] = os.environ) -> list[str]:
    """torchrun's arguments for ``gpus`` processes on each of ``nodes`` nodes."""
    if gpus < 1 or nodes < 1:
        raise ScencodeError(f"pretrain: gpus {gpus} and nodes {nodes} must be ≥ 1")
    if nodes == 1:
        return ["--standalone", "--nnodes", "1", "--nproc-per-node", str(gpus)]
    job, nodelist = environ.get("SLURM_JOB_ID"), environ.get("SLURM_JOB_NODELIST")
    if not job or not nodelist:
        raise ScencodeError(
            f"pretrain: nodes {nodes}: a job across nodes is started by SLURM, one task per node "
            "(srun --ntasks-per-node 1, as the workflow's pretrain rule does); SLURM_JOB_ID and "
            "SLURM_JOB_NODELIST are not set here"
        )
    return [
        "--nnodes",
        str(nodes),
        "--nproc-per-node",
        str(gpus),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"{first_host(nodelist)}:{RDZV_PORT}",
        "--rdzv-id",
        f"scencode-{job}",
    ]


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``gpu[01-04]`` → ``gpu01``), as ``scontrol`` expands it."""
    try:
        hosts = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ScencodeError(f"pretrain: cannot expand SLURM's node list {nodelist!r} with scontrol: {exc}") from None
    if not hosts:
        raise ScencodeError(f"pretrain: SLURM's node list {nodelist!r} names no host")
    return hosts[0]


def relaunch(gpus: int, nodes: int, argv: list[str]) -> None:
    """Replace this process by torchrun running ``scencode <argv>`` on every GPU (never returns)."""
    command = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(gpus, nodes), "-m", "scencode", *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)
