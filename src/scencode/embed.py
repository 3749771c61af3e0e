"""Cell embeddings of a trained model on an evaluation corpus, and its masked reconstruction error.

Embedding = mean of final-layer token outputs over non-padded positions, the cell encoded as in
training: its genes sampled deterministically (the loader's seeded K-of-M at epoch 0; every gene
when K ≥ M) and a seeded p_mask of its expression values hidden, as the model always saw cells.
Written as Parquet (cell_id, label, batch, embedding) and as an .h5ad with the embedding in
``obsm["X_scencode"]`` for scanpy users.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .atomic import OutputFile
from .devices import autocast, autocast_dtype, default_device
from .errors import ScencodeError
from .formats import (
    RECONSTRUCTION_METRICS,
    model_checkpoint,
    write_embedding_files,
    write_missing_embedding,
    write_reconstruction_errors,
)
from .loader import LoaderConfig, ShardBatches
from .model import Batch, CellTransformer, load_model, masked_sse
from .shards import verify_corpus

log = logging.getLogger(__name__)
LABEL_COLUMNS = ("label", "batch")


def verify_model_corpus(checkpoint: str | Path, ckpt: dict, corpus: str | Path) -> dict:
    """The corpus's shards, checked, and tokenized with the vocabulary the model was trained on: a
    mismatch names the checkpoint, since the model is what fixes the token ids."""
    manifest = verify_corpus(corpus, checksums=False)
    if manifest["vocab_hash"] != ckpt["vocab_hash"]:
        raise ScencodeError(
            f"this model was trained on the vocabulary with hash {ckpt['vocab_hash'][:12]}… "
            f"({ckpt['model_config']['vocab_size']} tokens), but corpus {corpus} was tokenized with "
            f"{manifest['vocab_hash'][:12]}… ({manifest['vocab_size']} tokens): embed a corpus tokenized with the "
            "model's vocabulary, or retrain the model on this one (snakemake --forcerun pretrain)",
            checkpoint,
        )
    return manifest


def _autocast(device: torch.device):
    """Mixed precision on CUDA as in training (bf16, else fp16): embedding the study's 549k cells
    per configuration is GPU work; fp32 on the CPU."""
    return autocast(device, autocast_dtype("auto", device))


def _batches(corpus: Path, split: str | None, loader: LoaderConfig, mask: bool, columns=LABEL_COLUMNS):
    return ShardBatches(corpus, split, loader, epoch=0, shuffle=False, mask=mask, with_cell_ids=True, columns=columns)


@torch.no_grad()
def embed_corpus(
    checkpoint: str | Path,
    corpus: str | Path,
    loader: LoaderConfig,
    out_parquet: str | Path,
    out_h5ad: str | Path,
    run: str,
    dataset: str,
    split: str | None = None,
) -> dict:
    """Embeds every cell (of ``split``, if given: the training corpus's held-out test split is the
    in-distribution evaluation set) and measures the reconstruction errors in the same pass (one
    model load, one read of the shards). Returns the cell count, dimension and :func:`reconstruction`
    figures."""
    device = default_device()
    model, ckpt = load_model(checkpoint, device)
    verify_model_corpus(checkpoint, ckpt, corpus)
    ids, labels, batches, chunks = [], [], [], []
    errors = ReconstructionErrors(model.cfg.vocab_size, device)
    for batch in _batches(Path(corpus), split, loader, mask=True):
        on_device = batch.to(device)
        with _autocast(device):
            _, sse, _, emb = model(on_device, embeddings=True)  # one pass: the embedding and the loss as trained
            errors.add(model, on_device, sse)
        chunks.append(emb.float().cpu().numpy())
        ids += batch.meta["cell_id"]
        labels += batch.meta["label"]
        batches += batch.meta["batch"]
    if not chunks:
        raise ScencodeError(f"no cells to embed{f' in its {split} split' if split else ''}", corpus)
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
    return {"cells": len(ids), "dim": int(matrix.shape[1]), **errors.result()}


class ReconstructionErrors:
    """The context diagnostic, accumulated over batches of held-out cells with the loader's seeded
    masks: ``masked_mse`` (the model as trained), ``masked_mse_no_context`` (every expression value
    masked: the model sees only which genes the cell has) and ``gene_mean_mse`` (each masked token
    predicted by its gene's mean x̃ over the same masked tokens: an optimistic context-free
    reference). A model that learned only gene means sits at ``gene_mean_mse``."""

    def __init__(self, vocab_size: int, device: torch.device):
        self.sse = torch.zeros(2, dtype=torch.float64, device=device)
        self.gene = torch.zeros(3, vocab_size, dtype=torch.float64, device=device)  # n, Σx, Σx²
        self.tokens, self.cells = 0, 0

    def add(self, model: CellTransformer, batch: Batch, sse: torch.Tensor) -> None:
        """``sse``: the model's masked squared-error sum on this batch (``model(batch)[1]``)."""
        target = batch.masked & batch.real
        self.sse[0] += sse.double()
        # every expression value hidden; scored at the same masked positions
        blind = model(replace(batch, masked=batch.real))[0]
        self.sse[1] += masked_sse(blind, batch)[0].double()
        genes, x = batch.gene_ids[target], batch.xnorm[target].double()
        for row, values in enumerate((torch.ones_like(x), x, x * x)):
            self.gene[row].index_add_(0, genes, values)
        self.tokens += int(target.sum())
        self.cells += batch.n_cells

    def result(self) -> dict:
        if not self.tokens:
            return {
                "masked_mse": float("nan"),
                "masked_mse_no_context": float("nan"),
                "gene_mean_mse": float("nan"),
                "cells": self.cells,
                "masked_tokens": 0,
            }
        n, total, squares = self.gene
        gene_sse = (squares - total**2 / n.clamp(min=1)).sum()
        return {
            "masked_mse": float(self.sse[0] / self.tokens),
            "masked_mse_no_context": float(self.sse[1] / self.tokens),
            "gene_mean_mse": float(gene_sse / self.tokens),
            "cells": self.cells,
            "masked_tokens": self.tokens,
        }


