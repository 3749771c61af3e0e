"""Hostile and broken inputs: bounded downloads, weights loaded without unpickling code, no leftovers
when a step is killed."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import leftovers

from scencode.errors import ScencodeError
from scencode.esm.embed import esm2_weights, load_weights, save_tiny_esm2
from scencode.fetch import download_url


def test_endless_body_stops_at_the_size_cap_and_leaves_nothing(server, tmp_path):
    base, handler = server
    with pytest.raises(ScencodeError, match="more than 1000000 bytes"):
        download_url(f"{base}/endless", tmp_path / "d.h5ad", max_bytes=1_000_000, backoff=0)
    assert leftovers(tmp_path) == [] and not (tmp_path / "d.h5ad").exists()


def test_slow_drip_server_hits_the_overall_deadline(server, tmp_path):
    base, handler = server
    start = time.monotonic()
    with pytest.raises(ScencodeError, match="deadline"):
        download_url(f"{base}/drip", tmp_path / "d.h5ad", deadline_s=1.5, timeout=5, backoff=0)
    assert time.monotonic() - start < 10
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "url, message",
    [
        ("ftp://example.org/x.h5ad", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
    ],
)
def test_only_http_urls_are_fetched(url, message, tmp_path):
    with pytest.raises(ScencodeError, match=message):
        download_url(url, tmp_path / "d.h5ad")


def test_retries_are_bounded(server, tmp_path):
    with pytest.raises(ScencodeError, match="retries 1000"):
        download_url(f"{server[0]}/x", tmp_path / "d", retries=1000)


def test_url_source_that_is_not_hdf5_is_refused(server, tmp_path):
    from scencode.download import fetch

    base, handler = server
    body = b"<html>a login page</html>"
    handler.routes["/data.h5ad"] = body
    with pytest.raises(ScencodeError, match="not an h5ad"):
        fetch(
            {"type": "url", "url": f"{base}/data.h5ad", "sha256": hashlib.sha256(body).hexdigest()},
            tmp_path / "raw.h5ad",
        )
    assert not (tmp_path / "raw.h5ad").exists() and leftovers(tmp_path) == []


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_released_esm2_is_fetched_pinned_and_loaded_weights_only(server, tmp_path):
    base, handler = server
    weights = tmp_path / "tiny.pt"
    save_tiny_esm2(weights, layers=1, dim=16, heads=2)
    body = weights.read_bytes()
    handler.routes["/esm2_t6_8M_UR50D.pt"] = body
    cache = tmp_path / "hub"
    url = base + "/{name}.pt"
    with pytest.raises(ScencodeError, match="sha256 mismatch"):
        esm2_weights("esm2_t6_8M_UR50D", sha256="0" * 64, cache_dir=cache, url=url)
    assert not (cache / "esm2_t6_8M_UR50D.pt").exists()
    path, digest = esm2_weights("esm2_t6_8M_UR50D", sha256=hashlib.sha256(body).hexdigest(), cache_dir=cache, url=url)
    assert path.read_bytes() == body and digest == hashlib.sha256(body).hexdigest()
    model, _ = load_weights(esm2_weights(weights=path, sha256=hashlib.sha256(body).hexdigest())[0])
    assert model.num_layers == 1


def test_planted_pickle_in_the_hub_cache_does_not_run(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    marker = tmp_path / "PWNED"
    payload = _Payload()
    payload.marker = marker
    planted = tmp_path / "hub" / "checkpoints" / "esm2_t6_8M_UR50D.pt"
    planted.parent.mkdir(parents=True)
    torch.save({"cfg": payload, "model": {}}, planted)
    with pytest.raises(ScencodeError, match="not a readable torch checkpoint"):
        load_weights(esm2_weights("esm2_t6_8M_UR50D")[0])
    assert not marker.exists()
    # pinned: the planted file is refused by content before it is even opened
    with pytest.raises(ScencodeError, match="pinned"):
        load_weights(esm2_weights("esm2_t6_8M_UR50D", sha256="0" * 64)[0])
    assert not marker.exists()


def test_offline_released_model_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(time, "sleep", lambda s: None)  # the retries' waits
    with pytest.raises(ScencodeError, match="download of .* failed"):
        esm2_weights("esm2_t6_8M_UR50D", url="http://127.0.0.1:9/{name}.pt")


def test_killed_step_leaves_no_temporary_file(tmp_path):
    """SIGTERM (scancel, a time limit) unwinds through the atomic writers: no hidden leftovers."""
    out = tmp_path / "raw" / "big.h5ad"
    code = (
        "import sys, time; from scencode import cli, atomic\n"
        "def slow(source, out, seed=0):\n"
        "    with atomic.atomic_path(out) as tmp:\n"
        "        tmp.write_bytes(b'x' * 1000); print('writing', flush=True); time.sleep(60)\n"
        "cli.step_function = lambda step: slow\n"
        f"sys.exit(cli.main(['download', '--source', '{{}}', '--out', {str(out)!r}]))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143 and "stopped by SIGTERM" in err
    assert list((tmp_path / "raw").iterdir()) == []
