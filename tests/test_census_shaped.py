"""The Census-shaped generator of the rehearsal (benchmarks/census_shaped.py): the feature space,
the genes per cell, the obs columns, long-tailed cell types and donors shared with evaluation, as
the paper's Census data have them."""

import importlib.util

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from helpers import REPO

spec = importlib.util.spec_from_file_location("census_shaped", REPO / "benchmarks" / "census_shaped.py")
census_shaped = importlib.util.module_from_spec(spec)
spec.loader.exec_module(census_shaped)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("census_shaped")
    result = census_shaped.main(["--out", str(out), "--limit", "2", "--train-scale", "0.004", "--eval-scale", "0.02"])
    sheets = {role: pd.read_csv(out / f"{role}.tsv", sep="\t", keep_default_na=False) for role in ("train", "eval")}
    return out, result, sheets


def test_the_feature_space_is_the_census_ones_60k_ids_protein_coding_and_not(generated):
    out, result, sheets = generated
    adata = ad.read_h5ad(sheets["eval"].source_id[0], backed="r")
    genes = pd.read_csv(
        census_shaped.packaged_file("genes_homo_sapiens_gencode48.csv.gz"), header=None, usecols=[0, 4]
    ).set_index(0)[4]
    ids = adata.var_names
    assert result["features"] == len(ids) == 60_000 and ids.is_unique and ids.str.startswith("ENSG").all()
    kinds = genes.reindex(ids)
    assert kinds.notna().all() and (kinds == "protein_coding").sum() == (genes == "protein_coding").sum()
    assert (kinds != "protein_coding").sum() > 30_000


def test_counts_are_raw_integers_with_census_like_genes_per_cell(generated):
    _, _, sheets = generated
    adata = ad.read_h5ad(sheets["eval"].source_id[0])
    x = adata.X
    assert np.array_equal(x.data, np.round(x.data)) and x.data.min() >= 1
    genes = np.diff(x.indptr)
    assert 1_500 <= np.median(genes) <= 2_500  # the Census's median is ~2,000
    assert np.percentile(genes, 99) > 2.5 * np.median(genes) and genes.max() <= 10_000  # a long tail, capped


def test_obs_holds_the_columns_the_workflow_reads_with_several_batches(generated):
    _, _, sheets = generated
    for role, sheet in sheets.items():
        for path in sheet.source_id:
            obs = ad.read_h5ad(path, backed="r").obs
            assert {"cell_type", "tissue_general", "assay", "donor_id", "dataset_id"} <= set(obs.columns)
            if role == "eval":
                assert obs["_10X_run"].nunique() >= 3  # several batches per dataset
            else:
                assert "_10X_run" not in obs and obs.donor_id.nunique() >= 2
    assert (sheets["train"].tissue == "").all() and (sheets["eval"].tissue != "").all()


def test_cell_types_are_long_tailed_with_some_below_the_evaluation_minimum(generated):
    _, _, sheets = generated
    counts = ad.read_h5ad(sheets["eval"].source_id[0], backed="r").obs.cell_type.value_counts()
    assert len(census_shaped.Generator(census_shaped.feature_space(), 120, 2000, 10_000, 0).markers) >= 100
    assert counts.iloc[0] > 10 * counts[counts > 0].iloc[-1]  # a head and a long tail
    assert (counts[counts > 0] < 10).sum() >= 5  # several types below min_cells_per_type (10)


def test_some_training_donors_are_evaluation_donors(generated):
    _, _, sheets = generated
    donors = {role: set() for role in sheets}
    for role, sheet in sheets.items():
        for path in sheet.source_id:
            donors[role] |= set(ad.read_h5ad(path, backed="r").obs.donor_id.astype(str))
    assert donors["train"] & donors["eval"]
