"""Dataset sources for the download rule: ``demo``, ``local``, ``url`` and ``census``.

Every source writes ``resources/raw/{dataset}.h5ad`` atomically. Census queries are resolved here,
inside the job, so the workflow's DAG is built without touching the network.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py

from .atomic import OutputFile, atomic_path
from .errors import ScencodeError
from .fetch import DEFAULT_DEADLINE_S, DEFAULT_MAX_BYTES, download_url, link_local

log = logging.getLogger(__name__)
SOURCE_TYPES = ("demo", "local", "url", "census")


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
        download_url(
            source["url"],
            out,
            sha256=source.get("sha256"),
            retries=source.get("retries", 4),
            max_bytes=source.get("max_bytes", DEFAULT_MAX_BYTES),
            deadline_s=source.get("deadline_s", DEFAULT_DEADLINE_S),
            hdf5=True,
        )
    else:
        census_download(source, out)


def census_download(source: dict, out: Path) -> None:
    """A CELLxGENE Census source dataset (the submitter's h5ad, raw counts included), by
    ``dataset_id`` or by a ``query`` over the Census datasets table (column → regex), at a
    pinned ``census_version``."""
    try:
        import cellxgene_census
    except ImportError as exc:
        raise ScencodeError(
            "census sources need the 'cellxgene-census' package: pip install 'scencode[census]'"
        ) from exc
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
            raise ScencodeError(
                f"census query column {column!r} is not in the Census datasets table "
                f"(columns: {', '.join(table.columns)})"
            )
        hits = hits[hits[column].astype(str).str.contains(pattern, case=False, regex=True)]
    if len(hits) != 1:
        found = "; ".join(f"{r.dataset_id} ({r.dataset_title})" for r in hits.head(10).itertuples())
        raise ScencodeError(
            f"census query {query} matched {len(hits)} datasets in census {version}, "
            f"expected exactly 1{': ' + found if found else ''}"
        )
    return hits.dataset_id.iloc[0]


def run(source: dict, out: OutputFile, seed: int = 0) -> None:
    """Fetch one dataset (a config ``source`` entry, JSON) to an h5ad at ``out``."""
    fetch(source, out, seed=seed)
