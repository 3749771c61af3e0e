"""Pretraining one encoding configuration: config, data, model, optimiser, loop, checkpoints.

Masked-expression pretraining: half of the expression embeddings are replaced by a learnable mask
vector and the model predicts x̃ there (MSE). AdamW, cosine schedule with warmup, gradient
accumulation, grad-norm clipping, mixed precision on CUDA (bf16, else fp16 with a grad scaler),
validation every N steps, early stopping, ``best.pt`` by validation loss, ``last.pt`` every N steps
and on SIGTERM/SIGUSR1 (SLURM preemption), automatic resume from ``last.pt``. Several GPUs: launch
with torchrun; DDP is used when WORLD_SIZE > 1.

Read ``setup`` (what a run holds) and ``fit`` (the loop) first; the pieces they use (ranks, the
checkpoint store, the rank schedule) come before them, what the run reports after.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from .atomic import OutputFolder, Terminated, deferred_stop
from .devices import autocast, autocast_dtype, default_device, device_name, peak_flops
from .encodings import align_gene_table
from .errors import ScencodeError
from .formats import (
    LOG_COLUMNS,
    Checkpoint,
    RunStatus,
    load_vocab,
    write_run_status,
    write_train_log,
)
from .loader import ShardBatches, TrainSubset, draw_train_subset
from .model import Batch, CellTransformer
from .run_config import LoaderConfig, ModelConfig, RunSettings, TrainConfig, block_params, needs_gene_table
from .shards import verify_corpus

log = logging.getLogger(__name__)


@dataclass
class RunSpec:
    name: str
    corpus: Path
    vocab: Path
    out_dir: Path
    model: ModelConfig
    loader: LoaderConfig
    train: TrainConfig
    gene_embeddings: Path | None = None  # the gene-embedding table (ESM-2 …) of encodings that read one

    def identity(self, vocab_hash: str) -> str:
        """What a checkpoint must share with the run that resumes it."""
        spec = {
            "name": self.name,
            "model": asdict(self.model),
            "loader": asdict(self.loader),
            "train": {k: v for k, v in asdict(self.train).items() if k not in ("num_workers", "max_steps")},
            "vocab_hash": vocab_hash,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


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
    repeated_cells: int = 0  # this rank's cells seen twice in an epoch to even out the ranks' shares
    rms_start: dict = field(default_factory=dict)  # gene / expression embedding RMS after calibration
    calibration: dict = field(default_factory=dict)
    # running sums since the last log row (kept across a resume so logged losses match)
    window_sse: float = 0.0
    window_masked: int = 0
    window_tokens: int = 0
    window_cells: int = 0
    # what the run cost, over every resume: seconds in the training loop, this rank's real tokens and cells
    train_seconds: float = 0.0
    tokens_seen: int = 0
    cells_seen: int = 0
    log: dict = field(default_factory=lambda: {c: [] for c in LOG_COLUMNS})  # train_log.parquet's rows


def build_model(spec: RunSpec, vocab: pd.DataFrame) -> CellTransformer:
    """The model of ``spec``; a gene encoding that reads a table gets it aligned to the vocabulary
    (without one, the encoder says what is missing)."""
    gene_table = None
    if needs_gene_table(spec.model.gene_encoding) and spec.gene_embeddings is not None:
        gene_table = align_gene_table(spec.gene_embeddings, vocab, spec.train.missing_genes)
    return CellTransformer(spec.model, gene_table=gene_table)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW's groups: weight decay on weight matrices and embedding tables only; norms' gains,
    biases and other 1-D parameters are not decayed (as nanoGPT and most transformer recipes do:
    shrinking a gain or a bias toward 0 is not a useful prior). Frozen parameters are left out."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]


def cosine_lr(step: int, cfg: TrainConfig, total_steps: int) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------- the pieces the loop uses


@dataclass
class Ranks:
    """This process's place among the training processes (torchrun sets RANK and WORLD_SIZE)."""

    rank: int
    world: int
    device: torch.device

    @classmethod
    def join(cls) -> Ranks:
        """Joins the process group when there are several ranks."""
        ranks = cls(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            default_device(int(os.environ.get("LOCAL_RANK", 0))),
        )
        if ranks.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if ranks.device.type == "cuda" else "gloo")
        if ranks.device.type == "cuda":
            torch.cuda.set_device(ranks.device)
        return ranks

    @property
    def writes(self) -> bool:
        """Rank 0 writes the run's files."""
        return self.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(tensor)
        return tensor

    def leave(self) -> None:
        if self.world > 1:
            dist.barrier()
            dist.destroy_process_group()


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
        return self.scheduler.get_last_lr()[0]

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
        self.identity, self.vocab_hash = spec.identity(vocab_hash), vocab_hash
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
        optim.model.load_state_dict(ckpt.model)
        optim.optimizer.load_state_dict(ckpt.optimizer)
        optim.scheduler.load_state_dict(ckpt.scheduler)
        optim.scaler.load_state_dict(ckpt.scaler)
        torch.set_rng_state(ckpt.rng)
        state = State(**ckpt.state)
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


