"""Plain helpers the tests share (fixtures are in conftest.py): the repository root, real gene ids,
small count matrices and AnnData objects, and what an interrupted atomic write leaves behind."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scencode.formats import RunIdentity, metric_table

REPO = Path(__file__).resolve().parents[1]
# the rules whose jobs need a GPU where the cluster has them (the workflow's resources must say so)
GPU_RULES = ("esm_embeddings", "pretrain", "embed", "reconstruction")

# Real Ensembl ids / symbols used across tests (GENCODE 48)
GENES = {
    "TP53": "ENSG00000141510",
    "GAPDH": "ENSG00000111640",
    "ACTB": "ENSG00000075624",
    "CD3E": "ENSG00000198851",
    "MS4A1": "ENSG00000156738",
    "MT-CO1": "ENSG00000198804",
    "MT-ND1": "ENSG00000198888",
    "ALB": "ENSG00000163631",
}


def make_counts(n_cells: int = 60, n_genes: int = len(GENES), seed: int = 0, mean: float = 40.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(mean, (n_cells, n_genes)).astype(np.float32)


def tiny_adata(counts: np.ndarray | None = None, by_symbol: bool = False, **obs_columns) -> ad.AnnData:
    counts = make_counts() if counts is None else counts
    symbols = list(GENES)[: counts.shape[1]]
    ids = [GENES[s] for s in symbols]
    obs = pd.DataFrame(obs_columns, index=[f"cell{i}" for i in range(counts.shape[0])])
    var = pd.DataFrame(index=symbols if by_symbol else ids)
    return ad.AnnData(sp.csr_matrix(counts), obs=obs, var=var)


def leftovers(folder: Path) -> list[str]:
    """Temporary files an interrupted atomic write would leave behind."""
    return [p.name for p in Path(folder).rglob("*") if ".tmp" in p.name]


def write_status(folder: Path, configuration: str = "learned-soft-s0", **overrides) -> Path:
    """A run's model.json as pretraining writes it (a completed run with best.pt), with overrides."""
    from scencode.formats import RunStatus, write_run_status

    gene, expression, seed = configuration.split("-")[0], configuration.split("-")[1], 0
    status = RunStatus(
        configuration=configuration,
        gene_encoding=gene,
        expression_encoding=expression,
        seed=seed,
        status="completed",
        steps=3,
        total_steps=3,
        train_cells={"requested": "all", "cells": 100},
        steps_per_epoch=3,
        best_val_loss=0.5,
        checkpoint="best.pt",
        checkpoint_step=3,
        final_val_loss=0.5,
        still_improving=True,
        warnings=[],
        calibration={},
        ranks={"world_size": 1},
        component_rms={"start": {}, "end": {}},
        cost={},
    )
    path = Path(folder) / "model.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_run_status(RunStatus(**{**status.__dict__, **overrides}), path)
    return path


def blobs(n_types=4, n_batches=2, n=400, seed=0, separation=6.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_types, n)
    batches = rng.integers(0, n_batches, n)
    x = rng.normal(size=(n, 8)) + separation * np.eye(8)[labels % 8]
    return x.astype(np.float32), np.array([f"type{label}" for label in labels]), np.array([f"b{b}" for b in batches])


def values(rows):
    return rows.set_index(["group", "metric"]).value


def synthetic_metrics(n_datasets=6):
    rng = np.random.default_rng(0)
    frames = []
    for gene, offset in (("learned", 0.1), ("esm2", 0.0)):
        for expr, level in (("soft", 0.7), ("hard", 0.4)):
            for d in range(n_datasets):
                rows = pd.DataFrame(
                    {
                        "metric": ["batch_score", "bio_score", "accuracy", "macro_f1"],
                        "group": ["study", "study", "knn_k10", "knn_k10"],
                        "value": level + offset + rng.normal(0, 0.02, 4),
                        "note": "",
                    }
                )
                frames.append(metric_table(rows, RunIdentity(f"{gene}-{expr}-s0", gene, expr, 0), f"ds{d}"))
            recon = pd.DataFrame(
                {
                    "metric": ["min_train_mse", "test_mse"],
                    "group": "reconstruction",
                    "value": [0.05 - offset / 10, 0.06],
                    "note": "",
                }
            )
            frames.append(metric_table(recon, RunIdentity(f"{gene}-{expr}-s0", gene, expr, 0), "*"))
    return pd.concat(frames, ignore_index=True)


def with_a_configuration_without_a_model(metrics):
    gone = metrics[metrics.configuration == "esm2-hard-s0"].assign(
        configuration="esm2-log-s0", expression_encoding="log", value=np.nan, note="no model for esm2-log-s0"
    )
    return pd.concat([metrics, gone], ignore_index=True)


def mean_masked_mse(model, batch):
    """The training objective of one batch: squared error over its masked real positions, averaged."""
    _, sse, n = model(batch)
    return sse / n.clamp(min=1)


def cell_embeddings(model, batch):
    """Each cell's embedding, as evaluation computes it (model(batch, embeddings=True))."""
    import torch

    with torch.no_grad():
        return model(batch, embeddings=True)[3]
