"""Several training processes (torchrun, gloo on CPU) take the optimiser steps one process takes:
the same global batch, the same loss curve, and a run stopped on two processes resumes on one."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from scencode.loader import LoaderConfig, ShardBatches

MODEL = dict(gene_encoding="learned", expression_encoding="log", d_model=16, n_layers=1, n_heads=2, d_ff=16)
MODEL["dropout"] = 0.0  # each process draws its own dropout masks: with dropout the curves agree in law only
TRAIN = dict(grad_accum=2, warmup_steps=1, val_every=3, val_cells=60, checkpoint_every=2, log_every=1, num_workers=0)


@pytest.fixture(scope="module")
def loader(demo_corpus):
    """A batch size whose epoch ends with one micro-batch: in that partial step the second process
    has none and runs its zero-weight pass."""
    corpus, _ = demo_corpus
    for batch_size in range(12, 40):
        cfg = dict(batch_size=batch_size, context=64, bucket_batches=2, seed=3)
        if ShardBatches(corpus, "train", LoaderConfig(**cfg)).count_batches() % TRAIN["grad_accum"] == 1:
            return cfg
    pytest.fail("no batch size gives an epoch of an odd number of micro-batches")


def pretrain(corpus, vocab, out, loader, gpus, **train):
    params = {"model": MODEL, "loader": loader, "train": {**TRAIN, **train}}
    command = [sys.executable, "-m", "scencode", "pretrain", "--name", "learned-log-s3", "--corpus", str(corpus)]
    command += ["--vocab", str(vocab), "--out", str(out), "--threads", "1", "--gpus", str(gpus)]
    return command + ["--params", json.dumps(params)]


def curve(folder):
    return pq.read_table(folder / "train_log.parquet").to_pandas()


def test_two_processes_take_the_steps_of_one(demo_corpus, loader, tmp_path):
    corpus, vocab = demo_corpus
    for gpus in (1, 2):
        result = subprocess.run(
            pretrain(corpus, vocab, tmp_path / f"g{gpus}", loader, gpus, epochs=2),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = curve(tmp_path / "g1"), curve(tmp_path / "g2")
    assert len(one) == len(two) and one.step.max() >= 6 and {0, 1} <= set(two.epoch)  # an epoch boundary crossed
    for column in ("train_loss", "val_loss", "lr"):
        np.testing.assert_allclose(two[column], one[column], rtol=1e-5, equal_nan=True, err_msg=column)
    status = [json.loads((tmp_path / f"g{g}" / "model.json").read_text()) for g in (1, 2)]
    assert status[1]["ranks"] == {"world_size": 2} and status[1]["status"] == "completed"
    for key in ("cells", "real_tokens"):  # every cell once per epoch, counted over both processes
        assert status[1]["cost"][key] == status[0]["cost"][key]
    a, b = (torch.load(tmp_path / f"g{g}" / "last.pt", weights_only=True)["model"] for g in (1, 2))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_a_two_process_run_stopped_mid_run_resumes_on_one(demo_corpus, loader, tmp_path):
    """As a preempted 2-GPU job that comes back on one: SIGTERM to every process of the job (what
    SLURM sends), last.pt at the step under way, and the rest on one process gives the curve of a
    run that was never stopped."""
    corpus, vocab = demo_corpus
    steps = 14
    reference = subprocess.run(
        pretrain(corpus, vocab, tmp_path / "whole", loader, 1, max_steps=steps), capture_output=True, text=True
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    job = subprocess.Popen(
        pretrain(corpus, vocab, tmp_path / "stopped", loader, 2, max_steps=steps),
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    seen, deadline = "", time.monotonic() + 180
    while "step 4 loss" not in seen and time.monotonic() < deadline:
        seen += job.stderr.readline()
    os.killpg(job.pid, signal.SIGTERM)
    _, rest = job.communicate(timeout=120)
    assert job.returncode != 0 and "last.pt saved, rerun to resume" in seen + rest, seen + rest
    stopped_at = torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)["step"]
    assert 4 <= stopped_at < steps
    resumed = subprocess.run(
        pretrain(corpus, vocab, tmp_path / "stopped", loader, 1, max_steps=steps), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed learned-log-s3 at step {stopped_at}" in resumed.stderr
    whole, pieced = curve(tmp_path / "whole"), curve(tmp_path / "stopped")
    assert pieced.step.tolist() == whole.step.tolist()
    np.testing.assert_allclose(pieced.train_loss, whole.train_loss, rtol=1e-5, equal_nan=True)
    status = json.loads((tmp_path / "stopped" / "model.json").read_text())
    assert status["steps"] == steps and status["ranks"] == {"world_size": 1}
