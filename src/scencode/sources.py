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
import urllib.parse
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
        download_url(source["url"], out, sha256=source.get("sha256"), retries=source.get("retries", 4),
                     max_bytes=source.get("max_bytes", DEFAULT_MAX_BYTES),
                     deadline_s=source.get("deadline_s", DEFAULT_DEADLINE_S), hdf5=True)
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


MAX_RETRIES = 10
MAX_BACKOFF_S = 300.0
DEFAULT_MAX_BYTES = 200 * 2**30  # the largest Census source h5ad is ~60 GB; a runaway body stops here
DEFAULT_DEADLINE_S = 12 * 3600.0


def download_url(url: str, out: str | Path, sha256: str | None = None, retries: int = 4,
                 timeout: float = 60.0, backoff: float = 2.0, max_bytes: int = DEFAULT_MAX_BYTES,
                 deadline_s: float = DEFAULT_DEADLINE_S, hdf5: bool = False) -> str:
    """Stream ``url`` (http or https) to ``out``: retried on network errors and 5xx/429 (at most
    :data:`MAX_RETRIES` times, waits capped at :data:`MAX_BACKOFF_S`), refused past ``max_bytes``
    or ``deadline_s`` seconds (a slow-drip server never times out per read), size and sha256
    checked (and, with ``hdf5``, the format), renamed into place only when complete. Returns the
    sha256 of the file."""
    out = Path(out)
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise ScencodeError(f"cannot download {url!r}: only http and https URLs are fetched "
                            f"(use a 'local' source for files)", out)
    if not 0 <= retries <= MAX_RETRIES:
        raise ScencodeError(f"retries {retries} for {url}: choose 0 to {MAX_RETRIES}", out)
    deadline = time.monotonic() + deadline_s
    for attempt in range(1, retries + 2):
        try:
            with atomic_path(out, suffix=out.suffix) as tmp:
                digest = _stream(url, tmp, timeout, max_bytes, deadline)
                if sha256 and digest != sha256.lower():
                    raise ScencodeError(f"sha256 mismatch for {url}: got {digest}, expected {sha256}", out)
                if hdf5 and not h5py.is_hdf5(tmp):
                    raise ScencodeError(f"{url} is not an h5ad (HDF5) file; nothing was kept", out)
            return digest
        except (urllib.error.URLError, ConnectionError, TimeoutError, _Truncated) as exc:
            code = getattr(exc, "code", None)
            # an HTTP status that will not change, or a URLError that is not a network error
            # (unknown url type, bad host syntax): retrying cannot help
            permanent = (code is not None and code not in RETRYABLE_HTTP) or (
                isinstance(exc, urllib.error.URLError) and code is None and not isinstance(exc.reason, OSError))
            wait = min(backoff * 2 ** (attempt - 1), MAX_BACKOFF_S)
            if permanent or attempt > retries or time.monotonic() + wait >= deadline:
                raise ScencodeError(f"download of {url} failed after {attempt} attempt(s): {exc}", out) from exc
            log.warning("download of %s failed (%s); retry %d/%d in %.1fs", url, exc, attempt, retries, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


class _Truncated(Exception):
    pass


def _stream(url: str, target: Path, timeout: float, max_bytes: int, deadline: float) -> str:
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as fh:
        expected = response.headers.get("Content-Length")
        expected = int(expected) if expected is not None else None
        if expected is not None and expected > max_bytes:
            raise ScencodeError(f"{url} announces {expected} bytes, over the limit of {max_bytes} "
                                f"(raise max_bytes in the source if this is right)", target)
        received = 0
        with tqdm(total=expected, unit="B", unit_scale=True, desc=Path(url).name, mininterval=5) as bar:
            # read1: whatever has arrived (≤ 1 MiB), so the deadline is checked however slowly bytes come
            while chunk := response.read1(1 << 20):
                received += len(chunk)
                if received > max_bytes:
                    raise ScencodeError(f"{url} sent more than {max_bytes} bytes; stopped "
                                        f"(raise max_bytes in the source if this is right)", target)
                if time.monotonic() > deadline:
                    raise ScencodeError(f"download of {url} passed its deadline after {received} bytes", target)
                fh.write(chunk)
                digest.update(chunk)
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
