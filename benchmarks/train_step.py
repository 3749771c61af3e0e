"""Training-step throughput at the study's dimensions (d 512, 12 blocks, 8 heads, feed-forward 1024).

* ``tokens_per_s`` / ``baseline_tokens_per_s`` / ``ratio``: scencode's CellTransformer against a plain
  torch.nn.TransformerEncoder of the same size on identical full batches (no padding);
* the three batch layouts on the same tokenized cells (every cell of one epoch, written by
  ``scencode``'s tokenizer and read by its loader): ``padded`` (random batches, padded to their
  longest cell), ``bucketed`` (cells of similar length batched together, padded) and ``packed`` (real
  tokens only, attention within each cell): ``<layout>_real_tokens_per_s`` and
  ``<layout>_real_token_fraction`` (real tokens over the tokens the linear layers compute on);
* on CUDA also ``mfu``: model FLOPs per second over the GPU's peak (bf16 dense; ``--peak-tflops``).

Cells: ``--h5ad`` (a real count matrix, e.g. CellBench) or, by default, synthetic cells with
heavy-tailed lengths. Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from synthetic import write_synthetic_h5ad  # benchmarks/synthetic.py
from torch import nn

from scencode.devices import default_device
from scencode.formats import write_vocab
from scencode.loader import LoaderConfig, ShardBatches
from scencode.model import Batch, CellTransformer, ModelConfig
from scencode.tokenize import DatasetInput, TokenizeParams, tokenize_corpus
from scencode.vocab import build_vocab

STUDY = dict(d_model=512, n_layers=12, n_heads=8, d_ff=1024, dropout=0.1)


class Baseline(nn.Module):
    """The same token inputs and head around a stock nn.TransformerEncoder."""

    def __init__(self, vocab: int):
        super().__init__()
        d = STUDY["d_model"]
        self.genes = nn.Embedding(vocab, d)
        self.expression = nn.Sequential(nn.Linear(1, 512), nn.GELU(), nn.Linear(512, d))
        layer = nn.TransformerEncoderLayer(
            d, STUDY["n_heads"], STUDY["d_ff"], STUDY["dropout"], activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, STUDY["n_layers"], enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))

    def loss(self, b):
        x = self.genes(b.gene_ids) + self.expression(b.xnorm.unsqueeze(-1))
        h = self.encoder(x, src_key_padding_mask=~b.valid)
        pred = self.head(h).squeeze(-1)
        target = b.masked & b.valid
        return nn.functional.mse_loss(pred[target], b.xnorm[target])


def objective(model, batch):
    """Masked MSE: the baseline's own loss, scencode's from its forward pass."""
    if isinstance(model, Baseline):
        return model.loss(batch)
    _, sse, n = model(batch)
    return sse / n.clamp(min=1)


def timed_steps(model, batches, device, amp) -> tuple[float, int, int]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = nonpad = 0
    for i, batch in enumerate(batches):
        batch = batch.to(device)
        if i == 1:  # the first step warms up kernels and allocator
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = objective(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 1:
            real = batch.real
            tokens += real.numel()
            nonpad += int(real.sum())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, tokens, nonpad


def flops_per_token(length: int) -> float:
    d, layers, ff = STUDY["d_model"], STUDY["n_layers"], STUDY["d_ff"]
    dense = layers * (4 * d * d + 2 * d * ff)  # qkv + out, feed-forward
    attention = layers * 2 * length * d  # scores and weighted sum
    return 6 * dense + 6 * attention  # forward + backward


def tokenized_cells(tmp: Path, args, vocab_size: int) -> Path:
    """A corpus written by scencode's tokenizer: the real file's cells, or synthetic ones."""
    source = args.h5ad
    if source is None:
        source = tmp / "cells.h5ad"
        write_synthetic_h5ad(source, args.cells, args.length // 2, n_genes=vocab_size - 2, spread=0.6)
    write_vocab(build_vocab([source]), tmp / "vocab.parquet")
    tokenize_corpus(
        "b",
        [DatasetInput("b", source)],
        tmp / "vocab.parquet",
        tmp / "tok",
        TokenizeParams(val_fraction=0, test_fraction=0, row_group_cells=4096),
    )
    return tmp / "tok"


def compare_layouts(tmp: Path, model, args, device, amp) -> dict:
    """Real tokens/s of padded, bucketed and packed batches over the same cells (one epoch each)."""
    corpus = tokenized_cells(tmp, args, model.cfg.vocab_size)
    layouts = {
        "padded": dict(layout="padded", bucket_batches=1),
        "bucketed": dict(layout="padded"),
        "packed": dict(layout="packed"),
    }
    out = {}
    for name, settings in layouts.items():
        cfg = LoaderConfig(**{"batch_size": args.batch * 4, "context": args.length, "bucket_batches": 50, **settings})
        batches = list(ShardBatches(corpus, "train", cfg))
        seconds, computed, real = timed_steps(model, [batches[0], *batches], device, amp)
        out |= {
            f"{name}_real_tokens_per_s": real / seconds,
            f"{name}_real_token_fraction": real / computed,
            f"{name}_batches": len(batches),
        }
    out["cells"] = int(sum(b.n_cells for b in batches))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--cells", type=int, default=256, help="synthetic cells (without --h5ad)")
    parser.add_argument("--h5ad", type=Path, help="a real count matrix to tokenize instead")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM bf16 dense")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = default_device()
    amp = device.type == "cuda"
    vocab = 20_002
    ours = CellTransformer(ModelConfig(vocab, "learned", "continuous", **STUDY)).to(device)
    base = Baseline(vocab).to(device)

    counts = torch.randint(1, 20, (args.batch, args.length)).float()
    full = Batch(
        gene_ids=torch.randint(2, vocab, (args.batch, args.length)),
        counts=counts,
        xnorm=torch.log1p(counts),
        masked=torch.rand(args.batch, args.length) < 0.5,
        valid=torch.ones(args.batch, args.length, dtype=torch.bool),
    )
    batches = [full] * (args.steps + 1)
    ours_s, tokens, _ = timed_steps(ours, batches, device, amp)
    base_s, base_tokens, _ = timed_steps(base, batches, device, amp)

    result = {
        "device": str(device),
        "batch": args.batch,
        "length": args.length,
        "steps": args.steps,
        "tokens_per_s": tokens / ours_s,
        "baseline_tokens_per_s": base_tokens / base_s,
        "ratio": (tokens / ours_s) / (base_tokens / base_s),
    }
    with tempfile.TemporaryDirectory() as tmp:
        result |= compare_layouts(Path(tmp), ours, args, device, amp)
    if device.type == "cuda":
        result["mfu"] = tokens / ours_s * flops_per_token(args.length) / (args.peak_tflops * 1e12)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
