"""Pretraining one encoding configuration: config, data, model, optimiser, loop, checkpoints.

Masked-expression pretraining: half of the expression embeddings are replaced by a learnable mask
vector and the model predicts x̃ there (MSE). AdamW, cosine schedule with warmup, gradient
accumulation, grad-norm clipping, mixed precision on CUDA (bf16, else fp16 with a grad scaler),
validation every N steps, early stopping, ``best.pt`` by validation loss, ``last.pt`` every N steps
and on SIGTERM/SIGUSR1 (SLURM preemption), automatic resume from ``last.pt``. Several GPUs: launch
with torchrun; DDP is used when WORLD_SIZE > 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from .atomic import TERMINATED_EXIT, OutputFolder, atomic_path, write_json
from .data import LoaderConfig, ShardBatches, draw_train_subset
from .devices import PRECISIONS, autocast, autocast_dtype, default_device, device_name, peak_flops
from .errors import ScencodeError
from .formats import load_checkpoint, load_vocab, read_gene_table
from .model import Batch, CellTransformer, ModelConfig, block_params
from .shards import verify_corpus

log = logging.getLogger(__name__)
TABLE_ENCODINGS = ("esm2", "esm2_permuted", "random_frozen")
LOG_COLUMNS = ("step", "epoch", "lr", "train_loss", "val_loss", "grad_norm", "tokens_per_s", "cells_per_s")


@dataclass
class TrainConfig:
    lr: float = 3e-4
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.95)
    grad_accum: int = 32
    epochs: int = 3
    max_steps: int | None = None  # stop earlier than `epochs` (demo, smoke tests)
    warmup_steps: int = 2000
    grad_clip: float = 1.0
    val_every: int = 500
    val_cells: int = 50_000
    patience: int = 100  # validation rounds without improvement
    checkpoint_every: int = 500
    log_every: int = 50
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    num_workers: int = 2
    missing_genes: str = "error"  # esm2 genes without an embedding: error | zero
    # stop: fail the job (last.pt keeps the last good state); finish: end the run as "diverged", keep
    # best.pt only if a validation before the divergence wrote one (evaluation then says why if not)
    on_nonfinite: str = "stop"
    calibration_batches: int = 8  # training batches the initial scales are measured on (model.calibrate)
    # a smaller training set: a count of cells (≥ 1) or a fraction of the training split (< 1), drawn
    # per dataset in proportion and nested (data.TrainSubset); None: the whole training split
    train_cells: float | None = None

    def validate(self) -> None:
        """Refuse settings that cannot run, naming the key."""
        positive = (
            "lr",
            "grad_accum",
            "epochs",
            "grad_clip",
            "val_cells",
            "patience",
            "checkpoint_every",
            "log_every",
            "calibration_batches",
        )
        for key in positive:
            if not getattr(self, key) > 0:
                raise ScencodeError(f"train.{key} must be > 0, got {getattr(self, key)!r}")
        for key in ("warmup_steps", "val_every", "num_workers", "weight_decay"):
            if getattr(self, key) < 0:
                raise ScencodeError(f"train.{key} must be ≥ 0, got {getattr(self, key)!r}")
        if self.train_cells is not None and self.train_cells <= 0:
            raise ScencodeError(
                f"train.train_cells must be a count ≥ 1 or a fraction in (0, 1), got {self.train_cells!r}"
            )
        if self.max_steps is not None and self.max_steps < 1:
            raise ScencodeError(f"train.max_steps must be ≥ 1 or null, got {self.max_steps!r}")
        for key, allowed in (
            ("precision", PRECISIONS),
            ("missing_genes", ("error", "zero")),
            ("on_nonfinite", ("stop", "finish")),
        ):
            if getattr(self, key) not in allowed:
                raise ScencodeError(f"train.{key} {getattr(self, key)!r}: choose one of {', '.join(allowed)}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ScencodeError(f"train.betas must be two numbers in [0, 1), got {self.betas!r}")

    def schedule_warnings(self, total_steps: int) -> list[str]:
        """Settings that cannot do what they say for a run of ``total_steps`` optimiser steps."""
        out = []
        if self.warmup_steps >= total_steps:
            out.append(
                f"warmup_steps {self.warmup_steps} ≥ total steps {total_steps}: the learning rate never "
                f"leaves warmup (it peaks at {self.lr * total_steps / max(1, self.warmup_steps):.3g}, "
                f"not lr {self.lr:g}) and never decays"
            )
        if self.val_every > total_steps or not self.val_every:
            out.append(f"val_every {self.val_every} > total steps {total_steps}: only the final validation runs")
        elif self.patience * self.val_every >= total_steps:
            out.append(
                f"patience {self.patience} validations × val_every {self.val_every} = "
                f"{self.patience * self.val_every} steps ≥ total steps {total_steps}: early stopping cannot fire"
            )
        return out


@dataclass
class RunSpec:
    name: str
    corpus: Path
    vocab: Path
    out_dir: Path
    model: ModelConfig
    loader: LoaderConfig
    train: TrainConfig
    gene_table: Path | None = None

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
    log: dict = field(default_factory=lambda: {c: [] for c in LOG_COLUMNS})


def align_gene_table(path: Path, vocab: pd.DataFrame, missing_policy: str) -> torch.Tensor:
    """The gene-embedding table in vocabulary order; special tokens get zeros."""
    ids, matrix, _ = read_gene_table(path)
    row = pd.Series(np.arange(len(ids)), index=ids)
    genes = vocab.gene_id[vocab.gene_type != "special"]
    found = row.reindex(genes)
    missing = genes[found.isna().to_numpy()]
    if len(missing) and missing_policy == "error":
        raise ScencodeError(
            f"{len(missing)} of {len(genes)} vocabulary genes have no embedding "
            f"(e.g. {', '.join(missing[:5])}); use vocab.policy 'protein' or "
            "train.missing_genes 'zero'",
            path,
        )
    table = np.zeros((len(vocab), matrix.shape[1]), np.float32)
    hit = found.notna().to_numpy()
    table[genes.index[hit]] = matrix[found[hit].astype(int)]
    if len(missing):
        log.warning("%d vocabulary genes have no embedding: zero vectors", len(missing))
    return torch.from_numpy(table)


def build_model(spec: RunSpec, vocab: pd.DataFrame) -> CellTransformer:
    gene_table = None
    if spec.model.gene_encoding in TABLE_ENCODINGS:
        if spec.gene_table is None:
            raise ScencodeError(f"gene encoding {spec.model.gene_encoding!r} needs a gene embedding table")
        gene_table = align_gene_table(spec.gene_table, vocab, spec.train.missing_genes)
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


class Trainer:
    def __init__(self, spec: RunSpec):
        spec.train.validate()
        self.spec = spec
        self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self.device = default_device(int(os.environ.get("LOCAL_RANK", 0)))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        vocab, self.vocab_hash = load_vocab(spec.vocab)
        manifest = verify_corpus(spec.corpus, checksums=False, vocab_hash=self.vocab_hash)
        self.subset = draw_train_subset(spec.corpus, spec.train.train_cells) if spec.train.train_cells else None
        self.training_set = (
            self.subset.describe()
            if self.subset
            else {"requested": "all", "cells": int(manifest["splits"].get("train", 0))}
        )
        spec.model.vocab_size = len(vocab)
        torch.manual_seed(spec.loader.seed)
        self.model = build_model(spec, vocab).to(self.device)
        cfg = spec.train
        self.amp = autocast_dtype(cfg.precision, self.device)
        self.state = State()
        # the same first training batches on every rank: calibration gives every rank the same gains
        self.probe = self._first_batches(cfg.calibration_batches)
        self.state.calibration = self.model.calibrate(self.probe)
        self.state.rms_start = self._component_rms()
        self.ddp = torch.nn.parallel.DistributedDataParallel(self.model) if self.world > 1 else self.model
        self.optimizer = torch.optim.AdamW(
            parameter_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas)
        )
        # counted exactly: every rank runs the largest rank's share (see _epoch_batches); an epoch ends
        # with a partial step on its leftover micro-batches, so no gradient crosses into the next epoch
        self._counted_shares: dict[int, list[int]] = {}
        self.steps_per_epoch = max(1, math.ceil(max(self._shares(0)) / cfg.grad_accum))
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cosine_lr(s, cfg, self.total_steps)
        )
        self.scaler = torch.amp.GradScaler(enabled=self.amp == torch.float16)
        self.warnings = cfg.schedule_warnings(self.total_steps)
        self.identity = spec.identity(self.vocab_hash)
        self.stop_signal = None
        self.diverged_at: int | None = None
        self.out = Path(spec.out_dir)

    def _first_batches(self, n: int) -> list[Batch]:
        data = ShardBatches(self.spec.corpus, "train", self.spec.loader, epoch=0, subset=self.subset)
        return [batch.to(self.device) for batch, _ in zip(data, range(n))]

    def _component_rms(self) -> dict[str, float]:
        rms = [self.model.component_rms(b) for b in self.probe]
        return {k: float(np.mean([r[k] for r in rms])) for k in rms[0]} if rms else {}

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, path: Path) -> None:
        if self.rank:
            return
        payload = {
            "identity": self.identity,
            "name": self.spec.name,
            "model_config": asdict(self.spec.model),
            "vocab_hash": self.vocab_hash,
            "step": self.state.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": torch.get_rng_state(),
            "state": {k: v for k, v in asdict(self.state).items()},
        }
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save(payload, tmp)

    def resume(self) -> bool:
        path = self.out / "last.pt"
        if not path.exists():
            return False
        try:
            ckpt = load_checkpoint(path)
        except ScencodeError as exc:
            # checkpoints are written atomically, so this is damage from outside (disk, a copy): every
            # retry would fail the same way; keep the file for inspection and train from the start
            corrupt = path.with_name(f"last.corrupt-{int(path.stat().st_mtime)}.pt")
            os.replace(path, corrupt)
            log.warning("%s: %s; moved to %s, training starts over", self.spec.name, exc, corrupt.name)
            return False
        if ckpt.get("name") != self.spec.name:
            raise ScencodeError(
                f"checkpoint belongs to configuration {ckpt.get('name')!r}, not {self.spec.name!r}", path
            )
        if ckpt.get("identity") != self.identity:
            # same configuration, changed settings (the workflow reruns it): start over, keep the old state
            return self._start_over(path, ckpt, "settings changed since it was written")
        if not self._fits(ckpt):  # checked before loading: a failed load would leave half-loaded weights
            return self._start_over(path, ckpt, "it was written by another version of the model")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"])
        self.state = State(**ckpt["state"])
        log.info("resumed %s at step %d (epoch %d)", self.spec.name, self.state.step, self.state.epoch)
        return True

    def _fits(self, ckpt: dict) -> bool:
        """The checkpoint's weights and optimiser groups have this model's names and shapes."""
        ours = self.model.state_dict()
        theirs = ckpt.get("model", {})
        same_weights = ours.keys() == theirs.keys() and all(ours[k].shape == theirs[k].shape for k in ours)
        groups = ckpt.get("optimizer", {}).get("param_groups", [])
        same_groups = [len(g["params"]) for g in groups] == [len(g["params"]) for g in self.optimizer.param_groups]
        return same_weights and same_groups

    def _start_over(self, path: Path, ckpt: dict, why: str) -> bool:
        """Training starts from step 0; the state that cannot resume it is kept beside, not deleted."""
        stale = path.with_name(f"last.stale-{str(ckpt.get('identity'))[:12]}.pt")
        os.replace(path, stale)
        log.warning("%s: %s: %s; starting over (old state in %s)", self.spec.name, path.name, why, stale.name)
        return False

    def _set_aside_old_best(self) -> None:
        """A best.pt without a last.pt to resume belongs to an earlier run; starting over, it must
        not pass for this run's model (a run diverging before its first validation has none)."""
        best = self.out / "best.pt"
        if best.exists() and not self.rank:
            stale = best.with_name(f"best.stale-{int(best.stat().st_mtime)}.pt")
            os.replace(best, stale)
            log.warning("%s: starting over; the earlier run's best.pt is kept as %s", self.spec.name, stale.name)

    # ------------------------------------------------------------------ loop
    def fit(self) -> State:
        self.out.mkdir(parents=True, exist_ok=True)
        if not self.resume():
            self._set_aside_old_best()
        for warning in self.warnings:
            log.warning("%s: %s", self.spec.name, warning)
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)
        st = self.state
        while not self._done():
            self._epoch()
            if self.diverged_at is None and not self._done():
                st.epoch, st.batches_in_epoch = st.epoch + 1, 0
        if self.diverged_at is None:
            if st.last_val_step != st.step:  # the evaluated model is chosen including the final step
                self._validate()
            if not (self.out / "best.pt").exists():  # no validation cells: the final model is the best
                st.best_step = st.step
                self.checkpoint(self.out / "best.pt")
            self.checkpoint(self.out / "last.pt")
        self.write_log()
        repeated = self._total_repeated_cells()  # a collective: every rank, before rank 0 writes
        self.write_status(repeated)
        if self.world > 1:
            dist.barrier()
            dist.destroy_process_group()
        return st

    def _done(self) -> bool:
        """The one stop condition: steps or epochs used up, early stopping, or divergence."""
        st, cfg = self.state, self.spec.train
        # max_steps set: steps count; else epochs (total_steps, for the schedule, is then exact for
        # epoch 0 and may differ by a step in later epochs, whose pools fall differently)
        used_up = st.step >= cfg.max_steps if cfg.max_steps else st.epoch >= cfg.epochs
        return self.diverged_at is not None or used_up or st.bad_evals >= cfg.patience

    def _epoch(self) -> None:
        cfg, st = self.spec.train, self.state
        self.model.train()
        tick = clock = time.perf_counter()
        for micro_batches in self._steps(self._epoch_batches()):
            grad_norm = self._train_step(micro_batches)
            if grad_norm is None:  # diverged
                return
            st.step += 1
            now = time.perf_counter()
            st.train_seconds, clock = st.train_seconds + now - clock, now  # validation and checkpoints included
            if st.step % cfg.log_every == 0 or st.step == self.total_steps:
                elapsed = time.perf_counter() - tick
                self._log(
                    st.window_sse / max(1, st.window_masked),
                    grad_norm,
                    st.window_tokens / elapsed,
                    st.window_cells / elapsed,
                )
                st.window_sse, st.window_masked, st.window_tokens, st.window_cells = 0.0, 0, 0, 0
                tick = time.perf_counter()
            if cfg.val_every and st.step % cfg.val_every == 0:
                self._validate()
                self.model.train()
            if st.step % cfg.checkpoint_every == 0:
                self.checkpoint(self.out / "last.pt")
                self.write_log()
            if self.stop_signal is not None:
                self.checkpoint(self.out / "last.pt")
                self.write_log()
                raise Preempted(self.stop_signal)
            if self._done():
                return

    def _steps(self, batches):
        """Micro-batches grouped by optimiser step; an epoch's last group may be shorter (a partial
        step, so that no gradient carries into the next epoch)."""
        group = []
        for batch in batches:
            group.append(batch)
            if len(group) == self.spec.train.grad_accum:
                yield group
                group = []
        if group:
            yield group

    def _shares(self, epoch: int) -> list[int]:
        """Batches in each rank's share of an epoch (row groups are dealt to ranks, so shares differ
        by a few batches); counted once per epoch (the schedule and the epoch both ask for epoch 0)."""
        if epoch not in self._counted_shares:
            data = ShardBatches(
                self.spec.corpus, "train", self.spec.loader, epoch=epoch, world_size=self.world, subset=self.subset
            )
            self._counted_shares[epoch] = data.batches_per_rank(max(1, self.spec.train.num_workers))
        return self._counted_shares[epoch]

    def _epoch_batches(self):
        """This rank's micro-batches for the rest of the epoch. Every rank runs as many as the largest
        share (so none waits in an all-reduce for one that has finished, and no cell is left out):
        a shorter share goes round again from its start, and the cells it sees twice are counted
        (``State.repeated_cells``, reported in model.json)."""
        spec, cfg, st = self.spec, self.spec.train, self.state
        shares = self._shares(st.epoch)
        own, target = shares[self.rank], max(shares)
        if target == 0:
            raise ScencodeError("no training cells in the corpus (split 'train' is empty)", spec.corpus)
        if own == 0:
            raise ScencodeError(
                f"rank {self.rank} has no training cells in epoch {st.epoch}: the corpus has fewer "
                f"row groups than ranks × loader workers ({self.world} × {cfg.num_workers}); "
                "use fewer workers or smaller row groups (tokenize.row_group_cells)",
                spec.corpus,
            )
        done = st.batches_in_epoch
        while done < target:
            lap, skip = divmod(done, own)
            data = ShardBatches(
                spec.corpus,
                "train",
                spec.loader,
                epoch=st.epoch,
                rank=self.rank,
                world_size=self.world,
                skip_batches=skip,
                subset=self.subset,
            )
            loader = torch.utils.data.DataLoader(
                data,
                batch_size=None,
                num_workers=cfg.num_workers,
                generator=torch.Generator().manual_seed(spec.loader.seed),
            )
            for batch in loader:
                if lap:
                    st.repeated_cells += batch.n_cells
                yield batch
                done += 1
                if done == target:
                    return
            if done % own:
                raise ScencodeError(
                    f"rank {self.rank} read {done % own} batches of epoch {st.epoch}, {own} were counted", spec.corpus
                )

    def _train_step(self, micro_batches: list[Batch]) -> float | None:
        """One optimiser step. Its loss is the mean over every masked token of its micro-batches
        (and ranks): each micro-batch's squared-error sum is divided by the step's token count, so
        a token of a short cell weighs as much as one of a long cell whatever the bucketing."""
        st = self.state
        batches = [b.to(self.device) for b in micro_batches]
        n_masked = sum((b.masked & b.real).sum() for b in batches).double()
        if self.world > 1:
            dist.all_reduce(n_masked)
        scale = self.world / n_masked.clamp(min=1)  # DDP averages gradients over ranks
        for i, batch in enumerate(batches):
            sync = self.world == 1 or i == len(batches) - 1
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                with autocast(self.device, self.amp):
                    _, sse, n = self.ddp(batch)
                if not torch.isfinite(sse):
                    self._diverged(sse / n.clamp(min=1))
                    return None
                self.scaler.scale(sse * scale).backward()
            st.window_sse += float(sse.detach())
            st.window_masked += int(n)
            st.window_tokens += int(batch.real.sum())
            st.window_cells += batch.n_cells
            st.tokens_seen += int(batch.real.sum())
            st.cells_seen += batch.n_cells
        st.batches_in_epoch += len(batches)
        return self._optimizer_step()

    def _optimizer_step(self) -> float:
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return float(grad_norm)

    def _log(self, train_loss, grad_norm, tokens_per_s, cells_per_s, val_loss=float("nan")) -> None:
        st = self.state
        row = {
            "step": st.step,
            "epoch": st.epoch,
            "lr": self.scheduler.get_last_lr()[0],
            "train_loss": train_loss,
            "val_loss": val_loss,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens_per_s,
            "cells_per_s": cells_per_s,
        }
        for key in LOG_COLUMNS:
            st.log[key].append(float(row[key]) if key not in ("step", "epoch") else int(row[key]))
        if self.rank == 0 and not math.isnan(train_loss):
            log.info(
                "%s step %d loss %.4f lr %.2e grad %.3f %.0f tokens/s",
                self.spec.name,
                st.step,
                train_loss,
                row["lr"],
                grad_norm,
                tokens_per_s,
            )

    @torch.no_grad()
    def _validate(self) -> float:
        spec, st = self.spec, self.state
        self.model.eval()
        data = ShardBatches(
            spec.corpus, "val", spec.loader, epoch=0, rank=self.rank, world_size=self.world, shuffle=False
        )
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        seen = 0
        for batch in data:
            if seen >= spec.train.val_cells // self.world:
                break
            batch = batch.to(self.device)
            with autocast(self.device, self.amp):
                _, sse, n = self.model(batch)
            total += torch.stack([sse.double(), n.double()])
            seen += batch.n_cells
        if self.world > 1:
            dist.all_reduce(total)
        st.last_val_step = st.step
        if total[1] == 0:
            return math.nan
        val = st.last_val = float(total[0] / total[1])
        self._log(math.nan, math.nan, math.nan, math.nan, val_loss=val)
        if val < st.best_val:
            st.best_val, st.best_step, st.bad_evals = val, st.step, 0
            self.checkpoint(self.out / "best.pt")
        else:
            st.bad_evals += 1
        if self.rank == 0:
            log.info("%s step %d validation loss %.5f (best %.5f)", spec.name, st.step, val, st.best_val)
        return val

    def _diverged(self, loss: torch.Tensor) -> None:
        st = self.state
        self._log(float(loss.detach()), math.nan, math.nan, math.nan)
        self.write_log()
        message = (
            f"{self.spec.name}: training loss became {float(loss.detach())} at step {st.step} (epoch {st.epoch}); "
            f"the last good checkpoint is kept ({self.out / 'last.pt'})"
        )
        if self.spec.train.on_nonfinite == "stop":
            raise ScencodeError(message)
        self.diverged_at = st.step
        log.error("%s; ending the run as diverged (on_nonfinite: finish)", message)

    def write_status(self, repeated_cells: int = 0) -> None:
        """model.json: how the run ended, which checkpoint evaluation should use and from which step
        (None: no usable model, with the reason; the evaluation tables carry it), what the settings
        could not do, and the components' scales at the start and end."""
        if self.rank:
            return
        st, best, model = self.state, self.out / "best.pt", self.spec.model
        status = (
            "diverged"
            if self.diverged_at is not None
            else ("early_stopped" if st.bad_evals >= self.spec.train.patience else "completed")
        )
        if status != "diverged":
            note = ""
        elif best.exists():
            note = (
                f"training diverged at step {self.diverged_at}; best.pt is the best validation "
                f"before that (loss {st.best_val:.4g})"
            )
        else:
            note = f"training diverged at step {self.diverged_at}, before any validation: no checkpoint"
        finite = lambda v: v if v is not None and math.isfinite(v) else None  # noqa: E731
        write_json(
            {
                "configuration": self.spec.name,
                "gene_encoding": model.gene_encoding,
                "expression_encoding": model.expression_encoding,
                "seed": self.spec.loader.seed,
                "status": status,
                "steps": st.step,
                "total_steps": self.total_steps,
                "train_cells": self.training_set,
                "steps_per_epoch": self.steps_per_epoch,
                "best_val_loss": finite(st.best_val),
                "checkpoint": best.name if best.exists() else None,
                "checkpoint_step": st.best_step if best.exists() else None,
                "final_val_loss": finite(st.last_val) if st.last_val_step == st.step else None,
                "still_improving": st.best_step == st.step and st.step > 0,
                "warnings": self.warnings,
                "calibration": st.calibration,
                "ranks": {"world_size": self.world, "repeated_cells": repeated_cells},
                "component_rms": {"start": st.rms_start, "end": self._component_rms()},
                "cost": self._cost(),
                "note": note,
            },
            self.out / "model.json",
        )

    def _cost(self) -> dict:
        """What training cost: wall time in the loop (all resumes), device, real tokens and cells
        per second, GPU-hours (or CPU core-hours) and, on CUDA, MFU by the 6N convention (model FLOPs
        of the real tokens: 6 x the blocks' weights per token, attention's quadratic term left out).
        Totals are rank 0's figures x the ranks (their shares are balanced)."""
        st, seconds = self.state, max(self.state.train_seconds, 1e-9)
        tokens, cells = st.tokens_seen * self.world, st.cells_seen * self.world
        cuda = self.device.type == "cuda"
        peak_name, peak = peak_flops(self.device)
        cfg = self.spec.model
        flops = 6 * block_params(cfg.n_layers, cfg.d_model, cfg.d_ff) * tokens
        return {
            "wall_seconds": st.train_seconds,
            "device": device_name(self.device),
            "devices": self.world,
            "real_tokens": tokens,
            "cells": cells,
            "tokens_per_s": tokens / seconds,
            "cells_per_s": cells / seconds,
            "device_hours": st.train_seconds / 3600 * (self.world if cuda else self.world * torch.get_num_threads()),
            "device_hours_unit": "GPU-hours" if cuda else "CPU core-hours",
            "mfu": flops / seconds / (peak * self.world) if cuda and peak else None,
            "peak": peak_name,
        }

    def _total_repeated_cells(self) -> int:
        """Cells the ranks saw twice to even out their shares, over all epochs and ranks."""
        total = torch.tensor([self.state.repeated_cells], dtype=torch.int64, device=self.device)
        if self.world > 1:
            dist.all_reduce(total)
        return int(total.item())

    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signum
        log.warning("signal %d: checkpointing at the next optimiser step", signum)

    def write_log(self) -> None:
        if self.rank:
            return
        table = pa.table({k: self.state.log[k] for k in LOG_COLUMNS})
        table = table.replace_schema_metadata(
            {b"configuration": self.spec.name.encode(), b"steps_per_epoch": str(self.steps_per_epoch).encode()}
        )
        with atomic_path(self.out / "train_log.parquet", suffix=".parquet") as tmp:
            pq.write_table(table, tmp)


