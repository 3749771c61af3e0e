"""Cell embeddings of a trained model on an evaluation corpus, and its masked reconstruction error.

Embedding = mean of final-layer token outputs over non-padded positions, the cell encoded as in
training: its genes sampled deterministically (the loader's seeded K-of-M at epoch 0; every gene
when K ≥ M) and a seeded p_mask of its expression values hidden, as the model always saw cells.
Written as Parquet (cell_id, label, batch, embedding) and as an .h5ad with the embedding in
``obsm["X_scencode"]`` for scanpy users.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .atomic import OutputFile
from .devices import default_device
from .diagnostic import ReconstructionErrors, held_out_batches, model_autocast, verify_model_corpus
from .errors import ScencodeError
from .formats import (
    RECONSTRUCTION_METRICS,
    model_checkpoint,
    write_embedding_files,
    write_missing_embedding,
    write_reconstruction_errors,
)
from .loader import LoaderConfig
from .model import load_model

log = logging.getLogger(__name__)
UNSEEN_GENES = ("leave_out", "include")  # a model's unseen genes at evaluation: as trained, or in the input


@torch.no_grad()
def embed_corpus(
    checkpoint: str | Path,
    corpus: str | Path,
    loader: LoaderConfig,
    out_parquet: str | Path,
    out_h5ad: str | Path | None,
    run: str,
    dataset: str,
    split: str | None = None,
    unseen_genes: str = "leave_out",
) -> dict:
    """Embeds every cell (of ``split``, if given: the training corpus's held-out test split is the
    in-distribution evaluation set) and measures the reconstruction errors in the same pass (one
    model load, one read of the shards). Returns the cell count, dimension and the diagnostic
    (:class:`~scencode.diagnostic.ReconstructionErrors`; with unseen genes included, also on the
    seen and the unseen genes apart)."""
    if unseen_genes not in UNSEEN_GENES:
        raise ScencodeError(f"--unseen-genes must be one of {', '.join(UNSEEN_GENES)}, got {unseen_genes!r}")
    device = default_device()
    model, ckpt = load_model(checkpoint, device)
    verify_model_corpus(checkpoint, ckpt, corpus)
    ids, labels, batches, chunks = [], [], [], []
    errors = ReconstructionErrors(model.cfg.vocab_size, device)
    leave_out = model.unseen_genes if unseen_genes == "leave_out" else None
    for batch in held_out_batches(Path(corpus), split, loader, mask=True, drop_genes=leave_out):
        on_device = batch.to(device)
        with model_autocast(device):
            pred, _, _, emb = model(on_device, embeddings=True)  # one pass: the embedding and the loss as trained
            errors.add(model, on_device, pred)
        chunks.append(emb.float().cpu().numpy())
        ids += batch.meta["cell_id"]
        labels += batch.meta["label"]
        batches += batch.meta["batch"]
    if not chunks and split:  # a small corpus's held-out split may hold no cell (test_fraction × cells < 1)
        reason = f"no cells in the training corpus's {split} split"
        write_missing_embedding(reason, out_parquet, out_h5ad, run, dataset)
        return {"cells": 0, **{metric: None for metric in RECONSTRUCTION_METRICS}, "missing": reason}
    if not chunks:
        raise ScencodeError("no cells to embed", corpus)
    matrix = np.concatenate(chunks)
    if not np.isfinite(matrix).all():
        raise ScencodeError(
            f"model {run} gives NaN or infinite embeddings on {dataset} "
            f"({int((~np.isfinite(matrix)).any(1).sum())} cells)",
            checkpoint,
        )
    obs = pd.DataFrame({"label": labels, "batch": batches}, index=pd.Index(ids, name="cell_id"))
    obs["label"] = obs.label.fillna("")  # cells of a dataset without labels: unlabeled, left out of the scores
    write_embedding_files(obs, matrix, out_parquet, out_h5ad, run, dataset)
    unseen = None if leave_out is not None else model.unseen_genes
    foreign = model.foreign_genes if bool(model.foreign_genes.any()) else None  # another organism's genes
    diagnostic = errors.result(unseen, foreign)
    return {"cells": len(ids), "dim": int(matrix.shape[1]), **diagnostic, "unseen_genes": unseen_genes}


def run(
    model: Path,
    corpus: Path,
    run: str,
    dataset: str,
    out: OutputFile,
    reconstruction: OutputFile,
    params: LoaderConfig,
    h5ad: OutputFile | None = None,
    threads: int | None = None,
    split: str | None = None,
    unseen_genes: str = "leave_out",
) -> dict:
    """Cell embeddings of a model on an evaluation corpus (``out`` Parquet; ``h5ad`` the same for scanpy,
    needs anndata) and the context diagnostic on the same cells (``reconstruction`` JSON). ``model``:
    a run's model.json (no model: empty outputs that say why) or a checkpoint .pt; ``params``: the
    loader settings (context, batch_size, gene sampling, …); ``split``: only these cells of the corpus
    (``test``: the training corpus's held-out cells, the in-distribution set); ``unseen_genes``: the
    genes the model was trained without (``pretrain.unseen_genes``) ``leave_out`` of every cell, as
    in training (the study's protocol), or ``include`` in the input."""
    from .settings import torch_threads

    torch_threads(threads)
    checkpoint, missing = model_checkpoint(model)
    if checkpoint is None:
        write_missing_embedding(missing, out, h5ad, run, dataset)
        info = {"cells": 0, **{metric: None for metric in RECONSTRUCTION_METRICS}, "missing": missing}
    else:
        info = embed_corpus(checkpoint, corpus, params, out, h5ad, run, dataset, split, unseen_genes)
        log.info("%s on %s: %d cells embedded", run, dataset, info["cells"])
    write_reconstruction_errors(info, reconstruction)
    return info
