"""Leakage audit: does an evaluation dataset share data with a training dataset?

Every training dataset is compared with every evaluation dataset on
* dataset ids: the config's Census ``dataset_id``, an obs ``dataset_id`` column (Census), and the
  dataset version id in the CELLxGENE citation (``uns/citation`` of the downloaded file);
* collection ids: the CELLxGENE collection in the citation (or an obs ``collection_id`` column);
* donors: the obs donor column (``donor_id``, CELLxGENE's, else ``donor``/``individual``/...);
  author donor labels are not global ids, so a label such as ``1`` or ``donor_2`` (generic:
  :data:`GENERIC_DONOR`) counts only within a shared collection, while a specific label such as
  Tabula Sapiens' ``TSP14`` counts across collections (Tabula Sapiens v1 and v2 share donors);
* cells: identical barcodes within shared donors.

Policies (``leakage.policy``): ``report`` (write the audit), ``drop`` (training cells of shared
donors and of shared datasets are left out of the training corpus; the audit lists them) and
``error`` (fail before tokenizing, naming the pairs).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import polars as pl

from .atomic import OutputFile, atomic_path, write_json
from .errors import ScencodeError

log = logging.getLogger(__name__)
POLICIES = ("report", "drop", "error")
DONOR_COLUMNS = ("donor_id", "donor", "individual", "patient", "subject_id", "donor_uuid")
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
COLLECTION_RE = re.compile(rf"collections/({UUID})")
DATASET_VERSION_RE = re.compile(rf"datasets\.cellxgene\.cziscience\.com/({UUID})")
GENERIC_DONOR = re.compile(r"^(donor|patient|individual|subject|sample|d|p|s)?[\s_-]*\d{1,3}$", re.IGNORECASE)


CELLS = {"barcode": pl.String, "donor": pl.String}


@dataclass
class DatasetIdentity:
    name: str
    role: str
    dataset_ids: set[str] = field(default_factory=set)
    collection_ids: set[str] = field(default_factory=set)
    donors: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=CELLS))  # barcode, donor
    n_cells: int = 0


def read_identity(
    name: str, role: str, qc_path: str | Path, raw_path: str | Path | None = None, source: dict | None = None
) -> DatasetIdentity:
    """What identifies a dataset's data: ids from config, obs and the CELLxGENE citation; donors."""
    from .h5ad import open_h5ad, read_frame

    source = source or {}
    ids = {source["dataset_id"]} if source.get("dataset_id") else set()
    collections: set[str] = set()
    with open_h5ad(qc_path) as f:
        obs = read_frame(f, "obs")
    for key, target in (("dataset_id", ids), ("collection_id", collections)):
        if key in obs.columns:
            target.update(obs[key].dropna().astype(str).unique())
    if raw_path is not None and Path(raw_path).exists():
        citation = read_citation(raw_path)
        collections.update(COLLECTION_RE.findall(citation))
        ids.update(DATASET_VERSION_RE.findall(citation))
    column = next((c for c in DONOR_COLUMNS if c in obs.columns), None)
    # no donor column: no donor can be matched (dataset and collection ids still are)
    donors = (
        pl.DataFrame(
            {"barcode": obs.index.astype(str).to_numpy(), "donor": obs[column].astype(str).to_numpy()}, schema=CELLS
        )
        if column
        else pl.DataFrame(schema=CELLS)
    )
    return DatasetIdentity(name, role, ids, collections, donors, len(obs))


