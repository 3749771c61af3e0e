"""The training processes (ranks) and which micro-batches each runs: torchrun's RANK and
WORLD_SIZE, the process group, and a schedule that gives every rank as many batches as the largest
share (the loader deals row groups to ranks)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from .devices import default_device
from .errors import ScencodeError
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
