"""scib-metrics' own default metric set and aggregate, run by its ``Benchmarker`` on every embedding
of one evaluation dataset, as rows of group ``scib_metrics`` beside the study's grouping.

Benchmarker defaults (scib-metrics 0.5): bio conservation = isolated labels, k-means NMI and ARI,
silhouette label, cLISI; batch correction = BRAS, iLISI, kBET, graph connectivity, PCR comparison;
``total`` = 0.6 bio + 0.4 batch. Values are unscaled (``min_max_scale=False``), so a configuration's
score does not depend on which others it is compared with. The pre-integrated embedding that PCR
comparison needs is the dataset's PCA baseline (log-normalised HVGs, as scIB does); neighbours come
from exact kNN (scikit-learn) through ``prepare(neighbor_computer=...)``.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import OutputFile
from .cellsets import (
    MAX_CELLS_SCIB,
    SINGLE_BATCH,
    SINGLE_CELL_TYPE,
    SUBSAMPLE_SEED,
    cache_graph_kernels,
    knn_graph,
    labeled,
    seeded_subsample,
)
from .errors import ScencodeError
from .formats import RunIdentity, metric_table, read_embedding, write_table

log = logging.getLogger(__name__)
GROUP = "scib_metrics"
AGGREGATES = {"Bio conservation": "bio_conservation", "Batch correction": "batch_correction", "Total": "total"}


@dataclass
class BenchmarkerParams:
    """The Benchmarker is far slower than the study's metrics (JAX on the CPU), so it may score fewer
    cells; by default the same seeded subsample as the study's metrics."""

    max_cells_scib: int = MAX_CELLS_SCIB
    seed: int = SUBSAMPLE_SEED

    def validate(self) -> None:
        if self.max_cells_scib < 10:
            raise ScencodeError(f"scib_benchmarker max_cells_scib must be ≥ 10, got {self.max_cells_scib}")


BENCHMARKER_NEIGHBORS = 90  # the neighbours Benchmarker.prepare asks for (its LISI's); fewer cells fail in scikit-learn


def _aligned(embeddings: dict[str, Path], pre_integrated: Path):
    """(cells, {name: matrix}, pre-integrated matrix, {name: why missing}) on the cells every
    available embedding shares."""
    cells, matrices, missing = None, {}, {}
    for name, path in {**embeddings, "X_pre": pre_integrated}.items():
        table, matrix, reason = read_embedding(path)
        if reason:
            missing[name] = reason
            continue
        frame = pd.DataFrame({"row": np.arange(len(table))}, index=table.cell_id.to_numpy())
        matrices[name] = (frame, matrix)
        cells = table.set_index("cell_id")[["label", "batch"]] if cells is None else cells
    if cells is None:  # the pre-integrated matrix is read like the rest: nothing at all to score
        raise ScencodeError(f"no embedding to score ({'; '.join(missing.values())})", pre_integrated)
    shared = cells.index
    for frame, _ in matrices.values():
        shared = shared.intersection(frame.index, sort=False)
    if len(shared) < len(cells):
        log.warning(
            "%d of %d cells are not in every embedding; scoring the %d shared",
            len(cells) - len(shared),
            len(cells),
            len(shared),
        )
    aligned = {name: matrix[frame.loc[shared, "row"].to_numpy()] for name, (frame, matrix) in matrices.items()}
    return cells.loc[shared], aligned, aligned.pop("X_pre"), missing


