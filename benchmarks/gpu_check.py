"""Every GPU check in one command; prints one JSON object (last line of stdout).

Runs on a bare CUDA machine with only torch, numpy, pyarrow and pandas (plus, for the ESM-2 part,
the pure-Python wheels of fair-esm and tqdm on PYTHONPATH), from a checkout:

    PYTHONPATH=src python benchmarks/gpu_check.py            # ≈ 5 minutes on one H100

* ``train_step``: the study's dimensions (d 512, 12 blocks, 8 heads, feed-forward 1024) in bf16,
  one optimiser micro-step on cells of realistic lengths in three layouts: padded to the longest
  cell of a random batch, length-bucketed (padded), and packed (real tokens only, variable-length
  attention through jagged nested tensors), with and without ``torch.compile``: real tokens/s, the
  real-token fraction, and MFU (the model FLOPs of the real cells, attention at each cell's own
  length, against the card's dense bf16 peak, named in ``peak``);
* ``bf16_vs_fp32``: the masked loss of the same model and batch in both precisions;
* ``pretrain``: ``scencode pretrain`` through the real CLI on a synthetic corpus: the loss falls
  over ``--pretrain-steps`` steps, and a second call with more steps resumes from ``last.pt``;
* ``torchrun``: the pretraining rule's multi-GPU path on this machine's one GPU: ``scencode
  pretrain`` under torchrun (a process group, NCCL on CUDA), stopped by SIGTERM to every process of
  the job as SLURM stops it, then resumed from ``last.pt``;
* ``embed``: ``scencode embed`` of the trained model on CUDA (Parquet; the context diagnostic);
* ``esm2``: ``scencode esm-tiny`` + ``scencode esm-embed`` of a few hundred sequences on CUDA;
* ``paper_estimate``: the study's 8 configurations × 3 epochs × 10M cells in GPU-hours at the best
  measured train-step throughput (assumed tokens per cell stated in the output).

``--device cpu --smoke`` runs every part at toy sizes (the tests do, so the script cannot rot).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from scencode.atomic import write_json
from scencode.devices import peak_flops
from scencode.formats import SPECIAL_TOKENS, write_vocab
from scencode.model import Batch, CellTransformer, ModelConfig
from scencode.sampling import pack
from scencode.shards import FORMAT_VERSION, MANIFEST, file_sha256, footer_sha256, shard_name, shard_schema

STUDY = dict(d_model=512, n_layers=12, n_heads=8, d_ff=1024, dropout=0.1)
SMOKE = dict(d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.1)
PAPER = dict(configurations=8, epochs=3, cells=10_000_000, tokens_per_cell=900)  # tokens: an assumption


# ---------------------------------------------------------------- synthetic data in scencode's formats


def _mean_mse(model, batch):
    """The training objective of one batch (masked squared error, averaged)."""
    _, sse, n = model(batch)
    return sse / n.clamp(min=1)


def cell_lengths(n: int, context: int, rng: np.random.Generator) -> np.ndarray:
    """Non-zero genes per cell, heavy-tailed as in CELLxGENE droplet data (median ≈ 0.6 × context)."""
    return np.clip(rng.lognormal(np.log(0.6 * context), 0.5, n), 20, 3 * context).astype(np.int64)


def write_corpus(
    folder: Path, n_cells: int, vocab_size: int, context: int, seed: int, with_labels: bool = False
) -> Path:
    """A token corpus (shards + manifest) and its vocabulary, as ``scencode tokenize`` writes them;
    cell types shift a block of genes so that a model has something to learn."""
    rng = np.random.default_rng(seed)
    # one gene profile for every corpus (a training and an evaluation corpus come from one tissue)
    popularity = np.random.default_rng(12345).gamma(0.6, 1.0, vocab_size - 2)
    vocab = pd.DataFrame(
        {
            "token_id": np.arange(vocab_size),
            "gene_id": [*SPECIAL_TOKENS, *(f"ENSG{i:011d}" for i in range(vocab_size - 2))],
            "gene_symbol": "",
            "gene_type": ["special", "special", *["protein_coding"] * (vocab_size - 2)],
            "n_datasets": 1,
        }
    )
    digest = write_vocab(vocab, folder / "vocab.parquet")
    lengths = np.minimum(cell_lengths(n_cells, context, rng), vocab_size - 2)
    types = rng.integers(0, 4, n_cells)
    genes, counts = [], []
    for n, t in zip(lengths, types):
        p = popularity.copy()
        p[t * 50 : (t + 1) * 50] *= 20  # the type's program
        chosen = np.sort(rng.choice(vocab_size - 2, n, replace=False, p=p / p.sum())) + 2
        genes.append(chosen.astype(np.int32))
        counts.append((1 + rng.poisson(2 * np.minimum(p[chosen - 2] / p.mean(), 10))).astype(np.int32))
    split = np.where(rng.random(n_cells) < 0.05, "val", np.where(rng.random(n_cells) < 0.05, "test", "train"))
    columns = {
        "cell_id": [f"c{i}" for i in range(n_cells)],
        "dataset_id": ["synthetic"] * n_cells,
        "gene_ids": genes,
        "counts": counts,
        "total_counts": np.array([c.sum() * 1.2 for c in counts], np.float32),
        "split": split,
    }
    if with_labels:
        columns |= {"label": [f"type{t}" for t in types], "batch": [f"b{i % 2}" for i in range(n_cells)]}
    corpus = folder / ("eval" if with_labels else "train")
    corpus.mkdir(parents=True)
    table = pa.table(columns, schema=shard_schema(with_labels))
    pq.write_table(table, corpus / shard_name(0), row_group_size=1024, compression="zstd", write_page_checksum=True)
    path = corpus / shard_name(0)
    write_json(
        {
            "format_version": FORMAT_VERSION,
            "corpus": corpus.name,
            "n_cells": n_cells,
            "splits": {s: int((split == s).sum()) for s in ("train", "val", "test")},
            "shards": [
                {
                    "file": path.name,
                    "n_cells": n_cells,
                    "bytes": path.stat().st_size,
                    "sha256": file_sha256(path),
                    "footer_sha256": footer_sha256(path),
                }
            ],
            "vocab_hash": digest,
            "vocab_size": vocab_size,
            "columns": table.schema.names,
        },
        corpus / MANIFEST,
    )
    return corpus


# ---------------------------------------------------------------- train step throughput


def model_flops(model: CellTransformer, lengths: np.ndarray) -> float:
    """Training FLOPs of cells of these lengths: 6 × (the model's matmul weights, counted from its
    Linear layers) per token + 12 × layers × d per pair of tokens within a cell (attention scores
    and values). Padding is not useful work, so it is not counted."""
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    cfg = model.cfg
    lengths = lengths.astype(np.float64)
    return float(6 * matmul * lengths.sum() + 12 * cfg.n_layers * cfg.d_model * (lengths**2).sum())


def batch_of(lengths: np.ndarray, width: int, vocab: int, device, rng) -> Batch:
    n = len(lengths)
    valid = torch.from_numpy(np.arange(width)[None, :] < lengths[:, None])
    counts = torch.from_numpy(rng.integers(1, 20, (n, width)).astype(np.float32)) * valid
    batch = Batch(
        gene_ids=torch.from_numpy(rng.integers(2, vocab, (n, width))) * valid,
        counts=counts,
        xnorm=torch.log1p(counts / counts.sum(1, keepdim=True).clamp(min=1) * 1e4),
        valid=valid,
        masked=valid & torch.from_numpy(rng.random((n, width)) < 0.5),
    )
    return batch.to(device)


def packed(batch: Batch) -> Batch:
    """The same cells as a packed batch, laid out by the loader's own ``data.pack``."""
    arrays = {k: getattr(batch, k).cpu().numpy() for k in ("gene_ids", "counts", "xnorm", "masked", "valid")}
    return Batch(**{k: torch.from_numpy(v) for k, v in pack(arrays).items()}).to(batch.masked.device)


