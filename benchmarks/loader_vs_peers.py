"""scencode's training loader side by side with the loaders people train single-cell models with,
on the same cells: the same shuffled epoch from disk, the same batch size and context cap, each
delivered as the same training-ready batch (gene token ids, K of M genes sampled per cell, x̃,
masks: scencode's ``Batch``). Prints one JSON object on its last line: cells/s and peak RSS of each.

    pip install scdataset==0.3.0          # a check, not a dependency
    python benchmarks/loader_vs_peers.py [--cells 100000] [--nnz 1000] [--batch-size 256] [--context 1024]

* ``scencode``: ``data.ShardBatches`` over the Parquet token shards (the tokenize step's time is
  reported beside it, and ``cells_per_s_with_tokenize`` counts it against one epoch).
* ``scdataset``: scDataset 0.3.0 over the backed h5ad (``BlockShuffling``, its block sampling and
  batched, sorted fetches; ``fetch_factor`` 16), CSR rows turned into the same batch.
* ``annloader``: anndata's ``AnnLoader`` over the backed h5ad (shuffled), the same conversion.

The conversion of CSR rows into a batch (K of M sampling, masking, x̃) is scencode's own
``sample_tokens``/``to_batch`` for all three, so the figures differ by how cells reach memory.
Each loader runs in its own process (peak RSS is that process's); one thread each, no workers.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PEERS = ("scencode", "scdataset", "annloader")


def prepare(folder: Path, cells: int, nnz: int) -> dict:
    sys.path.insert(0, str(HERE))
    from synthetic import write_synthetic_h5ad

    from scencode.formats import write_vocab
    from scencode.tokenize import DatasetInput, TokenizeParams, tokenize_corpus
    from scencode.vocab import build_vocab

    write_synthetic_h5ad(folder / "cells.h5ad", cells, nnz)
    write_vocab(build_vocab([folder / "cells.h5ad"]), folder / "vocab.parquet")
    start = time.perf_counter()
    tokenize_corpus(
        "bench",
        [DatasetInput("bench", folder / "cells.h5ad")],
        folder / "vocab.parquet",
        folder / "tokens",
        TokenizeParams(val_fraction=0, test_fraction=0, row_group_cells=2048),
    )
    return {"tokenize_seconds": time.perf_counter() - start}


class CsrToBatch:
    """CSR rows (cells × the h5ad's genes) → scencode's training batch, with its own sampling code."""

    def __init__(self, folder: Path, cfg):
        import anndata as ad
        import pandas as pd

        from scencode.formats import load_vocab

        vocab, _ = load_vocab(folder / "vocab.parquet")
        genes = ad.read_h5ad(folder / "cells.h5ad", backed="r").var_names
        token = pd.Series(vocab.token_id.to_numpy(), index=vocab.gene_id)
        self.col_to_token = (
            token.reindex(genes).fillna(0).to_numpy(np.int32)
        )  # every synthetic gene is in the vocabulary
        self.cfg, self.n = cfg, 0

    def __call__(self, rows):
        from scencode.loader import sample_tokens, to_batch

        rows = rows.tocsr()
        lengths = np.diff(rows.indptr).astype(np.int64)
        keys = np.arange(self.n, self.n + rows.shape[0], dtype=np.uint64)  # a stable per-cell key
        self.n += rows.shape[0]
        sample = sample_tokens(
            self.col_to_token[rows.indices],
            rows.data.astype(np.int32),
            rows.indptr[:-1].astype(np.int64),
            lengths,
            keys,
            0,
            self.cfg,
        )
        return to_batch(sample, np.asarray(rows.sum(1)).ravel().astype(np.float32), self.cfg)


def batches(name: str, folder: Path, cfg):
    if name == "scencode":
        from scencode.loader import ShardBatches

        yield from ShardBatches(folder / "tokens", "train", cfg)
        return
    import anndata as ad

    convert = CsrToBatch(folder, cfg)
    adata = ad.read_h5ad(folder / "cells.h5ad", backed="r")
    if name == "scdataset":
        from scdataset import BlockShuffling, scDataset

        dataset = scDataset(
            adata,
            BlockShuffling(block_size=16),
            batch_size=cfg.batch_size,
            fetch_factor=16,
            fetch_callback=lambda collection, index: collection.X[index],
            batch_transform=convert,
            seed=cfg.seed,
        )
        yield from dataset
        return
    from anndata.experimental import AnnLoader

    loader = AnnLoader(adata, batch_size=cfg.batch_size, shuffle=True, use_default_converter=False)
    for view in loader:
        yield convert(view.X)


def measure(name: str, folder: Path, batch_size: int, context: int, max_batches: int) -> dict:
    import torch

    from scencode.loader import LoaderConfig

    torch.set_num_threads(1)
    cfg = LoaderConfig(batch_size=batch_size, context=context, seed=0)
    if name != "scencode":
        import anndata  # noqa: F401  (imported before the baseline: the peers need it, scencode's loader does not)
    baseline = peak_rss_mb()
    cells = tokens = n = 0
    start = time.perf_counter()
    for batch in batches(name, folder, cfg):
        cells += batch.n_cells
        tokens += int(batch.real.sum())
        n += 1
        if max_batches and n >= max_batches:
            break
    seconds = time.perf_counter() - start
    return {
        "cells": cells,
        "seconds": seconds,
        "cells_per_s": cells / seconds,
        "tokens_per_s": tokens / seconds,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_loading_mb": baseline,
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), imports included."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--nnz", type=int, default=1_000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--max-batches", type=int, default=0, help="stop each loader after this many batches (0: one epoch)")
    p.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    p.add_argument("--run", choices=PEERS, help=argparse.SUPPRESS)  # one loader, in this process
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run:
        result = measure(args.run, args.folder, args.batch_size, args.context, args.max_batches)
        print(json.dumps(result))
        return result
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result = {
            "cells": args.cells,
            "mean_nnz": args.nnz,
            "batch_size": args.batch_size,
            "context": args.context,
            **prepare(folder, args.cells, args.nnz),
            "loaders": {},
        }
        for name in args.peers:
            run = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--run",
                    name,
                    "--folder",
                    str(folder),
                    "--batch-size",
                    str(args.batch_size),
                    "--context",
                    str(args.context),
                    "--max-batches",
                    str(args.max_batches),
                ],
                capture_output=True,
                text=True,
            )
            if run.returncode:
                result["loaders"][name] = {"error": run.stderr.strip().splitlines()[-1] if run.stderr else "failed"}
                continue
            result["loaders"][name] = json.loads(run.stdout.strip().splitlines()[-1])
    ours = result["loaders"].get("scencode", {})
    if "seconds" in ours:
        # one epoch of the corpus with the tokenize step paid once (the shards serve every later epoch)
        epoch = args.cells / ours["cells_per_s"]
        ours["cells_per_s_with_tokenize"] = args.cells / (epoch + result["tokenize_seconds"])
        result["speedup"] = {
            name: ours["cells_per_s"] / other["cells_per_s"]
            for name, other in result["loaders"].items()
            if name != "scencode" and "cells_per_s" in other
        }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
