"""Which training settings let the cell transformer learn cell identity? (issue #11)

Trains variants of the study's model on a tokenized corpus (the demo's) with the workflow's loader and
objective and reports, at several step counts, the training loss, the held-out masked MSE and kNN
accuracy (k = 10, Euclidean, stratified 80/20) on each evaluation corpus of the cell embedding (mean
of final-layer token outputs): as trained (``knn``: the seeded training masks, what the workflow
embeds), with nothing masked (``knn_nothing_masked``), and pooled over the masked or the visible
positions only. Variants run in parallel processes.

    PYTHONPATH=src python benchmarks/identity_sweep.py --out sweep.json [--workers 6] [--steps 2400]
        [--checkpoints 600,1200,1800,2400] [--variants variants.json] [--partial DIR]

The default variants (``identity_gpu_variants.json``) are those measured on the lent H200; on 2 CPU
cores a d 128 × 4 variant at batch 128 takes 1.7 s a step. ``BASE`` is the demo's model and training.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

R = "results"
EVALS = ("sim_blood_eval", "sim_lung_eval")

# the demo's model and training (config/config.yaml); a variant overrides what it names
BASE = dict(
    d_model=32,
    n_layers=2,
    n_heads=2,
    d_ff=64,
    dropout=0.0,
    gene="learned",
    expression="continuous",
    lr=3e-3,
    wd=1e-5,
    p_mask=0.5,
    batch=32,
    context=256,
    readout="mlp",
    warmup=20,
)


def knn_accuracy(x: torch.Tensor, y: np.ndarray, k: int = 10, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        test[rng.choice(idx, max(1, round(0.2 * len(idx))), replace=False)] = True
    codes = np.unique(y, return_inverse=True)[1]
    a, b = x[~test], x[test]
    nearest = torch.cdist(b, a).topk(k, largest=False).indices.cpu().numpy()
    votes = codes[~test][nearest]
    pred = np.array([np.bincount(v, minlength=codes.max() + 1).argmax() for v in votes])
    return float((pred == codes[test]).mean())


def run(variant: dict) -> dict:
    from scencode.devices import default_device
    from scencode.encodings import align_gene_table
    from scencode.formats import load_vocab
    from scencode.loader import LoaderConfig, ShardBatches
    from scencode.model import CellTransformer, ModelConfig

    v = {**BASE, **variant}
    torch.manual_seed(0)
    torch.set_num_threads(v.get("threads", 2))
    device = default_device()
    vocab, _ = load_vocab(f"{R}/vocab.parquet")
    table = None
    if v["gene"] != "learned":
        table = align_gene_table(f"{R}/esm/esm2_tiny_demo/gene_embeddings.parquet", vocab, "zero")
    cfg = ModelConfig(
        vocab_size=len(vocab),
        gene_encoding=v["gene"],
        expression_encoding=v["expression"],
        d_model=v["d_model"],
        n_layers=v["n_layers"],
        n_heads=v["n_heads"],
        d_ff=v["d_ff"],
        dropout=v["dropout"],
        gene_options=v.get("gene_options", {}),
    )
    model = CellTransformer(cfg, gene_table=table)
    if v.get("token", "sum") != "sum":
        multiplicative_tokens(model)
    if v["readout"] != "mlp":
        add_readout(model, v["readout"], len(vocab))
    loader = LoaderConfig(
        batch_size=v["batch"], context=v["context"], p_mask=v["p_mask"], bucket_batches=20, layout="packed"
    )
    model.calibrate([b for _, b in zip(range(8), ShardBatches(f"{R}/tokens/train", "train", loader))])
    model.to(device)
    eval_cfg = LoaderConfig(batch_size=256, context=v["context"], p_mask=v["p_mask"], layout="packed")
    evals = {
        n: [
            b.to(device)
            for b in ShardBatches(
                f"{R}/tokens/{n}", None, eval_cfg, shuffle=False, mask=True, with_cell_ids=True, columns=("label",)
            )
        ]
        for n in EVALS
    }
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": v["wd"]}, {"params": rest, "weight_decay": 0}], lr=v["lr"], betas=(0.9, 0.95)
    )
    steps, report, losses, step, epoch, start = v["steps"], [], [], 0, 0, time.time()
    checkpoints = {c for c in v["checkpoints"] if c <= steps} | {steps}
    while step < steps:
        for batch in ShardBatches(f"{R}/tokens/train", "train", loader, epoch=epoch):
            batch = batch.to(device)
            lr = v["lr"] * min(1, (step + 1) / v["warmup"]) * (0.55 + 0.45 * math.cos(math.pi * step / steps))
            for g in opt.param_groups:
                g["lr"] = lr
            model.train()
            sse, n = model(batch)[1:]
            loss = sse / n
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            if step in checkpoints:
                report.append(
                    {
                        "step": step,
                        "train_loss": float(np.mean(losses[-50:])),
                        "seconds": round(time.time() - start, 1),
                        **evaluate(model, evals),
                    }
                )
                if v.get("partial"):  # a run cut short by a time limit keeps what it measured
                    with open(f"{v['partial']}/{v['name']}.json", "w") as f:
                        json.dump({"variant": v, "report": report}, f, indent=1)
            if step >= steps:
                break
        epoch += 1
    return {"variant": v, "report": report}


@torch.no_grad()
def evaluate(model, evals: dict) -> dict:
    model.eval()
    out = {}
    for name, batches in evals.items():
        sse = n = 0
        emb, unmasked, labels, masked_emb, visible_emb = [], [], [], [], []
        for b in batches:
            s, k = model(b)[1:]
            sse, n = sse + float(s), n + int(k)
            emb.append(model(b, embeddings=True)[3])  # as trained: the batch's seeded masks
            unmasked.append(model(replace(b, masked=torch.zeros_like(b.masked)), embeddings=True)[3])
            labels.append(np.asarray(b.meta["label"]))
            cells = model.cells(b)
            h = model.encode(b, cells, b.masked).float()
            for keep, store in ((b.masked, masked_emb), (~b.masked, visible_emb)):
                w = keep.float().unsqueeze(-1)
                store.append(cells.cell_means(h * w) / cells.cell_means(w).clamp(min=1e-6))
        y = np.concatenate(labels)
        out[name] = {
            "mse": round(sse / n, 4),
            "knn": round(knn_accuracy(torch.cat(emb), y), 3),
            "knn_nothing_masked": round(knn_accuracy(torch.cat(unmasked), y), 3),
            # diagnostic: the mean final state of the masked positions only, encoded with the
            # training masks (the states the objective trains), and of the visible ones
            "knn_masked_states": round(knn_accuracy(torch.cat(masked_emb), y), 3),
            "knn_visible_states": round(knn_accuracy(torch.cat(visible_emb), y), 3),
        }
    return out


def multiplicative_tokens(model) -> None:
    """token = g + e + g ⊙ e: the gene × value product is in the token itself, so a mean over tokens
    is a linear projection of the expression profile (as the bilinear probe's cell vector)."""
    base = model.components

    def components(batch, cells):
        g, e = base(batch, cells)
        return g, e + g * e

    model.components = components

    def encode(batch, cells, masked=None):
        g, e = base(batch, cells)
        if masked is not None:
            e = torch.where(masked.unsqueeze(-1), model.mask_vector.to(e.dtype), e)
        x = model.drop(g + e + g * e)
        for block in model.blocks:
            x = block(x, cells)
        return model.ln_f(x)

    model.encode = encode


def add_readout(model, kind: str, vocab_size: int) -> None:
    """x̂_g = MLP head(h_g) + <W h_g, u_g>: a gene-specific readout (scGPT's MVC decoder is of this form).
    ``tied``: u_g is the gene encoder's own output; ``table``: a separate learned table (zero init)."""
    from torch import nn

    from scencode.model import masked_sse

    d = model.cfg.d_model
    model.readout_proj = nn.Linear(d, d, bias=False)
    if kind == "table":
        model.readout_table = nn.Embedding(vocab_size, d)
        nn.init.zeros_(model.readout_table.weight)

    def forward(batch, embeddings=False):
        cells = model.cells(batch)
        h = model.encode(batch, cells, batch.masked)
        pred = predict(batch, cells, h)
        out = (pred, *masked_sse(pred, batch))
        return (*out, cells.cell_means(h.float())) if embeddings else out

    def predict(batch, cells, h):
        if kind.startswith("cell"):  # the cell's mean final state, read out per gene (scGPT's MVC)
            c = cells.cell_means(h)
            c = c[cells._cell_and_slot()[0]] if hasattr(cells, "offsets") else c[:, None].expand_as(h)
            u = model.gene_gain * model.genes(batch.gene_ids)
            cell_term = (model.readout_proj(c) * u).sum(-1) / math.sqrt(d)
            return cell_term + (model.head(h).squeeze(-1) if kind == "cell+head" else model.head[-1].bias)
        u = model.readout_table(batch.gene_ids) if kind == "table" else model.gene_gain * model.genes(batch.gene_ids)
        return model.head(h).squeeze(-1) + (model.readout_proj(h) * u).sum(-1) / math.sqrt(d)

    model.forward = forward


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument(
        "--variants",
        default=str(Path(__file__).with_name("identity_gpu_variants.json")),
        help="JSON list of variant dicts (overrides of BASE, with a name); default: the variants "
        "measured on the lent H200 (README, 'What the demo's models learn')",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--checkpoints", default="100,250,500,1000,2000,4000,8000", help="steps at which to evaluate")
    ap.add_argument("--partial", help="folder: each variant's report is written there at every checkpoint")
    args = ap.parse_args()
    variants = json.loads(Path(args.variants).read_text())
    checkpoints = [int(c) for c in args.checkpoints.split(",")]
    variants = [
        {"steps": args.steps, "threads": args.threads, "checkpoints": checkpoints, "partial": args.partial, **v}
        for v in variants
    ]
    with mp.get_context("spawn").Pool(args.workers) as pool:
        results = []
        for r in pool.imap_unordered(run, variants):
            results.append(r)
            last = r["report"][-1]
            print(r["variant"]["name"], json.dumps(last), flush=True)
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
