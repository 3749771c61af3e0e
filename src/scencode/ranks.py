"""The training processes (ranks) and which micro-batches each runs: torchrun's RANK and
WORLD_SIZE, the process group, and the schedule that cuts the epoch's one stream of micro-batches
into optimiser steps and gives each rank its part of every step."""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist

from .devices import default_device
from .errors import ScencodeError
from .launch import under_torchrun
from .loader import ShardBatches, TrainSubset
from .model import Batch

if TYPE_CHECKING:
    from .checkpoints import State
    from .pretrain import RunSpec


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
        # under torchrun even on one process (the launcher's path, NCCL on a GPU, is then the one a
        # multi-GPU job takes); started without it, no process group
        if under_torchrun() and not dist.is_initialized():
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

    def agree_to_stop(self, reason: str | None) -> str | None:
        """A stop signal reaches the ranks at different steps; all stop at the first step any has
        seen one (a rank that went on alone would wait in the next all-reduce for ever)."""
        if self.world == 1:
            return reason
        flag = self.sum(torch.tensor([1.0 if reason else 0.0], device=self.device))
        return reason or ("a stop signal on another rank" if flag.item() else None)

    def leave(self) -> None:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


@dataclass
class Step:
    """One optimiser step: this rank's micro-batches of it, and how many it has on all ranks."""

    batches: list[Batch]
    micro_batches: int


class RankSchedule:
    """Which training micro-batches each rank runs. An epoch is one stream of micro-batches (the
    loader's, the same for any number of ranks and workers); an optimiser step is ``grad_accum``
    consecutive ones, and rank r of W runs those at positions ≡ r (mod W). So the global batch is
    ``batch_size × grad_accum`` whatever W, and a run on W processes takes the steps a run on one
    does, on the same cells. ``grad_accum`` must be a multiple of W. In the epoch's last, partial
    step a rank may have no micro-batch: it gets an empty list (the trainer then runs a
    zero-weight pass, so DDP's gradient all-reduce still happens on every rank)."""

    def __init__(self, spec: RunSpec, ranks: Ranks, subset: TrainSubset | None, drop_genes: np.ndarray | None = None):
        self.corpus, self.loader, self.subset, self.drop_genes = spec.corpus, spec.loader, subset, drop_genes
        self.rank, self.world = ranks.rank, ranks.world
        self.workers, self.accum = spec.train.num_workers, spec.train.grad_accum
        if self.accum % self.world:
            multiple = -(-self.accum // self.world) * self.world
            raise ScencodeError(
                f"train.grad_accum {self.accum} is the micro-batches of one optimiser step over all "
                f"{self.world} processes and must be a multiple of them (each runs grad_accum / "
                f"processes); use grad_accum {multiple}, or a number of GPUs that divides {self.accum}"
            )
        self._counts: dict[int, int] = {}

    def micro_batches(self, epoch: int) -> int:
        """Micro-batches in the epoch's stream (all ranks), counted once per epoch."""
        if epoch not in self._counts:
            data = ShardBatches(self.corpus, "train", self.loader, epoch=epoch, subset=self.subset)
            self._counts[epoch] = data.count_batches()
        return self._counts[epoch]

    def steps_per_epoch(self) -> int:
        """Exact for epoch 0 (later epochs' pools may fall a step differently); an epoch ends with
        a partial step on its leftover micro-batches, so no gradient crosses into the next."""
        return max(1, math.ceil(self.micro_batches(0) / self.accum))

    def steps(self, state: State) -> Iterator[Step]:
        """The rest of ``state.epoch``'s optimiser steps, from micro-batch ``state.batches_in_epoch``
        (counted over all ranks: a step boundary, so a run resumes on any number of ranks)."""
        total = self.micro_batches(state.epoch)
        if total == 0:
            raise ScencodeError("no training cells in the corpus (split 'train' is empty)", self.corpus)
        if state.batches_in_epoch % self.accum and state.batches_in_epoch < total:
            raise ScencodeError(
                f"the checkpoint stopped at micro-batch {state.batches_in_epoch} of epoch {state.epoch}, "
                f"not at an optimiser step of grad_accum {self.accum}",
                self.corpus,
            )
        mine = iter(self._loader(state.epoch, state.batches_in_epoch))
        for first in range(state.batches_in_epoch, total, self.accum):
            in_step = min(self.accum, total - first)
            batches = [next(mine) for _ in range(first + self.rank, first + in_step, self.world)]
            yield Step(batches, in_step)

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
            drop_genes=self.drop_genes,
        )
        return torch.utils.data.DataLoader(
            data,
            batch_size=None,
            num_workers=self.workers,
            generator=torch.Generator().manual_seed(self.loader.seed),
            worker_init_fn=leave_stop_signals_to_the_trainer,
        )


def leave_stop_signals_to_the_trainer(worker: int) -> None:
    """A DataLoader worker ignores stop signals. SLURM signals every process of a job (preemption,
    time limit, scancel): a worker that died of SIGTERM made the trainer fail with 'DataLoader worker
    exited unexpectedly' instead of finishing its step, writing last.pt and exiting 143. The trainer
    shuts its workers down itself."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