def read_citation(path: str | Path) -> str:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            value = f["uns"]["citation"][()] if "uns" in f and "citation" in f["uns"] else b""
    except OSError:  # not HDF5: QC reports that; the audit has nothing to read
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def audit(datasets: list[DatasetIdentity], policy: str = "report") -> dict:
    """Every (training, evaluation) pair that shares something, and the training cells to leave
    out under ``drop``. ``error`` raises when any pair shares data. Donors, their cells and their
    barcodes are matched by joins over every dataset's cells at once (polars), not pair by pair."""
    if policy not in POLICIES:
        raise ScencodeError(f"leakage.policy {policy!r}: choose one of {', '.join(POLICIES)}")
    train = [d for d in datasets if d.role == "train"]
    evaluation = [d for d in datasets if d.role == "eval"]
    cells = pl.concat(
        [d.donors.with_columns(dataset=pl.lit(d.name), role=pl.lit(d.role)) for d in datasets], how="vertical"
    )
    labels = _shared_labels(cells)
    pairs = [compare(t, e, labels.get((t.name, e.name), set())) for t in train for e in evaluation]
    shared_cells = _cells_of_shared_donors(cells, pairs)
    drop: dict[str, set[str]] = {d.name: set() for d in train}
    for pair in pairs:
        counts = shared_cells.get((pair["train"], pair["eval"]), {})
        pair["shared_barcodes_in_shared_donors"] = counts.get("barcodes", 0)
        pair["train_cells_of_shared_donors"] = counts.get("cells", 0)
        if pair["leaks"]:
            t = next(d for d in train if d.name == pair["train"])
            drop[t.name] |= (
                (set(t.donors["barcode"]) or {"*"}) if pair["shared_dataset_ids"] else counts.get("set", set())
            )
    pairs = [p for p in pairs if p["leaks"] or p["generic_donor_labels_shared"]]
    leaking = [p for p in pairs if p["leaks"]]
    if policy == "error" and leaking:
        raise ScencodeError(
            "training and evaluation data overlap (leakage.policy: error): "
            + "; ".join(f"{p['train']} ↔ {p['eval']}: {describe(p)}" for p in leaking)
        )
    for p in leaking:
        log.warning("leakage: %s ↔ %s: %s", p["train"], p["eval"], describe(p))
    dropped = {name: sorted(cells) for name, cells in drop.items() if cells} if policy == "drop" else {}
    return {
        "policy": policy,
        "pairs_compared": len(train) * len(evaluation),
        "pairs": pairs,
        "pairs_leaking": len(leaking),
        "drop": dropped,
        "cells_dropped": int(sum(len(c) for c in dropped.values())),
    }


def _shared_labels(cells: pl.DataFrame) -> dict[tuple[str, str], set[str]]:
    """(training, evaluation) dataset → the donor labels both hold: one join of the labels."""
    labels = cells.select("dataset", "role", "donor").unique()
    shared = (
        labels.filter(pl.col("role") == "train")
        .join(labels.filter(pl.col("role") == "eval"), on="donor", suffix="_eval")
        .group_by("dataset", "dataset_eval")
        .agg(pl.col("donor"))
    )
    return {(t, e): set(donors) for t, e, donors in shared.iter_rows()}


def _cells_of_shared_donors(cells: pl.DataFrame, pairs: list[dict]) -> dict[tuple[str, str], dict]:
    """Per leaking pair: the training cells of its shared donors, and how many of them carry a
    barcode that the evaluation dataset's cells of the same donor carry too."""
    rows = [(p["train"], p["eval"], donor) for p in pairs for donor in p["shared_donors"]]
    if not rows:
        return {}
    donors = pl.DataFrame(
        rows, schema={"dataset": pl.String, "dataset_eval": pl.String, "donor": pl.String}, orient="row"
    )
    train_cells = cells.filter(pl.col("role") == "train").join(donors, on=["dataset", "donor"])
    evaluation = cells.filter(pl.col("role") == "eval").select(
        dataset_eval="dataset", donor="donor", barcode="barcode", in_eval=pl.lit(True)
    )
    matched = (
        train_cells.join(evaluation.unique(), on=["dataset_eval", "donor", "barcode"], how="left")
        .group_by("dataset", "dataset_eval")
        .agg(cells=pl.len(), barcodes=pl.col("in_eval").sum(), set=pl.col("barcode"))
    )
    return {
        (t, e): {"cells": int(n), "barcodes": int(b or 0), "set": set(barcodes)}
        for t, e, n, b, barcodes in matched.iter_rows()
    }


