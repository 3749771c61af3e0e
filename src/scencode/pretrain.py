"""Pretraining one encoding configuration: config, data, model, optimiser, loop, checkpoints.

Masked-expression pretraining: half of the expression embeddings are replaced by a learnable mask
vector and the model predicts x̃ there (MSE). AdamW, cosine schedule with warmup, gradient
accumulation, grad-norm clipping, mixed precision on CUDA (bf16, else fp16 with a grad scaler),
validation every N steps, early stopping, ``best.pt`` by validation loss, ``last.pt`` every N steps
and on SIGTERM/SIGUSR1 (SLURM preemption), automatic resume from ``last.pt``. Several GPUs: launch
with torchrun (the workflow does: ``pretrain.gpus``); DDP is used when WORLD_SIZE > 1, and the
global batch (``batch_size × grad_accum``) is the same on any number of processes (``ranks``).

Read ``setup`` (what a run holds) and ``fit`` (the loop) first. The pieces they use live beside:
``checkpoints`` (the loop's state, the store of best.pt/last.pt, the run's identity), ``ranks``
(the processes and which micro-batches each runs), ``run_report`` (the log, model.json, the cost).
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel

from .atomic import OutputFolder, Terminated, deferred_stop
from .checkpoints import CheckpointStore, Optimisation, State
from .corpus_stats import read_gene_medians
from .devices import autocast, autocast_dtype
from .encodings import N_SPECIAL, align_gene_table
from .errors import ScencodeError
from .formats import load_vocab, vocab_hash, write_run_status
from .loader import ShardBatches, draw_train_subset
from .model import Batch, CellTransformer
from .ranks import Ranks, RankSchedule
from .run_config import LoaderConfig, ModelConfig, RunSettings, TrainConfig, needs_gene_medians, needs_gene_table
from .run_report import component_rms, log_row, log_training, run_status, write_log
from .shards import verify_corpus
from .unseen_genes import read_unseen_genes
from .vocab import species_tokens

log = logging.getLogger(__name__)


@dataclass
class RunSpec:
    """What one run trains: its name, inputs, output folder and settings."""

    name: str
    corpus: Path
    vocab: Path
    out_dir: Path
    model: ModelConfig
    loader: LoaderConfig
    train: TrainConfig
    gene_embeddings: Path | None = None  # the gene-embedding table (ESM-2 …) of encodings that read one
    gene_medians: Path | None = None  # the training corpus's gene medians, for expression encodings that read them
    unseen_genes: Path | None = None  # genes held out of every training cell (pretrain.unseen_genes)


def build_model(spec: RunSpec, vocab: pd.DataFrame, unseen: np.ndarray | None = None) -> CellTransformer:
    """The model of ``spec``; a gene encoding that reads a table gets it aligned to the vocabulary
    (without one, the encoder says what is missing). ``unseen``: the genes held out of training (a
    bool per token id), carried by the model so that evaluation knows them; the vocabulary's genes of
    another organism and their orthologs likewise (:func:`scencode.vocab.species_tokens`)."""
    gene_table = medians = None
    foreign, alias = species_tokens(vocab)
    if needs_gene_table(spec.model.gene_encoding) and spec.gene_embeddings is not None:
        gene_table = align_gene_table(spec.gene_embeddings, vocab, spec.train.missing_genes)
    if needs_gene_medians(spec.model.expression_encoding):
        if spec.gene_medians is None:
            raise ScencodeError(
                f"expression encoding {spec.model.expression_encoding!r} orders genes by expression / the gene's "
                "median over the training corpus: pass --gene-medians (the workflow's gene_medians rule writes it)"
            )
        medians = torch.tensor(read_gene_medians(spec.gene_medians, vocab_hash(vocab.gene_id)))  # a copy: edited below
        if len(medians) != len(vocab):
            raise ScencodeError(
                f"gene medians hold {len(medians)} tokens, the vocabulary {len(vocab)}", spec.gene_medians
            )
        medians = _untrained_medians(medians, unseen, foreign, alias)
    held_out = None if unseen is None else torch.from_numpy(unseen)
    return CellTransformer(
        spec.model,
        gene_table=gene_table,
        gene_medians=medians,
        unseen_genes=held_out,
        foreign_genes=torch.from_numpy(foreign),
        gene_alias=torch.from_numpy(alias),
    )


def _untrained_medians(
    medians: torch.Tensor, unseen: np.ndarray | None, foreign: np.ndarray, alias: np.ndarray
) -> torch.Tensor:
    """The rank encoding's medians of genes no training cell held: an unseen gene's would be its
    training data, a foreign gene has none. Each gets the median of the trained genes' medians; a
    foreign gene with a human ortholog gets the ortholog's (the same gene, by expression)."""
    untrained = foreign | (unseen if unseen is not None else np.zeros_like(foreign))
    if not untrained.any():
        return medians
    trained = torch.from_numpy(~untrained)
    trained[:N_SPECIAL] = False
    fill = float(medians[trained].median())
    medians[torch.from_numpy(untrained)] = fill
    borrowed = foreign & (alias != np.arange(len(alias)))
    medians[torch.from_numpy(borrowed)] = medians[torch.from_numpy(alias[borrowed])]
    return medians


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
    unseen: np.ndarray | None = None  # genes left out of every training cell (bool per token id)

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
    unseen = read_unseen_genes(spec.unseen_genes, vocab_hash, len(vocab)) if spec.unseen_genes else None
    if unseen is not None:
        training_set["unseen_genes"] = int(unseen.sum())
    torch.manual_seed(spec.loader.seed)
    model = build_model(spec, vocab, unseen).to(ranks.device)
    # the same first training batches on every rank: calibration gives every rank the same gains
    first = ShardBatches(spec.corpus, "train", spec.loader, epoch=0, subset=subset, drop_genes=unseen)
    probe = [batch.to(ranks.device) for batch, _ in zip(first, range(cfg.calibration_batches))]
    state = State(calibration=model.calibrate(probe))
    state.rms_start = component_rms(model, probe)
    step_model = DistributedDataParallel(model) if ranks.world > 1 else model
    optimizer = torch.optim.AdamW(
        parameter_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1])
    )
    schedule = RankSchedule(spec, ranks, subset, unseen)
    steps_per_epoch = schedule.steps_per_epoch()
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
        unseen=unseen,
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
            for step in run.schedule.steps(st):
                grad_norm = train_step(run, step.batches)
                if grad_norm is None:  # diverged (on_nonfinite: finish)
                    break
                st.step, st.batches_in_epoch = st.step + 1, st.batches_in_epoch + step.micro_batches
                now = time.perf_counter()
                st.train_seconds += now - clock  # validation and checkpoints included
                st.device_seconds, clock = st.device_seconds + (now - clock) * run.ranks.world, now
                if st.step % cfg.log_every == 0 or st.step == run.total_steps:
                    log_training(run, grad_norm, seconds=now - window)
                    window = time.perf_counter()
                if cfg.val_every and st.step % cfg.val_every == 0:
                    validate(run)
                    run.model.train()
                stopping = run.ranks.agree_to_stop(stop_requested())
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
    if run.ranks.writes:
        write_run_status(run_status(run), run.out / "model.json")
    run.ranks.leave()
    return st


