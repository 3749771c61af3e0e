"""Baseline embeddings of an evaluation dataset from its QC'd counts, scored by exactly the same
evaluate step as the models: ``pca`` (scanpy: HVGs, log1p, PCA; also the unintegrated reference of
scib-metrics' PCR comparison), ``random`` (seeded Gaussian noise: the floor) and ``scvi`` (scvi-tools,
batch as covariate: the integration baseline the field compares against)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import OutputFile
from .errors import ScencodeError
from .formats import write_embedding

log = logging.getLogger(__name__)


def pca_baseline(adata, n_hvg: int = 2000, n_comps: int = 50, seed: int = 0) -> np.ndarray:
    """PCA of log-normalised highly variable genes (scanpy), from raw counts."""
    import scanpy as sc

    adata = adata.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=min(n_hvg, adata.n_vars))
    adata = adata[:, adata.var.highly_variable].copy()
    n_comps = min(n_comps, adata.n_vars - 1, adata.n_obs - 1)
    sc.pp.pca(adata, n_comps=n_comps, random_state=seed)
    return adata.obsm["X_pca"]


def scvi_baseline(
    adata, batch_key: str | None, seed: int = 0, n_hvg: int = 2000, n_latent: int = 10, max_epochs: int | None = None
) -> np.ndarray:
    """scVI's latent space (scvi-tools) from raw counts of the top highly variable genes, with the
    batch as covariate: the integration baseline the field compares against. ``max_epochs``
    None: scvi-tools' own default for the dataset size."""
    try:
        import scvi
    except ImportError:
        raise ScencodeError("the scvi baseline needs scvi-tools: pip install 'scencode[scvi]'") from None
    import scanpy as sc

    scvi.settings.seed = seed
    adata = adata.copy()
    sc.pp.highly_variable_genes(adata, n_top_genes=min(n_hvg, adata.n_vars), flavor="seurat_v3", subset=True)
    scvi.model.SCVI.setup_anndata(adata, batch_key=batch_key)
    model = scvi.model.SCVI(adata, n_latent=n_latent)
    model.train(max_epochs=max_epochs, enable_progress_bar=False)
    return model.get_latent_representation()


BASELINES = ("pca", "random", "scvi")


def baseline_embedding(
    kind: str,
    qc_path,
    dataset: str,
    label_key: str,
    batch_key: str | None,
    seed: int = 0,
    scvi_epochs: int | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Baselines through the same metrics: ``pca`` (log-normalised HVGs), ``scvi`` (scVI's latent
    space, optional extra) or ``random`` (Gaussian noise, the floor every embedding should beat)."""
    from .h5ad import read_qc_h5ad

    if kind not in BASELINES:
        raise ScencodeError(f"unknown baseline {kind!r}; choose one of {', '.join(BASELINES)}")
    adata = read_qc_h5ad(qc_path, (label_key, batch_key))
    cells = pd.DataFrame(
        {
            "cell_id": dataset + ":" + adata.obs_names.astype(str),
            "label": adata.obs[label_key].astype(str).to_numpy(),
            "batch": adata.obs[batch_key].astype(str).to_numpy() if batch_key else dataset,
        }
    )
    if kind == "pca":
        return cells, pca_baseline(adata, seed=seed).astype(np.float32)
    if kind == "scvi":
        return cells, scvi_baseline(adata, batch_key, seed, max_epochs=scvi_epochs).astype(np.float32)
    return cells, np.random.default_rng(seed).normal(size=(adata.n_obs, 32)).astype(np.float32)


def run(
    kind: str,
    qc: Path,
    dataset: str,
    label_key: str,
    out: OutputFile,
    batch_key: str | None = None,
    seed: int = 0,
    scvi_epochs: int | None = None,
) -> None:
    """A baseline embedding (``kind``: pca | random | scvi) of one evaluation dataset, as an embedding
    table at ``out``."""
    cells, matrix = baseline_embedding(kind, qc, dataset, label_key, batch_key, seed, scvi_epochs=scvi_epochs)
    write_embedding(cells, matrix, out)
    log.info("%s baseline of %s: %d cells, dimension %d", kind, dataset, len(cells), matrix.shape[1])
