"""``scencode.launch``: torchrun's arguments for one node and for several under SLURM."""

import os

import pytest

from scencode.errors import ScencodeError
from scencode.launch import RDZV_PORT, torchrun_args, under_torchrun


def test_one_node_uses_a_standalone_rendezvous():
    assert torchrun_args(4, 1, {}) == ["--standalone", "--nnodes", "1", "--nproc-per-node", "4"]


def test_several_nodes_meet_at_the_allocations_first_host(tmp_path, monkeypatch):
    scontrol = tmp_path / "scontrol"  # SLURM's own expansion of a node list, as on a cluster
    scontrol.write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu[07-08]" ] && printf "gpu07\\ngpu08\\n"\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    args = torchrun_args(4, 2, {"SLURM_JOB_ID": "91", "SLURM_JOB_NODELIST": "gpu[07-08]"})
    assert args[args.index("--rdzv-endpoint") + 1] == f"gpu07:{RDZV_PORT}"
    assert args[args.index("--nnodes") + 1] == "2" and args[args.index("--nproc-per-node") + 1] == "4"
    assert args[args.index("--rdzv-id") + 1] == "scencode-91" and "--standalone" not in args


def test_several_nodes_outside_slurm_are_refused_with_the_reason():
    with pytest.raises(ScencodeError, match="nodes 2: a job across nodes is started by SLURM"):
        torchrun_args(4, 2, {})


def test_a_torchrun_worker_is_not_started_again():
    assert under_torchrun({"LOCAL_RANK": "0", "WORLD_SIZE": "2"}) and not under_torchrun({})
