"""Tokenization: QC'd datasets → Parquet shards of (gene ids, raw counts) per cell.

One row per cell holds the vocabulary ids of all its non-zero genes and their raw counts, so one
tokenization serves every expression encoding; normalisation, sampling and binning happen in the
loader. Cells stream through in blocks: a block's CSR arrays become Arrow list arrays directly
(offsets + values), with no per-cell Python code. Shards are written into a temporary folder that
replaces the corpus folder only when every shard and the manifest are complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from tqdm import tqdm

from .atomic import OutputFolder, atomic_dir, write_json
from .errors import ScencodeError
from .formats import excluded_cells, load_vocab
from .h5ad import MAX_COUNT, count_matrix, open_qc_h5ad, read_frame
from .shards import FORMAT_VERSION, MANIFEST, file_sha256, footer_sha256, shard_name, shard_schema

log = logging.getLogger(__name__)


@dataclass
class TokenizeParams:
    val_fraction: float = 0.001
    test_fraction: float = 0.001
    split_salt: str = "scencode"
    cells_per_shard: int = 100_000
    row_group_cells: int = 2048
    chunk_cells: int = 10_000  # cells read per block; about three blocks are in memory (read, queued, written)
    compression_level: int = 3

    def validate(self) -> None:
        if not (0 <= self.val_fraction <= 0.5 and 0 <= self.test_fraction <= 0.5):
            raise ScencodeError(
                f"tokenize.val_fraction {self.val_fraction} and test_fraction {self.test_fraction} "
                "must each be in [0, 0.5], so that most cells are left for training"
            )
        for key in ("cells_per_shard", "row_group_cells", "chunk_cells"):
            if getattr(self, key) < 1:
                raise ScencodeError(f"tokenize.{key} must be ≥ 1, got {getattr(self, key)}")
        if not 1 <= self.compression_level <= 22:
            raise ScencodeError(f"tokenize.compression_level {self.compression_level}: zstd levels are 1 to 22")


@dataclass
class DatasetInput:
    dataset_id: str
    path: Path
    label_key: str | None = None
    batch_key: str | None = None
    exclude: tuple[str, ...] = ()  # barcodes left out (the leakage audit's ``drop``); "*": every cell


def assign_split(cell_ids: pd.Series, params: TokenizeParams) -> np.ndarray:
    """train/val/test from a stable 64-bit hash of the cell id (pandas' SipHash, keyed by the salt),
    so a cell keeps its split whatever else is in the corpus."""
    key = hashlib.sha256(params.split_salt.encode()).hexdigest()[:16]
    h = pd.util.hash_pandas_object(cell_ids, index=False, hash_key=key).to_numpy()
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.where(
        u < params.test_fraction, "test", np.where(u < params.test_fraction + params.val_fraction, "val", "train")
    )


def block_to_lists(block: sp.csr_matrix, col_to_token: np.ndarray, sorted_map: bool):
    """CSR block → (offsets, token ids, counts, cells kept) restricted to vocabulary genes. One
    gather maps genes to tokens; when every entry is kept (the usual case: the vocabulary covers the
    dataset's genes) nothing is filtered or copied further."""
    block.sort_indices()
    tokens, counts = col_to_token[block.indices], block.data
    keep = (tokens >= 0) & (counts > 0)
    per_cell = np.diff(block.indptr)
    if not keep.all():
        kept_before = np.concatenate([[0], np.cumsum(keep)])
        per_cell = kept_before[block.indptr[1:]] - kept_before[block.indptr[:-1]]
        tokens, counts = tokens[keep], counts[keep]
    if not sorted_map:  # vocabulary order differs from the file's gene order: sort within each cell
        rows = np.repeat(np.arange(block.shape[0], dtype=np.int32), per_cell)
        order = np.lexsort((tokens, rows))
        tokens, counts = tokens[order], counts[order]
    has_genes = per_cell > 0
    offsets = np.concatenate([[0], np.cumsum(per_cell[has_genes])]).astype(np.int32)
    if counts.size and not counts.max() <= MAX_COUNT:  # NaN fails this too: int32 casts would wrap
        raise ScencodeError(
            f"counts beyond {MAX_COUNT:,} or not finite (max {counts.max()}): not the raw counts QC writes"
        )
    return offsets, tokens.astype(np.int32, copy=False), np.rint(counts).astype(np.int32), has_genes


class BackgroundWriter:
    """Writes tables on a second thread (Parquet encoding and zstd release the GIL), so that reading
    and converting the next block overlaps with writing this one. One table waits at most: memory
    stays at about three blocks."""

    def __init__(self, writer: ShardWriter):
        self.writer = writer
        self.error: BaseException | None = None
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (table := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.writer.write(table)
                except BaseException as exc:  # re-raised in the main thread
                    self.error = exc

    def write(self, table: pa.Table) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(table)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


class ShardWriter:
    """Buffers blocks into row groups of exactly ``row_group_cells`` cells and rolls over to a new
    ``part-NNNNN.parquet`` every ``cells_per_shard`` cells (only the last group of a shard is short)."""

    def __init__(self, folder: Path, schema: pa.Schema, params: TokenizeParams, metadata: dict):
        self.folder, self.params = folder, params
        self.schema = schema.with_metadata({k.encode(): v.encode() for k, v in metadata.items()})
        self.shards: list[dict] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def write(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= self._next_group_size():
            self._write_group(self._next_group_size())

    def _next_group_size(self) -> int:
        room = self.params.cells_per_shard - (self._rows if self._writer is not None else 0)
        return min(self.params.row_group_cells, room)

    def _write_group(self, n: int) -> None:
        pending = pa.concat_tables(self._pending)
        if self._writer is None:
            self._writer = self._open()
        self._writer.write_table(pending.slice(0, n), row_group_size=n)
        self._rows += n
        self._pending = [pending.slice(n)]
        self._pending_rows -= n
        if self._rows == self.params.cells_per_shard:
            self._close()

    def _open(self) -> pq.ParquetWriter:
        path = self.folder / shard_name(len(self.shards))
        # page checksums (CRC32): every reader verifies each page it decodes (shards.open_shard)
        writer = pq.ParquetWriter(
            path,
            self.schema,
            compression="zstd",
            write_page_checksum=True,
            compression_level=self.params.compression_level,
        )
        self.shards.append({"file": path.name})
        self._rows = 0
        return writer

    def _close(self) -> None:
        assert self._writer is not None  # called only with a shard open
        self._writer.close()
        path = self.folder / self.shards[-1]["file"]
        self.shards[-1].update(
            n_cells=self._rows, bytes=path.stat().st_size, sha256=file_sha256(path), footer_sha256=footer_sha256(path)
        )
        self._writer = None

    def finish(self) -> list[dict]:
        if self._pending_rows:
            self._write_group(self._pending_rows)
        if self._writer is not None:
            self._close()
        return self.shards


def tokenize_corpus(
    corpus: str,
    datasets: list[DatasetInput],
    vocab_path: str | Path,
    out_dir: str | Path,
    params: TokenizeParams,
    with_labels: bool = False,
    kind: str | None = None,
) -> dict:
    """``with_labels``: label and batch columns; ``kind``: evaluation (every dataset needs a label
    column; the default with labels) or training (labels where a dataset names its label column,
    so that the held-out test split can be scored in distribution)."""
    kind = kind or ("evaluation" if with_labels else "training")
    vocab, digest = load_vocab(vocab_path)
    token_of_gene = pd.Series(vocab.token_id.to_numpy(), index=vocab.gene_id)
    config_hash = hashlib.sha256(
        json.dumps(
            {
                "params": asdict(params),
                "with_labels": with_labels,
                "kind": kind,
                "datasets": [[d.dataset_id, d.label_key, d.batch_key] for d in datasets],
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    schema = shard_schema(with_labels)
    per_dataset: dict[str, dict] = {}
    nnz_parts: list[np.ndarray] = []
    split_counts: dict[str, int] = {}
    with atomic_dir(out_dir, kind="tokenize") as tmp:
        writer = ShardWriter(tmp, schema, params, {"scencode_vocab_hash": digest, "corpus": corpus})
        background = BackgroundWriter(writer)
        try:
            for d in datasets:
                stats, nnz = _tokenize_dataset(d, token_of_gene, background, writer.schema, params, with_labels, kind)
                per_dataset[d.dataset_id] = stats
                nnz_parts.append(nnz)
                for name, n in stats.pop("splits").items():
                    split_counts[name] = split_counts.get(name, 0) + n
        finally:
            background.close()
        shards = writer.finish()
        nnz = np.concatenate(nnz_parts)
        if nnz.size == 0:
            raise ScencodeError(f"corpus {corpus!r} has no cell with a vocabulary gene")
        manifest = {
            "format_version": FORMAT_VERSION,
            "corpus": corpus,
            "kind": kind,
            "n_cells": int(nnz.size),
            "splits": split_counts,
            "datasets": per_dataset,
            "shards": shards,
            "nnz": {
                "mean": float(nnz.mean()),
                "median": float(np.median(nnz)),
                "min": int(nnz.min()),
                "max": int(nnz.max()),
                "p05": float(np.percentile(nnz, 5)),
                "p95": float(np.percentile(nnz, 95)),
                "total": int(nnz.sum()),
            },
            "vocab_hash": digest,
            "vocab_size": len(vocab),
            "config_hash": config_hash,
            "params": asdict(params),
            "columns": schema.names,
        }
        write_json(manifest, tmp / MANIFEST)
    return manifest


def _tokenize_dataset(
    d: DatasetInput,
    token_of_gene: pd.Series,
    writer: BackgroundWriter,
    schema: pa.Schema,
    params: TokenizeParams,
    with_labels: bool,
    kind: str,
):
    with open_qc_h5ad(d.path) as f:
        x = count_matrix(f, d.path, "X")
        obs = read_frame(f, "obs")
        var_ids = read_frame(f, "var").index.astype(str)
        col_to_token = token_of_gene.reindex(var_ids).fillna(-1).to_numpy(np.int32)
        if not (col_to_token >= 0).any():
            raise ScencodeError(
                f"none of its {len(var_ids)} gene ids is in the vocabulary (e.g. {', '.join(var_ids[:3])})", d.path
            )
        mapped = col_to_token[col_to_token >= 0]
        sorted_map = bool(np.all(np.diff(mapped) > 0))
        cell_ids = pd.Series(d.dataset_id + ":" + obs.index.astype(str))
        if cell_ids.duplicated().any():
            raise ScencodeError(
                f"cell names repeat (e.g. {cell_ids[cell_ids.duplicated()].iloc[0].split(':', 1)[1]!r}); "
                "scencode qc makes them unique: run it again on the raw file",
                d.path,
            )
        split = assign_split(cell_ids, params)
        labels = _label_columns(obs, d, required=kind == "evaluation") if with_labels else {}
        excluded = np.ones(len(obs), bool) if "*" in d.exclude else obs.index.astype(str).isin(list(d.exclude))
        nnz_blocks: list[np.ndarray] = []
        kept_splits: list[np.ndarray] = []
        genes_per_cell: list[np.ndarray] = []
        n_cells = x.shape[0]
        for start, block in tqdm(
            x.blocks(params.chunk_cells),
            desc=f"tokenize {d.dataset_id}",
            total=-(-n_cells // params.chunk_cells),
            mininterval=5,
        ):
            stop = start + block.shape[0]
            rows = ~excluded[start:stop]
            block = block[rows] if not rows.all() else block
            try:
                offsets, tokens, counts, keep = block_to_lists(block, col_to_token, sorted_map)
            except ScencodeError as exc:
                raise ScencodeError(f"X (cells {start}–{stop}) has {exc}", d.path) from None
            genes_per_cell.append(np.diff(block.indptr)[keep])
            columns = {
                "cell_id": pa.array(cell_ids.to_numpy()[start:stop][rows][keep], pa.string()),
                "dataset_id": pa.array(np.full(int(keep.sum()), d.dataset_id), pa.string()),
                "gene_ids": pa.ListArray.from_arrays(offsets, tokens),
                "counts": pa.ListArray.from_arrays(offsets, counts),
                "total_counts": pa.array(np.asarray(block.sum(axis=1)).ravel()[keep], pa.float32()),
                "split": pa.array(split[start:stop][rows][keep], pa.string()),
            }
            for name, values in labels.items():
                columns[name] = pa.array(values[start:stop][rows][keep], pa.string())
            writer.write(pa.Table.from_pydict(columns, schema=schema))
            nnz_blocks.append(np.diff(offsets))
            kept_splits.append(split[start:stop][rows][keep])
    nnz = np.concatenate(nnz_blocks) if nnz_blocks else np.zeros(0, np.int64)
    splits = pd.Series(np.concatenate(kept_splits) if kept_splits else []).value_counts()
    stats = {
        "cells_in": n_cells,
        "cells_written": int(nnz.size),
        "cells_excluded_leakage": int(excluded.sum()),
        "cells_without_vocab_genes": n_cells - int(excluded.sum()) - int(nnz.size),
        "genes_in_vocab": int((col_to_token >= 0).sum()),
        "genes_not_in_vocab": int((col_to_token < 0).sum()),
        "splits": {k: int(v) for k, v in splits.items()},
    }
    stats.update(vocab_overlap(d, nnz, np.concatenate(genes_per_cell) if genes_per_cell else np.zeros(0)))
    return stats, nnz


MIN_VOCAB_GENES_PER_CELL = 50  # fewer: the model sees too little of each cell to represent it
MIN_VOCAB_FRACTION = 0.25


def vocab_overlap(d: DatasetInput, vocab_nnz: np.ndarray, all_nnz: np.ndarray) -> dict:
    """Genes per cell the model sees (in the vocabulary) against the cell's non-zero genes; a
    warning when too few, e.g. a real dataset evaluated with a vocabulary built from others."""
    seen, total = float(vocab_nnz.mean()) if vocab_nnz.size else 0.0, float(all_nnz.mean()) if all_nnz.size else 0.0
    out: dict[str, float | str | None] = {
        "vocab_genes_per_cell": seen,
        "genes_per_cell": total,
        "vocab_overlap_warning": None,
    }
    if vocab_nnz.size and (seen < MIN_VOCAB_GENES_PER_CELL or seen < MIN_VOCAB_FRACTION * total):
        out["vocab_overlap_warning"] = (
            f"{d.dataset_id}: only {seen:.0f} of its {total:.0f} non-zero genes per cell "
            f"are in the vocabulary; its embeddings describe little of each cell"
        )
        log.warning(out["vocab_overlap_warning"])
    return out


def _label_columns(obs: pd.DataFrame, d: DatasetInput, required: bool = True) -> dict:
    """label and batch per cell; a training dataset without a label column (``required`` False)
    gets missing labels, so that its test cells are left out of the in-distribution scores."""
    if (d.label_key is None and required) or (d.label_key is not None and d.label_key not in obs.columns):
        raise ScencodeError(f"label column {d.label_key!r} is missing from obs", d.path)
    if d.batch_key is not None and d.batch_key not in obs.columns:
        raise ScencodeError(f"batch column {d.batch_key!r} is missing from obs", d.path)
    label = (
        np.full(len(obs), None, dtype=object)
        if d.label_key is None
        else obs[d.label_key].astype(str).where(obs[d.label_key].notna(), None).to_numpy(object)
    )
    if d.batch_key is not None and obs[d.batch_key].isna().any():
        raise ScencodeError(
            f"batch column {d.batch_key!r} has no value for {int(obs[d.batch_key].isna().sum())} cells "
            "(they would form a fake batch 'nan')",
            d.path,
        )
    batch = (
        np.full(len(obs), d.dataset_id, dtype=object)
        if d.batch_key is None
        else obs[d.batch_key].astype(str).to_numpy(object)
    )
    return {"label": label, "batch": batch}


def run(
    corpus: str,
    datasets: list[dict],
    vocab: Path,
    out: OutputFolder,
    params: TokenizeParams,
    labels: bool = False,
    exclude: Path | None = None,
    training: bool = False,
) -> dict:
    """A corpus of Parquet token shards from QC'd datasets (JSON list of {dataset_id, path, label_key,
    batch_key}); ``labels``: label and batch columns (an evaluation corpus, or with ``training`` the
    training corpus, labelled where its datasets name a label column); ``exclude``: the leakage audit
    whose listed training cells are left out (policy drop)."""
    inputs = [
        DatasetInput(
            d["dataset_id"],
            Path(d["path"]),
            d.get("label_key"),
            d.get("batch_key"),
            tuple(excluded_cells(exclude, d["dataset_id"])),
        )
        for d in datasets
    ]
    manifest = tokenize_corpus(
        corpus, inputs, vocab, out, params, with_labels=labels, kind="training" if training else None
    )
    log.info("corpus %s: %d cells in %d shards", corpus, manifest["n_cells"], len(manifest["shards"]))
    return manifest
