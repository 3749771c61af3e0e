"""``scencode.ranks``: the training processes and which micro-batches each runs."""

import torch

from scencode.ranks import Ranks, optimizer_steps


def test_optimizer_steps_group_micro_batches_and_end_with_the_leftovers():
    assert [len(g) for g in optimizer_steps(range(7), 3)] == [3, 3, 1]
    assert [len(g) for g in optimizer_steps(range(6), 3)] == [3, 3]
    assert list(optimizer_steps([], 3)) == []


def test_one_process_is_rank_zero_of_one_and_writes(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ranks = Ranks.join()
    assert (ranks.rank, ranks.world, ranks.writes) == (0, 1, True)
    total = torch.tensor([3.0])
    assert ranks.sum(total) is total and total.item() == 3.0  # no process group: nothing to reduce
    ranks.leave()