class RankSchedule:
    """Which training micro-batches each rank runs. Row groups are dealt to ranks, so their shares
    differ by a few batches; every rank runs as many as the largest share (none waits in an
    all-reduce for one that has finished, and no cell is left out): a shorter share goes round
    again from its start, and the cells it sees twice are counted (``State.repeated_cells``)."""

    def __init__(self, spec: RunSpec, ranks: Ranks, subset: TrainSubset | None):
        self.corpus, self.loader, self.subset = spec.corpus, spec.loader, subset
        self.rank, self.world = ranks.rank, ranks.world
        self.workers = spec.train.num_workers
        self._shares: dict[int, list[int]] = {}

    def shares(self, epoch: int) -> list[int]:
        """Batches in each rank's share of an epoch, counted once per epoch."""
        if epoch not in self._shares:
            data = ShardBatches(
                self.corpus, "train", self.loader, epoch=epoch, world_size=self.world, subset=self.subset
            )
            self._shares[epoch] = data.batches_per_rank(max(1, self.workers))
        return self._shares[epoch]

    def steps_per_epoch(self, grad_accum: int) -> int:
        """Exact for epoch 0 (later epochs' pools may fall a step differently); an epoch ends with
        a partial step on its leftover micro-batches, so no gradient crosses into the next."""
        return max(1, math.ceil(max(self.shares(0)) / grad_accum))

    def batches(self, state: State) -> Iterator[Batch]:
        """This rank's micro-batches for the rest of ``state.epoch``, from ``state.batches_in_epoch``."""
        shares = self.shares(state.epoch)
        own, target = shares[self.rank], max(shares)
        if target == 0:
            raise ScencodeError("no training cells in the corpus (split 'train' is empty)", self.corpus)
        if own == 0:
            raise ScencodeError(
                f"rank {self.rank} has no training cells in epoch {state.epoch}: the corpus has fewer "
                f"row groups than ranks × loader workers ({self.world} × {self.workers}); "
                "use fewer workers or smaller row groups (tokenize.row_group_cells)",
                self.corpus,
            )
        done = state.batches_in_epoch
        while done < target:
            lap, skip = divmod(done, own)
            for batch in self._loader(state.epoch, skip):
                if lap:
                    state.repeated_cells += batch.n_cells
                yield batch
                done += 1
                if done == target:
                    return
            if done % own:
                raise ScencodeError(
                    f"rank {self.rank} read {done % own} batches of epoch {state.epoch}, {own} were counted",
                    self.corpus,
                )

    def _loader(self, epoch: int, skip: int) -> torch.utils.data.DataLoader:
        data = ShardBatches(
            self.corpus,
            "train",
            self.loader,
            epoch=epoch,
            rank=self.rank,
            world_size=self.world,
            skip_batches=skip,
            subset=self.subset,
        )
        return torch.utils.data.DataLoader(
            data,
            batch_size=None,
            num_workers=self.workers,
            generator=torch.Generator().manual_seed(self.loader.seed),
        )


def optimizer_steps(batches: Iterable[Batch], grad_accum: int) -> Iterator[list[Batch]]:
    """Micro-batches grouped by optimiser step; the last group may be shorter (a partial step)."""
    group = []
    for batch in batches:
        group.append(batch)
        if len(group) == grad_accum:
            yield group
            group = []
    if group:
        yield group


