"""Files from the network or the local disk, for every stage that fetches one (datasets, gene
tables, protein FASTAs, ESM-2 weights): http(s) streamed with retries, size, deadline and sha256
checks, renamed into place only when complete; local files linked, not copied."""

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
RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}


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


def download_url(
    url: str,
    out: str | Path,
    sha256: str | None = None,
    retries: int = 4,
    timeout: float = 60.0,
    backoff: float = 2.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    deadline_s: float = DEFAULT_DEADLINE_S,
    hdf5: bool = False,
) -> str:
    """Stream ``url`` (http or https) to ``out``: retried on network errors and 5xx/429 (at most
    :data:`MAX_RETRIES` times, waits capped at :data:`MAX_BACKOFF_S`), refused past ``max_bytes``
    or ``deadline_s`` seconds (a slow-drip server never times out per read), size and sha256
    checked (and, with ``hdf5``, the format), renamed into place only when complete. Returns the
    sha256 of the file."""
    out = Path(out)
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise ScencodeError(
            f"cannot download {url!r}: only http and https URLs are fetched (use a 'local' source for files)", out
        )
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
                isinstance(exc, urllib.error.URLError) and code is None and not isinstance(exc.reason, OSError)
            )
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
            raise ScencodeError(
                f"{url} announces {expected} bytes, over the limit of {max_bytes} "
                f"(raise max_bytes in the source if this is right)",
                target,
            )
        received = 0
        with tqdm(total=expected, unit="B", unit_scale=True, desc=Path(url).name, mininterval=5) as bar:
            # read1: whatever has arrived (≤ 1 MiB), so the deadline is checked however slowly bytes come
            while chunk := response.read1(1 << 20):
                received += len(chunk)
                if received > max_bytes:
                    raise ScencodeError(
                        f"{url} sent more than {max_bytes} bytes; stopped "
                        f"(raise max_bytes in the source if this is right)",
                        target,
                    )
                if time.monotonic() > deadline:
                    raise ScencodeError(f"download of {url} passed its deadline after {received} bytes", target)
                fh.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    if expected is not None and received != expected:
        raise _Truncated(f"received {received} of {expected} bytes")
    return digest.hexdigest()
