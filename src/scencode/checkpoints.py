"""What a pretraining run checkpoints and how: the loop's state, the model with what updates it,
and the store of ``best.pt``/``last.pt`` (save, resume, set aside what cannot be resumed), keyed
by the run's identity. The file format is ``formats.Checkpoint``."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import ScencodeError
from .formats import LOG_COLUMNS, Checkpoint
from .model import CellTransformer

if TYPE_CHECKING:
    from .pretrain import RunSpec

log = logging.getLogger(__name__)


@dataclass
class State:
    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    best_val: float = math.inf
    best_step: int | None = None  # the step of best.pt
    last_val_step: int | None = None
    last_val: float = math.nan
    bad_evals: int = 0
    rms_start: dict = field(default_factory=dict)  # gene / expression embedding RMS after calibration
    calibration: dict = field(default_factory=dict)
    # running sums since the last log row (kept across a resume so logged losses match)
    window_sse: float = 0.0
    window_masked: int = 0
    window_tokens: int = 0
    window_cells: int = 0
    # what the run cost, over every resume: seconds in the training loop, real tokens and cells (all ranks)
    train_seconds: float = 0.0
    device_seconds: float = 0.0  # train_seconds × the ranks that ran them (a resume may run on another number)
    tokens_seen: int = 0
    cells_seen: int = 0
    log: dict = field(default_factory=lambda: {c: [] for c in LOG_COLUMNS})  # train_log.parquet's rows


def run_identity(spec: RunSpec, vocab_hash: str) -> str:
    """What a checkpoint must share with the run that resumes it: the settings that shape the run
    (not the workers or the step budget, which a rerun may change) and the vocabulary."""
    values = {
        "name": spec.name,
        "model": asdict(spec.model),
        "loader": asdict(spec.loader),
        "train": {k: v for k, v in asdict(spec.train).items() if k not in ("num_workers", "max_steps")},
        "vocab_hash": vocab_hash,
    }
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Optimisation:
    """The model and what updates it: one object to step, checkpoint and resume."""

    model: CellTransformer
    step_model: torch.nn.Module  # what the training step runs: DDP-wrapped on several ranks
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def fits(self, ckpt: Checkpoint) -> bool:
        """The checkpoint's weights and optimiser groups have this model's names and shapes."""
        ours, theirs = self.model.state_dict(), ckpt.model
        same_weights = ours.keys() == theirs.keys() and all(ours[k].shape == theirs[k].shape for k in ours)
        groups = (ckpt.optimizer or {}).get("param_groups", [])
        same_groups = [len(g["params"]) for g in groups] == [len(g["params"]) for g in self.optimizer.param_groups]
        return same_weights and same_groups


class CheckpointStore:
    """``best.pt`` and ``last.pt`` of one run: save, resume, and set aside what cannot be resumed
    (kept beside under a new name, never deleted)."""

    def __init__(self, folder: Path, spec: RunSpec, vocab_hash: str, writes: bool):
        self.folder, self.name, self.writes = folder, spec.name, writes
        self.identity, self.vocab_hash = run_identity(spec, vocab_hash), vocab_hash
        self.model_config = asdict(spec.model)

    def save(self, file: str, optim: Optimisation, state: State) -> None:
        if not self.writes:
            return
        Checkpoint(
            model_config=self.model_config,
            model=optim.model.state_dict(),
            vocab_hash=self.vocab_hash,
            name=self.name,
            identity=self.identity,
            step=state.step,
            optimizer=optim.optimizer.state_dict(),
            scheduler=optim.scheduler.state_dict(),
            scaler=optim.scaler.state_dict(),
            rng=torch.get_rng_state(),
            state=asdict(state),
        ).write(self.folder / file)

    def has(self, file: str) -> bool:
        return (self.folder / file).exists()

    def resume(self, optim: Optimisation) -> State | None:
        """The state ``last.pt`` holds, loaded into ``optim``; None: train from the start."""
        path = self.folder / "last.pt"
        if not path.exists():
            return None
        try:
            ckpt = Checkpoint.read(path)
        except ScencodeError as exc:
            # checkpoints are written atomically, so this is damage from outside (disk, a copy): every
            # retry would fail the same way; keep the file for inspection and train from the start
            corrupt = path.with_name(f"last.corrupt-{int(path.stat().st_mtime)}.pt")
            os.replace(path, corrupt)
            log.warning("%s: %s; moved to %s, training starts over", self.name, exc, corrupt.name)
            return None
        if ckpt.name != self.name:
            raise ScencodeError(f"checkpoint belongs to configuration {ckpt.name!r}, not {self.name!r}", path)
        why = self._cannot_resume(ckpt, optim)
        if why:
            self._start_over(path, ckpt, why)  # the old state is kept beside
            return None
        assert ckpt.optimizer and ckpt.scheduler and ckpt.scaler is not None and ckpt.state is not None  # resumable
        optim.model.load_state_dict(ckpt.model)
        optim.optimizer.load_state_dict(ckpt.optimizer)
        optim.scheduler.load_state_dict(ckpt.scheduler)
        optim.scaler.load_state_dict(ckpt.scaler)
        torch.set_rng_state(torch.as_tensor(ckpt.rng))
        known = {f.name for f in fields(State)}  # a field an older version wrote and this one dropped is let go
        state = State(**{k: v for k, v in ckpt.state.items() if k in known})
        log.info("resumed %s at step %d (epoch %d)", self.name, state.step, state.epoch)
        return state

    def _cannot_resume(self, ckpt: Checkpoint, optim: Optimisation) -> str | None:
        if ckpt.identity != self.identity:  # the workflow reruns a configuration whose settings changed
            return "settings changed since it was written"
        if not ckpt.resumable:
            return "it holds no training state to resume"
        if not optim.fits(ckpt):  # checked before loading: a failed load would leave half-loaded weights
            return "it was written by another version of the model"
        return None

    def _start_over(self, path: Path, ckpt: Checkpoint, why: str) -> None:
        stale = path.with_name(f"last.stale-{ckpt.identity[:12]}.pt")
        os.replace(path, stale)
        log.warning("%s: %s: %s; starting over (old state in %s)", self.name, path.name, why, stale.name)

    def set_aside_old_best(self) -> None:
        """A best.pt without a last.pt to resume belongs to an earlier run; starting over, it must
        not pass for this run's model (a run diverging before its first validation has none)."""
        best = self.folder / "best.pt"
        if best.exists() and self.writes:
            stale = best.with_name(f"best.stale-{int(best.stat().st_mtime)}.pt")
            os.replace(best, stale)
            log.warning("%s: starting over; the earlier run's best.pt is kept as %s", self.name, stale.name)