# ---------------------------------------------------------------- one run: set up, then the loop


@dataclass
class Run:
    """Everything one pretraining run holds; ``setup`` builds it, ``fit`` trains it."""

    spec: RunSpec
    ranks: Ranks
    optim: Optimisation
    schedule: RankSchedule
    store: CheckpointStore
    state: State
    amp: torch.dtype | None
    probe: list[Batch]  # the first training batches: calibration and the components' scales
    training_set: dict  # model.json's train_cells
    steps_per_epoch: int
    total_steps: int
    warnings: list[str]
    diverged_at: int | None = None

    @property
    def model(self) -> CellTransformer:
        return self.optim.model

    @property
    def out(self) -> Path:
        return Path(self.spec.out_dir)


def setup(spec: RunSpec) -> Run:
    """The run's model (calibrated on the first training batches), optimiser, schedule and stores."""
    cfg = spec.train
    cfg.validate()
    ranks = Ranks.join()
    vocab, vocab_hash = load_vocab(spec.vocab)
    manifest = verify_corpus(spec.corpus, checksums=False, vocab_hash=vocab_hash)
    subset = draw_train_subset(spec.corpus, cfg.train_cells) if cfg.train_cells else None
    training_set = (
        subset.describe() if subset else {"requested": "all", "cells": int(manifest["splits"].get("train", 0))}
    )
    spec = replace(spec, model=replace(spec.model, vocab_size=len(vocab)))  # the caller's spec is left as it was
    torch.manual_seed(spec.loader.seed)
    model = build_model(spec, vocab).to(ranks.device)
    # the same first training batches on every rank: calibration gives every rank the same gains
    first = ShardBatches(spec.corpus, "train", spec.loader, epoch=0, subset=subset)
    probe = [batch.to(ranks.device) for batch, _ in zip(first, range(cfg.calibration_batches))]
    state = State(calibration=model.calibrate(probe))
    state.rms_start = component_rms(model, probe)
    step_model = torch.nn.parallel.DistributedDataParallel(model) if ranks.world > 1 else model
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))
    schedule = RankSchedule(spec, ranks, subset)
    steps_per_epoch = schedule.steps_per_epoch(cfg.grad_accum)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, cfg, total_steps))
    amp = autocast_dtype(cfg.precision, ranks.device)
    optim = Optimisation(model, step_model, optimizer, scheduler, torch.amp.GradScaler(enabled=amp == torch.float16))
    return Run(
        spec=spec,
        ranks=ranks,
        optim=optim,
        schedule=schedule,
        store=CheckpointStore(Path(spec.out_dir), spec, vocab_hash, ranks.writes),
        state=state,
        amp=amp,
        probe=probe,
        training_set=training_set,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        warnings=cfg.schedule_warnings(total_steps),
    )


def fit(run: Run) -> State:
    """The training loop: resume, then step, log, validate, checkpoint and stop, epoch after epoch.
    A stop signal (SLURM's preemption or time limit) ends it after the step under way, with
    last.pt written: :class:`atomic.Terminated`, exit 143, and the rerun resumes."""
    cfg = run.spec.train
    run.out.mkdir(parents=True, exist_ok=True)
    resumed = run.store.resume(run.optim)
    if resumed is None:
        run.store.set_aside_old_best()
    st = run.state = resumed or run.state
    for warning in run.warnings:
        log.warning("%s: %s", run.spec.name, warning)
    with deferred_stop() as stop_requested:
        while not finished(run):
            run.model.train()
            window = clock = time.perf_counter()
            for micro_batches in optimizer_steps(run.schedule.batches(st), cfg.grad_accum):
                grad_norm = train_step(run, micro_batches)
                if grad_norm is None:  # diverged (on_nonfinite: finish)
                    break
                st.step += 1
                now = time.perf_counter()
                st.train_seconds, clock = st.train_seconds + now - clock, now  # validation and checkpoints included
                if st.step % cfg.log_every == 0 or st.step == run.total_steps:
                    log_training(run, grad_norm, seconds=now - window)
                    window = time.perf_counter()
                if cfg.val_every and st.step % cfg.val_every == 0:
                    validate(run)
                    run.model.train()
                stopping = stop_requested()
                if st.step % cfg.checkpoint_every == 0 or stopping:
                    run.store.save("last.pt", run.optim, st)
                    write_log(run)
                if stopping:
                    raise Terminated(f"{stopping} at step {st.step}; last.pt saved, rerun to resume")
                if finished(run):
                    break
            if run.diverged_at is None and not finished(run):
                st.epoch, st.batches_in_epoch = st.epoch + 1, 0
    return finish(run)


