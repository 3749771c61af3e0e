from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from scencode.loader import LoaderConfig, ShardBatches, sample_tokens

CFG = LoaderConfig(batch_size=16, context=64, p_mask=0.5, bucket_batches=3, seed=5)


def corpus_cells(corpus, split="train"):
    table = pq.read_table(sorted(corpus.glob("part-*.parquet")), columns=["cell_id", "split"]).to_pandas()
    return set(table.cell_id[table.split == split])


def cells_of(out):
    """Per cell: its chosen tokens as {gene: (count, masked)}."""
    bounds = out["offsets"]
    return [
        {g: (c, m) for g, c, m in zip(*(out[k][a:b].tolist() for k in ("gene_ids", "counts", "masked")))}
        for a, b in zip(bounds[:-1], bounds[1:])
    ]


def test_k_of_m_sampling_and_masking_fraction():
    lengths = np.array([10, 100, 64])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    genes = np.concatenate(
        [np.sort(np.random.default_rng(i).choice(1000, n, replace=False)) for i, n in enumerate(lengths)]
    )
    counts = np.arange(len(genes)) + 1
    keys = np.array([11, 22, 33], dtype=np.uint64)
    out = sample_tokens(genes, counts, offsets[:-1], lengths, keys, epoch=0, cfg=CFG)
    assert np.diff(out["offsets"]).tolist() == [10, 64, 64]
    for r, cell in enumerate(cells_of(out)):
        own = genes[offsets[r] : offsets[r + 1]]
        assert set(cell) <= set(own)
        assert sum(m for _, m in cell.values()) == round(0.5 * min(lengths[r], 64))
        lookup = dict(zip(own.tolist(), counts[offsets[r] : offsets[r + 1]].tolist()))  # counts travel with genes
        assert all(lookup[g] == c for g, (c, _) in cell.items())
    again = sample_tokens(genes, counts, offsets[:-1], lengths, keys, epoch=0, cfg=CFG)
    assert all(np.array_equal(out[k], again[k]) for k in out)
    other_epoch = sample_tokens(genes, counts, offsets[:-1], lengths, keys, epoch=1, cfg=CFG)
    assert set(cells_of(out)[1]) != set(cells_of(other_epoch)[1])
    # a cell's sample does not depend on the other cells of its batch
    alone = sample_tokens(genes, counts, offsets[1:2], lengths[1:2], keys[1:2], epoch=0, cfg=CFG)
    assert cells_of(alone)[0] == cells_of(out)[1]


def hashes(genes, key, epoch, cfg):
    from scencode.loader import splitmix

    salt = splitmix(np.uint64(cfg.seed) * np.uint64(1_000_003) + np.uint64(epoch))
    with np.errstate(over="ignore"):
        return splitmix(np.uint64(key) ^ salt ^ (genes.astype(np.uint64) * np.uint64(0x94D049BB133111EB)))


@pytest.mark.parametrize("context", [1, 7, 63, 64, 300])
def test_the_compiled_sampler_keeps_the_smallest_hashes_and_masks_the_smallest_second_hashes(context):
    """Against a plain sort per cell: the K genes with the smallest (seed, epoch, cell, gene) hash,
    and among them the round(p·K) with the smallest re-mixed hash masked."""
    from scencode.loader import splitmix

    rng = np.random.default_rng(context)
    lengths = rng.integers(1, 200, 40)
    genes = np.concatenate([np.sort(rng.choice(30_000, n, replace=False)) for n in lengths]).astype(np.int32)
    counts = rng.integers(1, 50, len(genes)).astype(np.int32)
    keys = rng.integers(0, 2**63, len(lengths)).astype(np.uint64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    cfg = LoaderConfig(context=context, seed=9, p_mask=0.15)
    out = cells_of(sample_tokens(genes, counts, starts, lengths, keys, 4, cfg))
    for i, cell in enumerate(out):
        own = genes[starts[i] : starts[i] + lengths[i]]
        h = hashes(own, keys[i], 4, cfg)
        chosen = np.sort(h)[: min(context, len(own))]
        assert set(cell) == set(own[np.isin(h, chosen)].tolist())
        second = np.sort(splitmix(chosen))[: int(np.rint(0.15 * len(chosen)))]
        masked = own[np.isin(h, chosen) & np.isin(splitmix(h), second)]
        assert {g for g, (_, m) in cell.items() if m} == set(masked.tolist())


def test_top_expressed_sampling_keeps_the_highest_counts():
    from dataclasses import replace

    lengths = np.array([100, 30])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    genes = np.concatenate([np.arange(100), np.arange(30)])
    counts = np.concatenate([np.random.default_rng(0).permutation(100) // 2 + 1, np.ones(30)])  # pairs tie
    cfg = replace(CFG, gene_sampling="top_expressed")
    out = cells_of(sample_tokens(genes, counts, offsets[:-1], lengths, np.array([1, 2], np.uint64), 0, cfg))
    kept = [c for c, _ in out[0].values()]
    assert len(kept) == 64 and min(kept) >= np.sort(counts[:100])[-64]  # the 64 highest (ties at the edge)
    assert len(out[1]) == 30  # cells with M ≤ K keep every gene
    again = cells_of(sample_tokens(genes, counts, offsets[:-1], lengths, np.array([1, 2], np.uint64), 3, cfg))
    assert set(out[0]) == set(again[0])


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
