import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

from scencode.demo import DEMO_DATASETS, PBMC, make_demo_dataset, pbmc68k_counts


def test_demo_catalogue_has_the_training_and_evaluation_sets_the_study_needs():
    train = [s for n, s in DEMO_DATASETS.items() if not n.endswith("_eval")]
    evaluation = [s for n, s in DEMO_DATASETS.items() if n.endswith("_eval")]
    assert len(train) >= 4 and all(2000 <= s.n_cells <= 5000 for s in train)
    assert len(evaluation) >= 2 and all(s.n_batches >= 2 and len(s.cell_types) >= 5 for s in evaluation)
    assert len({s.tissue for s in DEMO_DATASETS.values()}) >= 3


def test_simulated_counts_are_seeded_integers_with_real_ensembl_ids(gene_table):
    a = make_demo_dataset("sim_kidney_1", seed=1, n_cells=300)
    b = make_demo_dataset("sim_kidney_1", seed=1, n_cells=300)
    c = make_demo_dataset("sim_kidney_1", seed=2, n_cells=300)
    assert (a.X != b.X).nnz == 0
    assert (a.X != c.X).nnz > 0
    assert np.all(a.X.data == np.rint(a.X.data)) and a.X.data.min() > 0
    assert gene_table.known_ids(a.var_names.to_series()).all()
    assert {"cell_type", "batch", "tissue"} <= set(a.obs.columns)


def test_simulation_has_cell_type_programs_batch_effects_and_damaged_cells():
    adata = make_demo_dataset("sim_lung_eval", n_cells=1500)
    x = sp.csr_matrix(adata.X)
    lib = np.asarray(x.sum(1)).ravel()
    logn = np.log1p(x.multiply(1e4 / lib[:, None]).toarray())
    # cells of one type resemble each other more than cells of other types
    types = adata.obs.cell_type.to_numpy()
    centroids = {t: logn[types == t].mean(0) for t in np.unique(types)}
    own = np.mean([np.linalg.norm(logn[i] - centroids[types[i]]) for i in range(200)])
    other = np.mean(
        [np.linalg.norm(logn[i] - centroids[[t for t in centroids if t != types[i]][0]]) for i in range(200)]
    )
    assert own < other
    # batches differ in depth and in gene-wise expression
    batch = adata.obs.batch.to_numpy()
    depth = [np.median(lib[batch == b]) for b in np.unique(batch)]
    assert max(depth) / min(depth) > 1.05
    # a few percent of cells have a high mitochondrial fraction
    mito = adata.var.feature_name.str.startswith("MT-").to_numpy()
    pct = np.asarray(x[:, mito].sum(1)).ravel() / lib
    assert 0.01 < (pct > 0.2).mean() < 0.1


def test_symbol_only_dataset_names_genes_by_symbols():
    adata = make_demo_dataset("sim_liver_1", n_cells=50)
    assert not adata.var_names.str.startswith("ENSG").any()
    assert adata.var_names.str.startswith("UNKNOWN-GENE").sum() == 5


def test_pbmc68k_counts_reproduce_the_bundled_log_normalised_values():
    counts = pbmc68k_counts()
    source = sc.datasets.pbmc68k_reduced()
    assert counts.shape == (700, 765) and counts.obs.bulk_labels.nunique() == 10
    x = sp.csr_matrix(counts.X)
    assert np.all(x.data == np.rint(x.data)) and x.data.min() >= 1
    # renormalising with each cell's unit reproduces .raw.X within its 3-decimal rounding
    raw = sp.csr_matrix(source.raw.X)
    unit = np.minimum.reduceat(np.expm1(raw.data), raw.indptr[:-1])
    recovered = np.log1p(x.toarray() * unit[:, None])
    assert np.abs(recovered - raw.toarray()).max() < 2e-3


def test_unknown_demo_name_lists_the_known_ones():
    with pytest.raises(Exception, match=PBMC):
        make_demo_dataset("no_such_dataset")
