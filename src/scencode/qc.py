"""Quality control: cell and gene filters, gene ids harmonised to Ensembl, raw counts checked.

Two streaming passes over the count matrix (metrics, then writing), one block of cells at a time.
Genes are mapped, merged (duplicates summed) and ordered by one sparse aggregation matrix.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm import tqdm

from .atomic import OutputFile, atomic_path, write_json
from .errors import ScencodeError
from .h5ad import ChunkedH5adWriter, choose_counts, count_problem, open_h5ad, read_frame
from .reference import GeneTable, looks_like_ensembl, strip_version

log = logging.getLogger(__name__)
ENSEMBL_ID_COLUMNS = ("gene_ids", "gene_id", "ensembl_id", "ensembl_gene_id", "feature_id")


COUNTS_MODE = re.compile(r"auto|X|raw|layers/.+")


@dataclass
class QCParams:
    min_genes: int = 200
    min_counts: float = 500
    max_pct_mito: float = 20.0
    min_cells_per_gene: int = 3
    counts: str = "auto"  # auto | X | raw | layers/<name>
    gene_id_column: str | None = None  # var column with Ensembl ids; default: detected
    symbol_column: str | None = None  # var column with symbols; default: var names
    label_key: str | None = None  # required obs columns (evaluation datasets)
    batch_key: str | None = None
    chunk_cells: int = 20_000

    def validate(self) -> None:
        for key in ("min_genes", "min_counts", "min_cells_per_gene"):
            if getattr(self, key) < 0:
                raise ScencodeError(f"qc.{key} must be ≥ 0, got {getattr(self, key)}")
        if not 0 <= self.max_pct_mito <= 100:
            raise ScencodeError(f"qc.max_pct_mito must be a percentage in [0, 100], got {self.max_pct_mito}")
        if self.chunk_cells < 1:
            raise ScencodeError(f"qc.chunk_cells must be ≥ 1, got {self.chunk_cells}")
        if not COUNTS_MODE.fullmatch(self.counts):
            raise ScencodeError(f"qc.counts {self.counts!r}: choose auto, X, raw or layers/<name>")


@dataclass
class GeneMapping:
    out_ids: np.ndarray  # sorted unique Ensembl ids kept
    aggregate: sp.csr_matrix  # input genes × output genes, 1 where an input gene maps
    report: dict


def harmonise_genes(var: pd.DataFrame, table: GeneTable, params: QCParams, path: Path) -> GeneMapping:
    """Map the dataset's genes to Ensembl ids: an id column where one exists, else symbols."""
    source, ids = _ensembl_ids(var, params)
    if ids is not None:
        ids = strip_version(ids)
        known = table.known_ids(ids)
        gene_id = ids.where(known)
        status = pd.Series(np.where(known, "matched", "unmatched"))
    else:
        symbols = var[params.symbol_column] if params.symbol_column else var.index.to_series()
        source = f"symbols ({params.symbol_column or 'var names'})"
        gene_id, status = table.map_symbols(symbols.astype(str).reset_index(drop=True))
    gene_id = pd.Series(gene_id.to_numpy(), dtype=object)
    if not (status == "matched").any():
        raise ScencodeError(
            f"no gene matches the gene table (gene ids from {source}; "
            f"first names: {', '.join(map(str, var.index[:5]))})",
            path,
        )
    matched = np.flatnonzero((status == "matched").to_numpy())
    out_ids, column = np.unique(gene_id.iloc[matched].to_numpy().astype(str), return_inverse=True)
    aggregate = sp.csr_matrix((np.ones(len(matched), np.float32), (matched, column)), shape=(len(var), len(out_ids)))
    names = var.index.to_numpy()
    report = {
        "gene_id_source": source,
        "genes_in": len(var),
        "matched": int(len(matched)),
        "unmatched": int((status == "unmatched").sum()),
        "ambiguous": int((status == "ambiguous").sum()),
        "unmatched_examples": names[(status == "unmatched").to_numpy()][:10].tolist(),
        "ambiguous_examples": names[(status == "ambiguous").to_numpy()][:10].tolist(),
        "duplicates_merged": int(len(matched) - len(out_ids)),
    }
    return GeneMapping(out_ids, aggregate, report)


