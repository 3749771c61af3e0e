"""Parquet helpers shared by the stages: checked reading, and matrices as fixed-size-list columns
(gene embeddings, cell embeddings)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ScencodeError


def read_parquet(path: str | Path, what: str) -> pa.Table:
    """The table at ``path``; a missing or unreadable file is an error naming ``what`` it should be."""
    path = Path(path)
    if not path.exists():
        raise ScencodeError(f"{what} not found", path)
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ScencodeError(f"not a readable {what} ({exc})", path) from exc


def matrix_column(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """Rows of a float32 matrix as a fixed-size list column."""
    return pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(matrix, np.float32).ravel()), matrix.shape[1])


def column_matrix(table: pa.Table, name: str) -> np.ndarray:
    """A fixed-size list column back as a (rows × size) matrix."""
    dim = table.schema.field(name).type.list_size
    return table.column(name).combine_chunks().flatten().to_numpy().reshape(-1, dim)
