"""``scencode.ranks``: the training processes and which micro-batches each runs."""

from types import SimpleNamespace

import pytest
import torch

from scencode.checkpoints import State
from scencode.errors import ScencodeError
from scencode.loader import LoaderConfig
from scencode.ranks import Ranks, RankSchedule
from scencode.run_config import TrainConfig

LOADER = LoaderConfig(batch_size=16, context=64, bucket_batches=2, seed=3)


def schedule(corpus, rank, world, grad_accum, workers=0):
    spec = SimpleNamespace(corpus=corpus, loader=LOADER, train=TrainConfig(grad_accum=grad_accum, num_workers=workers))
    return RankSchedule(spec, Ranks(rank, world, torch.device("cpu")), subset=None)


def cell_ids(batch):
    return tuple(batch.gene_ids.tolist()), tuple(batch.masked.tolist())


def test_ranks_split_every_step_of_the_one_process_stream(demo_corpus):
    """The steps of W ranks hold, together, the micro-batches the one-process run's steps hold:
    the same global batch on any number of processes, the last step partial on every count."""
    corpus, _ = demo_corpus
    one = list(schedule(corpus, 0, 1, grad_accum=4).steps(State()))
    total = schedule(corpus, 0, 1, grad_accum=4).micro_batches(0)
    assert total % 4 and [s.micro_batches for s in one] == [4] * (total // 4) + [total % 4]
    for world, workers in ((2, 0), (4, 2)):
        per_rank = [list(schedule(corpus, r, world, 4, workers).steps(State())) for r in range(world)]
        assert {len(steps) for steps in per_rank} == {len(one)}  # every rank takes every step
        for k, step in enumerate(one):
            together = sorted(cell_ids(b) for steps in per_rank for b in steps[k].batches)
            assert together == sorted(cell_ids(b) for b in step.batches)
        last = [len(steps[-1].batches) for steps in per_rank]
        if world > total % 4:
            assert 0 in last  # a rank with nothing in the partial step still takes it (a zero-weight pass)


def test_a_step_resumes_on_another_number_of_ranks(demo_corpus):
    corpus, _ = demo_corpus
    one = list(schedule(corpus, 0, 1, grad_accum=4).steps(State()))
    resumed = [list(schedule(corpus, r, 2, 4).steps(State(batches_in_epoch=8))) for r in range(2)]
    assert len(resumed[0]) == len(one) - 2
    together = sorted(cell_ids(b) for steps in resumed for b in steps[0].batches)
    assert together == sorted(cell_ids(b) for b in one[2].batches)


def test_grad_accum_that_the_ranks_do_not_divide_is_refused(demo_corpus):
    with pytest.raises(ScencodeError, match="grad_accum 6 .* multiple .* use grad_accum 8"):
        schedule(demo_corpus[0], 0, 4, grad_accum=6)


def test_one_process_is_rank_zero_of_one_and_writes(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ranks = Ranks.join()
    assert (ranks.rank, ranks.world, ranks.writes) == (0, 1, True)
    total = torch.tensor([3.0])
    assert ranks.sum(total) is total and total.item() == 3.0  # no process group: nothing to reduce
    ranks.leave()
