import json
import uuid

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from scencode.errors import ScencodeError
from scencode.leakage import audit, read_identity, run
from scencode.tokenize import DatasetInput, TokenizeParams, tokenize_corpus

TS_V1 = "e5f58829-1a66-40b5-a624-9046778e74f5"
TS_V2 = "10bf5c50-8d85-4c5f-94b4-22c1363d9f31"
OTHER = "0b9d8a04-bb9d-44da-aa27-705bb65b54eb"


def fake(folder, name, donors, barcodes=None, collection=None, dataset_id=None):
    """A QC'd file (obs with donor_id) and a 'raw' download carrying a CELLxGENE citation."""
    barcodes = barcodes or [f"{name}-{i}" for i in range(len(donors))]
    obs = pd.DataFrame({"donor_id": donors}, index=barcodes)
    if dataset_id:
        obs["dataset_id"] = dataset_id
    qc = ad.AnnData(np.ones((len(donors), 2), np.float32), obs=obs)
    qc.write_h5ad(folder / f"{name}.h5ad")
    raw = qc.copy()
    if collection:
        raw.uns["citation"] = (
            "Dataset Version: https://datasets.cellxgene.cziscience.com/"
            f"{uuid.uuid5(uuid.NAMESPACE_URL, name)}.h5ad curated and distributed by CZ CELLxGENE Discover "
            f"in Collection: https://cellxgene.cziscience.com/collections/{collection}"
        )
    raw.write_h5ad(folder / f"{name}_raw.h5ad")
    return {"name": name, "qc": str(folder / f"{name}.h5ad"), "raw": str(folder / f"{name}_raw.h5ad")}


def identities(tmp_path):
    train_ts1 = fake(
        tmp_path, "ts1_lung", ["TSP1", "TSP1", "TSP2", "TSP14"], ["AAAC", "AAAG", "CCCT", "GGGA"], collection=TS_V1
    )
    train_other = fake(tmp_path, "other", ["1", "2", "2"], collection=OTHER)
    eval_ts2 = fake(
        tmp_path, "ts2_lung", ["TSP14", "TSP14", "TSP30", "1"], ["GGGA", "TTTA", "CCCA", "ACGT"], collection=TS_V2
    )
    return [read_identity(d["name"], "train", d["qc"], d["raw"]) for d in (train_ts1, train_other)] + [
        read_identity(eval_ts2["name"], "eval", eval_ts2["qc"], eval_ts2["raw"])
    ]


def test_shared_donors_across_collections_are_found_and_generic_labels_are_not_counted(tmp_path):
    result = audit(identities(tmp_path))
    pairs = {(p["train"], p["eval"]): p for p in result["pairs"]}
    ts = pairs["ts1_lung", "ts2_lung"]  # Tabula Sapiens v1 and v2: other collections, the same donor
    assert ts["leaks"] and ts["shared_donors"] == ["TSP14"] and ts["shared_collection_ids"] == []
    assert ts["train_cells_of_shared_donors"] == 1 and ts["shared_barcodes_in_shared_donors"] == 1
    other = pairs["other", "ts2_lung"]  # donor "1" in two unrelated collections: listed, not counted
    assert not other["leaks"] and other["generic_donor_labels_shared"] == ["1"]
    assert result["pairs_leaking"] == 1 and result["drop"] == {}


def test_generic_donor_labels_count_within_one_collection_and_a_shared_dataset_drops_every_cell(tmp_path):
    a = fake(tmp_path, "a", ["1", "2"], collection=TS_V1)
    b = fake(tmp_path, "b", ["2", "3"], collection=TS_V1)
    c = fake(tmp_path, "c", ["x", "y"], dataset_id="ds-1")
    d = fake(tmp_path, "d", ["z"], dataset_id="ds-1")
    result = audit(
        [
            read_identity("a", "train", a["qc"], a["raw"]),
            read_identity("c", "train", c["qc"], c["raw"]),
            read_identity("b", "eval", b["qc"], b["raw"]),
            read_identity("d", "eval", d["qc"], d["raw"]),
        ],
        policy="drop",
    )
    assert result["drop"] == {"a": ["a-1"], "c": ["c-0", "c-1"]} and result["cells_dropped"] == 3


def test_error_policy_names_the_pairs(tmp_path):
    with pytest.raises(ScencodeError, match="ts1_lung ↔ ts2_lung: 1 shared donors \\(TSP14\\)"):
        audit(identities(tmp_path), policy="error")


def test_the_audit_is_written_and_drop_leaves_the_cells_out_of_training(tmp_path, demo_corpus):
    corpus, vocab = demo_corpus
    qc = corpus.parent / "sim_lung_1.h5ad"
    cells = ad.read_h5ad(qc, backed="r").obs_names[:40].tolist()
    (tmp_path / "leakage.json").write_text(json.dumps({"drop": {"sim_lung_1": cells}}))
    from scencode.formats import excluded_cells

    exclude = tuple(excluded_cells(tmp_path / "leakage.json", "sim_lung_1"))
    manifest = tokenize_corpus(
        "train",
        [DatasetInput("sim_lung_1", qc, exclude=exclude)],
        vocab,
        tmp_path / "train",
        TokenizeParams(cells_per_shard=1000, row_group_cells=50),
    )
    written = pq.read_table(next((tmp_path / "train").glob("part-*.parquet"))).column("cell_id").to_pylist()
    assert manifest["datasets"]["sim_lung_1"]["cells_excluded_leakage"] == 40
    assert not {f"sim_lung_1:{c}" for c in cells} & set(written)
    datasets = [{**fake(tmp_path, "t", ["TSP1"]), "role": "train"}, {**fake(tmp_path, "e", ["TSP1"]), "role": "eval"}]
    result = run(datasets, tmp_path / "leakage_out.json", tmp_path / "leakage.csv", policy="report")
    assert json.loads((tmp_path / "leakage_out.json").read_text())["pairs_leaking"] == result["pairs_leaking"] == 1
    assert pd.read_csv(tmp_path / "leakage.csv").what.str.contains("1 shared donors").all()


def test_datasets_without_a_donor_column_are_compared_by_ids_only(tmp_path):
    a = ad.AnnData(np.ones((3, 2), np.float32))
    a.write_h5ad(tmp_path / "a.h5ad")
    identity = read_identity("a", "train", tmp_path / "a.h5ad", tmp_path / "missing_raw.h5ad", {"dataset_id": "x"})
    assert identity.dataset_ids == {"x"} and identity.donors.is_empty()


def test_a_barcode_counts_as_the_same_cell_only_within_the_same_donor(tmp_path):
    """10x barcodes repeat across runs: AAAA of donor TSP14 and AAAA of donor TSP15 are two cells."""
    t = fake(tmp_path, "t", ["TSP14", "TSP15", "TSP14"], ["AAAA", "CCCC", "GGGG"], collection=TS_V1)
    e = fake(tmp_path, "e", ["TSP15", "TSP14", "TSP14"], ["AAAA", "CCCC", "GGGG"], collection=TS_V2)
    result = audit([read_identity("t", "train", t["qc"], t["raw"]), read_identity("e", "eval", e["qc"], e["raw"])])
    pair = result["pairs"][0]
    assert pair["shared_donors"] == ["TSP14", "TSP15"] and pair["train_cells_of_shared_donors"] == 3
    assert pair["shared_barcodes_in_shared_donors"] == 1  # GGGG, TSP14 in both
