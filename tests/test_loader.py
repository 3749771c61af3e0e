from collections import Counter

import pyarrow.parquet as pq
import pytest
import torch

from scencode.loader import LoaderConfig, ShardBatches

CFG = LoaderConfig(batch_size=16, context=64, p_mask=0.5, bucket_batches=3, seed=5)


def corpus_cells(corpus, split="train"):
    table = pq.read_table(sorted(corpus.glob("part-*.parquet")), columns=["cell_id", "split"]).to_pandas()
    return set(table.cell_id[table.split == split])


def test_batches_are_padded_with_normalised_values(demo_corpus):
    corpus, _ = demo_corpus
    batch = next(iter(ShardBatches(corpus, "train", LoaderConfig(**{**CFG.__dict__, "layout": "padded"}))))
    valid = batch.valid
    assert batch.gene_ids.dtype == torch.int64 and (batch.gene_ids[~valid] == 0).all()
    assert valid.sum(1).max() <= CFG.context and (batch.masked <= valid).all()
    assert torch.all(batch.xnorm[valid] > 0) and torch.all(batch.xnorm[~valid] == 0)


def test_length_bucketing_cuts_padding(demo_corpus):
    corpus, _ = demo_corpus
    cfg = LoaderConfig(batch_size=8, context=2048, bucket_batches=10, seed=1, layout="padded")

    def padding(shuffle_buckets):
        ds = ShardBatches(corpus, "train", cfg, shuffle=shuffle_buckets)
        real = total = 0
        for b in ds:
            real += int(b.valid.sum())
            total += b.valid.numel()
        return 1 - real / total

    assert padding(True) < 0.5 * padding(False)


def test_packed_batches_hold_the_padded_batches_real_tokens(demo_corpus):
    corpus, _ = demo_corpus
    padded = ShardBatches(corpus, "train", LoaderConfig(**{**CFG.__dict__, "layout": "padded"}), with_cell_ids=True)
    packed = ShardBatches(corpus, "train", CFG, with_cell_ids=True)
    n = 0
    for a, b in zip(padded, packed):
        assert a.meta["cell_id"] == b.meta["cell_id"] and b.valid is None
        assert b.offsets.tolist() == [0, *a.valid.sum(1).cumsum(0).tolist()]
        for key in ("gene_ids", "counts", "xnorm", "masked"):
            assert torch.equal(getattr(a, key)[a.valid], getattr(b, key))
        n += 1
    assert n > 3


def test_two_workers_times_two_ranks_see_every_training_cell_once(demo_corpus):
    corpus, _ = demo_corpus
    seen = Counter()
    for rank in range(2):
        ds = ShardBatches(corpus, "train", CFG, epoch=3, rank=rank, world_size=2, with_cell_ids=True)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        for batch in loader:
            seen.update(batch.meta["cell_id"])
    assert set(seen) == corpus_cells(corpus) and max(seen.values()) == 1


def test_ranks_and_workers_take_turns_in_one_stream(demo_corpus):
    """The stream is the same whatever the ranks and workers: rank r of W holds positions ≡ r mod W."""
    corpus, _ = demo_corpus

    def stream(rank=0, world=1, workers=0):
        ds = ShardBatches(corpus, "train", CFG, epoch=2, rank=rank, world_size=world, with_cell_ids=True)
        return [b.meta["cell_id"] for b in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)]

    whole = stream()
    assert stream(workers=2) == whole
    for world in (2, 3):
        for rank in range(world):
            assert stream(rank, world, workers=2 if rank == 1 else 0) == whole[rank::world]


def test_validation_stops_at_the_same_cells_on_any_number_of_ranks(demo_corpus):
    corpus, _ = demo_corpus

    def cells(rank=0, world=1):
        ds = ShardBatches(corpus, "val", CFG, rank=rank, world_size=world, shuffle=False, max_cells=40)
        return [b.n_cells for b in ds]

    one = cells()
    assert sum(one[:-1]) < 40 <= sum(one)  # whole batches, until 40 cells are reached
    assert sorted(cells(0, 2) + cells(1, 2)) == sorted(one)


def test_stream_is_deterministic_and_resumable_mid_epoch(demo_corpus):
    corpus, _ = demo_corpus

    def stream(skip=0, workers=0):
        ds = ShardBatches(corpus, "train", CFG, epoch=1, skip_batches=skip, with_cell_ids=True)
        return [b for b in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)]

    full = stream()
    assert [b.meta["cell_id"] for b in stream()] == [b.meta["cell_id"] for b in full]
    tail = stream(skip=5)
    assert len(tail) == len(full) - 5
    for a, b in zip(tail, full[5:]):
        assert a.meta["cell_id"] == b.meta["cell_id"] and torch.equal(a.masked, b.masked)
    two = stream(workers=2)
    resumed = stream(skip=3, workers=2)
    assert [b.meta["cell_id"] for b in resumed] == [b.meta["cell_id"] for b in two[3:]]
    epoch2 = ShardBatches(corpus, "train", CFG, epoch=2, with_cell_ids=True)
    assert [b.meta["cell_id"] for b in epoch2][:1] != [full[0].meta["cell_id"]]


@pytest.mark.parametrize(
    "bad", [dict(context=0), dict(batch_size=0), dict(p_mask=1.0), dict(gene_sampling="best"), dict(layout="ragged")]
)
def test_invalid_loader_settings_are_refused(demo_corpus, bad):
    from scencode.errors import ScencodeError

    with pytest.raises(ScencodeError):
        ShardBatches(demo_corpus[0], "train", LoaderConfig(**bad))


@pytest.mark.parametrize("split", ["val", "test", "train"])
def test_a_rare_splits_pools_hold_its_cells_only_and_the_stream_is_unchanged(demo_corpus, monkeypatch, split):
    """The rehearsal's embed job of the 1,000 test cells of a 1M-cell corpus took 12.9 GB (asked 8 GB):
    a pool of a rare split's cells held every row group around them. A rare split's rows are now
    taken out of each row group; the batches are the same cells, masks and values."""
    from scencode import loader

    corpus, _ = demo_corpus
    held: list[int] = []
    pool = loader._Pool

    class Recording(pool):
        def __init__(self, table, in_split, *args, **kwargs):
            held.append(table.num_rows - int(in_split.sum()))  # rows of other splits in the pool
            super().__init__(table, in_split, *args, **kwargs)

    def stream():
        ds = ShardBatches(corpus, split, CFG, epoch=1, with_cell_ids=True)
        return [(b.meta["cell_id"], b.gene_ids, b.counts, b.masked) for b in ds]

    monkeypatch.setattr(loader, "_Pool", Recording)
    taken = stream()
    assert held and (sum(held) == 0 if split != "train" else True)
    monkeypatch.setattr(loader, "SPARSE_SPLIT", 0.0)  # as before: whole row groups in every pool
    held.clear()
    whole = stream()
    assert split == "train" or sum(held) > 5 * len(corpus_cells(corpus, split))  # ~9x its cells here
    assert len(taken) == len(whole) and all(
        a[0] == b[0] and all(torch.equal(x, y) for x, y in zip(a[1:], b[1:])) for a, b in zip(taken, whole)
    )
