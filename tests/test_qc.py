import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from helpers import GENES, leftovers, make_counts, tiny_adata

from scencode.errors import ScencodeError
from scencode.qc import QCParams, run_qc

LOOSE = dict(min_genes=1, min_counts=1, max_pct_mito=100, min_cells_per_gene=1)


def qc(tmp_path, adata_or_path, gene_table, name="d", **params):
    src = adata_or_path
    if isinstance(adata_or_path, ad.AnnData):
        src = tmp_path / f"{name}_raw.h5ad"
        adata_or_path.write_h5ad(src)
    out, report = tmp_path / "qc" / f"{name}.h5ad", tmp_path / "qc" / f"{name}.json"
    result = run_qc(src, out, report, gene_table, QCParams(**params), name)
    return ad.read_h5ad(out), result


def test_cell_filters_match_scanpy_qc_metrics(tmp_path, gene_table):
    rng = np.random.default_rng(1)
    counts = rng.poisson(rng.uniform(0.5, 30, (200, 1)), (200, len(GENES))).astype(np.float32)
    counts[:20, 5:7] *= 40  # a few cells full of mitochondrial reads
    adata = tiny_adata(counts)
    ref = adata.copy()
    ref.var["mt"] = [s.startswith("MT-") for s in GENES]
    sc.pp.calculate_qc_metrics(ref, qc_vars=["mt"], inplace=True, percent_top=None)
    expected = (ref.obs.n_genes_by_counts >= 7) & (ref.obs.total_counts >= 60) & (ref.obs.pct_counts_mt <= 30)
    out, report = qc(tmp_path, adata, gene_table, min_genes=7, min_counts=60, max_pct_mito=30, min_cells_per_gene=1)
    assert out.obs_names.tolist() == ref.obs_names[expected.to_numpy()].tolist()
    np.testing.assert_allclose(out.obs.pct_mito, ref.obs.pct_counts_mt[expected], rtol=1e-5)
    assert report["cells"]["out"] == expected.sum() and report["cells"]["failing_each_filter"]["max_pct_mito"] > 0
    assert json.loads((tmp_path / "qc" / "d.json").read_text()) == json.loads(json.dumps(report))


def test_symbols_are_mapped_and_duplicates_summed(tmp_path, gene_table):
    counts = make_counts(n_genes=4)
    adata = tiny_adata(counts, by_symbol=True)  # TP53 GAPDH ACTB CD3E
    # a second TP53 column under its id-less alias, and a name no table knows
    adata = ad.concat(
        [
            adata,
            ad.AnnData(
                sp.csr_matrix(counts[:, :2]), obs=adata.obs, var=pd.DataFrame(index=["TP53_copy", "NOT-A-GENE"])
            ),
        ],
        axis=1,
    )
    adata.var_names = ["TP53", "GAPDH", "ACTB", "CD3E", "TP53", "NOT-A-GENE"]
    out, report = qc(tmp_path, adata, gene_table, **LOOSE)
    assert list(out.var_names) == sorted([GENES["TP53"], GENES["GAPDH"], GENES["ACTB"], GENES["CD3E"]])
    tp53 = out[:, GENES["TP53"]].X.toarray().ravel()
    np.testing.assert_array_equal(tp53, counts[:, 0] * 2)
    assert report["genes"]["unmatched"] == 1 and report["genes"]["duplicates_merged"] == 1
    assert out.var.loc[GENES["TP53"], "gene_symbol"] == "TP53"


def test_ensembl_ids_are_taken_from_a_var_column_and_versions_stripped(tmp_path, gene_table):
    adata = tiny_adata(by_symbol=True)
    adata.var["gene_ids"] = [f"{GENES[s]}.7" for s in adata.var_names]
    out, report = qc(tmp_path, adata, gene_table, **LOOSE)
    assert set(out.var_names) == set(GENES.values())
    assert report["genes"]["gene_id_source"] == "var column gene_ids"


def test_counts_are_found_in_raw_when_x_is_log_normalised(tmp_path, gene_table):
    adata = tiny_adata()
    adata.raw = adata.copy()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    out, report = qc(tmp_path, adata, gene_table, **LOOSE)
    assert report["counts_source"] == "raw/X"
    np.testing.assert_array_equal(out.X.toarray(), adata.raw.X.toarray()[:, np.argsort(adata.var_names)])


def test_counts_layer_is_used_when_named(tmp_path, gene_table):
    adata = tiny_adata()
    adata.layers["umis"] = adata.X.copy()
    adata.X = sp.csr_matrix(adata.X.toarray() * 0.5 + 0.25)
    _, report = qc(tmp_path, adata, gene_table, counts="layers/umis", **LOOSE)
    assert report["counts_source"] == "layers/umis"


@pytest.mark.parametrize(
    "transform, message",
    [
        (lambda x: np.log1p(x), "log-normalised"),
        (lambda x: (x - x.mean(0)) / x.std(0), "scaled"),
    ],
)
def test_non_count_matrices_are_rejected_and_nothing_is_written(tmp_path, gene_table, transform, message):
    adata = tiny_adata()
    adata.X = sp.csr_matrix(transform(adata.X.toarray()))
    with pytest.raises(ScencodeError, match=message) as err:
        qc(tmp_path, adata, gene_table, **LOOSE)
    assert "d_raw.h5ad" in str(err.value)
    assert not (tmp_path / "qc").exists() or list((tmp_path / "qc").iterdir()) == []


