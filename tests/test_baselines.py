"""The baselines every configuration is compared with (``scencode.baselines``), on real PBMC counts."""

import numpy as np
import pytest
from helpers import values

from scencode.baselines import pca_baseline
from scencode.demo import pbmc68k_counts
from scencode.errors import ScencodeError
from scencode.evaluate import EvalParams, evaluate_embedding

PARAMS = EvalParams(min_cells_per_type=20)


def test_pca_of_real_pbmc_counts_beats_a_random_embedding():
    adata = pbmc68k_counts()
    labels, batches = adata.obs.bulk_labels.astype(str).to_numpy(), np.full(adata.n_obs, "pbmc")
    pca = values(evaluate_embedding(pca_baseline(adata), labels, batches, PARAMS))
    noise = values(evaluate_embedding(np.random.default_rng(0).normal(size=(adata.n_obs, 32)), labels, batches, PARAMS))
    assert pca["study", "bio_score"] > noise["study", "bio_score"] + 0.1
    assert pca["knn_k10", "accuracy"] > noise["knn_k10", "accuracy"] + 0.2


def test_scvi_baseline_of_real_pbmc_counts_beats_a_random_embedding(tmp_path):
    pytest.importorskip("scvi", reason="the optional scvi extra (scvi-tools) is not installed")
    from scencode.baselines import baseline_embedding

    adata = pbmc68k_counts()
    adata.obs["run"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    adata.uns["scencode_qc"] = {"counts": "X"}  # stands in for a QC output (the counts are raw integers)
    adata.write_h5ad(tmp_path / "pbmc.h5ad")
    cells, latent = baseline_embedding(
        "scvi", tmp_path / "pbmc.h5ad", "pbmc", "bulk_labels", "run", seed=0, scvi_epochs=30
    )
    assert latent.shape == (adata.n_obs, 10) and np.isfinite(latent).all()
    assert cells.cell_id.iloc[0] == f"pbmc:{adata.obs_names[0]}"
    labels = cells.label.to_numpy()
    scvi = values(evaluate_embedding(latent, labels, cells.batch.to_numpy(), PARAMS))
    noise = values(
        evaluate_embedding(np.random.default_rng(0).normal(size=latent.shape), labels, cells.batch.to_numpy(), PARAMS)
    )
    assert scvi["knn_k10", "accuracy"] > noise["knn_k10", "accuracy"] + 0.2


def test_scvi_baseline_without_scvi_tools_says_how_to_install(tmp_path, monkeypatch):
    import builtins

    from scencode.baselines import scvi_baseline

    real_import = builtins.__import__
    monkeypatch.setattr(
        builtins,
        "__import__",
        lambda name, *a, **k: (
            (_ for _ in ()).throw(ImportError(name)) if name == "scvi" else real_import(name, *a, **k)
        ),
    )
    with pytest.raises(ScencodeError, match=r"pip install 'scencode\[scvi\]'"):
        scvi_baseline(pbmc68k_counts(), None)