def benchmark_dataset(
    embeddings: dict[RunIdentity, Path],
    pre_integrated: Path,
    dataset: str,
    max_cells: int = MAX_CELLS_SCIB,
    seed: int = SUBSAMPLE_SEED,
    threads: int = 1,
) -> pd.DataFrame:
    """Tidy rows (group ``scib_metrics``) for every run in ``embeddings``."""
    identities = {identity.run: identity for identity in embeddings}
    paths = {identity.run: path for identity, path in embeddings.items()}
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    cells, matrices, pre, missing = _aligned(paths, pre_integrated)
    pick, scored = seeded_subsample(np.flatnonzero(labeled(cells.label.to_numpy())), max_cells, seed)
    cells = cells.iloc[pick]
    n_labels, n_batches = cells.label.nunique(), cells.batch.nunique()
    bio, batch = BioConservation(), BatchCorrection()
    reason = {}
    if n_batches < 2:
        batch, reason = None, {"batch": SINGLE_BATCH}
    if n_labels < 2:
        bio, batch, reason = None, None, {"bio": SINGLE_CELL_TYPE}
    if len(cells) <= BENCHMARKER_NEIGHBORS:
        bio, batch = None, None
        reason = {
            "size": f"{len(cells)} labelled cells: the Benchmarker needs {BENCHMARKER_NEIGHBORS} neighbours per cell"
        }
    results = pd.DataFrame()
    if matrices and (bio or batch):
        import anndata as ad

        adata = ad.AnnData(
            obs=pd.DataFrame(
                {"label": cells.label.astype(str).to_numpy(), "batch": cells.batch.astype(str).to_numpy()},
                index=cells.index.astype(str),
            ),
            obsm={"X_pre": pre[pick], **{name: m[pick] for name, m in matrices.items()}},
        )
        bench = Benchmarker(
            adata,
            batch_key="batch",
            label_key="label",
            embedding_obsm_keys=list(matrices),
            bio_conservation_metrics=bio,
            batch_correction_metrics=batch,
            pre_integrated_embedding_obsm_key="X_pre",
            n_jobs=threads,
            progress_bar=False,
        )
        bench.prepare(neighbor_computer=knn_graph)
        cache_graph_kernels()
        # the Benchmarker calls gc.collect() before each of its metrics (120 on a demo dataset), each
        # scanning every object that imports and compilation left: frozen, they are skipped (a demo job
        # 94 → 73 s; with the cached kernels 53 s; the same values)
        gc.freeze()
        try:
            bench.benchmark()
        finally:
            gc.unfreeze()
        results = bench.get_results(min_max_scale=False, clean_names=False).drop(index="Metric Type")
        results = results.rename(columns=AGGREGATES).astype(float)
    why_not = "; ".join(reason.values())
    frames = []
    for name in paths:
        values = results.loc[name] if name in results.index else pd.Series(dtype=float)
        rows = pd.DataFrame({"metric": metric_names()})
        rows["value"] = rows.metric.map(values).astype(float)
        rows["note"] = np.where(rows.value.isna(), missing.get(name, why_not), scored)
        frames.append(metric_table(rows.assign(group=GROUP), identities[name], dataset))
    return pd.concat(frames, ignore_index=True)


def metric_names() -> list[str]:
    """The default set's metric names as the Benchmarker reports them, then the aggregates."""
    from dataclasses import fields

    from scib_metrics.benchmark import BatchCorrection, BioConservation

    names = []
    for spec in (BioConservation(), BatchCorrection()):
        for field in fields(spec):
            if getattr(spec, field.name):
                names += (
                    [f"{field.name}_nmi", f"{field.name}_ari"] if field.name.startswith("nmi_ari") else [field.name]
                )
    return names + list(AGGREGATES.values())


def run(
    embeddings: list[Path],
    runs: list[dict],
    pre_integrated: Path,
    dataset: str,
    out: OutputFile,
    params: BenchmarkerParams,
    threads: int = 1,
) -> pd.DataFrame:
    """scib-metrics' own default set and aggregate on every embedding of one dataset; ``runs``: JSON
    list of each embedding's identity {run, gene_encoding, expression_encoding, seed}, in the order of
    ``embeddings``; ``pre_integrated``: the unintegrated reference (the PCA baseline)."""
    if len(runs) != len(embeddings):
        raise ScencodeError(f"{len(embeddings)} embeddings but {len(runs)} run identities")
    identities = [RunIdentity(**r) for r in runs]
    rows = benchmark_dataset(
        dict(zip(identities, map(Path, embeddings))),
        Path(pre_integrated),
        dataset,
        max_cells=params.max_cells_scib,
        seed=params.seed,
        threads=threads,
    )
    write_table(rows, out)
    log.info("scib-metrics default set on %s: %d embeddings", dataset, len(embeddings))
    return rows