def train_step(run: Run, micro_batches: list[Batch]) -> float | None:
    """One optimiser step: its gradient norm, or None if the loss became non-finite."""
    if not accumulate_gradients(run, micro_batches):
        return None
    return optimizer_step(run.optim, run.spec.train.grad_clip)


def accumulate_gradients(run: Run, micro_batches: list[Batch]) -> bool:
    """Backward passes of one step. Its loss is the mean over every masked token of its
    micro-batches on every rank: each micro-batch's squared-error sum is divided by the step's
    token count, so a token of a short cell weighs as much as one of a long cell whatever the
    bucketing or the number of ranks. A rank with no micro-batch in the step (an epoch's last,
    partial step) runs the first probe batch with weight 0, so DDP's all-reduce happens everywhere.
    False: the loss became non-finite on some rank (``diverged`` has dealt with it)."""
    st, ranks = run.state, run.ranks
    # counted on the host, before the copy to the device (no synchronisation)
    local = [
        sum(int((b.masked & b.real).sum()) for b in micro_batches),
        sum(int(b.real.sum()) for b in micro_batches),
        sum(b.n_cells for b in micro_batches),
    ]
    where = ranks.device if ranks.world > 1 else "cpu"  # NCCL reduces on the GPU; one process needs no copy
    masked, tokens, cells = (int(n) for n in ranks.sum(torch.tensor(local, dtype=torch.float64, device=where)))
    batches, weight = [b.to(ranks.device) for b in micro_batches], 1.0
    if not batches:
        batches, weight = run.probe[:1], 0.0
    scale = ranks.world * weight / max(1, masked)  # DDP averages gradients over ranks
    sse_sum = torch.zeros((), dtype=torch.float64, device=ranks.device)
    model = run.optim.step_model
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        # DDP all-reduces the gradients at each process's last backward of the step only
        with model.no_sync() if isinstance(model, DistributedDataParallel) and not last else contextlib.nullcontext():
            with autocast(ranks.device, run.amp):
                _, sse, _ = model(batch)
            sse_sum += weight * sse.detach().double()
            if torch.isfinite(sse) or ranks.world > 1:  # every rank runs every backward: none waits alone
                run.optim.scaler.scale(sse * scale).backward()
    sse_sum = ranks.sum(sse_sum)
    if not torch.isfinite(sse_sum):
        diverged(run, sse_sum / max(1, masked))
        return False
    st.window_sse, st.window_masked = st.window_sse + float(sse_sum), st.window_masked + masked
    st.window_tokens, st.window_cells = st.window_tokens + tokens, st.window_cells + cells
    st.tokens_seen, st.cells_seen = st.tokens_seen + tokens, st.cells_seen + cells
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
        spec.corpus,
        "val",
        spec.loader,
        epoch=0,
        rank=ranks.rank,
        world_size=ranks.world,
        shuffle=False,
        max_cells=spec.train.val_cells,
        drop_genes=run.unseen,
    )
    total = torch.zeros(2, dtype=torch.float64, device=ranks.device)
    for batch in data:
        batch = batch.to(ranks.device)
        with autocast(ranks.device, run.amp):
            _, sse, n = run.model(batch)
        total += torch.stack([sse.double(), n.double()])
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


