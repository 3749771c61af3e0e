"""A trained model on a tokenized corpus: the checks that they belong together, its cells read as the
model saw them, and the context diagnostic (masked MSE with and without the cell's expression
context, against a gene-mean reference). Shared by the embed step, which measures the diagnostic in
its embedding pass, and the reconstruction step, which measures it on the held-out split when the
embed step did not.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from .devices import autocast, autocast_dtype, default_device
from .errors import ScencodeError
from .formats import Checkpoint
from .loader import LoaderConfig, ShardBatches
from .model import Batch, CellTransformer, load_model, masked_sse
from .shards import verify_corpus

LABEL_COLUMNS = ("label", "batch")


def verify_model_corpus(checkpoint: str | Path, ckpt: Checkpoint, corpus: str | Path) -> dict:
    """The corpus's shards, checked, and tokenized with the vocabulary the model was trained on: a
    mismatch names the checkpoint, since the model is what fixes the token ids."""
    manifest = verify_corpus(corpus, checksums=False)
    if manifest["vocab_hash"] != ckpt.vocab_hash:
        raise ScencodeError(
            f"this model was trained on the vocabulary with hash {ckpt.vocab_hash[:12]}… "
            f"({ckpt.model_config['vocab_size']} tokens), but corpus {corpus} was tokenized with "
            f"{manifest['vocab_hash'][:12]}… ({manifest['vocab_size']} tokens): embed a corpus tokenized with the "
            "model's vocabulary, or retrain the model on this one (snakemake --forcerun pretrain)",
            checkpoint,
        )
    return manifest


def model_autocast(device: torch.device):
    """Mixed precision on CUDA as in training (bf16, else fp16): embedding the study's 549k cells
    per configuration is GPU work; fp32 on the CPU."""
    return autocast(device, autocast_dtype("auto", device))


def held_out_batches(corpus: Path, split: str | None, loader: LoaderConfig, mask: bool, columns=LABEL_COLUMNS):
    """A corpus's cells (of ``split``) as the model saw them at epoch 0, in shard order, with their ids
    and ``columns``: the loader's seeded K-of-M genes and ``p_mask`` masks."""
    return ShardBatches(corpus, split, loader, epoch=0, shuffle=False, mask=mask, with_cell_ids=True, columns=columns)


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
    for batch in held_out_batches(Path(corpus), split, loader, mask=True, columns=()):
        if max_cells and errors.cells >= max_cells:
            break
        with model_autocast(device):
            on_device = batch.to(device)
            errors.add(model, on_device, model(on_device)[1])
    return errors.result()