def time_steps(model, optimizer, batches: list[Batch], amp, steps: int) -> float:
    """Seconds per pass over ``batches`` (one micro-batch each: forward, masked loss, backward, step)."""

    def one_pass():
        for batch in batches:
            with torch.autocast(batch.masked.device.type, dtype=amp, enabled=amp is not None):
                sse, n = model(batch)[1:]
            (sse / n.clamp(min=1)).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    one_pass()  # warm-up (and compilation)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        one_pass()
    sync()
    return (time.perf_counter() - start) / steps


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def train_step(device, dims: dict, cells: int, batch_size: int, context: int, steps: int, compile_modes) -> dict:
    rng = np.random.default_rng(0)
    vocab = 20_000
    cfg = ModelConfig(vocab, "learned", "continuous", **dims)
    lengths = np.minimum(cell_lengths(cells, context, rng), context)
    batches = {
        "padded": [
            batch_of(lengths[i : i + batch_size], context, vocab, device, rng) for i in range(0, cells, batch_size)
        ]
    }
    by_length = np.sort(lengths)
    batches["bucketed"] = [
        batch_of(by_length[i : i + batch_size], int(by_length[i : i + batch_size].max()), vocab, device, rng)
        for i in range(0, cells, batch_size)
    ]
    batches["packed"] = [packed(b) for b in batches["padded"]]  # random batches: packing needs no bucketing
    amp = torch.bfloat16 if device.type == "cuda" else None
    peak_name, peak = peak_flops(device)
    out = {
        "dims": dims,
        "cells": cells,
        "batch_size": batch_size,
        "context": context,
        "precision": "bf16" if amp else "fp32",
        "peak": peak_name,
    }
    real_tokens = int(lengths.sum())
    for compiled in compile_modes:
        for layout, data in batches.items():
            torch.manual_seed(0)
            model = CellTransformer(cfg).to(device).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
            # one compilation for every bucket width / token count (else one per shape)
            runner = torch.compile(model, dynamic=layout != "padded") if compiled else model
            key = f"{layout}{'_compiled' if compiled else ''}"
            try:
                seconds = time_steps(runner, optimizer, data, amp, steps)
            except Exception as exc:  # e.g. no compiler toolchain for torch.compile: say so, go on
                out[f"{key}_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                continue
            computed = sum(int(b.real.numel()) for b in data)
            out[f"{key}_real_tokens_per_s"] = real_tokens / seconds
            out[f"{key}_real_token_fraction"] = real_tokens / computed
            out[f"{key}_mfu"] = model_flops(model, lengths) / seconds / peak if peak else None
            del model, optimizer, runner
    return out


def packed_vs_padded(device, dims: dict) -> dict:
    """The same cells padded and packed (on CUDA: jagged flash attention): loss and gradients agree."""
    rng = np.random.default_rng(3)
    torch.manual_seed(0)
    model = CellTransformer(ModelConfig(20_000, "learned", "hard", **{**dims, "dropout": 0.0})).to(device)
    lengths = cell_lengths(16, 512, rng).clip(max=512)
    batch = batch_of(lengths, int(lengths.max()), 20_000, device, rng)
    out = {
        "attention": {
            "fp32": "jagged nested tensors" if device.type == "cuda" else "padded view",
            "bf16": "varlen flash" if device.type == "cuda" else "padded view (no bf16 on CPU)",
        }
    }
    for name, amp in (("fp32", None), ("bf16", torch.bfloat16 if device.type == "cuda" else None)):
        losses, grads = [], []
        for layout in (batch, packed(batch)):
            model.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = _mean_mse(model, layout)
            loss.backward()
            losses.append(float(loss.detach()))
            grads.append(torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None]))
        out[f"{name}_loss_relative_difference"] = abs(losses[0] - losses[1]) / abs(losses[0])
        out[f"{name}_grad_relative_difference"] = float((grads[0] - grads[1]).norm() / grads[0].norm())
    return out


