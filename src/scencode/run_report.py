"""What a pretraining run reports: its training log rows, ``model.json`` (how it ended, which
checkpoint to evaluate, what the settings could not do) and what it cost (device-hours, MFU)."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from .devices import device_name, peak_flops
from .formats import LOG_COLUMNS, RunStatus, write_train_log
from .model import Batch, CellTransformer
from .run_config import block_params

if TYPE_CHECKING:
    from .pretrain import Run

log = logging.getLogger("scencode.pretrain")  # the trainer's log: its lines read as one


def log_training(run: Run, grad_norm: float, seconds: float) -> None:
    """A training row: the mean masked MSE and throughput since the last row."""
    st = run.state
    log_row(
        run,
        train_loss=st.window_sse / max(1, st.window_masked),
        grad_norm=grad_norm,
        tokens_per_s=st.window_tokens / seconds,
        cells_per_s=st.window_cells / seconds,
    )
    st.window_sse, st.window_masked, st.window_tokens, st.window_cells = 0.0, 0, 0, 0
    if run.ranks.writes:
        log.info(
            "%s step %d loss %.4f lr %.2e grad %.3f %.0f tokens/s",
            run.spec.name,
            st.step,
            st.log["train_loss"][-1],
            run.optim.lr,
            grad_norm,
            st.log["tokens_per_s"][-1],
        )


def log_row(run: Run, **values: float) -> None:
    """One row of train_log.parquet (NaN for what this row does not measure)."""
    st = run.state
    row = {"step": st.step, "epoch": st.epoch, "lr": run.optim.lr, **values}
    for key in LOG_COLUMNS:
        st.log[key].append(int(row[key]) if key in ("step", "epoch") else float(row.get(key, math.nan)))


def write_log(run: Run) -> None:
    if run.ranks.writes:
        write_train_log(run.state.log, run.out / "train_log.parquet", run.spec.name, run.steps_per_epoch)


def component_rms(model: CellTransformer, probe: list[Batch]) -> dict[str, float]:
    rms = [model.component_rms(b) for b in probe]
    return {k: float(np.mean([r[k] for r in rms])) for k in rms[0]} if rms else {}


def run_status(run: Run) -> RunStatus:
    """model.json: how the run ended, which checkpoint evaluation should use and from which step
    (None: no usable model, with the reason), what the settings could not do, the components'
    scales at the start and end, and what it cost."""
    st, spec = run.state, run.spec
    has_best = run.store.has("best.pt")
    status = (
        "diverged"
        if run.diverged_at is not None
        else ("early_stopped" if st.bad_evals >= spec.train.patience else "completed")
    )
    if status != "diverged":
        note = ""
    elif has_best:
        note = (
            f"training diverged at step {run.diverged_at}; best.pt is the best validation "
            f"before that (loss {st.best_val:.4g})"
        )
    else:
        note = f"training diverged at step {run.diverged_at}, before any validation: no checkpoint"
    finite = lambda v: v if v is not None and math.isfinite(v) else None  # noqa: E731
    return RunStatus(
        configuration=spec.name,
        gene_encoding=spec.model.gene_encoding,
        expression_encoding=spec.model.expression_encoding,
        seed=spec.loader.seed,
        status=status,
        steps=st.step,
        total_steps=run.total_steps,
        train_cells=run.training_set,
        steps_per_epoch=run.steps_per_epoch,
        best_val_loss=finite(st.best_val),
        checkpoint="best.pt" if has_best else None,
        checkpoint_step=st.best_step if has_best else None,
        final_val_loss=finite(st.last_val) if st.last_val_step == st.step else None,
        still_improving=st.best_step == st.step and st.step > 0,
        warnings=run.warnings,
        calibration=st.calibration,
        ranks={"world_size": run.ranks.world},
        component_rms={"start": st.rms_start, "end": component_rms(run.model, run.probe)},
        cost=training_cost(run),
        note=note,
    )


def training_cost(run: Run) -> dict:
    """What training cost: wall time in the loop (all resumes), device, real tokens and cells
    per second, GPU-hours (or CPU core-hours) and, on CUDA, MFU by the 6N convention (model FLOPs
    of the real tokens: 6 x the blocks' weights per token, attention's quadratic term left out).
    Tokens and cells are counted over all ranks (and all resumes, whatever their number of ranks)."""
    st, world, device = run.state, run.ranks.world, run.ranks.device
    seconds = max(st.train_seconds, 1e-9)
    tokens, cells = st.tokens_seen, st.cells_seen
    cuda = device.type == "cuda"
    peak_name, peak = peak_flops(device)
    cfg = run.spec.model
    flops = 6 * block_params(cfg.n_layers, cfg.d_model, cfg.d_ff) * tokens
    return {
        "wall_seconds": st.train_seconds,
        "device": device_name(device),
        "devices": world,
        "real_tokens": tokens,
        "cells": cells,
        "tokens_per_s": tokens / seconds,
        "cells_per_s": cells / seconds,
        "device_hours": st.device_seconds / 3600 * (1 if cuda else torch.get_num_threads()),
        "device_hours_unit": "GPU-hours" if cuda else "CPU core-hours",
        "mfu": flops / (peak * max(st.device_seconds, 1e-9)) if cuda and peak else None,
        "peak": peak_name,
    }
