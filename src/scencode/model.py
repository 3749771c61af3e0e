"""The cell transformer: tokens = gene embedding + expression embedding, pre-LN encoder blocks with
``scaled_dot_product_attention`` (flash / memory-efficient kernels on CUDA), an MLP head that
predicts x̃ at every position. A cell is a bag of genes: no positional encoding.

Two batch layouts (the loader's ``layout``), one model: *padded* batches are (cells, longest cell)
with a ``valid`` mask; *packed* batches hold only real tokens, cell after cell (``offsets``), so every
linear layer, norm and the head compute on real tokens only, and attention stays within each cell
(a block-diagonal mask): on CUDA through the variable-length flash kernel; on CPU, which has no
such kernel, attention alone gathers each cell into a padded (cells, longest) view.

Dropout (``dropout``) acts on the summed input embeddings and on every residual branch; attention
probabilities are not dropped, so that both layouts run the same model and the variable-length
flash kernel (which has no dropout) can train it.

Initialisation policy (fair starting scales): before training, :meth:`CellTransformer.calibrate`
measures the gene and the expression encoder's outputs on real training cells and sets two fixed
gains so that each component has unit RMS, whatever the encoder (an embedding table, an MLP on a
frozen ESM-2 table, a softmax over bins); the head's bias starts at the mean target x̃, so the first
steps are spent on the data rather than on the offset. The gains are buffers: checkpoints carry them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .encodings import EXPRESSION_ENCODERS, GENE_ENCODERS, lookup
from .errors import ScencodeError

if TYPE_CHECKING:
    from .formats import Checkpoint
from .run_config import ModelConfig, block_params  # noqa: F401  (block_params: re-exported)


def _varlen_attention():
    """PyTorch's variable-length flash attention (torch ≥ 2.10), or None. Imported on first use on
    CUDA: the module pulls in torch._dynamo, 1.4 s of every CPU job's start-up."""
    global _VARLEN
    if _VARLEN is False:
        try:
            from torch.nn.attention.varlen import varlen_attn
        except ImportError:
            varlen_attn = None
        _VARLEN = varlen_attn
    return _VARLEN


_VARLEN = False  # not looked up yet


class Padded:
    """(cells, L) positions; padded keys are never attended."""

    def __init__(self, valid: torch.Tensor):
        self.valid = valid
        self.mask = None if bool(valid.all()) else valid[:, None, None, :]  # True = attend

    @property
    def n_cells(self) -> int:
        return self.valid.shape[0]

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        return x

    unpad = pad

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """qkv: (cells, L, 3, heads, d_head) → (cells, L, heads, d_head)."""
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask).transpose(1, 2)

    def cell_means(self, h: torch.Tensor) -> torch.Tensor:
        w = self.valid.unsqueeze(-1).to(h.dtype)
        return (h * w).sum(1) / w.sum(1).clamp(min=1)


