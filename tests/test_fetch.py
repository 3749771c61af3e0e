"""``scencode.fetch``: streamed downloads (retries, size and sha256 checks, nothing left behind on
failure) from a local HTTP server, and local files linked in."""

import hashlib

import pytest
from helpers import leftovers, tiny_adata

from scencode.errors import ScencodeError
from scencode.fetch import download_url, link_local


def test_url_source_with_wrong_sha256_leaves_nothing(server, h5ad_bytes, tmp_path):
    base, handler = server
    handler.routes["/data.h5ad"] = h5ad_bytes
    out = tmp_path / "d.h5ad"
    with pytest.raises(ScencodeError, match="sha256 mismatch"):
        download_url(f"{base}/data.h5ad", out, sha256="0" * 64, backoff=0)
    assert not out.exists() and leftovers(tmp_path) == []


def test_url_source_retries_server_errors(server, h5ad_bytes, tmp_path):
    base, handler = server
    handler.routes["/flaky.h5ad"] = h5ad_bytes
    handler.failures["/flaky.h5ad"] = 2
    out = tmp_path / "d.h5ad"
    download_url(f"{base}/flaky.h5ad", out, sha256=hashlib.sha256(h5ad_bytes).hexdigest(), retries=3, backoff=0)
    assert handler.hits["/flaky.h5ad"] == 3 and out.read_bytes() == h5ad_bytes


def test_url_source_gives_up_on_missing_file_without_retrying(server, tmp_path):
    base, handler = server
    with pytest.raises(ScencodeError, match="404"):
        download_url(f"{base}/missing.h5ad", tmp_path / "d.h5ad", retries=3, backoff=0)
    assert handler.hits["/missing.h5ad"] == 1


def test_truncated_transfer_is_retried_then_reported(server, tmp_path):
    base, handler = server
    with pytest.raises(ScencodeError, match="received 10 of 1000 bytes"):
        download_url(f"{base}/truncated", tmp_path / "d.h5ad", retries=2, backoff=0)
    assert handler.hits["/truncated"] == 3
    assert not (tmp_path / "d.h5ad").exists() and leftovers(tmp_path) == []


def test_a_local_file_is_linked_and_what_is_not_hdf5_refused(tmp_path):
    src = tmp_path / "local.h5ad"
    tiny_adata().write_h5ad(src)
    link_local(src, tmp_path / "raw" / "x.h5ad")
    assert (tmp_path / "raw" / "x.h5ad").read_bytes() == src.read_bytes()
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ScencodeError, match="notes.txt"):
        link_local(tmp_path / "notes.txt", tmp_path / "raw" / "y.h5ad")
    assert not (tmp_path / "raw" / "y.h5ad").exists()
