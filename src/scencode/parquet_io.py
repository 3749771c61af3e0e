"""Parquet helpers shared by the stages: checked reading, and matrices as fixed-size-list columns
(gene embeddings, cell embeddings)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ScencodeError


def read_parquet(path: str | Path, what: str, columns: tuple[str, ...] = ()) -> pa.Table:
    """The table at ``path``, holding ``columns``; a missing, unreadable or other file is an error
    naming ``what`` it should be."""
    path = Path(path)
    if not path.exists():
        raise ScencodeError(f"{what} not found", path)
    if path.is_dir():  # pyarrow would read a folder as a (possibly empty) dataset
        raise ScencodeError(f"is a folder, not a {what}", path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise ScencodeError(f"not a readable {what} ({' '.join(str(exc).split())[:200]})", path) from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ScencodeError(f"not a {what}: no column(s) {', '.join(missing)}", path)
    return table


def matrix_column(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """Rows of a float32 matrix as a fixed-size list column."""
    return pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(matrix, np.float32).ravel()), matrix.shape[1])


def column_matrix(table: pa.Table, name: str) -> np.ndarray:
    """A fixed-size list column back as a (rows × size) matrix."""
    dim = table.schema.field(name).type.list_size
    return table.column(name).combine_chunks().flatten().to_numpy().reshape(-1, dim)


def polars_frame(table: pa.Table) -> pl.DataFrame:
    """A Parquet table as a polars DataFrame (``pl.from_arrow`` is typed to return a Series too)."""
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)  # a Table converts to a DataFrame
    return frame
