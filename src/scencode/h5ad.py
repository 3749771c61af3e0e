"""Bounded-memory access to the count matrix of an ``.h5ad`` file, and chunked writing.

Files are opened with h5py and read through anndata's element API, so that only one block of
cells is in memory at a time, whatever the file's size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import read_elem, sparse_dataset, write_elem

from .errors import ScencodeError

COUNT_SOURCES_AUTO = ("layers/counts", "raw/X", "X")


@contextlib.contextmanager
def open_h5ad(path: str | Path) -> Iterator[h5py.File]:
    path = Path(path)
    if not path.exists():
        raise ScencodeError("file not found", path)
    if path.is_dir():
        raise ScencodeError("is a folder, not an h5ad file", path)
    if not h5py.is_hdf5(path):
        raise ScencodeError("not an h5ad file (it is not HDF5; was the download complete?)", path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:  # truncated or damaged HDF5
        raise ScencodeError(f"not a readable h5ad file, truncated or damaged ({exc})", path) from None
    with f:
        if "obs" not in f or "var" not in f:
            raise ScencodeError("not an h5ad file (HDF5 without 'obs' and 'var' groups)", path)
        yield f


QC_RECORD = "uns/scencode_qc"  # what scencode qc writes into every file it outputs: its settings


@contextlib.contextmanager
def open_qc_h5ad(path: str | Path) -> Iterator[h5py.File]:
    """An h5ad that ``scencode qc`` wrote (raw integer counts, Ensembl ids, unique cell names):
    the steps after QC read only these, so a raw download given by mistake is refused, not read
    with its NaNs, negative and fractional values silently dropped or rounded."""
    with open_h5ad(path) as f:
        if QC_RECORD not in f:
            raise ScencodeError(f"not an output of scencode qc (no {QC_RECORD}): run scencode qc on it first", path)
        yield f


def read_qc_h5ad(path: str | Path, obs_columns: tuple[str | None, ...] = ()) -> ad.AnnData:
    """A whole QC'd h5ad in memory (:func:`open_qc_h5ad`), with the obs columns a step needs."""
    with open_qc_h5ad(path) as f:
        obs = read_frame(f, "obs")
    missing = [c for c in obs_columns if c and c not in obs.columns]
    if missing:
        raise ScencodeError(
            f"obs column(s) {', '.join(map(repr, missing))} missing (columns: {', '.join(map(str, obs.columns)) or 'none'})",
            path,
        )
    return ad.read_h5ad(path)


def read_frame(f: h5py.File, key: str) -> pd.DataFrame:
    """``obs`` or ``var`` of an open h5ad; one that anndata cannot read as a data frame (e.g. a 2-D
    column) is an error naming the file."""
    try:
        return read_elem(f[key])
    except Exception as exc:  # anndata raises many kinds here; each means the same to a user
        raise ScencodeError(
            f"{key} is not a readable data frame ({' '.join(str(exc).split())[:200]})", f.filename
        ) from None


@dataclass
class CountMatrix:
    """Row blocks of one matrix inside an open h5ad: ``X``, ``raw/X`` or ``layers/<name>``."""

    key: str
    element: Any  # anndata sparse dataset or h5py dataset
    path: Path

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.element.shape)

    def var_key(self) -> str:
        return "raw/var" if self.key == "raw/X" else "var"

    def block(self, start: int, stop: int) -> sp.csr_matrix:
        """Cells ``start:stop`` in canonical CSR: duplicate entries summed and indices sorted, so
        that every metric and every written count comes from the same matrix."""
        try:
            part = self.element[start:stop]
            if part.dtype == np.float16:  # scipy.sparse has no float16; float32 holds each value exactly
                part = part.astype(np.float32)
            block = sp.csr_matrix(part)
        except OSError as exc:
            raise ScencodeError(
                f"cannot read {self.key} (cells {start}–{stop}): truncated or damaged ({exc})", self.path
            ) from None
        except (TypeError, ValueError) as exc:
            raise ScencodeError(f"{self.key} cannot be read as a count matrix ({exc})", self.path) from None
        block.sum_duplicates()
        return block

    def blocks(self, chunk_cells: int) -> Iterator[tuple[int, sp.csr_matrix]]:
        for start in range(0, self.shape[0], chunk_cells):
            yield start, self.block(start, min(start + chunk_cells, self.shape[0]))


def count_matrix(f: h5py.File, path: Path, key: str) -> CountMatrix:
    if key not in f:
        raise ScencodeError(f"has no matrix at {key!r}", path)
    node = f[key]
    if isinstance(node, h5py.Group):
        fmt = node.attrs.get("encoding-type", "")
        if fmt not in ("csr_matrix", "csc_matrix"):
            raise ScencodeError(f"{key!r} is not a matrix (encoding {fmt!r})", path)
        element = sparse_dataset(node)
    else:
        element = node
    return CountMatrix(key, element, path)


