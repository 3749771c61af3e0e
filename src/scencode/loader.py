"""Training batches from Parquet token shards.

One stream of batches per split and epoch, the same whatever the number of training processes
(ranks) and DataLoader workers: the (shard, row group) units are shuffled with the seed, read in
that order through a shuffle buffer, and each buffer is cut into batches of cells of similar length
(length bucketing: less padding). Rank r of W keeps the batches at positions i ≡ r (mod W) and
builds only those (the sampling and x̃, two thirds of a batch's CPU cost); its DataLoader workers
take its batches in turn. Every reader decodes the whole stream's row groups (a third of the cost),
so a run on W GPUs takes the same batches, in the same optimiser steps, as a run on one.

Batches come in one of two layouts (``LoaderConfig.layout``): ``packed`` (the default) holds only
real tokens, cell after cell, with ``offsets`` (cells + 1) marking where each cell starts; ``padded``
holds (cells, longest cell) arrays with a ``valid`` mask. Same cells, genes and masks either way;
the model runs on both (``model.Padded`` / ``model.Packed``).

All randomness (which K of a cell's M genes, which positions are masked, the shuffles) comes from
keyed hashes of (seed, epoch, cell, gene) or from generators seeded by (seed, epoch), never from
global state: the stream is deterministic and a resumed run can skip exactly the batches it has
already used.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from .errors import ScencodeError
from .model import Batch
from .parquet_io import polars_frame
from .run_config import GENE_SAMPLING, LAYOUTS, LoaderConfig  # noqa: F401
from .sampling import batch_arrays, sample_tokens, splitmix
from .shards import check_footer, open_shard, read_manifest, read_shard, shard_tables


def cell_keys(cell_ids: pa.Array) -> np.ndarray:
    return pd.util.hash_pandas_object(pd.Series(cell_ids.to_numpy(zero_copy_only=False)), index=False).to_numpy()


SUBSET_SALT = np.uint64(0x5CE7C0DE)  # one draw for every configuration and seed: size is all that changes


@dataclass(frozen=True)
class TrainSubset:
    """The training cells of a smaller training set (``train.train_cells``): per dataset, the cells
    of the ``train`` split whose keyed hash is at most that dataset's threshold. Sizes are drawn per
    dataset in proportion to its training cells, and the cells kept are those with the smallest
    hashes, so a smaller set is a subset of every larger one (nested) and every configuration and
    seed trains on the same cells."""

    requested: int | float
    thresholds: dict[str, int]  # dataset → largest hash kept; datasets absent keep no cell
    cells: dict[str, int]  # dataset → cells kept
    available: dict[str, int]  # dataset → training cells in the corpus

    @property
    def n_cells(self) -> int:
        return sum(self.cells.values())

    def keep(self, dataset_ids: pa.ChunkedArray, cell_ids: pa.ChunkedArray) -> np.ndarray:
        codes, names = pd.factorize(dataset_ids.to_numpy(zero_copy_only=False))
        has = np.array([name in self.thresholds for name in names], bool)
        bounds = np.array([self.thresholds.get(name, 0) for name in names], np.uint64)
        return has[codes] & (subset_hashes(cell_ids) <= bounds[codes])

    def describe(self) -> dict:
        return {
            "requested": self.requested,
            "cells": self.n_cells,
            "per_dataset": self.cells,
            "available": sum(self.available.values()),
        }


def subset_hashes(cell_ids: pa.Array) -> np.ndarray:
    return splitmix(cell_keys(cell_ids) ^ SUBSET_SALT)


def train_cell_count(requested: int | float, available: int, corpus_dir: Path) -> int:
    """Cells a size setting asks for: a count (≥ 1) or a fraction of the training split (< 1)."""
    if requested < 1:
        if requested <= 0:
            raise ScencodeError(f"train.train_cells {requested!r} must be a count ≥ 1 or a fraction in (0, 1)")
        return max(1, round(requested * available))
    if requested != int(requested):
        raise ScencodeError(
            f"train.train_cells {requested!r}: a count of cells must be a whole number (or a fraction below 1)"
        )
    if requested > available:
        raise ScencodeError(
            f"train.train_cells {int(requested)} exceeds the {available} cells of the training "
            "split; use a smaller size or 'all'",
            corpus_dir,
        )
    return int(requested)


def draw_train_subset(corpus_dir: str | Path, requested: int | float) -> TrainSubset:
    """The nested, proportional training subset of ``requested`` cells (see :class:`TrainSubset`).
    Reads two columns of the training split (polars scan; a 10M-cell corpus in seconds)."""
    import polars as pl

    corpus_dir = Path(corpus_dir)
    cells = pl.concat(
        polars_frame(table).filter(pl.col("split") == "train").drop("split")
        for table in shard_tables(corpus_dir, ["dataset_id", "cell_id", "split"])
    )
    available = dict(cells.group_by("dataset_id").len().iter_rows())
    total = sum(available.values())
    target = train_cell_count(requested, total, corpus_dir)
    hashes = subset_hashes(cells["cell_id"].to_arrow())
    datasets = cells["dataset_id"].to_numpy()
    thresholds, kept = {}, {}
    for dataset, n in sorted(available.items()):
        share = int(np.rint(target * n / total))  # proportional; rounding keeps it monotone in target
        kept[dataset] = share
        if share:
            thresholds[dataset] = int(np.partition(hashes[datasets == dataset], share - 1)[share - 1])
    return TrainSubset(requested, thresholds, kept, available)


def units(corpus_dir: Path) -> list[tuple[str, int]]:
    manifest = read_manifest(corpus_dir)
    out = []
    for shard in manifest["shards"]:
        check_footer(corpus_dir / shard["file"], shard)  # the data pages are checked as they are read
        n_groups = open_shard(corpus_dir / shard["file"]).metadata.num_row_groups
        out += [(shard["file"], g) for g in range(n_groups)]
    return out


def unit_order(all_units: list, epoch: int, seed: int, shuffle: bool) -> list:
    if not shuffle:
        return list(all_units)
    return [all_units[i] for i in np.random.default_rng([seed, epoch, 0]).permutation(len(all_units))]


def to_batch(sample: dict[str, np.ndarray], totals: np.ndarray, cfg: LoaderConfig) -> Batch:
    """The sampled tokens as a model ``Batch`` (x̃ added, laid out as ``cfg.layout`` says)."""
    arrays = batch_arrays(sample, totals, cfg)
    tensors = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in arrays.items()}
    return Batch(**tensors)  # type: ignore[arg-type]  # the keys are Batch's tensor fields


SPARSE_SPLIT = 0.5  # below this share of a row group's cells, a split's rows are taken out of it


class ShardBatches(torch.utils.data.IterableDataset):
    """Rank ``rank`` of ``world_size``'s batches of one split (positions i ≡ rank mod world_size of
    the split's stream); DataLoader workers take the rank's batches in turn.

    ``skip_batches`` resumes mid-epoch: the stream's first batches (counted over all ranks) are
    passed over unbuilt. ``max_cells`` ends the stream before the batch that would start past that
    many cells (counted over all ranks: validation's ``val_cells``). ``drop_genes`` (a bool per token
    id: the genes held out of training) takes those genes out of every cell before sampling."""

    def __init__(
        self,
        corpus_dir: str | Path,
        split: str | None,
        cfg: LoaderConfig,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        skip_batches: int = 0,
        mask: bool = True,
        shuffle: bool = True,
        with_cell_ids: bool = False,
        columns: tuple[str, ...] = (),
        subset: TrainSubset | None = None,
        max_cells: int | None = None,
        drop_genes: np.ndarray | None = None,
    ):
        cfg.validate()
        self.drop_genes = drop_genes  # bool per token id: genes left out of every cell (unseen_genes)
        self.subset = subset
        self.corpus_dir, self.split, self.cfg = Path(corpus_dir), split, cfg
        self.epoch, self.rank, self.world_size = epoch, rank, world_size
        self.skip_batches, self.mask, self.shuffle = skip_batches, mask, shuffle
        self.with_cell_ids, self.columns, self.max_cells = with_cell_ids, columns, max_cells
        self.units = units(self.corpus_dir)
        self.shards = {shard["file"]: shard for shard in read_manifest(self.corpus_dir)["shards"]}
        self._buffers: dict[str, np.ndarray] = {}

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        own = cells = 0
        for position, (pool, index) in enumerate(self._plans()):
            if self.max_cells is not None and cells >= self.max_cells:
                return
            cells += len(index)
            if position < self.skip_batches or position % self.world_size != self.rank:
                continue
            if own % n_workers == worker:  # DataLoader takes batches from workers 0, 1, … in turn
                yield pool.batch(index, self.epoch, self.cfg, self.mask)
            own += 1

    def count_batches(self) -> int:
        """How many batches the split's stream holds this epoch (all ranks together), counted from
        the split column alone with the same pooling as :meth:`_plans`."""
        columns = ["split", *(["dataset_id", "cell_id"] if self.subset else [])]
        pool_cells = self.cfg.batch_size * self.cfg.bucket_batches
        batches = pooled = 0
        for file, group in unit_order(self.units, self.epoch, self.cfg.seed, self.shuffle):
            table = read_shard(self.corpus_dir, self.shards[file], columns, row_group=group)
            pooled += int(self._selected(table).sum())
            if pooled >= pool_cells:
                batches, pooled = batches + -(-pooled // self.cfg.batch_size), 0
        return batches + -(-pooled // self.cfg.batch_size)

    def _plans(self) -> Iterator[tuple[_Pool, np.ndarray]]:
        """The stream: each batch as (its pool, its cells' rows in the pool), built only when kept."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, self.epoch, 1])
        pool_cells = cfg.batch_size * cfg.bucket_batches
        tables: list[pa.Table] = []
        keep: list[np.ndarray] = []
        pooled = 0
        for table, in_split in self._read(unit_order(self.units, self.epoch, cfg.seed, self.shuffle)):
            tables.append(table)
            keep.append(in_split)
            pooled += int(in_split.sum())
            if pooled >= pool_cells:
                yield from self._bucket(pa.concat_tables(tables), np.concatenate(keep), rng)
                tables, keep, pooled = [], [], 0
        if pooled:
            yield from self._bucket(pa.concat_tables(tables), np.concatenate(keep), rng)

    def _read(self, my_units) -> Iterator[tuple[pa.Table, np.ndarray]]:
        """Row groups with a mask of the cells in this split (rows are selected later, by index:
        filtering the Arrow table would copy every list)."""
        columns = ["cell_id", "gene_ids", "counts", "total_counts", "split", *self.columns]
        if self.subset is not None and "dataset_id" not in columns:
            columns.append("dataset_id")
        for file, group in my_units:
            table = read_shard(self.corpus_dir, self.shards[file], columns, row_group=group)
            in_split = self._selected(table)
            if in_split.mean() < SPARSE_SPLIT:
                # a rare split (validation, test): only its rows, else a pool of its cells holds the
                # whole row groups around them (12.9 GB for the 1,000 test cells of a 1M-cell corpus,
                # the rehearsal's embed job; the same cells, in the same order, either way)
                rows = np.flatnonzero(in_split)
                table, in_split = table.take(rows), np.ones(len(rows), bool)
            if in_split.any():
                yield table, in_split

    def _selected(self, table: pa.Table) -> np.ndarray:
        """The rows of this split (every row for ``split=None``: evaluation corpora), within the
        training subset when there is one."""
        if self.split is None:
            keep = np.ones(table.num_rows, bool)
        else:
            keep = pa.compute.equal(table.column("split"), self.split).to_numpy(zero_copy_only=False)
        if self.subset is not None:
            keep &= self.subset.keep(table.column("dataset_id"), table.column("cell_id"))
        return keep

    def _bucket(
        self, table: pa.Table, in_split: np.ndarray, rng: np.random.Generator
    ) -> Iterator[tuple[_Pool, np.ndarray]]:
        pool = _Pool(table, in_split, self.with_cell_ids, self.columns, self._buffers, self.drop_genes)
        for index in batch_order(pool.lengths, self.cfg, self.shuffle, rng):
            yield pool, index


def batch_order(lengths: np.ndarray, cfg: LoaderConfig, shuffle: bool, rng: np.random.Generator) -> list[np.ndarray]:
    """A pool's cells cut into batches; shuffled: similar lengths together within each bucket pool
    (less padding, shorter attention), then the batches in random order."""
    n = len(lengths)
    order = rng.permutation(n) if shuffle else np.arange(n)
    if shuffle:
        lengths = np.minimum(lengths, cfg.context)
        pool_of = np.arange(n) // (cfg.batch_size * cfg.bucket_batches)  # a row group may hold several
        order = order[np.lexsort((lengths[order], pool_of))]
    batches = [order[k : k + cfg.batch_size] for k in range(0, n, cfg.batch_size)]
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _flat_lists(column: pa.ChunkedArray, buffers: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(all values, length of each list) of a list column, copied chunk by chunk into a buffer
    reused from pool to pool: a fresh array of this size per pool costs more in page faults than
    the copy itself."""
    values, lengths = [], []
    for chunk in column.chunks:
        offsets = chunk.offsets.to_numpy()
        values.append(chunk.values.to_numpy()[offsets[0] : offsets[-1]])
        lengths.append(np.diff(offsets).astype(np.int64))
    total = sum(len(v) for v in values)
    buffer = buffers.get(name)
    if buffer is None or len(buffer) < total or buffer.dtype != values[0].dtype:
        buffer = buffers[name] = np.empty(int(total * 1.25), values[0].dtype)
    return np.concatenate(values, out=buffer[:total]), np.concatenate(lengths)


def without_genes(
    genes: np.ndarray, counts: np.ndarray, lengths: np.ndarray, drop: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat (genes, counts, per-cell lengths) with the tokens of the ``drop`` genes (a bool per
    token id) taken out, before any sampling: such a gene is in no cell's inputs, targets or K-of-M
    draw. The cell's total count (x̃'s denominator) stays as measured."""
    keep = ~drop[genes]
    kept_before = np.concatenate(([0], np.cumsum(keep)))
    ends = np.cumsum(lengths)
    return genes[keep], counts[keep], kept_before[ends] - kept_before[ends - lengths]


class _Pool:
    """A shuffle buffer's cells as flat numpy arrays (list offsets + values): batches are gathered
    from it with numpy indexing, not by copying Arrow tables."""

    def __init__(
        self,
        table: pa.Table,
        in_split: np.ndarray,
        with_cell_ids: bool,
        columns: tuple[str, ...],
        buffers: dict,
        drop_genes: np.ndarray | None = None,
    ):
        rows = np.flatnonzero(in_split)
        self.n = len(rows)
        self.genes, lengths = _flat_lists(table.column("gene_ids"), buffers, "genes")
        self.counts, _ = _flat_lists(table.column("counts"), buffers, "counts")
        if drop_genes is not None:
            self.genes, self.counts, lengths = without_genes(self.genes, self.counts, lengths, drop_genes)
        self.starts, self.lengths = (np.cumsum(lengths) - lengths)[rows], lengths[rows]
        self.totals = table.column("total_counts").to_numpy()[rows]
        self.keys = cell_keys(table.column("cell_id"))[rows]
        self.extra = {}
        if with_cell_ids:
            for name in ("cell_id", *columns):
                self.extra[name] = table.column(name).to_numpy(zero_copy_only=False)[rows]

    def batch(self, index: np.ndarray, epoch: int, cfg: LoaderConfig, mask: bool) -> Batch:
        """The pool's cells ``index`` as one training-ready batch."""
        sample = sample_tokens(
            self.genes, self.counts, self.starts[index], self.lengths[index], self.keys[index], epoch, cfg, mask
        )
        batch = to_batch(sample, self.totals[index], cfg)
        batch.meta = {name: values[index].tolist() for name, values in self.extra.items()}
        return batch
