"""scencode's training loader side by side with the loaders people train single-cell models with,
on the same cells: the same shuffled epoch from disk, the same batch size and context cap, each
delivered as the same training-ready batch (gene token ids, K of M genes sampled per cell, x̃,
masks). Prints one JSON object on its last line: per loader cells/s, the cores it kept busy (CPU
seconds / wall seconds: annbatch reads with a Rust thread pool), cells/s per core, peak RSS, and
the one-time preparation each needs (scencode's tokenize, annbatch's shuffled Zarr collection).

    pip install scdataset==0.3.0          # a check, not a dependency
    python3.12 -m venv .venv-annbatch && .venv-annbatch/bin/pip install annbatch==0.3.1 zarrs==0.2.3 numba
    python benchmarks/loader_vs_peers.py [--cells 100000] [--nnz 1000] [--batch-size 256] [--context 1024]

* ``scencode``: ``loader.ShardBatches`` over the Parquet token shards (the tokenize step's time is
  reported beside it, and ``cells_per_s_with_tokenize`` counts it against one epoch).
* ``annbatch``: annbatch 0.3.1 (Python >= 3.12, so in its own venv: ``--annbatch-python``, default
  ``.venv-annbatch/bin/python``) over its pre-shuffled Zarr collection (``DatasetCollection``, read
  through zarrs, as its authors require on local disks), ``Loader(shuffle=True, chunk_size=32,
  preload_nchunks=256)`` as its README runs it; the collection's writing is its preparation.
* ``scdataset``: scDataset 0.3.0 over the backed h5ad (``BlockShuffling``, its block sampling and
  batched, sorted fetches; ``fetch_factor`` 16), CSR rows turned into the same batch.
* ``annloader``: anndata's ``AnnLoader`` over the backed h5ad (shuffled), the same conversion.

The conversion of CSR rows into a batch (K of M sampling, masking, x̃) is scencode's own
``sampling.sample_tokens``/``batch_arrays`` for the three peers (torch-free, so it runs in
annbatch's venv too), so the figures differ by how cells reach memory. Each loader runs in its own
process (peak RSS is that process's); no workers; scencode, scDataset and AnnLoader use one thread,
annbatch whatever its reader pool takes (counted in ``cores_used``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PEERS = ("scencode", "annbatch", "scdataset", "annloader")
ANNBATCH_PYTHON = HERE.parent / ".venv-annbatch" / "bin" / "python"
# annbatch's README: 32-cell chunks, 256 of them preloaded and shuffled together (8,192 cells)
ANNBATCH_CHUNK, ANNBATCH_PRELOAD = 32, 256


def prepare(folder: Path, cells: int, nnz: int) -> dict:
    sys.path.insert(0, str(HERE))
    import anndata as ad
    import pandas as pd
    from synthetic import write_synthetic_h5ad

    from scencode.formats import load_vocab, write_vocab
    from scencode.tokenize import DatasetInput, TokenizeParams, tokenize_corpus
    from scencode.vocab import build_vocab

    write_synthetic_h5ad(folder / "cells.h5ad", cells, nnz)
    write_vocab(build_vocab([folder / "cells.h5ad"]), folder / "vocab.parquet")
    # the h5ad's columns as token ids, for the peers that read CSR rows (every synthetic gene is in the vocabulary)
    vocab, _ = load_vocab(folder / "vocab.parquet")
    token = pd.Series(vocab.token_id.to_numpy(), index=vocab.gene_id)
    genes = ad.read_h5ad(folder / "cells.h5ad", backed="r").var_names
    np.save(folder / "col_to_token.npy", token.reindex(genes).fillna(0).to_numpy(np.int32))
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
    """CSR rows (cells × the h5ad's genes) → the training batch's arrays, with scencode's own
    sampling code (numpy and numba: the same in every peer's process)."""

    def __init__(self, folder: Path, cfg):
        self.col_to_token = np.load(folder / "col_to_token.npy")
        self.cfg, self.n = cfg, 0

    def __call__(self, rows):
        from scencode.sampling import batch_arrays, sample_tokens

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
        return batch_arrays(sample, np.asarray(rows.sum(1)).ravel().astype(np.float32), self.cfg)


def annbatch_zarr():
    import zarr

    zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})  # annbatch: "necessary for local filesystems"


def annbatch_x_only(group):
    """A collection's dataset as the loader reads it: X only (obs columns would be yielded too)."""
    import anndata as ad

    return ad.AnnData(X=ad.io.sparse_dataset(group["X"]))


def convert_for_annbatch(folder: Path, seed: int) -> dict:
    """annbatch's one-time preparation: its shuffled, chunked Zarr collection of the h5ad."""
    from annbatch import DatasetCollection

    annbatch_zarr()
    start = time.perf_counter()
    DatasetCollection(folder / "annbatch.zarr").add_adatas(
        [folder / "cells.h5ad"], shuffle=True, rng=np.random.default_rng(seed)
    )
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