def run(
    name: str,
    corpus: Path,
    vocab: Path,
    out: OutputFolder,
    params: dict | None = None,
    gene_embeddings: Path | None = None,
    gene_medians: Path | None = None,
    unseen_genes: Path | None = None,
    threads: int | None = None,
    gpus: int = 1,
    nodes: int = 1,
) -> State | None:
    """Pretrain one encoding configuration into folder ``out`` (best.pt, last.pt, train_log.parquet,
    model.json), resuming from last.pt. ``params``: JSON {"model": {...}, "loader": {...}, "train": {...}};
    ``gene_embeddings``: the gene-embedding table (ESM-2 …) of the gene encodings that read one;
    ``gene_medians``: the training corpus's gene medians (``scencode gene-medians``) of the
    expression encodings that read them (rank); ``unseen_genes``: the genes held out of every training
    cell (``scencode unseen-genes``). ``gpus`` × ``nodes`` > 1: the step starts itself again under torchrun, one process per GPU
    (``launch``; on CPUs, processes with gloo); ``threads`` are each process's."""

    from .launch import relaunch, under_torchrun
    from .settings import torch_threads

    if gpus * nodes > 1 and not under_torchrun():
        if sys.argv[1:2] != ["pretrain"]:
            raise ScencodeError("pretrain: several GPUs are started from the command line (scencode pretrain --gpus)")
        relaunch(gpus, nodes, sys.argv[1:])

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
        Path(gene_medians) if gene_medians else None,
        Path(unseen_genes) if unseen_genes else None,
    )
    torch_threads(threads)
    state = fit(setup(spec))
    log.info("%s: %d steps, best validation loss %.5f", name, state.step, state.best_val)
    return state