def bf16_vs_fp32(device, dims: dict) -> dict:
    rng = np.random.default_rng(1)
    torch.manual_seed(0)
    model = CellTransformer(ModelConfig(20_000, "learned", "soft", **{**dims, "dropout": 0.0})).to(device).eval()
    batch = batch_of(cell_lengths(16, 512, rng).clip(max=512), 512, 20_000, device, rng)
    with torch.no_grad():
        fp32 = _mean_mse(model, batch).item()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            bf16 = _mean_mse(model, batch).item()
    return {
        "fp32_loss": fp32,
        "bf16_loss": bf16,
        "relative_difference": abs(bf16 - fp32) / abs(fp32),
        "bf16_autocast": device.type == "cuda",
    }


# ---------------------------------------------------------------- the real CLI


def scencode(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "scencode", *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"scencode {args[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def pretrain_and_embed(work: Path, smoke: bool, steps: int) -> tuple[dict, dict]:
    context = 64 if smoke else 512
    corpus = write_corpus(work / "data", 2_000 if smoke else 30_000, 2_000, context, seed=0)
    evaluation = write_corpus(work / "evaldata", 300 if smoke else 5_000, 2_000, context, seed=1, with_labels=True)
    dims = SMOKE if smoke else dict(d_model=256, n_layers=4, n_heads=4, d_ff=512, dropout=0.1)
    settings = {
        "model": {**dims, "gene_encoding": "learned", "expression_encoding": "soft"},
        "loader": {"batch_size": 16 if smoke else 128, "context": context, "bucket_batches": 8},
        "train": {
            "lr": 1e-3,
            "grad_accum": 1,
            "max_steps": steps,
            "warmup_steps": 10,
            "val_every": max(1, steps // 4),
            "val_cells": 500,
            "checkpoint_every": max(1, steps // 2),
            "log_every": max(1, steps // 10),
            "num_workers": 2,
        },
    }
    out = work / "model"
    args = [
        "pretrain",
        "--name",
        "learned-soft-s777",
        "--corpus",
        str(corpus),
        "--vocab",
        str(work / "data" / "vocab.parquet"),
        "--out",
        str(out),
    ]
    start = time.perf_counter()
    scencode(*args, "--params", json.dumps(settings))
    seconds = time.perf_counter() - start
    logged = pq.read_table(out / "train_log.parquet").to_pandas()
    train, val = logged.dropna(subset=["train_loss"]), logged.dropna(subset=["val_loss"])
    status = json.loads((out / "model.json").read_text())
    settings["train"]["max_steps"] = steps + max(2, steps // 10)
    # more steps change the run's identity only in max_steps, which resuming ignores
    resumed = scencode(*args, "--params", json.dumps(settings))
    status_after = json.loads((out / "model.json").read_text())
    pretrain = {
        "steps": status["steps"],
        "seconds": seconds,
        "first_train_loss": float(train.train_loss.iloc[0]),
        "last_train_loss": float(train.train_loss.iloc[-1]),
        "val_losses": dict(zip(val.step.astype(str), val.val_loss)),
        "loss_fell": bool(val.val_loss.iloc[-1] < val.val_loss.iloc[0]),
        "best_val_loss": status["best_val_loss"],
        "checkpoint_step": status["checkpoint_step"],
        "tokens_per_s": float(train.tokens_per_s.iloc[-1]),
        "resumed": f"resumed learned-soft-s777 at step {steps}" in resumed.stderr,
        "steps_after_resume": status_after["steps"],
    }
    recon = work / "recon.json"
    start = time.perf_counter()
    scencode(
        "embed",
        "--model",
        str(out / "model.json"),
        "--corpus",
        str(evaluation),
        "--run",
        "learned-soft-s777",
        "--dataset",
        "synthetic",
        "--params",
        json.dumps(settings["loader"]),
        "--out",
        str(work / "embedding.parquet"),
        "--reconstruction",
        str(recon),
    )
    embed = {
        **json.loads(recon.read_text()),
        "seconds": time.perf_counter() - start,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    return pretrain, embed


def torchrun_stop_and_resume(work: Path, smoke: bool) -> dict:
    """The job's path under torchrun: train, SIGTERM to the whole process group mid-run (last.pt at
    the step under way, a non-zero exit), then the rerun resumes there and finishes."""
    import os
    import signal

    corpus = work / "data" / "train"
    dims = SMOKE if smoke else dict(d_model=256, n_layers=4, n_heads=4, d_ff=512, dropout=0.1)
    settings = {
        "model": {**dims, "gene_encoding": "learned", "expression_encoding": "log"},
        "loader": {"batch_size": 16 if smoke else 128, "context": 64 if smoke else 512, "bucket_batches": 8},
        "train": {"max_steps": 100_000, "warmup_steps": 10, "val_every": 0, "checkpoint_every": 100_000,
                  "log_every": 1, "grad_accum": 1, "num_workers": 1},
    }  # fmt: skip
    out = work / "torchrun_model"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "scencode"]
    args = [*launch, "pretrain", "--name", "learned-log-s777", "--corpus", str(corpus)]
    args += ["--vocab", str(work / "data" / "vocab.parquet"), "--out", str(out)]
    job = subprocess.Popen(
        [*args, "--params", json.dumps(settings)], stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    seen, deadline = "", time.monotonic() + 600
    while "step 5 loss" not in seen and time.monotonic() < deadline and job.poll() is None:
        seen += job.stderr.readline()
    os.killpg(job.pid, signal.SIGTERM)
    _, rest = job.communicate(timeout=300)
    stopped_at = int(torch.load(out / "last.pt", weights_only=True, map_location="cpu")["step"])
    settings["train"]["max_steps"] = stopped_at + 5
    resumed = subprocess.run([*args, "--params", json.dumps(settings)], capture_output=True, text=True, timeout=900)
    status = json.loads((out / "model.json").read_text()) if resumed.returncode == 0 else {}
    return {
        "stopped_exit": job.returncode,
        "stopped_at": stopped_at,
        "checkpointed_on_stop": "last.pt saved, rerun to resume" in seen + rest,
        "resumed": f"resumed learned-log-s777 at step {stopped_at}" in resumed.stderr,
        "resume_exit": resumed.returncode,
        "steps_after_resume": status.get("steps"),
        "device": status.get("cost", {}).get("device"),
        "process_group": "nccl" if torch.cuda.is_available() else "gloo",
    }


def esm2(work: Path, smoke: bool) -> dict:
    rng = np.random.default_rng(2)
    amino = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    n = 20 if smoke else 400
    with open(work / "proteins.fa", "w") as fh:
        for i in range(n):
            length = int(np.clip(rng.lognormal(np.log(400), 0.6), 30, 3000))
            fh.write(
                f">ENSP{i:011d}.1 pep chromosome:GRCh38 gene:ENSG{i:011d}.1 transcript:ENST{i:011d}.1 "
                f"gene_biotype:protein_coding transcript_biotype:protein_coding gene_symbol:G{i}\n"
            )
            fh.write("".join(rng.choice(amino, length)) + "\n")
    layers, dim, heads = (2, 32, 2) if smoke else (6, 320, 20)
    scencode(
        "esm-tiny", "--out", str(work / "tiny.pt"), "--layers", str(layers), "--dim", str(dim), "--heads", str(heads)
    )
    start = time.perf_counter()
    scencode(
        "esm-embed",
        "--fasta",
        str(work / "proteins.fa"),
        "--weights",
        str(work / "tiny.pt"),
        "--out",
        str(work / "genes.parquet"),
        "--params",
        json.dumps({"device": "auto"}),
    )
    table = pq.read_table(work / "genes.parquet")
    return {
        "sequences": n,
        "genes": table.num_rows,
        "seconds": time.perf_counter() - start,
        "dim": len(table.column("embedding")[0]),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "model": f"fair-esm ESM2, {layers} layers, dim {dim}, random weights",
    }


def paper_estimate(train: dict) -> dict:
    keys = [k for k in train if k.endswith("_real_tokens_per_s")]
    best = max(keys, key=lambda k: train[k])
    tokens = PAPER["configurations"] * PAPER["epochs"] * PAPER["cells"] * PAPER["tokens_per_cell"]
    hours = tokens / train[best] / 3600
    return {
        **PAPER,
        "assumption": "tokens_per_cell = mean min(1024, non-zero genes) of CELLxGENE cells (assumed)",
        "layout": best.removesuffix("_real_tokens_per_s"),
        "gpu_hours": hours,
        "gpu_hours_per_configuration": hours / PAPER["configurations"],
    }


def attempt(result: dict, name: str, part, *args):
    """Runs one part; a failure is recorded under ``<name>_error`` and the other parts still run."""
    try:
        value = part(*args)
    except Exception as exc:
        result[f"{name}_error"] = f"{type(exc).__name__}: {str(exc)[-1500:]}"
        return None
    return value


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="toy sizes (CPU tests)")
    p.add_argument("--pretrain-steps", type=int, default=200)
    p.add_argument("--skip", nargs="*", default=[], choices=["train_step", "compile", "pretrain", "esm2"])
    p.add_argument("--out", type=Path, help="also write the JSON here, after every part (a timeout keeps the rest)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    dims = SMOKE if args.smoke else STUDY
    timings = {}

    def save():
        if args.out:
            args.out.write_text(json.dumps({**result, "seconds": timings}, default=_plain))

    if "train_step" not in args.skip:
        start = time.perf_counter()
        compile_modes = (False,) if "compile" in args.skip else (False, True)
        result["train_step"] = attempt(
            result,
            "train_step",
            train_step,
            device,
            dims,
            64 if args.smoke else 512,
            16 if args.smoke else 64,
            64 if args.smoke else 1024,
            1 if args.smoke else 3,
            compile_modes,
        )
        if result["train_step"]:
            result["paper_estimate"] = paper_estimate(result["train_step"])
        timings["train_step"] = time.perf_counter() - start
        save()
    result["bf16_vs_fp32"] = attempt(result, "bf16_vs_fp32", bf16_vs_fp32, device, dims)
    result["packed_vs_padded"] = attempt(result, "packed_vs_padded", packed_vs_padded, device, dims)
    save()
    with tempfile.TemporaryDirectory() as tmp:
        if "pretrain" not in args.skip:
            start = time.perf_counter()
            result["pretrain"], result["embed"] = attempt(
                result, "pretrain", pretrain_and_embed, Path(tmp), args.smoke, args.pretrain_steps
            ) or (None, None)
            timings["pretrain_and_embed"] = time.perf_counter() - start
            save()
            start = time.perf_counter()
            result["torchrun"] = attempt(result, "torchrun", torchrun_stop_and_resume, Path(tmp), args.smoke)
            timings["torchrun"] = time.perf_counter() - start
            save()
        if "esm2" not in args.skip:
            start = time.perf_counter()
            result["esm2"] = attempt(result, "esm2", esm2, Path(tmp), args.smoke)
            timings["esm2"] = time.perf_counter() - start
    result["seconds"] = timings
    save()
    print(json.dumps(result, default=_plain))
    return result


def _plain(value):
    return str(value)


if __name__ == "__main__":
    main()