def batches(name: str, folder: Path, cfg):
    if name == "scencode":
        from scencode.loader import ShardBatches

        yield from ShardBatches(folder / "tokens", "train", cfg)
        return
    convert = CsrToBatch(folder, cfg)
    if name == "annbatch":
        import anndata as ad
        from annbatch import DatasetCollection, Loader

        annbatch_zarr()
        with ad.settings.override(remove_unused_categories=False):  # as annbatch's README loads
            loader = Loader(
                batch_size=cfg.batch_size,
                chunk_size=ANNBATCH_CHUNK,
                preload_nchunks=ANNBATCH_PRELOAD,
                shuffle=True,
                preload_to_gpu=False,
                rng=np.random.default_rng(cfg.seed),
            ).use_collection(DatasetCollection(folder / "annbatch.zarr", mode="r"), load_adata=annbatch_x_only)
            for batch in loader:
                yield convert(batch["X"])
        return
    import anndata as ad

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


def warm_up_sampler(cfg) -> None:
    """The compiled sampler loaded (or, in a new interpreter, compiled) before the clock starts."""
    from scencode.sampling import sample_tokens

    one = np.ones(4, np.int32)
    sample_tokens(one, one, np.zeros(1, np.int64), np.array([4]), np.zeros(1, np.uint64), 0, cfg)


def cells_and_tokens(batch) -> tuple[int, int]:
    """A scencode ``Batch`` or the peers' packed arrays: cells, real tokens."""
    if isinstance(batch, dict):
        return len(batch["offsets"]) - 1, len(batch["gene_ids"])
    return batch.n_cells, int(batch.real.sum())


def measure(name: str, folder: Path, batch_size: int, context: int, max_batches: int) -> dict:
    from scencode.run_config import LoaderConfig

    if name == "scencode":
        import torch

        torch.set_num_threads(1)
    else:
        import anndata  # noqa: F401  (imported before the baseline: the peers need it, scencode's loader does not)
    cfg = LoaderConfig(batch_size=batch_size, context=context, seed=0)
    warm_up_sampler(cfg)
    baseline = peak_rss_mb()
    cells = tokens = n = 0
    cpu, start = cpu_seconds(), time.perf_counter()
    for batch in batches(name, folder, cfg):
        c, t = cells_and_tokens(batch)
        cells, tokens, n = cells + c, tokens + t, n + 1
        if max_batches and n >= max_batches:
            break
    seconds, cores = time.perf_counter() - start, (cpu_seconds() - cpu) / (time.perf_counter() - start)
    return {
        "cells": cells,
        "seconds": seconds,
        "cells_per_s": cells / seconds,
        "tokens_per_s": tokens / seconds,
        "cores_used": cores,
        "cells_per_s_per_core": cells / seconds / max(cores, 1e-9),
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_loading_mb": baseline,
    }


def cpu_seconds() -> float:
    """This process's CPU time, every thread's."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), imports included."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def interpreter(name: str, annbatch_python: Path) -> str:
    return str(annbatch_python) if name == "annbatch" else sys.executable


def run_child(python: str, *args: str) -> dict:
    """One step in a process of its own; its JSON, or the last line of its error."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}  # annbatch's venv has no scencode installed
    run = subprocess.run([python, __file__, *args], capture_output=True, text=True, env=env)
    if run.returncode:
        return {"error": run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "failed"}
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--nnz", type=int, default=1_000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--max-batches", type=int, default=0, help="stop each loader after this many batches (0: one epoch)")
    p.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    p.add_argument(
        "--annbatch-python",
        type=Path,
        default=Path(os.environ.get("SCENCODE_ANNBATCH_PYTHON", ANNBATCH_PYTHON)),
        help="a Python >= 3.12 with annbatch, zarrs and numba (default: .venv-annbatch/bin/python)",
    )
    p.add_argument("--run", choices=PEERS, help=argparse.SUPPRESS)  # one loader, in this process
    p.add_argument("--convert", action="store_true", help=argparse.SUPPRESS)  # annbatch's preparation
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run:
        if args.convert:
            result = convert_for_annbatch(args.folder, seed=0)
        else:
            result = measure(args.run, args.folder, args.batch_size, args.context, args.max_batches)
        print(json.dumps(result))
        return result
    if "annbatch" in args.peers and not args.annbatch_python.exists():
        raise SystemExit(
            f"{args.annbatch_python}: no such interpreter (annbatch needs Python >= 3.12: see the docstring)"
        )
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
        if "annbatch" in args.peers:
            result["annbatch_preparation"] = run_child(
                str(args.annbatch_python), "--run", "annbatch", "--convert", "--folder", str(folder)
            )
        for name in args.peers:
            sizes = ["--batch-size", str(args.batch_size), "--context", str(args.context)]
            result["loaders"][name] = run_child(
                interpreter(name, args.annbatch_python),
                *["--run", name, "--folder", str(folder), *sizes, "--max-batches", str(args.max_batches)],
            )
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
        result["speedup_per_core"] = {
            name: ours["cells_per_s_per_core"] / other["cells_per_s_per_core"]
            for name, other in result["loaders"].items()
            if name != "scencode" and "cells_per_s_per_core" in other
        }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