class Preempted(Exception):
    """The job was asked to stop (SIGTERM/SIGUSR1); last.pt holds the state to resume from."""


def run(
    name: str,
    corpus: Path,
    vocab: Path,
    out: OutputFolder,
    params: dict | None = None,
    gene_table: Path | None = None,
    threads: int | None = None,
) -> State:
    """Pretrain one encoding configuration into folder ``out`` (best.pt, last.pt, train_log.parquet,
    model.json), resuming from last.pt. ``params``: JSON {"model": {...}, "loader": {...}, "train": {...}};
    ``gene_table``: the gene-embedding table of the esm2 and random_frozen gene encodings."""
    import sys

    from .settings import parse, torch_threads

    params = params or {}
    unknown = sorted(set(params) - {"model", "loader", "train"})
    if unknown:
        raise ScencodeError(f"unknown pretrain settings section(s): {', '.join(unknown)} (known: model, loader, train)")
    # the vocabulary's size is known once the Trainer reads it; the model validates itself then
    model = parse(ModelConfig, {"vocab_size": 0, **params.get("model", {})}, validate=False)
    spec = RunSpec(
        name,
        Path(corpus),
        Path(vocab),
        Path(out),
        model,
        parse(LoaderConfig, params.get("loader")),
        parse(TrainConfig, params.get("train")),
        Path(gene_table) if gene_table else None,
    )
    torch_threads(threads)
    try:
        state = Trainer(spec).fit()
    except Preempted as signum:
        log.warning("stopped by signal %s; last.pt saved, rerun to resume", signum)
        sys.exit(TERMINATED_EXIT)
    log.info("%s: %d steps, best validation loss %.5f", name, state.step, state.best_val)
    return state
