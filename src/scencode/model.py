"""The cell transformer: tokens = gene embedding + expression embedding, pre-LN encoder blocks with
``scaled_dot_product_attention`` (flash / memory-efficient kernels on CUDA), an MLP head that
predicts x̃ at every position. A cell is a bag of genes: no positional encoding.

Initialisation policy (fair starting scales): before training, :meth:`CellTransformer.calibrate`
measures the gene and the expression encoder's outputs on real training cells and sets two fixed
gains so that each component has unit RMS, whatever the encoder (an embedding table, an MLP on a
frozen ESM-2 table, a softmax over bins); the head's bias starts at the mean target x̃, so the first
steps are spent on the data rather than on the offset. The gains are buffers: checkpoints carry them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .encodings import EXPRESSION_ENCODERS, GENE_ENCODERS, check_options, lookup
from .errors import ScencodeError


@dataclass
class ModelConfig:
    vocab_size: int
    gene_encoding: str = "learned"
    expression_encoding: str = "continuous"
    d_model: int = 512
    n_layers: int = 12
    n_heads: int = 8
    d_ff: int = 1024
    dropout: float = 0.1
    gene_options: dict = field(default_factory=dict)
    expression_options: dict = field(default_factory=dict)

    def validate(self) -> None:
        if min(self.d_model, self.n_layers, self.n_heads, self.d_ff, self.vocab_size) <= 0:
            raise ScencodeError(f"model dimensions must be positive: {asdict(self)}")
        if self.d_model % self.n_heads:
            raise ScencodeError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if not 0 <= self.dropout < 1:
            raise ScencodeError(f"dropout {self.dropout} is not in [0, 1)")
        check_options(GENE_ENCODERS, "gene", self.gene_encoding, self.gene_options)
        check_options(EXPRESSION_ENCODERS, "expression", self.expression_encoding, self.expression_options)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ff = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.out(y.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.ff(self.ln2(x)))


class CellTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig, gene_table: torch.Tensor | None = None):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.genes = lookup(GENE_ENCODERS, "gene", cfg.gene_encoding)(
            cfg.d_model, vocab_size=cfg.vocab_size, gene_table=gene_table, **cfg.gene_options)
        self.expression = lookup(EXPRESSION_ENCODERS, "expression", cfg.expression_encoding)(
            cfg.d_model, **cfg.expression_options)
        self.mask_vector = nn.Parameter(torch.randn(cfg.d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model), nn.GELU(), nn.Linear(cfg.d_model, 1))
        self.drop = nn.Dropout(cfg.dropout)
        self.register_buffer("gene_gain", torch.ones(()))
        self.register_buffer("expression_gain", torch.ones(()))

    def components(self, gene_ids, counts, xnorm, valid) -> tuple[torch.Tensor, torch.Tensor]:
        """(gene, expression) embeddings of every position, after the calibrated gains."""
        return (self.gene_gain * self.genes(gene_ids),
                self.expression_gain * self.expression(counts, xnorm, valid))

    @torch.no_grad()
    def component_rms(self, batch: dict) -> dict[str, float]:
        """RMS of the gene and expression embeddings over the batch's real positions."""
        genes, expr = self.components(batch["gene_ids"], batch["counts"], batch["xnorm"], batch["valid"])
        valid = batch["valid"]
        return {"gene": float(genes[valid].float().pow(2).mean().sqrt()),
                "expression": float(expr[valid].float().pow(2).mean().sqrt())}

    @torch.no_grad()
    def calibrate(self, batches: list[dict]) -> dict[str, float]:
        """Unit-RMS gains for both encoders and the head's bias at the mean x̃, measured on
        ``batches`` of training cells (the initialisation policy above)."""
        self.gene_gain.fill_(1.0)
        self.expression_gain.fill_(1.0)
        valid = torch.cat([b["valid"].flatten() for b in batches])
        genes, expr = zip(*(self.components(b["gene_ids"], b["counts"], b["xnorm"], b["valid"]) for b in batches))
        for gain, values in ((self.gene_gain, genes), (self.expression_gain, expr)):
            flat = torch.cat([v.reshape(-1, v.shape[-1]) for v in values])[valid]
            gain.fill_(float(flat.float().pow(2).mean().sqrt().clamp(min=1e-8)) ** -1)
        target = torch.cat([b["xnorm"][b["valid"]] for b in batches])
        self.head[-1].weight.zero_()
        self.head[-1].bias.fill_(float(target.mean()))
        return {"gene_gain": float(self.gene_gain), "expression_gain": float(self.expression_gain),
                "head_bias": float(target.mean())}

    def encode(self, gene_ids, counts, xnorm, valid, masked=None) -> torch.Tensor:
        """Final-layer token states (B, L, d)."""
        genes, expr = self.components(gene_ids, counts, xnorm, valid)
        if masked is not None:
            expr = torch.where(masked.unsqueeze(-1), self.mask_vector.to(expr.dtype), expr)
        x = self.drop(genes + expr)
        # boolean mask: True = attend; padded keys are never attended
        attn_mask = None if bool(valid.all()) else valid[:, None, None, :]
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.ln_f(x)

    def forward(self, batch: dict) -> torch.Tensor:
        """Predicted x̃ at every position (B, L) of a batch (the loader's dict of tensors)."""
        return self.head(self.encode(batch["gene_ids"], batch["counts"], batch["xnorm"], batch["valid"],
                                     batch["masked"])).squeeze(-1)

    def loss(self, batch: dict) -> torch.Tensor:
        """MSE between predicted and true x̃ on the batch's masked, non-padded positions."""
        sse, n = masked_sse(self(batch), batch)
        return sse / n.clamp(min=1)

    @torch.no_grad()
    def cell_embeddings(self, gene_ids, counts, xnorm, valid) -> torch.Tensor:
        """Mean of final-layer token outputs over non-padded positions (B, d)."""
        h = self.encode(gene_ids, counts, xnorm, valid).float()
        w = valid.unsqueeze(-1).float()
        return (h * w).sum(1) / w.sum(1).clamp(min=1)


def masked_sse(pred: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of squared errors, number of positions) over the masked, non-padded positions: the one
    definition of the objective. Training divides by the masked positions of the whole optimiser
    step, so every masked token weighs the same whatever the batching."""
    target = batch["masked"] & batch["valid"]
    return ((pred[target].float() - batch["xnorm"][target].float()) ** 2).sum(), target.sum()
