"""Does a model learn cell identity from the masked-value objective? (issue: the demo's transformers
stop at the context-free loss.)

On a tokenized corpus (the demo's, after `snakemake --cores 2`), trains for ``--steps`` steps with
the workflow's loader and objective (masked MSE on x̃):
- ``transformer``: the study's CellTransformer (``--model`` JSON: d_model, n_layers, …), calibrated
  as the workflow does;
- ``bilinear``: a probe model with the same inputs, x̂_g = b_g + u_g · c + w · mean(x̃ visible), where
  the cell vector c = mean over visible tokens of (E_h + F_h x̃_h);
and reports, per evaluation corpus, kNN accuracy (k = 10, 80/20 stratified split) and a logistic-
regression probe on each model's cell vector (transformer: mean of final-layer tokens, the study's),
next to reference predictors of masked x̃ fitted on the visible tokens: per-gene mean, gene mean +
per-cell offset, and cell type × gene mean + offset (an oracle that knows the labels).

    PYTHONPATH=src python benchmarks/cell_identity.py --steps 600 [--model '{"d_model": 64}']
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier

from scencode.formats import load_vocab
from scencode.loader import LoaderConfig, ShardBatches
from scencode.model import Batch, CellTransformer, ModelConfig, masked_sse


class Bilinear(torch.nn.Module):
    def __init__(self, vocab_size: int, rank: int = 32):
        super().__init__()
        self.E, self.F, self.U = (torch.nn.Embedding(vocab_size, rank) for _ in range(3))
        self.b = torch.nn.Embedding(vocab_size, 1)
        self.w = torch.nn.Parameter(torch.ones(1))
        for table in (self.E, self.F, self.U):
            torch.nn.init.normal_(table.weight, 0, 0.1)
        torch.nn.init.constant_(self.b.weight, 1.5)

    def cell(self, batch: Batch, visible: torch.Tensor) -> torch.Tensor:
        v = visible.float().unsqueeze(-1)
        n = v.sum(1).clamp(min=1)
        ids, x = batch.gene_ids, batch.xnorm.unsqueeze(-1)
        return ((self.E(ids) + self.F(ids) * x) * v).sum(1) / n

    def forward(self, batch: Batch) -> torch.Tensor:
        visible = batch.valid & ~batch.masked
        c = self.cell(batch, visible)
        mean_x = (batch.xnorm * visible).sum(1, keepdim=True) / visible.sum(1, keepdim=True).clamp(min=1)
        pred = self.b(batch.gene_ids).squeeze(-1) + (self.U(batch.gene_ids) * c[:, None]).sum(-1) + self.w * mean_x
        return pred, *masked_sse(pred, batch)  # as CellTransformer: predictions and the masked loss

    def embed(self, batch: Batch) -> torch.Tensor:
        return self.cell(batch, batch.valid)


def embed_transformer(model: CellTransformer, batch: Batch) -> torch.Tensor:
    return model(batch, embeddings=True)[3]


def classify(embedding: np.ndarray, labels: np.ndarray) -> dict:
    a, b, ya, yb = train_test_split(embedding, labels, test_size=0.2, stratify=labels, random_state=0)
    return {
        "knn_accuracy": float(KNeighborsClassifier(10).fit(a, ya).score(b, yb)),
        "linear_probe_accuracy": float(LogisticRegression(max_iter=3000).fit(a, ya).score(b, yb)),
    }


def reference_predictors(batches: list[dict]) -> dict:
    rows = []
    for b in batches:
        valid = b.valid.numpy()
        for i in range(len(valid)):
            v = valid[i]
            rows.append(
                pd.DataFrame(
                    {
                        "cell": b.meta["cell_id"][i],
                        "label": b.meta["label"][i],
                        "gene": b.gene_ids[i][v].numpy(),
                        "x": b.xnorm[i][v].numpy(),
                        "masked": b.masked[i][v].numpy(),
                    }
                )
            )
    d = pd.concat(rows, ignore_index=True)
    vis, msk = d[~d.masked], d[d.masked]
    gene = vis.groupby("gene").x.mean()
    by_type = vis.groupby(["label", "gene"]).x.mean()

    def offset(pred_visible):
        return (vis.x - pred_visible).groupby(vis.cell).mean()

    p_gene = msk.gene.map(gene).fillna(vis.x.mean())
    p_offset = p_gene + msk.cell.map(offset(vis.gene.map(gene))).fillna(0)
    typed = lambda frame: pd.Series(
        by_type.reindex(pd.MultiIndex.from_arrays([frame.label, frame.gene])).to_numpy(), index=frame.index
    )
    p_type = typed(msk).fillna(p_gene) + msk.cell.map(offset(typed(vis))).fillna(0)
    mse = lambda p: float(((p - msk.x) ** 2).mean())
    return {"gene_mean_mse": mse(p_gene), "gene_mean_offset_mse": mse(p_offset), "type_gene_offset_mse": mse(p_type)}


def train(model: torch.nn.Module, corpus: str, loader: LoaderConfig, steps: int, lr: float) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=1e-5)
    losses, step, epoch = [], 0, 0
    while step < steps:
        for batch in ShardBatches(corpus, "train", loader, epoch=epoch):
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / 20)
            sse, n = model(batch)[1:]
            loss = sse / n
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            if step >= steps:
                break
        epoch += 1
    return losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="results")
    ap.add_argument("--eval", nargs="+", default=["sim_blood_eval", "sim_lung_eval"])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=3e-3, help="transformer's learning rate")
    ap.add_argument("--probe-lr", type=float, default=1e-2, help="bilinear probe's learning rate")
    ap.add_argument("--only", choices=("transformer", "bilinear"), help="train one of the two")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--model", default='{"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 128, "dropout": 0.0}')
    args = ap.parse_args()
    torch.manual_seed(0)
    corpus = f"{args.results}/tokens/train"
    vocab, _ = load_vocab(f"{args.results}/vocab.parquet")
    # padded batches: the probe and the reference predictors read (cells, genes) arrays
    loader = LoaderConfig(batch_size=32, context=args.context, bucket_batches=20, layout="padded")
    eval_loader = LoaderConfig(batch_size=256, context=args.context, layout="padded")
    evals = {
        name: list(
            ShardBatches(
                f"{args.results}/tokens/{name}",
                None,
                eval_loader,
                shuffle=False,
                mask=True,
                with_cell_ids=True,
                columns=("label",),
            )
        )
        for name in args.eval
    }
    result = {
        "steps": args.steps,
        "lr": args.lr,
        "probe_lr": args.probe_lr,
        "context": args.context,
        "reference": {name: reference_predictors(batches) for name, batches in evals.items()},
    }
    transformer = CellTransformer(ModelConfig(vocab_size=len(vocab), **json.loads(args.model)))
    first = ShardBatches(corpus, "train", loader)
    transformer.calibrate([b for _, b in zip(range(8), first)])
    for name, model, embed, lr in (
        ("transformer", transformer, embed_transformer, args.lr),
        ("bilinear", Bilinear(len(vocab)), lambda m, b: m.embed(b), args.probe_lr),
    ):
        if args.only and name != args.only:
            continue
        start = time.perf_counter()
        losses = train(model, corpus, loader, args.steps, lr)
        model.eval()
        scores = {}
        with torch.no_grad():
            for dataset, batches in evals.items():
                sse = sum(float(model(b)[1]) for b in batches)
                n = sum(int(model(b)[2]) for b in batches)
                emb = np.concatenate([embed(model, b).numpy() for b in batches])
                labels = np.concatenate([np.asarray(b.meta["label"]) for b in batches])
                scores[dataset] = {"masked_mse": sse / n, **classify(emb, labels)}
        result[name] = {
            "train_loss_last_50": float(np.mean(losses[-50:])),
            "seconds": time.perf_counter() - start,
            "eval": scores,
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
