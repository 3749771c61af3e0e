"""Training batches from Parquet token shards.

Work is split in units of (shard, row group). Each epoch the units are shuffled with the seed and
dealt round-robin to the (rank × dataloader worker) readers, so every cell of the split is seen
exactly once per epoch across all processes. Inside a reader, cells pass through a shuffle buffer;
each buffer is cut into batches of cells of similar length (length bucketing: less padding).

All randomness (which K of a cell's M genes, which positions are masked, the shuffles) comes from
keyed hashes of (seed, epoch, cell, gene) or from generators seeded by (seed, epoch, reader), never
from global state: the stream is deterministic and a resumed run can skip exactly the batches it
has already used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from .errors import ScencodeError
from .shards import open_shard, read_manifest

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@dataclass
class LoaderConfig:
    batch_size: int = 512
    context: int = 1024  # K = min(context, non-zero genes)
    p_mask: float = 0.5
    c_norm: float = 1e4
    bucket_batches: int = 50  # batches per shuffle buffer / length bucket pool
    seed: int = 777

    def validate(self) -> None:
        if self.context < 1 or self.batch_size < 1:
            raise ScencodeError(f"context ({self.context}) and batch_size ({self.batch_size}) must be ≥ 1")
        if not 0 < self.p_mask < 1:
            raise ScencodeError(f"p_mask {self.p_mask} must be in (0, 1)")


def splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a fast, well-mixed uint64 hash (vectorised)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def cell_keys(cell_ids: pa.Array) -> np.ndarray:
    return pd.util.hash_pandas_object(pd.Series(cell_ids.to_numpy(zero_copy_only=False)), index=False).to_numpy()


def units(corpus_dir: Path) -> list[tuple[str, int]]:
    manifest = read_manifest(corpus_dir)
    out = []
    for shard in manifest["shards"]:
        n_groups = open_shard(corpus_dir / shard["file"]).metadata.num_row_groups
        out += [(shard["file"], g) for g in range(n_groups)]
    return out


def reader_units(all_units: list, epoch: int, seed: int, reader: int, n_readers: int) -> list:
    order = np.random.default_rng([seed, epoch, 0]).permutation(len(all_units))
    return [all_units[i] for i in order[reader::n_readers]]


def sample_and_mask(gene_ids: np.ndarray, counts: np.ndarray, offsets: np.ndarray, keys: np.ndarray,
                    epoch: int, cfg: LoaderConfig, mask: bool = True):
    """Per cell: K = min(context, M) genes chosen at random and round(p_mask·K) of them masked,
    from hashes of (seed, epoch, cell, gene). Returns flattened (gene_ids, counts, row, masked)."""
    lengths = np.diff(offsets)
    row = np.repeat(np.arange(len(lengths)), lengths)
    salt = splitmix(np.uint64(cfg.seed) * np.uint64(1_000_003) + np.uint64(epoch))
    with np.errstate(over="ignore"):
        h = splitmix(keys[row] ^ salt ^ (gene_ids.astype(np.uint64) * _M2))
    rank = _rank_within_rows(h, row, offsets)
    keep = rank < cfg.context
    gene_ids, counts, row, h = gene_ids[keep], counts[keep], row[keep], h[keep]
    k = np.minimum(lengths, cfg.context)
    new_offsets = np.concatenate([[0], np.cumsum(k)])
    masked = np.zeros(len(row), bool)
    if mask:
        rank2 = _rank_within_rows(splitmix(h), row, new_offsets)
        masked = rank2 < np.rint(cfg.p_mask * k)[row]
    return gene_ids, counts, row, masked, new_offsets


def _rank_within_rows(h: np.ndarray, row: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    order = np.lexsort((h, row))
    rank = np.empty(len(h), np.int64)
    rank[order] = np.arange(len(h)) - offsets[row[order]]
    return rank


def collate(gene_ids, counts, totals, row, masked, offsets, cfg: LoaderConfig) -> dict[str, torch.Tensor]:
    """Padded tensors: gene_ids (B, L) int64, counts and x̃ float32, valid and masked bool."""
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    width = int(lengths.max())
    col = np.arange(len(row)) - offsets[row]
    out_ids = np.zeros((n, width), np.int64)
    out_counts = np.zeros((n, width), np.float32)
    valid = np.zeros((n, width), bool)
    out_mask = np.zeros((n, width), bool)
    out_ids[row, col] = gene_ids
    out_counts[row, col] = counts
    valid[row, col] = True
    out_mask[row, col] = masked
    xnorm = np.log1p(out_counts / totals[:, None].astype(np.float32) * np.float32(cfg.c_norm))
    return {"gene_ids": torch.from_numpy(out_ids), "counts": torch.from_numpy(out_counts),
            "xnorm": torch.from_numpy(xnorm), "valid": torch.from_numpy(valid),
            "masked": torch.from_numpy(out_mask)}


class ShardBatches(torch.utils.data.IterableDataset):
    """Batches of one split for one rank; DataLoader workers split the rank's share further.

    ``skip_batches`` resumes mid-epoch: the first batches of the rank's stream are read but not
    yielded (batches are dealt round-robin to workers, as DataLoader consumes them)."""

    def __init__(self, corpus_dir: str | Path, split: str, cfg: LoaderConfig, epoch: int = 0, rank: int = 0,
                 world_size: int = 1, skip_batches: int = 0, mask: bool = True, shuffle: bool = True,
                 with_cell_ids: bool = False, columns: tuple[str, ...] = ()):
        cfg.validate()
        self.corpus_dir, self.split, self.cfg = Path(corpus_dir), split, cfg
        self.epoch, self.rank, self.world_size = epoch, rank, world_size
        self.skip_batches, self.mask, self.shuffle = skip_batches, mask, shuffle
        self.with_cell_ids, self.columns = with_cell_ids, columns
        self.units = units(self.corpus_dir)

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        # DataLoader takes batches from workers 0, 1, … in turn; after skipping, the next batch is
        # role (skip mod n)'s, so roles rotate to make worker 0 play it
        role = (worker + self.skip_batches) % n_workers
        reader = self.rank * n_workers + role
        skip = len(range(role, self.skip_batches, n_workers))
        for i, batch in enumerate(self._batches(reader, self.world_size * n_workers)):
            if i >= skip:
                yield batch

    def _batches(self, reader: int, n_readers: int) -> Iterator[dict]:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, self.epoch, 1 + reader])
        my_units = reader_units(self.units, self.epoch, cfg.seed, reader, n_readers) if self.shuffle else \
            self.units[reader::n_readers]
        pool_cells = cfg.batch_size * cfg.bucket_batches
        pool: list[pa.Table] = []
        pooled = 0
        for table in self._read(my_units):
            pool.append(table)
            pooled += table.num_rows
            if pooled >= pool_cells:
                yield from self._bucket(pa.concat_tables(pool), rng)
                pool, pooled = [], 0
        if pooled:
            yield from self._bucket(pa.concat_tables(pool), rng)

    def _read(self, my_units) -> Iterator[pa.Table]:
        columns = ["cell_id", "gene_ids", "counts", "total_counts", "split", *self.columns]
        for file, group in my_units:
            path = self.corpus_dir / file
            try:
                table = open_shard(path).read_row_group(group, columns=columns)
            except (pa.ArrowInvalid, OSError) as exc:
                raise ScencodeError(f"corrupt or truncated shard ({exc})", path) from exc
            keep = pa.compute.equal(table.column("split"), self.split)
            table = table.filter(keep)
            if table.num_rows:
                yield table

    def _bucket(self, table: pa.Table, rng: np.random.Generator) -> Iterator[dict]:
        cfg = self.cfg
        n = table.num_rows
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.shuffle:  # similar lengths together, then batches in random order
            lengths = np.minimum(pa.compute.list_value_length(table.column("gene_ids")).to_numpy(), cfg.context)
            order = order[np.argsort(lengths[order], kind="stable")]
        batches = [order[k:k + cfg.batch_size] for k in range(0, n, cfg.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        for index in batches:
            yield self._make_batch(table.take(np.sort(index) if not self.shuffle else index))

    def _make_batch(self, table: pa.Table) -> dict:
        genes = table.column("gene_ids").combine_chunks()
        counts = table.column("counts").combine_chunks()
        offsets = genes.offsets.to_numpy().astype(np.int64)
        offsets -= offsets[0]
        keys = cell_keys(table.column("cell_id"))
        flat_genes = genes.flatten().to_numpy()
        flat_counts = counts.flatten().to_numpy()
        g, c, row, masked, new_offsets = sample_and_mask(flat_genes, flat_counts, offsets, keys, self.epoch,
                                                         self.cfg, self.mask)
        batch = collate(g, c, table.column("total_counts").to_numpy(), row, masked, new_offsets, self.cfg)
        if self.with_cell_ids:
            batch["cell_id"] = table.column("cell_id").to_pylist()
            for name in self.columns:
                batch[name] = table.column(name).to_pylist()
        return batch

