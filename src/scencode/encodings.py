"""Gene and expression encoders, registered by name.

A token's input embedding is gene embedding + expression embedding, both of size ``d_model``.
Expression encoders see the whole batch at once (raw counts, normalised values x̃ and the batch's
layout, ``model.Padded`` or ``model.Packed``), so binning is vectorised on the device. Most work
token by token and ignore the layout; one that needs each cell's values together (per-cell quantile
bins) takes ``cells.pad(x)`` (cells, longest) with ``cells.valid``, and returns ``cells.unpad(…)``.

Add an encoding: write a class with ``__init__(self, d_model, <options as keyword arguments>, **_)``
(an option the signature does not name is refused when the workflow's DAG is built) and ``forward`` as below,
decorate it with ``@expression_encoder("name")`` (or ``@gene_encoder``), and name it in the config.
A gene encoder that reads the gene-embedding table sets ``needs_gene_table = True`` and takes it as
``gene_table`` (the workflow then passes the table to its pretraining job). An expression encoder
that sets ``needs_gene_medians = True`` takes the training corpus's per-gene medians as
``gene_medians`` (and ``vocab_size``) and its ``forward`` also gets ``gene_ids=`` and ``masked=``.
A gene encoder with nothing to say about a gene it never trained on (``pretrain.unseen_genes``)
defines ``unknown(seen)``, the one vector such genes get; without it, a gene keeps its own output.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .errors import ScencodeError
from .formats import SPECIAL_TOKENS, read_gene_table

log = logging.getLogger(__name__)
N_SPECIAL = len(SPECIAL_TOKENS)  # the vocabulary's first rows: <pad>, <cls>

GENE_ENCODERS: dict[str, type[nn.Module]] = {}
EXPRESSION_ENCODERS: dict[str, type[nn.Module]] = {}


def _register(registry: dict, kind: str) -> Callable:
    def decorator(name: str):
        def add(cls):
            if name in registry:
                raise ValueError(f"{kind} encoder {name!r} is registered twice")
            registry[name] = cls
            return cls

        return add

    return decorator


gene_encoder = _register(GENE_ENCODERS, "gene")
expression_encoder = _register(EXPRESSION_ENCODERS, "expression")


def lookup(registry: dict, kind: str, name: str) -> type[nn.Module]:
    if name not in registry:
        raise ScencodeError(f"unknown {kind} encoding {name!r}; registered: {', '.join(sorted(registry))}")
    return registry[name]


# ---------------------------------------------------------------- gene encoders: forward(gene_ids)


@gene_encoder("learned")
class LearnedGenes(nn.Module):
    """An embedding table trained with the model."""

    needs_gene_table = False

    def __init__(self, d_model: int, vocab_size: int, **_):
        super().__init__()
        self.table = nn.Embedding(vocab_size, d_model, padding_idx=0)

    def forward(self, gene_ids: torch.Tensor) -> torch.Tensor:
        return self.table(gene_ids)

    def unknown(self, seen: torch.Tensor) -> torch.Tensor:
        """The vector of a gene never trained on: the mean of the trained genes' rows (``seen``, a
        bool per token id; special tokens excluded). An unseen row is its random initialisation, an
        identity the model never met; the centroid is the table's "average gene", the least it can
        claim, and needs no change to training (an <unk> row trained by gene dropout would)."""
        trained = seen.clone()
        trained[:N_SPECIAL] = False
        return self.table.weight[trained].mean(0)


def align_gene_table(path: Path, vocab: pd.DataFrame, missing_policy: str) -> torch.Tensor:
    """The gene-embedding table (ESM-2 …) in vocabulary order, for the encoders that read one;
    special tokens get zeros; ``missing_policy`` (train.missing_genes): error or zero."""
    ids, matrix, _ = read_gene_table(path)
    row = pd.Series(np.arange(len(ids)), index=ids)
    genes = vocab.gene_id[vocab.gene_type != "special"]
    found = row.reindex(genes)
    missing = genes[found.isna().to_numpy()]
    if len(missing) and missing_policy == "error":
        raise ScencodeError(
            f"{len(missing)} of {len(genes)} vocabulary genes have no embedding "
            f"(e.g. {', '.join(missing[:5])}); use vocab.policy 'protein' or "
            "train.missing_genes 'zero'",
            path,
        )
    table = np.zeros((len(vocab), matrix.shape[1]), np.float32)
    hit = found.notna().to_numpy()
    table[genes.index[hit]] = matrix[found[hit].astype(int)]
    if len(missing):
        log.warning("%d vocabulary genes have no embedding: zero vectors", len(missing))
    return torch.from_numpy(table)


def _given(table: torch.Tensor | None, encoding: str) -> torch.Tensor:
    """The gene-embedding table an encoder reads (the one place that says it is missing)."""
    if table is None:
        raise ScencodeError(
            f"gene encoding {encoding!r} needs a gene embedding table (config: esm.name; "
            "scencode pretrain --gene-embeddings)"
        )
    return table


class FrozenTableGenes(nn.Module):
    """A frozen (vocab × d_table) table through a trainable MLP to d_model.

    The MLP reads the table standardised per column (centre and scale measured on the gene rows,
    fixed). Protein-language-model tables share one dominant direction (mean cosine between genes
    0.90 in the demo's table; standardised 0.00), which an MLP at its initial scale cannot tell
    apart; the first linear layer could absorb the affine map, so the function class is unchanged,
    only the starting point is fair (``standardize: false`` reads the raw table)."""

    needs_gene_table = True
    table: torch.Tensor  # buffers (register_buffer): typed for the checker
    centre: torch.Tensor
    scale: torch.Tensor

    def __init__(self, d_model: int, table: torch.Tensor, hidden: int | None = None, standardize: bool = True):
        super().__init__()
        table = table.float()
        self.register_buffer("table", table, persistent=True)
        genes = table[N_SPECIAL:][
            table[N_SPECIAL:].abs().sum(1) > 0
        ]  # not the special tokens nor missing genes' zero rows
        centre = genes.mean(0) if standardize and len(genes) > 1 else torch.zeros(table.shape[1])
        scale = genes.std(0).clamp(min=1e-6) if standardize and len(genes) > 1 else torch.ones(table.shape[1])
        self.register_buffer("centre", centre, persistent=True)  # checkpoints carry the map the model trained with
        self.register_buffer("scale", scale, persistent=True)
        hidden = hidden or d_model
        self.project = nn.Sequential(nn.Linear(table.shape[1], hidden), nn.GELU(), nn.Linear(hidden, d_model))

    def forward(self, gene_ids: torch.Tensor) -> torch.Tensor:
        return self.project((self.table[gene_ids] - self.centre) / self.scale)


@gene_encoder("esm2")
class ESM2Genes(FrozenTableGenes):
    """Precomputed ESM-2 protein embeddings (frozen) → MLP. ``gene_table``: (vocab × d_esm) tensor
    aligned to the vocabulary (:func:`align_gene_table`)."""

    def __init__(
        self,
        d_model: int,
        gene_table: torch.Tensor | None = None,
        hidden: int | None = None,
        standardize: bool = True,
        **_,
    ):
        gene_table = _given(gene_table, "esm2")
        super().__init__(d_model, gene_table, hidden, standardize)


@gene_encoder("esm2_permuted")
class PermutedESM2Genes(FrozenTableGenes):
    """Control: the ESM-2 table with its gene rows permuted (seeded) through the same MLP. Same
    vectors, same geometry (the shared direction, the spread), no gene ↔ protein correspondence: what
    'esm2' gains over it is protein knowledge, not being frozen. Special tokens keep their rows."""

    def __init__(
        self,
        d_model: int,
        gene_table: torch.Tensor | None = None,
        seed: int = 0,
        hidden: int | None = None,
        standardize: bool = True,
        **_,
    ):
        gene_table = _given(gene_table, "esm2_permuted")
        order = torch.arange(len(gene_table))
        order[N_SPECIAL:] = N_SPECIAL + torch.randperm(
            len(gene_table) - N_SPECIAL, generator=torch.Generator().manual_seed(seed)
        )
        super().__init__(d_model, gene_table[order], hidden, standardize)


@gene_encoder("random_frozen")
class RandomFrozenGenes(FrozenTableGenes):
    """A weaker control: a frozen Gaussian table matching only the ESM-2 table's scalar mean and
    std (not its shared direction: its genes are ≈5× further apart). Prefer 'esm2_permuted'."""

    def __init__(
        self,
        d_model: int,
        gene_table: torch.Tensor | None = None,
        seed: int = 0,
        hidden: int | None = None,
        standardize: bool = True,
        **_,
    ):
        gene_table = _given(gene_table, "random_frozen")
        generator = torch.Generator().manual_seed(seed)
        random = (
            torch.randn(gene_table.shape, generator=generator) * gene_table[N_SPECIAL:].std()
            + gene_table[N_SPECIAL:].mean()
        )
        random[0] = 0
        super().__init__(d_model, random, hidden, standardize)


# ------------------------------------------- expression encoders: forward(counts, xnorm, cells)


@expression_encoder("continuous")
class ContinuousExpression(nn.Module):
    """MLP on the normalised value x̃."""

    def __init__(self, d_model: int, hidden: int = 512, **_):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, hidden), nn.GELU(), nn.Linear(hidden, d_model))

    def forward(self, counts, xnorm, cells):
        return self.mlp(xnorm.unsqueeze(-1))


def quantile_bins(xnorm: torch.Tensor, cells, n_bins: int) -> torch.Tensor:
    """scGPT binning per cell: boundaries at n_bins-1 evenly spaced quantiles of the cell's non-zero
    values; bin = number of boundaries ≤ x (1 … n_bins-1), zero → 0. Equal values share a bin, so
    ties are broken the same way whatever their order. ``cells``: the batch's layout."""
    return cells.unpad(padded_quantile_bins(cells.pad(xnorm), cells.valid, n_bins))


def padded_quantile_bins(xnorm: torch.Tensor, valid: torch.Tensor, n_bins: int) -> torch.Tensor:
    nonzero = valid & (xnorm > 0)
    values = torch.where(nonzero, xnorm.float(), torch.full_like(xnorm, float("nan"), dtype=torch.float32))
    q = torch.linspace(0, 1, n_bins - 1, device=xnorm.device, dtype=torch.float32)
    if values.device.type == "cpu":
        bins = _bins_by_rank(values, nonzero.sum(1, keepdim=True), q)
    else:
        bounds = torch.nanquantile(values, q, dim=1).T.contiguous()  # (B, n_bins-1)
        bounds = torch.nan_to_num(bounds, nan=float("inf"))  # cells with no non-zero value
        bins = torch.searchsorted(bounds, xnorm.float().contiguous(), right=True)
    return torch.where(nonzero, bins.clamp(1, n_bins - 1), torch.zeros_like(bins))


def _bins_by_rank(values: torch.Tensor, n_values: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The same bins on CPU, where torch's sort is several times slower than numpy's: rows sorted
    once by numpy (+inf for NaN, which numpy's vectorised sort does not take), torch.nanquantile's
    own interpolation on the sorted rows, and each value's bin counted from its rank (the
    boundaries ≤ a value are those with fewer values below them than its rank) instead of a search
    per value."""
    values = torch.nan_to_num(values, nan=float("inf"))
    order = torch.from_numpy(np.argsort(values.numpy(), axis=1))
    ranked = values.gather(1, order)
    bounds = torch.nan_to_num(_nanquantile_of_sorted(ranked, n_values, q), nan=float("inf"))
    below = torch.searchsorted(ranked, bounds)
    steps = torch.zeros(ranked.shape[0], ranked.shape[1] + 1, dtype=torch.long)
    steps.scatter_add_(1, below, torch.ones_like(below))
    return torch.empty_like(order).scatter_(1, order, steps.cumsum(1)[:, :-1])


def _nanquantile_of_sorted(ranked: torch.Tensor, n_values: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """torch.nanquantile(…, dim=1).T of rows already sorted (``n_values`` per row, then +inf),
    step for step as ATen's quantile_compute does it, so that the values are bit-identical (tested)."""
    ranks = q * (n_values - 1)
    ranks.masked_fill_(ranks < 0, 0)
    below = ranks.to(torch.long)
    weights = ranks - below
    above = ranks.ceil_().to(torch.long)
    return ranked.gather(-1, below).lerp_(ranked.gather(-1, above), weights)


@expression_encoder("hard")
class HardBinExpression(nn.Module):
    """50 bins from per-cell quantiles (scGPT); an embedding per bin."""

    def __init__(self, d_model: int, n_bins: int = 50, **_):
        super().__init__()
        self.n_bins = n_bins
        self.table = nn.Embedding(n_bins, d_model)

    def forward(self, counts, xnorm, cells):
        return self.table(quantile_bins(xnorm, cells, self.n_bins))


def log_bins(counts: torch.Tensor, max_bin: int = 10) -> torch.Tensor:
    """min(floor(log2(count + 1)), max_bin) on raw counts."""
    return torch.floor(torch.log2(counts.float() + 1)).clamp(0, max_bin).long()


@expression_encoder("log")
class LogBinExpression(nn.Module):
    def __init__(self, d_model: int, max_bin: int = 10, **_):
        super().__init__()
        self.max_bin = max_bin
        self.table = nn.Embedding(max_bin + 1, d_model)

    def forward(self, counts, xnorm, cells):
        return self.table(log_bins(counts, self.max_bin))


def per_distinct_value(f: Callable[[torch.Tensor], torch.Tensor], xnorm: torch.Tensor) -> torch.Tensor:
    """``f`` of every value, computed once per distinct value on the CPU: a batch's x̃ repeat (a
    cell's small counts give few values), so the per-token MLPs of the soft and auto-binned
    encodings run on a few hundred rows instead of thousands (measured in docs/benchmarks.md). Each
    row is ``f`` of the same value either way; the gradient sums over repeats in another order.
    On GPUs (and under torch.compile) every token: ``unique`` would wait for the device."""
    if xnorm.is_cuda or torch.compiler.is_compiling():
        return f(xnorm)
    values, index = torch.unique(xnorm, return_inverse=True)
    return f(values)[index]


@expression_encoder("soft")
class SoftBinExpression(nn.Module):
    """α = softmax(W2 · LeakyReLU(W1 · x̃)) over 20 bins; embedding Σ_k α_k T_k."""

    def __init__(self, d_model: int, n_bins: int = 20, hidden: int = 512, **_):
        super().__init__()
        self.w1 = nn.Linear(1, hidden)
        self.w2 = nn.Linear(hidden, n_bins)
        self.bins = nn.Parameter(torch.randn(n_bins, d_model) * 0.02)

    def weights(self, xnorm: torch.Tensor) -> torch.Tensor:
        return per_distinct_value(self.bin_weights, xnorm)

    def bin_weights(self, xnorm: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.w2(nn.functional.leaky_relu(self.w1(xnorm.unsqueeze(-1)))), dim=-1)

    def forward(self, counts, xnorm, cells):
        return self.weights(xnorm) @ self.bins


@expression_encoder("autobin")
class AutoDiscretisationExpression(nn.Module):
    """scFoundation's auto-discretisation: v = W1·x̃, u = W2·LeakyReLU(v) + α·LeakyReLU(v)
    (the residual term), weights = softmax(u) over 100 bins, embedding Σ_k w_k T_k."""

    def __init__(self, d_model: int, n_bins: int = 100, **_):
        super().__init__()
        self.w1 = nn.Linear(1, n_bins)
        self.w2 = nn.Linear(n_bins, n_bins)
        self.alpha = nn.Parameter(torch.tensor(0.1))
        self.bins = nn.Parameter(torch.randn(n_bins, d_model) * 0.02)

    def weights(self, xnorm: torch.Tensor) -> torch.Tensor:
        return per_distinct_value(self.bin_weights, xnorm)

    def bin_weights(self, xnorm: torch.Tensor) -> torch.Tensor:
        v = nn.functional.leaky_relu(self.w1(xnorm.unsqueeze(-1)))
        return torch.softmax(self.w2(v) + self.alpha * v, dim=-1)

    def forward(self, counts, xnorm, cells):
        return self.weights(xnorm) @ self.bins


@expression_encoder("rank")
class RankValueExpression(nn.Module):
    """Geneformer's rank-value encoding: a cell's genes ordered by expression normalised by each
    gene's median over the training corpus, the value entering only through the position (an
    embedding per rank, 0 = highest). Geneformer normalises a count by the cell's total and the
    gene's non-zero median; within one cell the total is common to every gene, so the order is
    that of count / median (``corpus_stats.gene_medians``, a buffer saved with the model). Masked
    positions are left out of the order (their values are what is predicted: their ranks would
    tell); ties keep the loader's order (a stable sort). Ranks past ``max_rank`` share the last
    embedding (the context caps a cell's tokens first)."""

    needs_gene_medians = True
    medians: torch.Tensor  # a buffer (register_buffer): typed for the checker

    def __init__(
        self, d_model: int, max_rank: int = 2048, vocab_size: int = 0, gene_medians: torch.Tensor | None = None, **_
    ):
        super().__init__()
        self.max_rank = max_rank
        self.table = nn.Embedding(max_rank, d_model)
        medians = torch.ones(vocab_size) if gene_medians is None else gene_medians.float()
        self.register_buffer("medians", medians)

    def forward(self, counts, xnorm, cells, gene_ids=None, masked=None):
        def pad(x):
            return None if x is None else cells.pad(x)

        return self.table(cells.unpad(self.ranks(cells.pad(counts), cells.valid, pad(gene_ids), pad(masked))))

    def ranks(self, counts, valid, gene_ids=None, masked=None) -> torch.Tensor:
        """(cells, L) rank of each position among its cell's unmasked real positions."""
        key = counts.float()
        if gene_ids is not None and len(self.medians):
            key = key / self.medians[gene_ids].clamp(min=1e-12)
        left_out = ~valid if masked is None else ~valid | masked
        key = key.masked_fill(left_out, -float("inf"))
        order = torch.argsort(key, dim=1, descending=True, stable=True)
        positions = torch.arange(key.shape[1], device=key.device).expand_as(order)
        return torch.empty_like(order).scatter_(1, order, positions).clamp(max=self.max_rank - 1)
