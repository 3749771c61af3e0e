"""Large seeded synthetic count matrices for benchmarks (QC-output layout: CSR counts, Ensembl-like
var names), written block by block so memory stays bounded at any size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scencode.h5ad import ChunkedH5adWriter

BLOCK = 20_000


def write_synthetic_h5ad(
    path: str | Path,
    n_cells: int,
    nnz: int,
    n_genes: int = 20_000,
    seed: int = 0,
    spread: float | None = None,
    var_names: list[str] | None = None,
) -> None:
    """About ``nnz`` non-zero genes per cell drawn from a skewed gene popularity, geometric counts;
    ``spread``: heavy-tailed (log-normal, this sigma) cell lengths as in droplet data, else normal ± 25%;
    ``var_names``: the genes' ids (default: Ensembl-like ids no gene table knows)."""
    rng = np.random.default_rng(seed)
    popularity = rng.gamma(0.5, 1.0, n_genes)
    popularity /= popularity.sum()
    writer = ChunkedH5adWriter(Path(path), n_genes)
    for start in range(0, n_cells, BLOCK):
        n = min(BLOCK, n_cells - start)
        lengths = rng.lognormal(np.log(nnz), spread, n) if spread else rng.normal(nnz, nnz / 4, n)
        per_cell = np.clip(lengths.astype(np.int64), 50, n_genes // 2)
        cols = rng.choice(n_genes, size=int(per_cell.sum()), p=popularity).astype(np.int32)
        rows = np.repeat(np.arange(n), per_cell)
        block = sp.csr_matrix((rng.geometric(0.4, cols.size).astype(np.float32), (rows, cols)), shape=(n, n_genes))
        block.sum_duplicates()
        writer.append(block)
    writer.finish(
        pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
        pd.DataFrame(index=var_names or [f"ENSG{i:011d}" for i in range(n_genes)]),
        {"scencode_qc": {"synthetic": "raw integer counts, as QC writes them"}},  # tokenize reads QC outputs only
    )
