"""Tokenization throughput against the read limit, and peak memory.

Generates a QC-style h5ad (CSR counts, Ensembl var names) of ``--cells`` cells with about
``--nnz`` non-zero genes each, then, each in its own process so peak RSS is its own:
  * read_limit: read the same CSR blocks and write indices/data as Parquet list columns, no processing;
  * tokenize:   scencode's tokenizer on the same file (vocabulary mapping, splits, manifest, checksums).
Prints one JSON object on its last line.

    python benchmarks/tokenize_throughput.py                 # default size, < 3 minutes on 2 cores
    python benchmarks/tokenize_throughput.py --cells 1000000 # the memory goal: peak_rss_mb <= 2000
"""

from __future__ import annotations

# this file's name shadows the standard library's `tokenize` module that numpy imports
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from synthetic import write_synthetic_h5ad  # benchmarks/synthetic.py

from scencode.formats import write_vocab
from scencode.h5ad import count_matrix, open_h5ad
from scencode.tokenize import BackgroundWriter, DatasetInput, TokenizeParams, tokenize_corpus
from scencode.vocab import build_vocab

BLOCK = TokenizeParams().chunk_cells


class _Parquet:
    def __init__(self, out: Path):
        self.out, self.writer = out, None

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.out, table.schema, compression="zstd", compression_level=3)
        self.writer.write_table(table, row_group_size=2048)


def read_limit(path: Path, out: Path) -> None:
    """Read the CSR blocks and write them as Parquet list columns, nothing else; writing overlaps
    with reading on a second thread, as in the tokenizer, so the limit is the I/O's, not a design's."""
    parquet = _Parquet(out)
    background = BackgroundWriter(parquet)
    try:
        with open_h5ad(path) as f:
            for _, block in count_matrix(f, path, "X").blocks(BLOCK):
                offsets = block.indptr.astype(np.int32)
                background.write(
                    pa.table(
                        {
                            "gene_ids": pa.ListArray.from_arrays(offsets, block.indices.astype(np.int32)),
                            "counts": pa.ListArray.from_arrays(offsets, block.data.astype(np.int32)),
                        }
                    )
                )
    finally:
        background.close()
    parquet.writer.close()


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: since its exec; getrusage's ru_maxrss would
    count the parent's resident memory at the fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tokenize(path: Path, out: Path) -> None:
    vocab = out.parent / "vocab.parquet"
    write_vocab(build_vocab([path]), vocab)
    tokenize_corpus(
        "bench",
        [DatasetInput("bench", path)],
        vocab,
        out,
        TokenizeParams(cells_per_shard=100_000, row_group_cells=2048),
    )


def run_phase(phase: str, path: Path, workdir: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--phase", phase, "--input", str(path), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--nnz", type=int, default=2_000)
    parser.add_argument("--phase", choices=["read_limit", "tokenize"])
    parser.add_argument("--input")
    parser.add_argument("--workdir")
    parser.add_argument("--record", action="store_true", help="keep cells/s in benchmarks/measured.json (plan)")
    args = parser.parse_args()

    if args.phase:  # child process: one measurement
        path, workdir = Path(args.input), Path(args.workdir)
        start = time.perf_counter()
        if args.phase == "read_limit":
            read_limit(path, workdir / "read_limit.parquet")
        else:
            tokenize(path, workdir / "tokens")
        seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb()}))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / "input.h5ad"
        write_synthetic_h5ad(path, args.cells, args.nnz)
        limit = run_phase("read_limit", path, tmp)
        tok = run_phase("tokenize", path, tmp)
        manifest = json.loads((tmp / "tokens" / "manifest.json").read_text())
    result = {
        "n_cells": args.cells,
        "mean_nnz": manifest["nnz"]["mean"],
        "cells_per_s": args.cells / tok["seconds"],
        "read_limit_cells_per_s": args.cells / limit["seconds"],
        "ratio_to_read_limit": limit["seconds"] / tok["seconds"],
        "peak_rss_mb": tok["peak_rss_mb"],
        "read_limit_peak_rss_mb": limit["peak_rss_mb"],
    }
    if args.record:
        from record import record  # benchmarks/record.py

        record(
            "tokenize_cells_per_s",
            round(result["cells_per_s"]),
            "cells/s",
            "benchmarks/tokenize_throughput.py",
            f"{args.cells:,} cells x {result['mean_nnz']:,.0f} genes",
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