class Packed:
    """Real tokens only, cell after cell: cell i holds positions ``offsets[i]:offsets[i + 1]``.

    Attention stays within each cell. On CUDA in bf16/fp16 it is PyTorch's variable-length flash
    attention (``torch.nn.attention.varlen``); elsewhere jagged nested tensors (``nested``, the
    default on CUDA) or, on CPU, which has no variable-length kernel, a padded (cells, longest) view
    gathered for attention alone."""

    def __init__(self, offsets: torch.Tensor, nested: bool | None = None):
        self.offsets = offsets
        self.max_len = int(offsets.diff().max()) if len(offsets) > 1 else 0
        self.nested = offsets.is_cuda if nested is None else nested
        self._index: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._valid: torch.Tensor | None = None

    @property
    def n_cells(self) -> int:
        return len(self.offsets) - 1

    def _cell_and_slot(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each token's cell, its position in the cell, and its place in the flattened
        (cells × longest) padded view."""
        if self._index is None:
            lengths, device = self.offsets.diff(), self.offsets.device
            cell = torch.repeat_interleave(lengths)
            first_slot = torch.arange(self.n_cells, device=device) * self.max_len - self.offsets[:-1]
            slot = torch.arange(len(cell), device=device) + first_slot[cell]
            self._index = cell, slot - cell * self.max_len, slot
        return self._index

    @property
    def valid(self) -> torch.Tensor:
        """(cells, longest) mask of the padded view."""
        if self._valid is None:
            flat = torch.zeros(self.n_cells * self.max_len, dtype=torch.bool, device=self.offsets.device)
            self._valid = flat.index_fill_(0, self._cell_and_slot()[2], True).view(self.n_cells, self.max_len)
        return self._valid

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(tokens, …) → (cells, longest, …), zeros after each cell."""
        out = x.new_zeros((self.n_cells * self.max_len, *x.shape[1:]))
        return out.index_copy(0, self._cell_and_slot()[2], x).view(self.n_cells, self.max_len, *x.shape[1:])

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """(cells, longest, …) → (tokens, …); one gather, whatever the view's strides."""
        cell, position, slot = self._cell_and_slot()
        if x.is_contiguous():  # a flat gather is several times faster on CPU
            return x.flatten(0, 1).index_select(0, slot)
        return x[cell, position]

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """qkv: (tokens, 3, heads, d_head) → (tokens, heads, d_head), each cell attending to itself."""
        if qkv.is_cuda and qkv.dtype in (torch.bfloat16, torch.float16) and _varlen_attention() is not None:
            cu = self.offsets.to(torch.int32)
            q, k, v = qkv.unbind(1)
            return _varlen_attention()(q, k, v, cu, cu, self.max_len, self.max_len)
        if self.nested:

            def jagged(x):
                return torch.nested.nested_tensor_from_jagged(
                    x.contiguous(), self.offsets, max_seqlen=self.max_len
                ).transpose(1, 2)

            return F.scaled_dot_product_attention(*(jagged(x) for x in qkv.unbind(1))).transpose(1, 2).values()
        q, k, v = self.pad(qkv).permute(2, 0, 3, 1, 4)  # one gather for all three
        return self.unpad(
            F.scaled_dot_product_attention(q, k, v, attn_mask=self.valid[:, None, None, :]).transpose(1, 2)
        )

    def cell_means(self, h: torch.Tensor) -> torch.Tensor:
        sums = h.new_zeros((self.n_cells, h.shape[-1])).index_add_(0, self._cell_and_slot()[0], h)
        return sums / self.offsets.diff().clamp(min=1).unsqueeze(-1).to(h.dtype)


@dataclass
class Batch:
    """One batch of cells, as the loader gives it and the model reads it. Packed (``offsets``: real
    tokens only, cell after cell) or padded (``valid``: (cells, longest) with a mask); ``meta`` holds
    what is not a tensor (cell ids, label and batch columns of evaluation corpora)."""

    gene_ids: torch.Tensor  # vocabulary index per position
    counts: torch.Tensor  # raw count
    xnorm: torch.Tensor  # x̃ = log1p(count / total × c_norm), the target
    masked: torch.Tensor  # bool: expression hidden from the model, predicted and scored
    offsets: torch.Tensor | None = None  # packed: cell i holds positions offsets[i]:offsets[i + 1]
    valid: torch.Tensor | None = None  # padded: real (non-padding) positions
    meta: dict = field(default_factory=dict)

    def to(self, device: torch.device | str) -> Batch:
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return replace(
            self,
            gene_ids=move(self.gene_ids),
            counts=move(self.counts),
            xnorm=move(self.xnorm),
            masked=move(self.masked),
            offsets=None if self.offsets is None else move(self.offsets),
            valid=None if self.valid is None else move(self.valid),
        )

    @property
    def real(self) -> torch.Tensor:
        """Bool mask of real (non-padding) positions, in the batch's own shape."""
        return self.valid if self.valid is not None else torch.ones_like(self.masked)

    @property
    def n_cells(self) -> int:
        if self.offsets is not None:
            return len(self.offsets) - 1
        assert self.valid is not None  # a batch is packed (offsets) or padded (valid)
        return self.valid.shape[0]

    def layout(self, nested: bool | None = None) -> Padded | Packed:
        if self.offsets is not None:
            return Packed(self.offsets, nested)
        assert self.valid is not None  # a batch is packed (offsets) or padded (valid)
        return Padded(self.valid)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ff = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cells: Padded | Packed) -> torch.Tensor:
        """x: (cells, L, d) padded or (tokens, d) packed."""
        d = x.shape[-1]
        qkv = self.qkv(self.ln1(x)).unflatten(-1, (3, self.n_heads, d // self.n_heads))
        y = cells.attend(qkv)
        x = x + self.drop(self.out(y.flatten(-2)))
        return x + self.drop(self.ff(self.ln2(x)))


class CellTransformer(nn.Module):
    """``unseen_genes``: a bool per token id, the genes held out of training (``pretrain.unseen_genes``).
    A gene encoder that has nothing to say about a gene it never trained on (a learned table: its
    row is still the random initialisation) defines ``unknown(seen)``, the one vector every unseen
    gene gets; encoders of a fixed per-gene table (ESM-2) give the gene's own row.

    ``foreign_genes``: a bool per token id, the genes of another organism (scencode.species; never in a
    training cell) and ``gene_alias``: per token id, the token whose row such an encoder reads (a
    foreign gene's one-to-one human ortholog; itself otherwise). A foreign gene without an ortholog
    gets the ``unknown`` vector; encoders of a per-gene table read the gene's own protein row."""

    gene_gain: torch.Tensor  # buffers (register_buffer): typed for the checker
    expression_gain: torch.Tensor
    unseen_genes: torch.Tensor
    foreign_genes: torch.Tensor
    gene_alias: torch.Tensor
    head: nn.Sequential

    def __init__(
        self,
        cfg: ModelConfig,
        gene_table: torch.Tensor | None = None,
        gene_medians: torch.Tensor | None = None,
        unseen_genes: torch.Tensor | None = None,
        foreign_genes: torch.Tensor | None = None,
        gene_alias: torch.Tensor | None = None,
    ):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.genes = lookup(GENE_ENCODERS, "gene", cfg.gene_encoding)(
            cfg.d_model, vocab_size=cfg.vocab_size, gene_table=gene_table, **cfg.gene_options
        )
        self.expression = lookup(EXPRESSION_ENCODERS, "expression", cfg.expression_encoding)(
            cfg.d_model, vocab_size=cfg.vocab_size, gene_medians=gene_medians, **cfg.expression_options
        )
        self.mask_vector = nn.Parameter(torch.randn(cfg.d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model), nn.GELU(), nn.Linear(cfg.d_model, 1))
        self.drop = nn.Dropout(cfg.dropout)
        self.register_buffer("gene_gain", torch.ones(()))
        self.register_buffer("expression_gain", torch.ones(()))
        none = torch.zeros(cfg.vocab_size, dtype=torch.bool)
        held_out = none if unseen_genes is None else unseen_genes.bool()
        foreign = none if foreign_genes is None else foreign_genes.bool()
        alias = torch.arange(cfg.vocab_size) if gene_alias is None else gene_alias.long()
        self.register_buffer("unseen_genes", held_out)
        self.register_buffer("foreign_genes", foreign)
        self.register_buffer("gene_alias", alias)
        self.replaces_unseen = bool((held_out | foreign).any()) and hasattr(self.genes, "unknown")
        self.nested_attention: bool | None = None  # packed batches: jagged attention (None: on CUDA)

    def cells(self, batch: Batch) -> Padded | Packed:
        return batch.layout(self.nested_attention)

    def components(
        self, batch: Batch, cells: Padded | Packed, masked: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(gene, expression) embeddings of every position, after the calibrated gains; an encoding
        that orders a cell's genes (rank) also gets the gene ids and the positions to leave out."""
        tokens = {"gene_ids": batch.gene_ids, "masked": masked} if self.orders_genes else {}
        return (
            self.gene_gain * self.gene_vectors(batch.gene_ids),
            self.expression_gain * self.expression(batch.counts, batch.xnorm, cells, **tokens),
        )

    def gene_vectors(self, gene_ids: torch.Tensor) -> torch.Tensor:
        """The gene encoder's output for ``gene_ids`` as the model uses it: where the encoder has an
        ``unknown`` vector, a foreign gene reads its ortholog's row and a gene never trained on (unseen,
        or foreign without an ortholog) gets ``unknown`` (before the calibrated gain)."""
        if not self.replaces_unseen:
            return self.genes(gene_ids)
        gene_ids = self.gene_alias[gene_ids]
        genes = self.genes(gene_ids)
        untrained = self.unseen_genes | self.foreign_genes
        unknown = self.genes.unknown(~untrained).to(genes.dtype)  # type: ignore[operator]
        return torch.where(untrained[gene_ids].unsqueeze(-1), unknown, genes)

    @property
    def orders_genes(self) -> bool:
        return getattr(self.expression, "needs_gene_medians", False)

    @torch.no_grad()
    def component_rms(self, batch: Batch) -> dict[str, float]:
        """RMS of the gene and expression embeddings over the batch's real positions."""
        genes, expr = self.components(batch, self.cells(batch))
        real = batch.real
        return {
            "gene": float(genes[real].float().pow(2).mean().sqrt()),
            "expression": float(expr[real].float().pow(2).mean().sqrt()),
        }

    @torch.no_grad()
    def calibrate(self, batches: list[Batch]) -> dict[str, float]:
        """Unit-RMS gains for both encoders and the head's bias at the mean x̃, measured on
        ``batches`` of training cells (the initialisation policy above)."""
        self.gene_gain.fill_(1.0)
        self.expression_gain.fill_(1.0)
        genes, expr = zip(*(self.components(b, self.cells(b)) for b in batches))
        reals = [b.real for b in batches]
        for gain, values in ((self.gene_gain, genes), (self.expression_gain, expr)):
            flat = torch.cat([v[real] for v, real in zip(values, reals)])
            gain.fill_(float(flat.float().pow(2).mean().sqrt().clamp(min=1e-8)) ** -1)
        target = torch.cat([b.xnorm[real] for b, real in zip(batches, reals)])
        last = self.head[-1]
        assert isinstance(last, nn.Linear)
        last.weight.zero_()
        last.bias.fill_(float(target.mean()))
        return {
            "gene_gain": float(self.gene_gain),
            "expression_gain": float(self.expression_gain),
            "head_bias": float(target.mean()),
        }

    def encode(self, batch: Batch, cells: Padded | Packed, masked: torch.Tensor | None = None) -> torch.Tensor:
        """Final-layer token states, (cells, L, d) padded or (tokens, d) packed; the expression of
        ``masked`` positions is replaced by the mask vector."""
        genes, expr = self.components(batch, cells, masked)
        if masked is not None:
            expr = torch.where(masked.unsqueeze(-1), self.mask_vector.to(expr.dtype), expr)
        x = self.drop(genes + expr)
        for block in self.blocks:
            x = block(x, cells)
        return self.ln_f(x)

    def forward(self, batch: Batch, embeddings: bool = False) -> tuple[torch.Tensor, ...]:
        """(predicted x̃ at every position, sum of squared errors over the masked real positions, their
        number): the objective, defined once for training, validation, DDP and evaluation. With
        ``embeddings``, also each cell's embedding from the same pass: the mean of its final-layer
        token states, the cell encoded as in training, its masked positions (the loader's seeded masks,
        p_mask as trained) hidden. The model never saw a cell with nothing masked; encoded that way
        its states lose what it learned (issue #11: kNN at chance where the as-trained embedding
        reaches 0.84)."""
        cells = self.cells(batch)
        h = self.encode(batch, cells, batch.masked)
        pred = self.head(h).squeeze(-1)
        out = (pred, *masked_sse(pred, batch))
        return (*out, cells.cell_means(h.float())) if embeddings else out


def masked_sse(pred: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of squared errors, number of positions) over the masked, non-padded positions: the one
    definition of the objective. Training divides by the masked positions of the whole optimiser
    step, so every masked token weighs the same whatever the batching."""
    target = batch.masked & batch.real
    return ((pred[target].float() - batch.xnorm[target].float()) ** 2).sum(), target.sum()


def load_model(checkpoint: str | Path, device: torch.device) -> tuple[CellTransformer, Checkpoint]:
    """A trained model from its checkpoint (weights read with ``weights_only``), in eval mode."""
    from .formats import Checkpoint

    ckpt = Checkpoint.read(Path(checkpoint))
    cfg = ModelConfig(**ckpt.model_config)
    # checkpoints written before unseen genes and species existed held none out and had no other organism
    none = torch.zeros(cfg.vocab_size, dtype=torch.bool)
    state = {
        "unseen_genes": none,
        "foreign_genes": none,
        "gene_alias": torch.arange(cfg.vocab_size),
        **ckpt.model,
    }
    model = CellTransformer(
        cfg,
        gene_table=state.get("genes.table"),
        unseen_genes=state["unseen_genes"],
        foreign_genes=state["foreign_genes"],
        gene_alias=state["gene_alias"],
    )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # written by another version of the model (e.g. before frozen tables were standardised)
        why = " ".join(str(exc).split())[:300]  # torch's message spans lines: keys missing, unexpected, misshapen
        raise ScencodeError(
            f"checkpoint does not fit this version of the model ({why}); retrain it: snakemake --forcerun pretrain",
            checkpoint,
        ) from exc
    return model.to(device).eval(), ckpt
