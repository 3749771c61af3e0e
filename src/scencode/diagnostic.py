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
from .formats import GENE_GROUPS, Checkpoint
from .loader import LoaderConfig, ShardBatches
from .model import Batch, CellTransformer, load_model
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


def held_out_batches(
    corpus: Path,
    split: str | None,
    loader: LoaderConfig,
    mask: bool,
    columns=LABEL_COLUMNS,
    drop_genes: torch.Tensor | None = None,
):
    """A corpus's cells (of ``split``) as the model saw them at epoch 0, in shard order, with their ids
    and ``columns``: the loader's seeded K-of-M genes and ``p_mask`` masks; ``drop_genes`` (a bool
    per token id: the model's unseen genes) left out of every cell, as in training."""
    drop = None if drop_genes is None or not bool(drop_genes.any()) else drop_genes.cpu().numpy()
    return ShardBatches(
        corpus,
        split,
        loader,
        epoch=0,
        shuffle=False,
        mask=mask,
        with_cell_ids=True,
        columns=columns,
        drop_genes=drop,
    )


class ReconstructionErrors:
    """The context diagnostic, accumulated per gene over batches of held-out cells with the loader's
    seeded masks: ``masked_mse`` (the model as trained), ``masked_mse_no_context`` (every expression
    value masked: the model sees only which genes the cell has) and ``gene_mean_mse`` (each masked
    token predicted by its gene's mean x̃ over the same masked tokens: an optimistic context-free
    reference). A model that learned only gene means sits at ``gene_mean_mse``. For a model with
    unseen genes the same three on the genes it trained on (``_seen``) and on those it never saw
    (``_unseen``), where they are in the input."""

    def __init__(self, vocab_size: int, device: torch.device):
        # per gene: masked tokens, Σx, Σx², the model's squared error, the context-free model's
        self.gene = torch.zeros(5, vocab_size, dtype=torch.float64, device=device)
        self.cells = 0

    def add(self, model: CellTransformer, batch: Batch, pred: torch.Tensor) -> None:
        """``pred``: the model's prediction on this batch (``model(batch)[0]``)."""
        target = batch.masked & batch.real
        # every expression value hidden; scored at the same masked positions
        blind = model(replace(batch, masked=batch.real))[0]
        genes, x = batch.gene_ids[target], batch.xnorm[target].double()
        errors = ((p[target].double() - x) ** 2 for p in (pred, blind))
        for row, values in enumerate((torch.ones_like(x), x, x * x, *errors)):
            self.gene[row].index_add_(0, genes, values)
        self.cells += batch.n_cells

    def result(self, unseen: torch.Tensor | None = None, foreign: torch.Tensor | None = None) -> dict:
        """The diagnostic over all masked tokens; with ``unseen`` (a bool per token id), also over the
        seen and the unseen genes' tokens apart; with ``foreign`` (the genes of another organism),
        each such gene's masked MSE where the cells held it (``species_gene_mse``)."""
        out = {**self._over(None), "cells": self.cells}
        if unseen is not None and bool(unseen.any()):
            unseen = unseen.to(self.gene.device)
            for name, genes in zip(GENE_GROUPS, (~unseen, unseen)):
                out.update({f"{key}_{name}": value for key, value in self._over(genes).items()})
            out["unseen_gene_mse"] = self.per_gene(unseen)  # the pairs of the tables' per-gene tests
        if foreign is not None and (species := self.per_gene(foreign)):
            out["species_gene_mse"] = species
        return out

    def per_gene(self, genes: torch.Tensor) -> dict[int, list]:
        """Token id → [masked tokens, masked MSE] of each of ``genes`` (a bool per token id) that was
        masked at least once."""
        tokens, model_sse = self.gene[0], self.gene[3]
        scored = genes.to(self.gene.device) & (tokens > 0)
        return {
            int(token): [int(n), float(sse / n)]
            for token, n, sse in zip(scored.nonzero().flatten().tolist(), tokens[scored], model_sse[scored])
        }

    def _over(self, genes: torch.Tensor | None) -> dict:
        n, total, squares, model_sse, blind_sse = self.gene if genes is None else self.gene[:, genes]
        tokens = float(n.sum())
        if not tokens:
            nan = float("nan")
            return {
                "masked_mse": nan,
                "masked_mse_no_context": nan,
                "gene_mean_mse": nan,
                "global_mean_mse": nan,
                "masked_tokens": 0,
            }
        gene_sse = (squares - total**2 / n.clamp(min=1)).sum()
        pooled_sse = squares.sum() - total.sum() ** 2 / tokens
        return {
            "masked_mse": float(model_sse.sum() / tokens),
            "masked_mse_no_context": float(blind_sse.sum() / tokens),
            "gene_mean_mse": float(gene_sse / tokens),
            "global_mean_mse": float(pooled_sse / tokens),
            "masked_tokens": int(tokens),
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
    batches = held_out_batches(Path(corpus), split, loader, mask=True, columns=(), drop_genes=model.unseen_genes)
    for batch in batches:
        if max_cells and errors.cells >= max_cells:
            break
        with model_autocast(device):
            on_device = batch.to(device)
            errors.add(model, on_device, model(on_device)[0])
    return errors.result()