@torch.no_grad()
def masked_mse(
    checkpoint: str | Path, corpus: str | Path, split: str | None, loader: LoaderConfig, max_cells: int | None = None
) -> dict:
    """:class:`ReconstructionErrors` of a checkpoint on one split of a corpus (epoch-0 masks)."""
    device = default_device()
    model, ckpt = load_model(checkpoint, device)
    verify_model_corpus(checkpoint, ckpt, corpus)
    errors = ReconstructionErrors(model.cfg.vocab_size, device)
    for batch in _batches(Path(corpus), split, loader, mask=True, columns=()):
        if max_cells and errors.cells >= max_cells:
            break
        with _autocast(device):
            on_device = batch.to(device)
            errors.add(model, on_device, model(on_device)[1])
    return errors.result()


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
) -> dict:
    """Cell embeddings of a model on an evaluation corpus (``out`` Parquet; ``h5ad`` the same for scanpy,
    needs anndata) and the context diagnostic on the same cells (``reconstruction`` JSON). ``model``:
    a run's model.json (no model: empty outputs that say why) or a checkpoint .pt; ``params``: the
    loader settings (context, batch_size, gene sampling, …); ``split``: only these cells of the corpus
    (``test``: the training corpus's held-out cells, the in-distribution set)."""
    from .settings import torch_threads

    torch_threads(threads)
    checkpoint, missing = model_checkpoint(model)
    if checkpoint is None:
        write_missing_embedding(missing, out, h5ad, run, dataset)
        info = {"cells": 0, **{metric: None for metric in RECONSTRUCTION_METRICS}, "missing": missing}
    else:
        info = embed_corpus(checkpoint, corpus, params, out, h5ad, run, dataset, split)
        log.info("%s on %s: %d cells embedded", run, dataset, info["cells"])
    write_reconstruction_errors(info, reconstruction)
    return info