def _ensembl_ids(var: pd.DataFrame, params: QCParams) -> tuple[str, pd.Series | None]:
    if params.gene_id_column:
        if params.gene_id_column not in var.columns:
            raise ScencodeError(f"var has no column {params.gene_id_column!r} (gene_id_column)")
        column = var[params.gene_id_column].astype(str).reset_index(drop=True)
        if not looks_like_ensembl(column):
            raise ScencodeError(
                f"var column {params.gene_id_column!r} does not hold Ensembl gene ids (e.g. {column.iloc[0]!r})"
            )
        return f"var column {params.gene_id_column}", column
    if looks_like_ensembl(var.index.to_series()):
        return "var names", var.index.to_series().reset_index(drop=True)
    for name in ENSEMBL_ID_COLUMNS:
        if name in var.columns and looks_like_ensembl(var[name]):
            return f"var column {name}", var[name].astype(str).reset_index(drop=True)
    return "", None


def run_qc(
    input_path: str | Path,
    output_h5ad: str | Path,
    report_json: str | Path,
    gene_table: GeneTable,
    params: QCParams,
    dataset_id: str,
) -> dict:
    input_path = Path(input_path)
    with open_h5ad(input_path) as f:
        counts = choose_counts(f, input_path, params.counts)
        n_cells, n_genes = counts.shape
        if n_cells == 0 or n_genes == 0:
            raise ScencodeError(f"empty dataset ({n_cells} cells × {n_genes} genes)", input_path)
        obs = read_frame(f, "obs")
        _check_obs_keys(obs, params, input_path)
        var = read_frame(f, counts.var_key())
        try:
            mapping = harmonise_genes(var, gene_table, params, input_path)
        except ScencodeError as exc:
            raise exc if exc.path else ScencodeError(str(exc), input_path) from None
        mito = np.isin(mapping.out_ids, list(gene_table.mito_ids()))
        metrics, gene_cells = _cell_metrics(counts, mapping, mito, params, input_path)
        keep_cells = _cell_filter(metrics, params)
        keep_genes = gene_cells >= params.min_cells_per_gene
        _check_not_empty(keep_cells, keep_genes, params, input_path)
        select = mapping.aggregate[:, np.flatnonzero(keep_genes)].tocsr()
        out_obs, renamed = _output_obs(obs, metrics, keep_cells)
        out_var = _output_var(mapping.out_ids[keep_genes], gene_table)
        report = _report(dataset_id, input_path, counts.key, metrics, keep_cells, keep_genes, mapping, params)
        report["cells"]["duplicate_names_renamed"] = renamed
        report["tissues"] = kept_tissues(out_obs)
        _check_labels(out_obs, params, input_path)
        _check_batches(out_obs, params, input_path)
        _warn_large_losses(report)
        if renamed["count"]:
            log.warning(
                "%s: %d kept cells repeat an earlier cell's name (e.g. %s); renamed with a '-dupN' "
                "suffix (qc report: cells.duplicate_names_renamed)",
                dataset_id,
                renamed["count"],
                ", ".join(renamed["examples"]),
            )
        with atomic_path(output_h5ad, suffix=".h5ad") as tmp:
            writer = ChunkedH5adWriter(tmp, int(keep_genes.sum()))
            try:
                for start, block in tqdm(
                    counts.blocks(params.chunk_cells),
                    desc=f"qc write {dataset_id}",
                    total=-(-n_cells // params.chunk_cells),
                    mininterval=5,
                ):
                    rows = keep_cells[start : start + block.shape[0]]
                    out = block[rows] @ select
                    out.sort_indices()  # sparse products leave column order arbitrary
                    _check_written_counts(out, start, input_path)
                    writer.append(out)
                writer.finish(
                    out_obs, out_var, {"scencode_qc": {k: v for k, v in asdict(params).items() if v is not None}}
                )
            finally:
                writer.close()
    write_json(report, report_json)
    return report


def _check_written_counts(out: sp.csr_matrix, start: int, path: Path) -> None:
    """The range check on what is written: merging duplicate genes adds their counts."""
    problem = count_problem(out)
    if problem:
        raise ScencodeError(f"after merging duplicate genes the QC'd matrix {problem} (kept cells from {start})", path)


def _check_obs_keys(obs: pd.DataFrame, params: QCParams, path: Path) -> None:
    for role, key in (("label", params.label_key), ("batch", params.batch_key)):
        if key and key not in obs.columns:
            raise ScencodeError(
                f"{role} column {key!r} is missing from obs (columns: {', '.join(map(str, obs.columns)) or 'none'})",
                path,
            )


TISSUE_COLUMNS = ("tissue_general", "tissue")  # the Census's coarse tissue first, then its fine one


def kept_tissues(obs: pd.DataFrame) -> dict[str, int]:
    """Cells per tissue among the kept cells (the first of :data:`TISSUE_COLUMNS` obs has; none: {}),
    so that the shift levels come from what was trained on, not from a hand-filled sheet column."""
    column = next((c for c in TISSUE_COLUMNS if c in obs.columns), None)
    if column is None:
        return {}
    counts = obs[column].dropna().astype(str).value_counts()
    return {tissue: int(n) for tissue, n in sorted(counts.items())}


def _check_batches(obs: pd.DataFrame, params: QCParams, path: Path) -> None:
    """A cell without a batch would become a batch called 'nan' that the batch metrics then mix."""
    if params.batch_key:
        missing = int(obs[params.batch_key].isna().sum())
        if missing:
            raise ScencodeError(
                f"batch column {params.batch_key!r} has no value for {missing} of the {len(obs)} cells kept by QC "
                "(they would form a fake batch 'nan'): fill them in or drop those cells",
                path,
            )


def _check_labels(obs: pd.DataFrame, params: QCParams, path: Path) -> None:
    """An evaluation dataset whose kept cells have no label at all cannot be scored: say so here,
    not as a write error in the embedding step."""
    if params.label_key and not obs[params.label_key].notna().any():
        raise ScencodeError(
            f"label column {params.label_key!r} has no value in any of the {len(obs)} cells "
            "kept by QC: nothing to evaluate against",
            path,
        )


LARGE_LOSS = 0.25  # a larger share of genes or cells removed is worth a warning in the log, not only in qc.json


def _warn_large_losses(report: dict) -> None:
    genes, cells, name = report["genes"], report["cells"], report["dataset_id"]
    dropped = genes["unmatched"] + genes["ambiguous"]
    if dropped > LARGE_LOSS * genes["genes_in"]:
        log.warning(
            "%s: %d of %d genes dropped in mapping to Ensembl ids (%d unmatched, %d ambiguous symbols, "
            "e.g. %s); see the qc report",
            name,
            dropped,
            genes["genes_in"],
            genes["unmatched"],
            genes["ambiguous"],
            ", ".join(map(str, (genes["ambiguous_examples"] or genes["unmatched_examples"])[:3])),
        )
    if cells["removed"] > LARGE_LOSS * cells["in"]:
        fails = cells["failing_each_filter"]
        log.warning(
            "%s: QC removed %d of %d cells (%d → %d; failing min_genes %d, min_counts %d, max_pct_mito %d)",
            name,
            cells["removed"],
            cells["in"],
            cells["in"],
            cells["out"],
            fails["min_genes"],
            fails["min_counts"],
            fails["max_pct_mito"],
        )


def _cell_metrics(counts, mapping: GeneMapping, mito: np.ndarray, params: QCParams, path: Path):
    n_cells = counts.shape[0]
    total = np.zeros(n_cells)
    n_genes = np.zeros(n_cells, dtype=np.int64)
    mito_counts = np.zeros(n_cells)
    gene_cells = np.zeros(len(mapping.out_ids), dtype=np.int64)
    mito_select = mapping.aggregate[:, np.flatnonzero(mito)].tocsr()
    for start, block in tqdm(
        counts.blocks(params.chunk_cells), desc="qc metrics", total=-(-n_cells // params.chunk_cells), mininterval=5
    ):
        problem = count_problem(block)
        if problem:
            raise ScencodeError(f"{counts.key} {problem} (cells {start}–{start + block.shape[0]})", path)
        stop = start + block.shape[0]
        total[start:stop] = np.asarray(block.sum(axis=1)).ravel()
        n_genes[start:stop] = np.diff(block.indptr) - _explicit_zeros_per_row(block)
        mito_counts[start:stop] = np.asarray((block @ mito_select).sum(axis=1)).ravel()
        passing = _cell_filter(
            {
                "n_genes": n_genes[start:stop],
                "total_counts": total[start:stop],
                "pct_mito": _pct(mito_counts[start:stop], total[start:stop]),
            },
            params,
        )
        gene_cells += np.asarray(((block[passing] @ mapping.aggregate) > 0).sum(axis=0)).ravel()
    metrics = {"n_genes": n_genes, "total_counts": total, "pct_mito": _pct(mito_counts, total)}
    return metrics, gene_cells


def _explicit_zeros_per_row(block: sp.csr_matrix) -> np.ndarray:
    zero = block.data == 0
    if not zero.any():
        return np.zeros(block.shape[0], np.int64)
    rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
    return np.bincount(rows[zero], minlength=block.shape[0])


def _pct(part: np.ndarray, total: np.ndarray) -> np.ndarray:
    return np.divide(100.0 * part, total, out=np.zeros_like(total, dtype=float), where=total > 0)


def _cell_filter(metrics: dict, params: QCParams) -> np.ndarray:
    return (
        (metrics["n_genes"] >= params.min_genes)
        & (metrics["total_counts"] >= params.min_counts)
        & (metrics["pct_mito"] <= params.max_pct_mito)
    )


def _check_not_empty(keep_cells, keep_genes, params: QCParams, path: Path) -> None:
    if not keep_cells.any():
        raise ScencodeError(
            f"QC removed every one of {len(keep_cells)} cells (min_genes {params.min_genes}, "
            f"min_counts {params.min_counts}, max_pct_mito {params.max_pct_mito})",
            path,
        )
    if not keep_genes.any():
        raise ScencodeError(f"QC removed every gene (min_cells_per_gene {params.min_cells_per_gene})", path)


def _output_obs(obs: pd.DataFrame, metrics: dict, keep: np.ndarray) -> tuple[pd.DataFrame, dict]:
    """Kept cells' obs with the QC metrics, and which repeated cell names were renamed."""
    out = obs.iloc[np.flatnonzero(keep)].copy()
    for name, values in metrics.items():
        out[name] = values[keep].astype(np.float32 if name != "n_genes" else np.int32)
    out.index = pd.Index(out.index.astype(str))
    dup = out.index.duplicated()
    examples = sorted(set(out.index[dup]))[:5]
    if dup.any():
        out.index = unique_names(out.index, dup)
    return out, {"count": int(dup.sum()), "examples": examples}


def unique_names(names: pd.Index, repeated: np.ndarray) -> pd.Index:
    """Cell ids must be unique downstream: the first of a name keeps it, each repeat gets the
    first ``-dupN`` suffix no cell has (``A, A, A-dup1`` → ``A, A-dup2, A-dup1``). A loop over the
    repeats only, which are few."""
    taken = set(names)
    out = names.to_numpy(object).copy()
    for i in np.flatnonzero(repeated):
        k = 1
        while f"{out[i]}-dup{k}" in taken:
            k += 1
        out[i] = f"{out[i]}-dup{k}"
        taken.add(out[i])
    return pd.Index(out, dtype=str)


def _output_var(ids: np.ndarray, table: GeneTable) -> pd.DataFrame:
    info = table.genes.set_index("gene_id").reindex(ids)
    return pd.DataFrame(
        {"gene_symbol": info.gene_name.fillna("").to_numpy(), "gene_type": info.gene_type.fillna("").to_numpy()},
        index=pd.Index(ids, name=None),
    )


def _report(dataset_id, path, counts_key, metrics, keep_cells, keep_genes, mapping, params) -> dict:
    fails = {
        "min_genes": int((metrics["n_genes"] < params.min_genes).sum()),
        "min_counts": int((metrics["total_counts"] < params.min_counts).sum()),
        "max_pct_mito": int((metrics["pct_mito"] > params.max_pct_mito).sum()),
    }
    return {
        "dataset_id": dataset_id,
        "input": str(path),
        "counts_source": counts_key,
        "params": asdict(params),
        "cells": {
            "in": len(keep_cells),
            "out": int(keep_cells.sum()),
            "removed": int((~keep_cells).sum()),
            "failing_each_filter": fails,
        },
        "genes": {
            **mapping.report,
            "after_mapping": len(mapping.out_ids),
            "removed_min_cells": int((~keep_genes).sum()),
            "out": int(keep_genes.sum()),
        },
        "median_counts_kept": float(np.median(metrics["total_counts"][keep_cells])),
        "median_genes_kept": float(np.median(metrics["n_genes"][keep_cells])),
    }


def run(raw: Path, out: OutputFile, report: OutputFile, gene_table: Path, dataset: str, params: QCParams) -> dict:
    """Filter cells and genes of the ``raw`` h5ad, harmonise gene ids, check raw counts: the QC'd h5ad
    at ``out`` and what was removed and why at ``report``."""
    summary = run_qc(raw, out, report, GeneTable.load(gene_table), params, dataset)
    log.info(
        "qc %s: %d → %d cells, %d genes",
        dataset,
        summary["cells"]["in"],
        summary["cells"]["out"],
        summary["genes"]["out"],
    )
    return summary