def finished(run: Run) -> bool:
    """The one stop condition: steps or epochs used up, early stopping, or divergence."""
    st, cfg = run.state, run.spec.train
    # max_steps set: steps count; else epochs (total_steps, for the schedule, is then exact for
    # epoch 0 and may differ by a step in later epochs, whose pools fall differently)
    used_up = st.step >= cfg.max_steps if cfg.max_steps else st.epoch >= cfg.epochs
    return run.diverged_at is not None or used_up or st.bad_evals >= cfg.patience


def finish(run: Run) -> State:
    """The model evaluation uses (the best validation, the final step included), the log, model.json."""
    st = run.state
    if run.diverged_at is None:
        if st.last_val_step != st.step:
            validate(run)
        if not run.store.has("best.pt"):  # no validation cells: the final model is the best
            st.best_step = st.step
            run.store.save("best.pt", run.optim, st)
        run.store.save("last.pt", run.optim, st)
    write_log(run)
    repeated = int(run.ranks.sum(torch.tensor([st.repeated_cells], device=run.ranks.device)).item())  # every rank
    if run.ranks.writes:
        write_run_status(run_status(run, repeated), run.out / "model.json")
    run.ranks.leave()
    return st


def train_step(run: Run, micro_batches: list[Batch]) -> float | None:
    """One optimiser step: its gradient norm, or None if the loss became non-finite."""
    if not accumulate_gradients(run, micro_batches):
        return None
    return optimizer_step(run.optim, run.spec.train.grad_clip)


def accumulate_gradients(run: Run, micro_batches: list[Batch]) -> bool:
    """Backward passes of one step. Its loss is the mean over every masked token of its
    micro-batches (and ranks): each micro-batch's squared-error sum is divided by the step's token
    count, so a token of a short cell weighs as much as one of a long cell whatever the bucketing.
    False: the loss became non-finite (``diverged`` has dealt with it)."""
    st, world = run.state, run.ranks.world
    batches = [b.to(run.ranks.device) for b in micro_batches]
    n_masked = run.ranks.sum(sum((b.masked & b.real).sum() for b in batches).double())
    scale = world / n_masked.clamp(min=1)  # DDP averages gradients over ranks
    for i, batch in enumerate(batches):
        sync = world == 1 or i == len(batches) - 1
        with contextlib.nullcontext() if sync else run.optim.step_model.no_sync():
            with autocast(run.ranks.device, run.amp):
                _, sse, n = run.optim.step_model(batch)
            if not torch.isfinite(sse):
                diverged(run, sse / n.clamp(min=1))
                return False
            run.optim.scaler.scale(sse * scale).backward()
        tokens = int(batch.real.sum())
        st.window_sse, st.window_masked = st.window_sse + float(sse.detach()), st.window_masked + int(n)
        st.window_tokens, st.window_cells = st.window_tokens + tokens, st.window_cells + batch.n_cells
        st.tokens_seen, st.cells_seen = st.tokens_seen + tokens, st.cells_seen + batch.n_cells
    st.batches_in_epoch += len(batches)
    return True


