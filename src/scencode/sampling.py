"""Which K of a cell's M genes a batch holds, which of them are masked, and the batch's arrays in
either layout: numpy and numba only (no torch), so the same code serves the training loader and,
in benchmarks, loaders that run where torch is not installed.

All randomness comes from keyed hashes of (seed, epoch, cell, gene): the same cell gives the same
tokens and masks in every process and on every rerun.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .run_config import LoaderConfig

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@njit(cache=True)
def splitmix(x):
    """SplitMix64 finaliser: a fast, well-mixed uint64 hash of a uint64 or an array of them (compiled:
    the sampler calls it per gene; uint64 products wrap, as the hash wants)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def sample_tokens(
    gene_values: np.ndarray,
    count_values: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    keys: np.ndarray,
    epoch: int,
    cfg: LoaderConfig,
    mask: bool = True,
) -> dict[str, np.ndarray]:
    """Cell i holds ``gene_values[starts[i]:starts[i] + lengths[i]]``. Per cell, K = min(context, M)
    of its M genes are chosen (at random: the K smallest hashes of (seed, epoch, cell, gene); or the
    K highest counts, ties broken by the hash) and round(p_mask·K) of them masked (the smallest
    second hashes). Returns the chosen tokens packed, cell after cell in shard order (``gene_ids``,
    ``counts``, ``masked``), and ``offsets`` (cells + 1). Compiled: one pass over each cell's genes
    with a selection, no (cells × M) intermediate."""
    kept = np.minimum(lengths, cfg.context).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
    n_masked = np.rint(cfg.p_mask * kept).astype(np.int64) if mask else np.zeros(len(kept), np.int64)
    salt = np.uint64(splitmix(np.uint64(cfg.seed) * np.uint64(1_000_003) + np.uint64(epoch)))  # numba returns an int
    out = {
        "gene_ids": np.empty(offsets[-1], np.int64),
        "counts": np.empty(offsets[-1], np.float32),
        "masked": np.zeros(offsets[-1], bool),
        "offsets": offsets,
    }
    _sample_cells(
        gene_values,
        count_values,
        np.asarray(starts, np.int64),
        np.asarray(lengths, np.int64),
        np.asarray(keys, np.uint64),
        salt,
        cfg.gene_sampling == "top_expressed",
        offsets,
        n_masked,
        out["gene_ids"],
        out["counts"],
        out["masked"],
    )
    return out


@njit(cache=True)
def _sample_cells(
    genes, counts, starts, lengths, keys, salt, top_expressed, offsets, n_masked, out_genes, out_counts, out_masked
):
    """Within a cell the hashes are distinct (distinct genes under a bijective mix), so the K-th
    smallest key marks exactly K tokens and the n-th smallest second hash exactly n masks."""
    tie = 0.5 / 2.0**53  # counts are integers: a tie-break below 0.5 never reorders different counts
    longest = lengths.max() if len(lengths) else 0
    h, second = np.empty(longest, np.uint64), np.empty(longest, np.uint64)
    key = np.empty(longest, np.float64)
    histogram = np.zeros(1 << _BUCKET_BITS, np.int64)
    for i in range(len(lengths)):
        start, length, out = starts[i], lengths[i], offsets[i]
        k = offsets[i + 1] - out
        for j in range(length):
            h[j] = splitmix(keys[i] ^ salt ^ (np.uint64(genes[start + j]) * _M2))
        if length <= k:
            take = np.ones(length, np.bool_)
        elif top_expressed:
            for j in range(length):
                key[j] = -np.float64(counts[start + j]) + np.float64(h[j] >> np.uint64(11)) * tie
            take = key[:length] <= np.partition(key[:length], k - 1)[k - 1]
        else:
            take = h[:length] <= _kth_smallest(h[:length], k - 1, histogram)
        t = 0
        for j in range(length):
            if take[j]:
                out_genes[out + t], out_counts[out + t], second[t] = genes[start + j], counts[start + j], splitmix(h[j])
                t += 1
        if n_masked[i] > 0:
            cut = _kth_smallest(second[:k], n_masked[i] - 1, histogram)
            for t in range(k):
                out_masked[out + t] = second[t] <= cut


_BUCKET_BITS = 12


@njit(cache=True)
def _kth_smallest(values, k, histogram):
    """The k-th smallest (0-based) of distinct, uniformly spread uint64 hashes: a histogram of
    their top bits finds the bucket that holds it, a partition of that bucket (a handful of
    values) the value; a few times faster than a quickselect over them all."""
    shift = np.uint64(64 - _BUCKET_BITS)
    histogram[:] = 0
    for v in values:
        histogram[v >> shift] += 1
    below, bucket = 0, 0
    while below + histogram[bucket] <= k:
        below += histogram[bucket]
        bucket += 1
    members = np.empty(histogram[bucket], np.uint64)
    m = 0
    for v in values:
        if v >> shift == bucket:
            members[m] = v
            m += 1
    return np.partition(members, k - below)[k - below]


def batch_arrays(sample: dict[str, np.ndarray], totals: np.ndarray, cfg: LoaderConfig) -> dict[str, np.ndarray]:
    """Adds x̃ = log1p(count / total × c_norm), then lays the batch out as ``cfg.layout`` says."""
    offsets = sample["offsets"]
    kept = np.diff(offsets)
    arrays = {name: sample[name] for name in ("gene_ids", "counts", "masked")}
    arrays["xnorm"] = np.log1p(arrays["counts"] / np.repeat(totals.astype(np.float32), kept) * np.float32(cfg.c_norm))
    if cfg.layout == "padded":
        return unpack(arrays, offsets)
    arrays["offsets"] = offsets
    return arrays


def _padded(values: np.ndarray, row: np.ndarray, position: np.ndarray, shape, fill) -> np.ndarray:
    out = np.full(shape, fill, values.dtype)
    out[row, position] = values
    return out


def unpack(packed: dict[str, np.ndarray], offsets: np.ndarray) -> dict[str, np.ndarray]:
    """Packed tokens → (cells, longest) arrays (padding: 0 / False) and ``valid``."""
    kept = np.diff(offsets)
    row = np.repeat(np.arange(len(kept)), kept)
    position = np.arange(len(row)) - offsets[row]
    shape = (len(kept), int(kept.max(initial=0)))
    out = {name: _padded(values, row, position, shape, 0) for name, values in packed.items()}
    out["valid"] = _padded(np.ones(len(row), bool), row, position, shape, False)
    return out


def pack(padded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """(cells, L) arrays → their real tokens, cell after cell, and ``offsets`` (cells + 1). Row-major
    order keeps each cell's tokens together and in the padded layout's order."""
    valid = padded["valid"]
    out = {name: values[valid] for name, values in padded.items() if name != "valid"}
    out["offsets"] = np.concatenate([[0], np.cumsum(valid.sum(1))]).astype(np.int64)
    return out