def compare(t: DatasetIdentity, e: DatasetIdentity, labels: set[str]) -> dict:
    """What a (training, evaluation) pair shares; ``labels``: the donor labels both hold."""
    shared_ids = sorted(t.dataset_ids & e.dataset_ids)
    shared_collections = sorted(t.collection_ids & e.collection_ids)
    generic = sorted(x for x in labels if GENERIC_DONOR.match(x))
    # generic labels ("1", "donor_2") name the same person only within one collection
    donors = sorted(labels - set(generic)) + (generic if shared_collections else [])
    return {
        "train": t.name,
        "eval": e.name,
        "shared_dataset_ids": shared_ids,
        "shared_collection_ids": shared_collections,
        "shared_donors": donors,
        "generic_donor_labels_shared": [] if shared_collections else generic,
        "shared_barcodes_in_shared_donors": 0,
        "train_cells_of_shared_donors": 0,
        "leaks": bool(shared_ids or donors),
    }


def describe(pair: dict) -> str:
    parts = []
    if pair["shared_dataset_ids"]:
        parts.append(f"same dataset ({', '.join(pair['shared_dataset_ids'])})")
    if pair["shared_donors"]:
        donors = pair["shared_donors"]
        parts.append(
            f"{len(donors)} shared donors ({', '.join(donors[:5])}{', …' if len(donors) > 5 else ''}), "
            f"{pair['train_cells_of_shared_donors']} training cells, "
            f"{pair['shared_barcodes_in_shared_donors']} identical barcodes"
        )
    if pair["shared_collection_ids"]:
        parts.append(f"same collection ({', '.join(pair['shared_collection_ids'])})")
    return "; ".join(parts)


def _check_entries(datasets: list[dict]) -> None:
    """Each entry names a dataset, its role and its QC'd file; there is at least one."""
    for i, d in enumerate(datasets):
        missing = [k for k in ("name", "role", "qc") if k not in d] if isinstance(d, dict) else ["name", "role", "qc"]
        if missing:
            raise ScencodeError(f"--datasets entry {i} lacks {', '.join(missing)} (each needs name, role, qc)")
        if d["role"] not in ("train", "eval"):
            raise ScencodeError(f"--datasets entry {i} ({d['name']}): role {d['role']!r}, not train or eval")
    if not datasets:
        raise ScencodeError("--datasets is empty: the audit compares training with evaluation datasets")


def run(datasets: list[dict], out: OutputFile, table: OutputFile, policy: str = "report") -> dict:
    """Audit training vs evaluation datasets for shared data. ``datasets``: JSON list of {name, role,
    qc, raw, source}; ``out``: the audit (JSON); ``table``: one row per pair (CSV, for the report);
    ``policy``: report | drop | error."""
    if policy not in POLICIES:
        raise ScencodeError(f"leakage policy {policy!r}: choose one of {', '.join(POLICIES)}")
    _check_entries(datasets)
    identities = [read_identity(d["name"], d["role"], d["qc"], d.get("raw"), d.get("source")) for d in datasets]
    result = audit(identities, policy)
    rows = [
        {
            "train": p["train"],
            "eval": p["eval"],
            "leaks": p["leaks"],
            "what": describe(p)
            or f"only generic donor labels in common ({', '.join(p['generic_donor_labels_shared'][:5])}): not counted",
        }
        for p in result["pairs"]
    ]
    with atomic_path(table, suffix=".csv") as tmp:
        pd.DataFrame(rows, columns=["train", "eval", "leaks", "what"]).to_csv(tmp, index=False)
    write_json(result, out)
    log.info(
        "leakage audit: %d of %d pairs share data; %d training cells dropped",
        result["pairs_leaking"],
        result["pairs_compared"],
        result["cells_dropped"],
    )
    return result