def optimizer_step(optim: Optimisation, grad_clip: float) -> float:
    optim.scaler.unscale_(optim.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(optim.model.parameters(), grad_clip)
    optim.scaler.step(optim.optimizer)
    optim.scaler.update()
    optim.optimizer.zero_grad(set_to_none=True)
    optim.scheduler.step()
    return float(grad_norm)


@torch.no_grad()
def validate(run: Run) -> float:
    """Masked MSE on (up to ``val_cells`` of) the validation split; a new best writes best.pt."""
    spec, st, ranks = run.spec, run.state, run.ranks
    run.model.eval()
    data = ShardBatches(
        spec.corpus, "val", spec.loader, epoch=0, rank=ranks.rank, world_size=ranks.world, shuffle=False
    )
    total = torch.zeros(2, dtype=torch.float64, device=ranks.device)
    seen = 0
    for batch in data:
        if seen >= spec.train.val_cells // ranks.world:
            break
        batch = batch.to(ranks.device)
        with autocast(ranks.device, run.amp):
            _, sse, n = run.model(batch)
        total += torch.stack([sse.double(), n.double()])
        seen += batch.n_cells
    ranks.sum(total)
    st.last_val_step = st.step
    if total[1] == 0:
        return math.nan
    val = st.last_val = float(total[0] / total[1])
    log_row(run, val_loss=val)
    if val < st.best_val:
        st.best_val, st.best_step, st.bad_evals = val, st.step, 0
        run.store.save("best.pt", run.optim, st)
    else:
        st.bad_evals += 1
    if ranks.writes:
        log.info("%s step %d validation loss %.5f (best %.5f)", spec.name, st.step, val, st.best_val)
    return val


def diverged(run: Run, loss: torch.Tensor) -> None:
    """A non-finite training loss: the job fails (``on_nonfinite: stop``; last.pt keeps the last
    good state) or the run ends as diverged (``finish``)."""
    st, value = run.state, float(loss.detach())
    log_row(run, train_loss=value)
    write_log(run)
    message = (
        f"{run.spec.name}: training loss became {value} at step {st.step} (epoch {st.epoch}); "
        f"the last good checkpoint is kept ({run.out / 'last.pt'})"
    )
    if run.spec.train.on_nonfinite == "stop":
        raise ScencodeError(message)
    run.diverged_at = st.step
    log.error("%s; ending the run as diverged (on_nonfinite: finish)", message)


# ---------------------------------------------------------------- what the run reports


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


def run_status(run: Run, repeated_cells: int) -> RunStatus:
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
        ranks={"world_size": run.ranks.world, "repeated_cells": repeated_cells},
        component_rms={"start": st.rms_start, "end": component_rms(run.model, run.probe)},
        cost=training_cost(run),
        note=note,
    )


def training_cost(run: Run) -> dict:
    """What training cost: wall time in the loop (all resumes), device, real tokens and cells
    per second, GPU-hours (or CPU core-hours) and, on CUDA, MFU by the 6N convention (model FLOPs
    of the real tokens: 6 x the blocks' weights per token, attention's quadratic term left out).
    Totals are rank 0's figures x the ranks (their shares are balanced)."""
    st, world, device = run.state, run.ranks.world, run.ranks.device
    seconds = max(st.train_seconds, 1e-9)
    tokens, cells = st.tokens_seen * world, st.cells_seen * world
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
        "device_hours": st.train_seconds / 3600 * (world if cuda else world * torch.get_num_threads()),
        "device_hours_unit": "GPU-hours" if cuda else "CPU core-hours",
        "mfu": flops / seconds / (peak * world) if cuda and peak else None,
        "peak": peak_name,
    }


def run(
    name: str,
    corpus: Path,
    vocab: Path,
    out: OutputFolder,
    params: dict | None = None,
    gene_embeddings: Path | None = None,
    threads: int | None = None,
) -> State:
    """Pretrain one encoding configuration into folder ``out`` (best.pt, last.pt, train_log.parquet,
    model.json), resuming from last.pt. ``params``: JSON {"model": {...}, "loader": {...}, "train": {...}};
    ``gene_embeddings``: the gene-embedding table (ESM-2 …) of the gene encodings that read one."""

    from .settings import torch_threads

    # the vocabulary's size is known once setup reads it; the model validates itself then
    settings = RunSettings.from_params(params, vocab_size=0)
    spec = RunSpec(
        name,
        Path(corpus),
        Path(vocab),
        Path(out),
        settings.model,
        settings.loader,
        settings.train,
        Path(gene_embeddings) if gene_embeddings else None,
    )
    torch_threads(threads)
    state = fit(setup(spec))
    log.info("%s: %d steps, best validation loss %.5f", name, state.step, state.best_val)
    return state
