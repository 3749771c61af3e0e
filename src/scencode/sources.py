"""Dataset sources for the download rule: ``demo``, ``local``, ``url`` and ``census``.

Every source writes ``resources/raw/{dataset}.h5ad`` atomically. Census queries are resolved here,
inside the job, so the workflow's DAG is built without touching the network.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import h5py
from tqdm import tqdm

from .atomic import atomic_path
from .errors import ScencodeError

log = logging.getLogger(__name__)
SOURCE_TYPES = ("demo", "local", "url", "census")
RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}


def fetch(source: dict, out: str | Path, seed: int = 0) -> None:
    """Materialise one dataset described by ``source`` (a config entry) at ``out``."""
    kind = source.get("type")
    if kind not in SOURCE_TYPES:
        raise ScencodeError(f"unknown source type {kind!r}; choose one of {', '.join(SOURCE_TYPES)}")
    out = Path(out)
    if kind == "demo":
        from .demo import make_demo_dataset

        adata = make_demo_dataset(source["name"], seed=seed, n_cells=source.get("n_cells"))
        with atomic_path(out, suffix=".h5ad") as tmp:
            adata.write_h5ad(tmp, compression="gzip")
    elif kind == "local":
        link_local(source["path"], out)
    elif kind == "url":
        download_url(source["url"], out, sha256=source.get("sha256"), retries=source.get("retries", 4))
    else:
        census_download(source, out)


def link_local(path: str | Path, out: str | Path, check_hdf5: bool = True) -> None:
    """A local file is linked, not copied (atlases are large); h5ad files are checked to be HDF5."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise ScencodeError("local source file not found", path)
    if check_hdf5 and not h5py.is_hdf5(path):
        raise ScencodeError("local source is not an h5ad (HDF5) file", path)
    with atomic_path(out, suffix=".h5ad") as tmp:
        tmp.unlink()
        os.symlink(path, tmp)


def download_url(url: str, out: str | Path, sha256: str | None = None, retries: int = 4,
                 timeout: float = 60.0, backoff: float = 2.0) -> str:
    """Stream ``url`` to ``out``: retried on network errors and 5xx/429, size and sha256 checked,
    renamed into place only when complete. Returns the sha256 of the file."""
    out = Path(out)
    for attempt in range(1, retries + 2):
        try:
            with atomic_path(out, suffix=out.suffix) as tmp:
                digest = _stream(url, tmp, timeout)
                if sha256 and digest != sha256.lower():
                    raise ScencodeError(f"sha256 mismatch for {url}: got {digest}, expected {sha256}", out)
            return digest
        except (urllib.error.URLError, ConnectionError, TimeoutError, _Truncated) as exc:
            code = getattr(exc, "code", None)
            if (code is not None and code not in RETRYABLE_HTTP) or attempt > retries:
                raise ScencodeError(f"download of {url} failed after {attempt} attempt(s): {exc}", out) from exc
            wait = backoff * 2 ** (attempt - 1)
            log.warning("download of %s failed (%s); retry %d/%d in %.1fs", url, exc, attempt, retries, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


class _Truncated(Exception):
    pass


def _stream(url: str, target: Path, timeout: float) -> str:
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as fh:
        expected = response.headers.get("Content-Length")
        expected = int(expected) if expected is not None else None
        received = 0
        with tqdm(total=expected, unit="B", unit_scale=True, desc=Path(url).name, mininterval=5) as bar:
            while chunk := response.read(1 << 20):
                fh.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if expected is not None and received != expected:
        raise _Truncated(f"received {received} of {expected} bytes")
    return digest.hexdigest()


def census_download(source: dict, out: Path) -> None:
    """A CELLxGENE Census source dataset (the submitter's h5ad, raw counts included), by
    ``dataset_id`` or by a ``query`` over the Census datasets table (column → regex), at a
    pinned ``census_version``."""
    try:
        import cellxgene_census
    except ImportError as exc:
        raise ScencodeError("census sources need the 'cellxgene-census' package: "
                            "pip install 'scencode[census]'") from exc
    version = source["census_version"]
    dataset_id = source.get("dataset_id") or resolve_census_query(cellxgene_census, version, source["query"])
    log.info("census %s: downloading source h5ad of dataset %s", version, dataset_id)
    with atomic_path(out, suffix=".h5ad") as tmp:
        tmp.unlink()
        cellxgene_census.download_source_h5ad(dataset_id, to_path=str(tmp), census_version=version)
        if not h5py.is_hdf5(tmp):
            raise ScencodeError(f"census download of {dataset_id} is not an h5ad file", out)


def resolve_census_query(cellxgene_census, version: str, query: dict) -> str:
    with cellxgene_census.open_soma(census_version=version) as census:
        table = census["census_info"]["datasets"].read().concat().to_pandas()
    hits = table
    for column, pattern in query.items():
        if column not in table.columns:
            raise ScencodeError(f"census query column {column!r} is not in the Census datasets table "
                                f"(columns: {', '.join(table.columns)})")
        hits = hits[hits[column].astype(str).str.contains(pattern, case=False, regex=True)]
    if len(hits) != 1:
        found = "; ".join(f"{r.dataset_id} ({r.dataset_title})" for r in hits.head(10).itertuples())
        raise ScencodeError(f"census query {query} matched {len(hits)} datasets in census {version}, "
                            f"expected exactly 1{': ' + found if found else ''}")
    return hits.dataset_id.iloc[0]
