import hashlib
import sys
import types

import anndata as ad
import pandas as pd
import pytest
from helpers import tiny_adata

from scencode.download import fetch
from scencode.errors import ScencodeError


def test_url_source_downloads_and_checks_sha256(server, h5ad_bytes, tmp_path):
    base, handler = server
    handler.routes["/data.h5ad"] = h5ad_bytes
    out = tmp_path / "raw" / "d.h5ad"
    fetch({"type": "url", "url": f"{base}/data.h5ad", "sha256": hashlib.sha256(h5ad_bytes).hexdigest()}, out)
    assert out.read_bytes() == h5ad_bytes
    assert ad.read_h5ad(out).n_obs == 60


def test_local_source_links_the_file_and_rejects_non_h5ad(tmp_path):
    src = tmp_path / "local.h5ad"
    tiny_adata().write_h5ad(src)
    fetch({"type": "local", "path": str(src)}, tmp_path / "raw" / "x.h5ad")
    assert ad.read_h5ad(tmp_path / "raw" / "x.h5ad").n_obs == 60
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ScencodeError, match="not an h5ad"):
        fetch({"type": "local", "path": str(text)}, tmp_path / "raw" / "y.h5ad")
    with pytest.raises(ScencodeError, match="not found"):
        fetch({"type": "local", "path": str(tmp_path / "absent.h5ad")}, tmp_path / "raw" / "z.h5ad")


def test_demo_source_writes_the_named_dataset(tmp_path):
    fetch({"type": "demo", "name": "sim_blood_1", "n_cells": 120, "seed": 3}, tmp_path / "d.h5ad")
    adata = ad.read_h5ad(tmp_path / "d.h5ad")
    assert adata.n_obs == 120 and adata.var_names[0].startswith("ENSG")


@pytest.fixture
def fake_census(monkeypatch, tmp_path):
    """cellxgene_census replaced at its boundary: open_soma's datasets table and download_source_h5ad."""
    calls = []
    datasets = pd.DataFrame(
        {
            "dataset_id": ["ds-bladder", "ds-blood", "ds-lung"],
            "dataset_title": ["Tabula Sapiens - Bladder", "Tabula Sapiens - Blood", "Human lung atlas"],
            "collection_name": ["Tabula Sapiens", "Tabula Sapiens", "Lung Cell Atlas"],
        }
    )

    class _Read:
        def concat(self):
            return self

        def to_pandas(self):
            return datasets

    class _Census(dict):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def open_soma(census_version):
        calls.append(("open_soma", census_version))
        return _Census(census_info={"datasets": types.SimpleNamespace(read=lambda: _Read())})

    def download_source_h5ad(dataset_id, to_path, census_version):
        calls.append(("download", dataset_id, census_version))
        tiny_adata(cell_type=["T cell"] * 60).write_h5ad(to_path)

    module = types.SimpleNamespace(open_soma=open_soma, download_source_h5ad=download_source_h5ad)
    monkeypatch.setitem(sys.modules, "cellxgene_census", module)
    return calls


def test_census_source_by_dataset_id_uses_the_pinned_version(fake_census, tmp_path):
    fetch({"type": "census", "dataset_id": "abc", "census_version": "2025-01-30"}, tmp_path / "d.h5ad")
    assert fake_census == [("download", "abc", "2025-01-30")]
    assert ad.read_h5ad(tmp_path / "d.h5ad").n_obs == 60


def test_census_query_resolves_to_exactly_one_dataset(fake_census, tmp_path):
    query = {"collection_name": "^Tabula Sapiens", "dataset_title": "Bladder"}
    fetch({"type": "census", "query": query, "census_version": "2025-01-30"}, tmp_path / "d.h5ad")
    assert fake_census[-1] == ("download", "ds-bladder", "2025-01-30")
    with pytest.raises(ScencodeError, match="matched 2 datasets"):
        fetch({"type": "census", "query": {"collection_name": "Tabula"}, "census_version": "v"}, tmp_path / "e.h5ad")
    with pytest.raises(ScencodeError, match="matched 0 datasets"):
        fetch({"type": "census", "query": {"dataset_title": "Heart"}, "census_version": "v"}, tmp_path / "f.h5ad")
    with pytest.raises(ScencodeError, match="not in the Census datasets table"):
        fetch({"type": "census", "query": {"organ": "x"}, "census_version": "v"}, tmp_path / "g.h5ad")
    assert not any((tmp_path / n).exists() for n in ("e.h5ad", "f.h5ad", "g.h5ad"))


def test_census_without_the_package_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "cellxgene_census", None)
    with pytest.raises(ScencodeError, match=r"scencode\[census\]"):
        fetch({"type": "census", "dataset_id": "abc", "census_version": "v"}, tmp_path / "d.h5ad")
