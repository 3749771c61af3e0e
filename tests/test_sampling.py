"""The K-of-M token sampler and the batch's arrays: deterministic, exact, torch-free."""

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from scencode.run_config import LoaderConfig
from scencode.sampling import batch_arrays, pack, sample_tokens, splitmix, unpack

CFG = LoaderConfig(batch_size=16, context=64, p_mask=0.5, bucket_batches=3, seed=5)


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
    salt = splitmix(np.uint64(cfg.seed) * np.uint64(1_000_003) + np.uint64(epoch))
    with np.errstate(over="ignore"):
        return splitmix(np.uint64(key) ^ salt ^ (genes.astype(np.uint64) * np.uint64(0x94D049BB133111EB)))


@pytest.mark.parametrize("context", [1, 7, 63, 64, 300])
def test_the_compiled_sampler_keeps_the_smallest_hashes_and_masks_the_smallest_second_hashes(context):
    """Against a plain sort per cell: the K genes with the smallest (seed, epoch, cell, gene) hash,
    and among them the round(p·K) with the smallest re-mixed hash masked."""
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


def test_the_padded_layout_holds_the_packed_batchs_tokens_and_x_tilde():
    rng = np.random.default_rng(3)
    lengths = np.array([5, 80, 1, 30])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    genes = rng.integers(0, 5000, lengths.sum()).astype(np.int32)
    counts = rng.integers(1, 20, lengths.sum()).astype(np.int32)
    sample = sample_tokens(genes, counts, starts, lengths, np.arange(4, dtype=np.uint64), 0, CFG)
    totals = np.array([50, 900, 3, 200], np.float32)
    packed = batch_arrays(sample, totals, CFG)
    padded = batch_arrays(sample, totals, replace(CFG, layout="padded"))
    assert padded["gene_ids"].shape == (4, 64) and padded["valid"].sum(1).tolist() == [5, 64, 1, 30]
    cell = np.repeat(np.arange(4), np.diff(packed["offsets"]))
    np.testing.assert_allclose(packed["xnorm"], np.log1p(packed["counts"] / totals[cell] * CFG.c_norm), rtol=1e-6)
    again = pack(padded)
    assert all(np.array_equal(again[k], packed[k]) for k in packed)
    assert all(
        np.array_equal(unpack({k: packed[k] for k in ("gene_ids",)}, packed["offsets"])[k], padded[k])
        for k in ("gene_ids", "valid")
    )


def test_the_sampler_imports_without_torch():
    """A loader benchmarked in another interpreter (annbatch needs Python 3.12) samples with this code."""
    code = "import sys; sys.modules['torch'] = None; import scencode.sampling, scencode.run_config"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