def test_blockwise_processing_gives_the_same_result(tmp_path, gene_table):
    adata = tiny_adata(make_counts(n_cells=101, mean=3.0))
    a, _ = qc(
        tmp_path,
        adata,
        gene_table,
        name="big",
        min_genes=3,
        min_counts=10,
        min_cells_per_gene=5,
        max_pct_mito=40,
        chunk_cells=1000,
    )
    b, _ = qc(
        tmp_path,
        adata,
        gene_table,
        name="small",
        min_genes=3,
        min_counts=10,
        min_cells_per_gene=5,
        max_pct_mito=40,
        chunk_cells=7,
    )
    assert a.obs_names.tolist() == b.obs_names.tolist() and a.var_names.tolist() == b.var_names.tolist()
    assert (a.X != b.X).nnz == 0 and a.X.has_sorted_indices


def test_missing_file_and_non_h5ad_are_named(tmp_path, gene_table):
    with pytest.raises(ScencodeError, match="absent.h5ad: file not found"):
        qc(tmp_path, tmp_path / "absent.h5ad", gene_table)
    bad = tmp_path / "table.h5ad"
    bad.write_text("cell,gene\n")
    with pytest.raises(ScencodeError, match="table.h5ad: not an h5ad file"):
        qc(tmp_path, bad, gene_table)


def test_empty_dataset_is_rejected(tmp_path, gene_table):
    with pytest.raises(ScencodeError, match="empty dataset"):
        qc(tmp_path, tiny_adata(make_counts(n_cells=0)), gene_table)


def test_qc_removing_every_cell_is_an_error(tmp_path, gene_table):
    with pytest.raises(ScencodeError, match="QC removed every one of 60 cells"):
        qc(tmp_path, tiny_adata(), gene_table, min_counts=10**6)
    assert leftovers(tmp_path) == [] and not (tmp_path / "qc" / "d.h5ad").exists()


def test_missing_label_column_on_evaluation_dataset(tmp_path, gene_table):
    with pytest.raises(ScencodeError, match="label column 'cell_type' is missing from obs"):
        qc(tmp_path, tiny_adata(batch=["a"] * 60), gene_table, label_key="cell_type", batch_key="batch")


def test_gene_names_matching_nothing_are_rejected(tmp_path, gene_table):
    adata = tiny_adata(by_symbol=True)
    adata.var_names = [f"GENE{i}" for i in range(adata.n_vars)]
    with pytest.raises(ScencodeError, match="no gene matches the gene table"):
        qc(tmp_path, adata, gene_table)


@pytest.mark.parametrize(
    "bad, message",
    [(np.inf, "has non-finite values"), (np.nan, "has non-finite values"), (3e9, "has counts beyond 16,777,216")],
)
def test_non_finite_or_huge_counts_are_refused_naming_the_matrix_and_position(tmp_path, gene_table, bad, message):
    counts = make_counts()
    counts[7, 3] = bad
    tiny_adata(counts).write_h5ad(tmp_path / "in.h5ad")
    with pytest.raises(ScencodeError, match=f"X {message} \\(1 entries, e.g. .* at row 7, column 3\\)"):
        run_qc(tmp_path / "in.h5ad", tmp_path / "out.h5ad", tmp_path / "out.json", gene_table, QCParams(), "d")
    assert not (tmp_path / "out.h5ad").exists() and not (tmp_path / "out.json").exists()


def test_repeated_cell_names_are_renamed_and_reported(tmp_path, gene_table):
    adata = tiny_adata()
    names = adata.obs_names.to_numpy().copy()
    names[1] = names[2] = names[0]
    adata.obs_names = names
    out, report = qc(tmp_path, adata, gene_table, **LOOSE)
    assert out.obs_names.is_unique
    renamed = report["cells"]["duplicate_names_renamed"]
    assert renamed == {"count": 2, "examples": [names[0]]}
    assert {f"{names[0]}-dup1", f"{names[0]}-dup2"} <= set(out.obs_names)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"chunk_cells": 0}, "qc.chunk_cells must be ≥ 1"),
        ({"min_genes": "many"}, "min_genes='many': expected int"),
        ({"max_pct_mito": 150}, "percentage"),
        ({"counts": "layer/counts"}, "choose auto, X, raw or layers/<name>"),
        ({"min_genes": True}, "expected int"),
    ],
)
def test_settings_that_bypass_the_schema_are_named(params, message):
    from scencode.settings import parse

    with pytest.raises(ScencodeError, match=message):
        parse(QCParams, params)


def test_the_report_records_the_kept_cells_tissues(tmp_path, gene_table):
    """The shift levels come from the data (tissue_general, as the Census has it), counted over the
    cells QC keeps."""
    tissues = ["lung"] * 40 + ["blood"] * 19 + [None]
    keep_all = {"min_genes": 0, "min_counts": 0, "min_cells_per_gene": 0, "max_pct_mito": 100}
    _, report = qc(tmp_path, tiny_adata(tissue_general=tissues), gene_table, **keep_all)
    assert report["tissues"] == {"blood": 19, "lung": 40}
    assert qc(tmp_path, tiny_adata(), gene_table, name="none", **keep_all)[1]["tissues"] == {}
