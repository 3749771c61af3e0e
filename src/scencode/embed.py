"""Cell embeddings of a trained model on an evaluation corpus, and its masked reconstruction error.

Embedding = mean of final-layer token outputs over non-padded positions, with the cell's genes
sampled deterministically (the loader's seeded K-of-M at epoch 0; every gene when K ≥ M).
Written as Parquet (cell_id, label, batch, embedding) and as an .h5ad with the embedding in
``obsm["X_scencode"]`` for scanpy users.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .atomic import atomic_path
from .data import LoaderConfig, ShardBatches
from .errors import ScencodeError
from .evaluate import write_embedding
from .model import CellTransformer, ModelConfig, masked_sse, n_cells, real_positions
from .shards import verify_corpus
from .train import TrainConfig, load_checkpoint, precision

log = logging.getLogger(__name__)
LABEL_COLUMNS = ("label", "batch")


def model_checkpoint(model: str | Path) -> tuple[Path | None, str]:
    """The checkpoint to evaluate, or None and why. ``model`` is a run's ``model.json`` (the
    workflow: a run may end without a usable model, which evaluation reports rather than fails on)
    or a checkpoint file (direct use: a missing file is an error)."""
    model = Path(model)
    if model.suffix != ".json":
        if not model.exists():
            raise ScencodeError("model checkpoint not found", model)
        return model, ""
    try:
        status = json.loads(model.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ScencodeError(f"not a readable model status file ({exc})", model) from exc
    name = status.get("configuration", model.parent.name)
    if not status.get("checkpoint"):
        return None, f"no model for {name}: {status.get('note') or 'training wrote no checkpoint'}"
    checkpoint = model.parent / status["checkpoint"]
    if not checkpoint.exists():
        return None, (f"no model for {name}: {checkpoint} is missing (model.json lists it); "
                      f"retrain with --forcerun pretrain")
    return checkpoint, ""


def load_model(checkpoint: str | Path, device: torch.device) -> tuple[CellTransformer, dict]:
    ckpt = load_checkpoint(Path(checkpoint))
    if "model_config" not in ckpt:
        raise ScencodeError("not a scencode model checkpoint (no model_config)", checkpoint)
    cfg = ModelConfig(**ckpt["model_config"])
    table = ckpt["model"].get("genes.table")  # frozen gene tables travel in the state dict
    model = CellTransformer(cfg, gene_table=table)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(device: torch.device):
    """Mixed precision on CUDA as in training (bf16, else fp16): embedding the study's 549k cells
    per configuration is GPU work; fp32 on the CPU, where autocast would only slow it down."""
    dtype = precision(TrainConfig(precision="auto"), device)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _batches(corpus: Path, split: str | None, loader: LoaderConfig, mask: bool, columns=LABEL_COLUMNS):
    return ShardBatches(corpus, split, loader, epoch=0, shuffle=False, mask=mask, with_cell_ids=True,
                        columns=columns)


@torch.no_grad()
def embed_corpus(checkpoint: str | Path, corpus: str | Path, loader: LoaderConfig, out_parquet: str | Path,
                 out_h5ad: str | Path, config_name: str, dataset: str) -> dict:
    """Embeds every cell and measures the reconstruction errors in the same pass (one model load,
    one read of the shards). Returns the cell count, dimension and :func:`reconstruction` figures."""
    device = default_device()
    model, ckpt = load_model(checkpoint, device)
    verify_corpus(corpus, checksums=False, vocab_hash=ckpt["vocab_hash"])
    ids, labels, batches, chunks = [], [], [], []
    errors = ReconstructionErrors(model.cfg.vocab_size, device)
    for batch in _batches(Path(corpus), None, loader, mask=True):
        tensors = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
        with _autocast(device):
            emb = model.cell_embeddings(tensors)
            errors.add(model, tensors)
        chunks.append(emb.float().cpu().numpy())
        ids += batch["cell_id"]
        labels += batch["label"]
        batches += batch["batch"]
    matrix = np.concatenate(chunks)
    if not np.isfinite(matrix).all():
        raise ScencodeError(f"model {config_name} gives NaN or infinite embeddings on {dataset} "
                            f"({int((~np.isfinite(matrix)).any(1).sum())} cells)", checkpoint)
    obs = pd.DataFrame({"label": labels, "batch": batches}, index=pd.Index(ids, name="cell_id"))
    write_embedding_files(obs, matrix, out_parquet, out_h5ad, config_name, dataset)
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

    def add(self, model: CellTransformer, batch: dict) -> None:
        real = real_positions(batch)
        target = batch["masked"] & real
        self.sse[0] += masked_sse(model(batch), batch)[0].double()
        self.sse[1] += masked_sse(model({**batch, "masked": real}), batch)[0].double()
        genes, x = batch["gene_ids"][target], batch["xnorm"][target].double()
        for row, values in enumerate((torch.ones_like(x), x, x * x)):
            self.gene[row].index_add_(0, genes, values)
        self.tokens += int(target.sum())
        self.cells += n_cells(batch)

    def result(self) -> dict:
        if not self.tokens:
            return {"masked_mse": float("nan"), "masked_mse_no_context": float("nan"),
                    "gene_mean_mse": float("nan"), "cells": self.cells, "masked_tokens": 0}
        n, total, squares = self.gene
        gene_sse = (squares - total ** 2 / n.clamp(min=1)).sum()
        return {"masked_mse": float(self.sse[0] / self.tokens), "masked_mse_no_context": float(self.sse[1] / self.tokens),
                "gene_mean_mse": float(gene_sse / self.tokens), "cells": self.cells, "masked_tokens": self.tokens}


def write_embedding_files(obs: pd.DataFrame, matrix: np.ndarray, out_parquet, out_h5ad, config_name: str,
                          dataset: str, missing: str = "") -> None:
    """Parquet and .h5ad of one embedding; ``missing`` (no model) writes empty ones that carry the reason."""
    write_embedding(obs.reset_index(), matrix, out_parquet, missing=missing)
    if out_h5ad is None:
        return
    import anndata as ad  # here: embedding runs without anndata when no .h5ad is asked for (a bare GPU node)

    info = {"configuration": config_name, "dataset": dataset, **({"missing": missing} if missing else {})}
    adata = ad.AnnData(obs=obs, obsm={"X_scencode": matrix}, uns={"scencode": info})
    with atomic_path(out_h5ad, suffix=".h5ad") as tmp:
        adata.write_h5ad(tmp)


def write_missing_embedding(reason: str, out_parquet, out_h5ad, config_name: str, dataset: str) -> None:
    log.warning("%s on %s: %s", config_name, dataset, reason)
    obs = pd.DataFrame({"label": [], "batch": []}, index=pd.Index([], name="cell_id"), dtype=str)
    write_embedding_files(obs, np.zeros((0, 1), np.float32), out_parquet, out_h5ad, config_name, dataset, reason)


@torch.no_grad()
def masked_mse(checkpoint: str | Path, corpus: str | Path, split: str | None, loader: LoaderConfig,
               max_cells: int | None = None) -> dict:
    """:class:`ReconstructionErrors` of a checkpoint on one split of a corpus (epoch-0 masks)."""
    device = default_device()
    model, ckpt = load_model(checkpoint, device)
    verify_corpus(corpus, checksums=False, vocab_hash=ckpt["vocab_hash"])
    errors = ReconstructionErrors(model.cfg.vocab_size, device)
    for batch in _batches(Path(corpus), split, loader, mask=True, columns=()):
        if max_cells and errors.cells >= max_cells:
            break
        with _autocast(device):
            errors.add(model, {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)})
    return errors.result()
