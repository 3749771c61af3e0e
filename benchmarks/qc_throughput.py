"""QC throughput: scencode's QC step (two streamed passes: metrics, then filtering, gene mapping and
writing) on a synthetic count matrix whose genes are real Ensembl ids. Prints one JSON object last.

    python benchmarks/qc_throughput.py [--cells 100000] [--nnz 2000] [--record]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from synthetic import write_synthetic_h5ad  # benchmarks/synthetic.py

from scencode.genes import packaged_gene_table
from scencode.qc import QCParams, run_qc
from scencode.reference import GeneTable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--nnz", type=int, default=2_000)
    parser.add_argument("--record", action="store_true", help="keep cells/s in benchmarks/measured.json (plan)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        packaged_gene_table(tmp / "genes")
        table = GeneTable.load(tmp / "genes")
        genes = table.genes.gene_id[table.genes.gene_type == "protein_coding"].iloc[:20_000].tolist()
        write_synthetic_h5ad(tmp / "raw.h5ad", args.cells, args.nnz, n_genes=len(genes), var_names=genes)
        start = time.perf_counter()
        report = run_qc(tmp / "raw.h5ad", tmp / "qc.h5ad", tmp / "qc.json", table, QCParams(), "bench")
        seconds = time.perf_counter() - start
    result = {
        "cells": args.cells,
        "nnz": args.nnz,
        "seconds": round(seconds, 2),
        "cells_per_s": round(args.cells / seconds),
        "cells_kept": report["cells"]["out"],
    }
    if args.record:
        from record import record  # benchmarks/record.py

        record(
            "qc_cells_per_s",
            result["cells_per_s"],
            "cells/s",
            "benchmarks/qc_throughput.py",
            f"{args.cells:,} cells x {args.nnz:,} genes",
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
