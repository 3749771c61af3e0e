"""Census-shaped data at the paper's sizes (times a scale factor), for rehearsing the paper's run
without downloading it: one local h5ad per dataset of the paper's sheets and two sheets pointing at
them. Prints one JSON object (datasets, cells, files) on its last line.

    python benchmarks/census_shaped.py --out rehearsal/data --train-scale 0.01 --eval-scale 0.1

What is shaped like the CELLxGENE Census, because the workflow's cost and failures depend on it:

* the feature space: 60,000 Ensembl ids of GENCODE 48 (every protein-coding gene and a seeded draw of
  the others, as the Census's ~60k features), in ``var`` with ``feature_name``;
* raw integer counts, genes per cell log-normal with median ``--median-genes`` (2,000) and a tail to
  ``--max-genes`` (10,000); gene popularity long-tailed, protein-coding genes more expressed;
* cell types: a pool of ``--cell-types`` (120) with Zipf-like frequencies, so that every dataset has
  a long tail and some types fall below QC's and evaluation's ``min_cells_per_type``; each type
  raises its own marker genes, so clusters and labels mean something;
* the obs columns the workflow reads: ``cell_type``, ``tissue_general``, ``assay``, ``donor_id``,
  ``dataset_id`` and, for the Tabula Sapiens tissues, ``_10X_run`` (several runs per dataset);
* every tenth training dataset uses Tabula Sapiens donor ids (``TSP1``…), so the leakage audit has
  something to find; training datasets record their tissues in ``tissue_general`` only (the sheet's
  ``tissue`` stays empty, as the paper's).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scencode.h5ad import ChunkedH5adWriter
from scencode.reference import packaged_file
from scencode.workflow_config import read_sheet

REPO = Path(__file__).resolve().parents[1]
PAPER_SHEETS = {
    "train": REPO / "config" / "datasets" / "paper_training.tsv",
    "eval": REPO / "config" / "datasets" / "paper_evaluation.tsv",
}
FEATURES = 60_000
BLOCK = 5_000
TS_DONORS = [f"TSP{i}" for i in range(1, 17)]  # Tabula Sapiens donor ids
ASSAYS = ["10x 3' v3", "10x 3' v2", "10x 5' v1", "Smart-seq2"]
# the Census's tissue_general values the training datasets draw from (the TS tissues among them)
TRAIN_TISSUES = ["blood", "lung", "brain", "heart", "kidney", "liver", "bone marrow", "skin of body", "breast", "eye"]


def feature_space(seed: int = 0, n: int = FEATURES) -> pd.DataFrame:
    """gene_id, feature_name, protein_coding: every protein-coding gene of GENCODE 48 and a seeded
    draw of the rest, ``n`` in all, in id order."""
    genes = pd.read_csv(
        packaged_file("genes_homo_sapiens_gencode48.csv.gz"),
        header=None,
        names=["gene_id", "gene_name", "version", "length", "gene_type"],
    )
    coding = genes.gene_type == "protein_coding"
    others = genes[~coding].sample(n - int(coding.sum()), random_state=seed)
    chosen = pd.concat([genes[coding], others]).sort_values("gene_id")
    return pd.DataFrame(
        {
            "gene_id": chosen.gene_id.to_numpy(),
            "feature_name": chosen.gene_name.to_numpy(),
            "protein_coding": (chosen.gene_type == "protein_coding").to_numpy(),
        }
    )


class Generator:
    """Counts of cells of given types over the feature space; one instance per run (seeded)."""

    def __init__(self, features: pd.DataFrame, n_types: int, median_genes: int, max_genes: int, seed: int):
        self.rng = np.random.default_rng(seed)
        self.n_genes = len(features)
        popularity = self.rng.gamma(0.3, 1.0, self.n_genes) * np.where(features.protein_coding, 8.0, 1.0)
        self.popularity = popularity / popularity.sum()
        self.markers = [self.rng.choice(self.n_genes, 150, replace=False) for _ in range(n_types)]
        self.type_share = 1.0 / np.arange(1, n_types + 1) ** 1.1  # Zipf-like: a long tail of rare types
        self.type_share /= self.type_share.sum()
        self.median_genes, self.max_genes = median_genes, max_genes

    def types(self, n: int, pool: np.ndarray) -> np.ndarray:
        share = self.type_share[pool] / self.type_share[pool].sum()
        return self.rng.choice(pool, n, p=share)

    def counts(self, types: np.ndarray) -> sp.csr_matrix:
        """Genes per cell log-normal (median ``median_genes``), clipped at ``max_genes``; half of a
        cell's genes from the shared popularity, a tenth from its type's markers."""
        n = len(types)
        per_cell = np.clip(self.rng.lognormal(np.log(self.median_genes), 0.55, n), 200, self.max_genes).astype(np.int64)
        background = (per_cell * 0.9).astype(np.int64)
        cols = self.rng.choice(self.n_genes, int(background.sum()), p=self.popularity)
        rows = np.repeat(np.arange(n), background)
        marker_n = per_cell - background
        marker_rows = np.repeat(np.arange(n), marker_n)
        marker_cols = np.stack(self.markers)[types[marker_rows], self.rng.integers(0, 150, int(marker_n.sum()))]
        all_rows, all_cols = np.concatenate([rows, marker_rows]), np.concatenate([cols, marker_cols])
        values = self.rng.geometric(0.45, all_rows.size).astype(np.float32)
        values[len(rows) :] *= 3  # marker genes are expressed higher
        block = sp.csr_matrix((values, (all_rows, all_cols)), shape=(n, self.n_genes))
        block.sum_duplicates()
        return block


def write_dataset(
    path: Path,
    name: str,
    role: str,
    n_cells: int,
    tissue: str,
    gen: Generator,
    features: pd.DataFrame,
    ts_donors: bool = False,
) -> dict:
    """One dataset's h5ad; ``ts_donors``: a training dataset whose donors are Tabula Sapiens's."""
    rng = gen.rng
    n_types = len(gen.markers)
    pool = np.sort(rng.choice(n_types, min(n_types, 40 if role == "train" else 60), replace=False))
    types = gen.types(n_cells, pool)
    donors = (
        rng.choice(TS_DONORS, 3, replace=False)
        if role == "eval" or ts_donors
        else np.array([f"{name}_donor{i}" for i in range(3)])
    )
    runs = np.array([f"{name}_run{i}" for i in range(4)])
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"cell type {t:03d}" for t in types]),
            "tissue_general": tissue,
            "assay": ASSAYS[rng.integers(0, len(ASSAYS))],
            "donor_id": rng.choice(donors, n_cells),
            "dataset_id": name,
        },
        index=[f"{name}-{i}" for i in range(n_cells)],
    )
    if role == "eval":
        obs["_10X_run"] = rng.choice(runs, n_cells)
    writer = ChunkedH5adWriter(path, len(features))
    order = np.argsort(rng.random(n_cells))  # cells in no particular order, as in a Census slice
    for start in range(0, n_cells, BLOCK):
        writer.append(gen.counts(types[order[start : start + BLOCK]]))
    writer.finish(
        obs.iloc[order],
        pd.DataFrame({"feature_name": features.feature_name.to_numpy()}, index=pd.Index(features.gene_id, name=None)),
    )
    return {"dataset": name, "cells": n_cells, "types": int(len(np.unique(types)))}


def scaled_rows(scale_train: float, scale_eval: float, limit: int | None) -> list[dict]:
    rows = []
    for role, sheet in PAPER_SHEETS.items():
        scale = scale_train if role == "train" else scale_eval
        for _, name, spec in list(read_sheet(sheet))[:limit]:
            rows.append({**spec, "dataset": name, "role": role, "n_cells": max(50, round(spec["n_cells"] * scale))})
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the h5ad files and the two sheets")
    p.add_argument("--train-scale", type=float, default=0.01)
    p.add_argument("--eval-scale", type=float, default=0.1)
    p.add_argument("--limit", type=int, help="only the first N datasets of each sheet (smoke runs)")
    p.add_argument("--cell-types", type=int, default=120)
    p.add_argument("--median-genes", type=int, default=2000)
    p.add_argument("--max-genes", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    features = feature_space(args.seed)
    gen = Generator(features, args.cell_types, args.median_genes, args.max_genes, args.seed)
    written, sheet_rows = [], {"train": [], "eval": []}
    for row in scaled_rows(args.train_scale, args.eval_scale, args.limit):
        name, role = row["dataset"], row["role"]
        tissue = row.get("tissue") or TRAIN_TISSUES[len(sheet_rows["train"]) % len(TRAIN_TISSUES)]
        path = (args.out / f"{name}.h5ad").resolve()
        shares = role == "train" and len(sheet_rows["train"]) % 10 == 0  # every tenth: TS donors (leakage)
        written.append(write_dataset(path, name, role, row["n_cells"], tissue, gen, features, shares))
        sheet_rows[role].append(
            {
                "dataset": name,
                "role": role,
                "source": "local",
                "source_id": str(path),
                "label_key": "cell_type",
                "batch_key": "_10X_run" if role == "eval" else "",
                "n_cells": row["n_cells"],
                "tissue": row.get("tissue", "") if role == "eval" else "",  # training: from the data only
            }
        )
        print(f"{name}: {row['n_cells']} cells", file=sys.stderr, flush=True)
    for role, rows in sheet_rows.items():
        pd.DataFrame(rows).to_csv(args.out / f"{role}.tsv", sep="\t", index=False)
    # the genes the paper's vocabulary policy keeps (those with an ESM-2 embedding: protein-coding)
    features.loc[features.protein_coding, ["gene_id"]].to_csv(args.out / "protein_genes.tsv", sep="\t", index=False)
    result = {
        "datasets": len(written),
        "cells": {role: int(sum(r["n_cells"] for r in rows)) for role, rows in sheet_rows.items()},
        "features": len(features),
        "sheets": [str(args.out / f"{role}.tsv") for role in sheet_rows],
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