# The largest count stored: QC writes float32, which holds every integer up to 2^24 exactly (above
# it, 2^24 + 1 would become 2^24). A float32 comparison with int32's limit let 2^31 through.
MAX_COUNT = 2**24


def _where(block: sp.csr_matrix, bad: np.ndarray) -> str:
    """The first offending entry: value, row within the block and column."""
    k = int(np.flatnonzero(bad)[0])
    row = int(np.searchsorted(block.indptr, k, side="right") - 1)
    return f"{int(bad.sum())} entries, e.g. {block.data[k]} at row {row}, column {int(block.indices[k])}"


def count_problem(block: sp.csr_matrix) -> str | None:
    """Why a block is not raw counts, or None if it is."""
    data = block.data
    if data.size == 0:
        return None
    if data.dtype.kind in "iu":
        data = data.astype(np.float64)  # the checks below compare as floats, without wrapping
    finite = np.isfinite(data)
    if not finite.all():  # NaN/Inf pass the integer test and would wrap around in int32
        return f"has non-finite values ({_where(block, ~finite)}): not raw counts"
    too_large = data > MAX_COUNT  # exact in float32 too (2^24 is representable), unlike int32's limit
    if too_large.any():
        return (
            f"has counts beyond {MAX_COUNT:,} ({_where(block, too_large)}): float32 storage cannot "
            "hold larger integers exactly, and no single-cell count is that large"
        )
    if (data < 0).any():
        return f"has negative values (min {data.min():.3g}): a scaled matrix, not raw counts"
    fractional = np.abs(data - np.rint(data)) > 1e-6
    if fractional.any():
        example = data[fractional][0]
        return (
            f"has non-integer values (e.g. {example:.4g}, max {data.max():.4g}): looks log-normalised, not raw counts"
        )
    return None


def choose_counts(f: h5py.File, path: Path, choice: str, probe_cells: int = 2000) -> CountMatrix:
    """The raw count matrix: ``choice`` is ``auto``, ``X``, ``raw`` or ``layers/<name>``."""
    keys = {"raw": "raw/X"}.get(choice, choice)
    candidates = COUNT_SOURCES_AUTO if choice == "auto" else (keys,)
    problems = []
    for key in candidates:
        if key not in f:
            if choice != "auto":
                raise ScencodeError(f"has no matrix at {key!r} (counts: {choice})", path)
            continue
        matrix = count_matrix(f, path, key)
        problem = count_problem(matrix.block(0, min(probe_cells, matrix.shape[0])))
        if problem is None:
            return matrix
        problems.append(f"{key} {problem}")
    raise ScencodeError(
        "no raw count matrix found: "
        + "; ".join(problems or ["no X"])
        + ". Point 'counts' at the matrix that holds integer counts.",
        path,
    )


STREAM_CHUNK = 2**18  # values per HDF5 chunk of a streamed matrix (1 MiB of float32)


class ChunkedH5adWriter:
    """Write an AnnData whose CSR ``X`` arrives in row blocks; obs/var are written at the end."""

    def __init__(self, path: Path, n_vars: int):
        self.path = Path(path)
        self.n_vars = n_vars
        ad.AnnData(
            obs=pd.DataFrame(index=pd.Index([], dtype=str)),
            var=pd.DataFrame(index=pd.Index([str(i) for i in range(n_vars)])),
        ).write_h5ad(self.path)
        self._file = h5py.File(self.path, "a")
        if "X" in self._file:
            del self._file["X"]
        # chunks sized for streaming: grown from an empty matrix, HDF5 would pick 1,024-value chunks
        # (1 for indptr), whose index then costs memory and time in proportion to the file's size
        write_elem(
            self._file, "X", sp.csr_matrix((0, n_vars), dtype=np.float32), dataset_kwargs={"chunks": (STREAM_CHUNK,)}
        )
        self._x = sparse_dataset(self._file["X"])

    def append(self, block: sp.csr_matrix) -> None:
        if block.shape[0]:
            self._x.append(sp.csr_matrix(block, dtype=np.float32))

    def finish(self, obs: pd.DataFrame, var: pd.DataFrame, uns: dict | None = None) -> None:
        if self._x.shape != (len(obs), len(var)):
            raise AssertionError(f"matrix {self._x.shape} does not match obs/var ({len(obs)}, {len(var)})")
        for key, value in (("obs", obs), ("var", var), ("uns", uns or {})):
            del self._file[key]
            write_elem(self._file, key, value)
        self._file.close()

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()
