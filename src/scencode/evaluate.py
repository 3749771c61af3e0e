"""Metrics of one embedding of one evaluation dataset, as a tidy long table.

* scIB, as the `scib` package (1.1.7, the study's library) defines the metrics: batch score =
  mean(iLISI, graph connectivity, ASW-batch); bio score = mean(ASW-label, cLISI, NMI, ARI,
  isolated-label F1, isolated-label ASW), the study's grouping. LISI is scib's graph LISI
  (``graph_lisi``); ``tests/test_scib_golden.py`` checks every value against scib's on real data.
  scib-metrics' own default set and aggregate run separately, per dataset (``scib_benchmark``).
* Classification (scikit-learn): kNN (Euclidean) with k = 10 (the study's), 5 and 15, and a
  logistic-regression probe, on a stratified, seeded 80/20 split after removing unlabeled cells
  and cell types under ``min_cells_per_type`` cells; accuracy and macro F1.

A metric that cannot be computed (one batch, one cell type, no type above the size threshold)
is recorded as NaN with the reason in ``note``, not raised.
"""

from __future__ import annotations

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
from .formats import (
    GENE_GROUPS,
    PER_GENE_GROUPS,
    RECONSTRUCTION_METRICS,
    RunIdentity,
    metric_table,
    read_embedding,
    read_reconstruction_errors,
    write_table,
)

log = logging.getLogger(__name__)
BATCH_METRICS = ("ilisi", "graph_connectivity", "asw_batch")
BIO_METRICS = ("asw_label", "clisi", "nmi", "ari", "isolated_label_f1", "isolated_label_asw")
LISI_KINDS = ("graph", "knn")


@dataclass
class EvalParams:
    knn_k: tuple[int, ...] = (10, 5, 15)
    test_fraction: float = 0.2
    min_cells_per_type: int = 250
    max_cells_scib: int = MAX_CELLS_SCIB
    seed: int = SUBSAMPLE_SEED
    # graph: scib's LISI (shortest paths over the 15-neighbour graph, scencode.graph_lisi), the study's;
    # knn: scib-metrics' LISI over 90 exact Euclidean neighbours (faster to explain, not scib's values)
    lisi: str = "graph"

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.lisi not in LISI_KINDS:
            raise ScencodeError(f"evaluate: lisi must be one of {', '.join(LISI_KINDS)}, not {self.lisi!r}")
        if not 0 < self.test_fraction < 1:
            raise ScencodeError(f"evaluate.test_fraction must be in (0, 1), got {self.test_fraction}")
        if not self.knn_k or min(self.knn_k) < 1:
            raise ScencodeError(f"evaluate.knn_k must list neighbour counts ≥ 1, got {self.knn_k}")
        if self.min_cells_per_type < 1:
            raise ScencodeError(f"evaluate.min_cells_per_type must be ≥ 1, got {self.min_cells_per_type}")
        if self.max_cells_scib < 10:
            raise ScencodeError(f"evaluate.max_cells_scib must be ≥ 10, got {self.max_cells_scib}")


def evaluate_embedding(
    x: np.ndarray, labels: np.ndarray, batches: np.ndarray, params: EvalParams, threads: int = 1
) -> pd.DataFrame:
    """Rows (metric, group, value, note) for one embedding."""
    if not np.isfinite(x).all():
        raise ScencodeError("embedding contains NaN or infinite values")
    rows = scib_rows(x, labels, batches, params, threads) + classification_rows(x, labels, params)
    return pd.DataFrame(rows, columns=["metric", "group", "value", "note"])


def _row(metric, group, value, note=""):
    return (metric, group, float(value), note)


def scib_rows(x, labels, batches, params: EvalParams, threads: int = 1) -> list[tuple]:
    """The study's scIB metrics (group ``study``'s batch and bio scores), as the `scib` package
    defines them (see :func:`study_graph`, and docs/methods.md for what was measured against scib);
    ``threads``: Leiden's resolutions side by side."""
    keep = labeled(labels)
    x, labels, batches = x[keep], np.asarray(labels)[keep].astype(str), np.asarray(batches)[keep].astype(str)
    pick, scored = seeded_subsample(np.arange(len(x)), params.max_cells_scib, params.seed)
    x, labels, batches = x[pick], labels[pick], batches[pick]
    n_labels, n_batches = len(np.unique(labels)), len(np.unique(batches))
    rows = []
    if len(x) < 10:
        note = f"only {len(x)} labeled cells"
        return [_row(m, g, np.nan, note) for g, ms in (("batch", BATCH_METRICS), ("bio", BIO_METRICS)) for m in ms] + [
            _row("batch_score", "study", np.nan, note),
            _row("bio_score", "study", np.nan, note),
        ]
    graph = study_graph(x)  # one neighbour graph per embedding, shared by the metrics below
    ilisi, clisi = _lisi_functions(params.lisi, graph, x)
    isolated = isolated_labels(labels, batches)
    if n_batches < 2:
        rows += [_row(m, "batch", np.nan, SINGLE_BATCH) for m in BATCH_METRICS]
    else:
        rows += [
            _row("ilisi", "batch", ilisi(batches)),
            _row("graph_connectivity", "batch", graph_connectivity(graph, labels)),
            _row(
                "asw_batch",
                "batch",
                *_with_reason(silhouette_batch(x, labels, batches), "every cell type is in one batch"),
            ),
        ]
    if n_labels < 2:
        rows += [_row(m, "bio", np.nan, SINGLE_CELL_TYPE) for m in BIO_METRICS]
    else:
        clusterings = leiden_clusterings(graph, params.seed, threads)
        clusters = nmi_ari_optimal_resolution(clusterings, labels)
        label_asw = label_silhouettes(x, labels, isolated)
        no_isolated = "no isolated labels: every cell type is in every batch (scib: none, NaN)"
        rows += [
            _row("asw_label", "bio", label_asw["asw_label"]),
            _row("clisi", "bio", clisi(labels)),
            _row("nmi", "bio", clusters["nmi"]),
            _row("ari", "bio", clusters["ari"]),
            _row(
                "isolated_label_f1", "bio", *_with_reason(isolated_label_f1(clusterings, labels, isolated), no_isolated)
            ),
            _row("isolated_label_asw", "bio", *_with_reason(label_asw["isolated_label_asw"], no_isolated)),
        ]
    by_group = {g: [r for r in rows if r[1] == g] for g in ("batch", "bio")}
    for group, name in (("batch", "batch_score"), ("bio", "bio_score")):
        values = np.array([r[2] for r in by_group[group]])
        # as scib's overall scores: the mean of the metrics defined on this dataset
        undefined = [r[0] for r in by_group[group] if np.isnan(r[2])]
        note = next((r[3] for r in by_group[group] if r[3]), "")
        if undefined and not np.isnan(values).all():
            note = f"mean without {', '.join(undefined)} ({note})"
        rows.append(_row(name, "study", np.nanmean(values) if not np.isnan(values).all() else np.nan, note))
    return [(m, g, v, note or (scored if np.isfinite(v) else "")) for m, g, v, note in rows]


# ------------------------------------------------------------------ the study's metrics, as scib 1.1.7 defines them
GRAPH_NEIGHBORS = 15  # scib: sc.pp.neighbors(adata, use_rep=embed) with scanpy's default
LISI_NEIGHBORS = 90  # LISI: perplexity 30, 3 × 30 neighbours (scib's by graph distance; the knn option's Euclidean)
RESOLUTIONS = tuple(round(0.2 * (i + 1), 1) for i in range(10))  # scib.cl.get_resolutions(n=10, max=2)


def study_graph(x: np.ndarray):
    """scanpy's 15-neighbour graph (UMAP connectivities) of the embedding, as scib builds it."""
    import anndata as ad
    import scanpy as sc

    cache_graph_kernels()
    adata = ad.AnnData(obs=pd.DataFrame(index=np.arange(len(x)).astype(str)), obsm={"X_emb": x.astype(np.float32)})
    k = min(GRAPH_NEIGHBORS, len(x) - 1)
    transformer = scanpy_large_data_transformer(len(x), k) if len(x) >= SCANPY_APPROXIMATE_FROM else None
    sc.pp.neighbors(adata, n_neighbors=k, use_rep="X_emb", random_state=0, transformer=transformer)
    return adata


SCANPY_APPROXIMATE_FROM = 8192  # scanpy's default: exact neighbours below, pynndescent (UMAP's settings) from here


class _CsrMatrixOutput:
    """A kNN transformer whose output is a ``scipy.sparse.csr_matrix``: pynndescent 0.7 returns a
    ``csr_array``, on which scanpy 1.11 calls ``getnnz``, gone from scipy's sparse arrays (1.17), so
    every dataset of 8,192 cells or more failed. The neighbours are the same."""

    def __init__(self, inner):
        self.inner = inner

    def fit_transform(self, x):
        import scipy.sparse as sp

        return sp.csr_matrix(self.inner.fit_transform(x))

    def __getattr__(self, name):
        return getattr(self.inner, name)


def scanpy_large_data_transformer(n_cells: int, n_neighbors: int):
    """What ``sc.pp.neighbors`` builds by default for ``n_cells`` ≥ 8,192 (Euclidean, random_state 0):
    PyNNDescentTransformer with UMAP's n_trees and n_iters (scanpy.neighbors._handle_transformer),
    passed explicitly so that its output reaches scanpy in a form scanpy can read."""
    import scanpy as sc
    from pynndescent import PyNNDescentTransformer

    return _CsrMatrixOutput(
        PyNNDescentTransformer(
            n_neighbors=n_neighbors,
            metric="euclidean",
            metric_kwds={},
            random_state=0,
            n_jobs=sc.settings.n_jobs,
            n_trees=min(64, 5 + round(n_cells**0.5 / 20.0)),
            n_iters=max(5, round(np.log2(n_cells))),
        )
    )


def _lisi_functions(kind: str, graph, x: np.ndarray):
    """iLISI and cLISI of the groups given: scib's graph LISI, or scib-metrics' kNN LISI."""
    if kind == "graph":
        from . import graph_lisi

        connectivities = graph.obsp["connectivities"]
        return (lambda b: graph_lisi.ilisi(connectivities, b)), (lambda c: graph_lisi.clisi(connectivities, c))
    import scib_metrics

    neighbours = knn_graph(x, min(LISI_NEIGHBORS, len(x) - 1))
    return (lambda b: scib_metrics.ilisi_knn(neighbours, b)), (lambda c: scib_metrics.clisi_knn(neighbours, c))


def graph_connectivity(graph, labels: np.ndarray) -> float:
    """scib: per cell type, the largest connected component of the type's subgraph (strong
    connection) as a fraction of its cells; mean over types."""
    from scipy.sparse.csgraph import connected_components

    connectivities = graph.obsp["connectivities"]
    scores = []
    for label in np.unique(labels):
        inside = np.flatnonzero(labels == label)
        _, component = connected_components(connectivities[inside][:, inside], connection="strong")
        scores.append(np.bincount(component).max() / len(inside))
    return float(np.mean(scores))


def leiden_clusterings(graph, seed: int, threads: int = 1) -> dict[float, np.ndarray]:
    """Leiden (scanpy, leidenalg, as scib calls it) on the shared graph at scib's resolutions. With
    ``threads`` > 1 the resolutions run side by side in forked processes, each the same call on the
    same graph and seed, so the same partitions (leidenalg is single-threaded; Leiden is most of the
    evaluation time on large datasets)."""
    workers = min(threads, len(RESOLUTIONS))
    if workers <= 1:
        return {resolution: _leiden(graph, resolution, seed) for resolution in RESOLUTIONS}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # forked: the workers share the graph as it is in memory, nothing is pickled but the labels back
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_share_graph, initargs=(graph,)) as pool:
        labels = pool.map(_leiden_of_shared_graph, RESOLUTIONS, [seed] * len(RESOLUTIONS))
        return dict(zip(RESOLUTIONS, labels))


def _leiden(graph, resolution: float, seed: int) -> np.ndarray:
    """One resolution, logged when done: on a large dataset each takes minutes (on a structureless
    embedding, such as the random baseline's, leidenalg iterates far longer than on a real one)."""
    import time

    import scanpy as sc

    start = time.perf_counter()
    sc.tl.leiden(graph, resolution=resolution, key_added="cluster", random_state=seed, flavor="leidenalg")
    labels = graph.obs["cluster"].to_numpy().astype(str)
    log.info(
        "Leiden at resolution %g: %d clusters of %d cells in %.0f s",
        resolution,
        len(np.unique(labels)),
        len(labels),
        time.perf_counter() - start,
    )
    return labels


_SHARED_GRAPH = None  # a Leiden worker's graph


def _share_graph(graph) -> None:
    global _SHARED_GRAPH
    _SHARED_GRAPH = graph


def _leiden_of_shared_graph(resolution: float, seed: int) -> np.ndarray:
    return _leiden(_SHARED_GRAPH, resolution, seed)


def nmi_ari_optimal_resolution(clusterings: dict[float, np.ndarray], labels: np.ndarray) -> dict:
    """scib: the clustering (over its resolutions) with the highest NMI (arithmetic); its NMI and ARI."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    nmi = {r: normalized_mutual_info_score(labels, c, average_method="arithmetic") for r, c in clusterings.items()}
    best = max(nmi, key=lambda r: (nmi[r], -r))  # scib keeps the first (smallest) resolution on ties
    return {"nmi": nmi[best], "ari": adjusted_rand_score(labels, clusterings[best]), "resolution": best}


def isolated_labels(labels: np.ndarray, batches: np.ndarray) -> list[str]:
    """scib's selection: labels in the fewest batches; none when that is every batch."""
    per_label = pd.Series(batches).groupby(labels).nunique()
    if per_label.min() == len(np.unique(batches)):
        return []
    return sorted(per_label.index[per_label <= per_label.min()])


def isolated_label_f1(clusterings: dict[float, np.ndarray], labels: np.ndarray, isolated: list[str]) -> float:
    """scib: per isolated label, the best F1 of any cluster against the label at the resolution that
    maximises it; mean over isolated labels (NaN when there are none)."""
    if not isolated:
        return np.nan
    scores = []
    for label in isolated:
        truth = labels == label
        best = 0.0
        for assignment in clusterings.values():
            clusters, inverse = np.unique(assignment, return_inverse=True)
            tp = np.bincount(inverse[truth], minlength=len(clusters))
            size = np.bincount(inverse, minlength=len(clusters))
            best = max(best, float((2 * tp / (truth.sum() + size)).max()))
        scores.append(best)
    return float(np.mean(scores))


def _with_reason(value: float, reason: str) -> tuple[float, str]:
    return value, (reason if np.isnan(value) else "")


# The silhouettes are scib-metrics' definitions (silhouette_label, isolated_labels, silhouette_batch
# with their defaults) computed with scikit-learn's GEMM-based silhouette_samples: scib-metrics'
# jax distances are elementwise and recompile per cell-type subset, 3-10x slower on CPU. Tests check
# the values against scib-metrics'. ASW-label and isolated-label ASW share one silhouette pass.


def label_silhouettes(x, labels, isolated: list[str]) -> dict:
    """ASW-label (rescaled to [0, 1]) and isolated-label ASW (scib: the mean rescaled silhouette of
    each isolated label's cells, averaged over the isolated labels; NaN when there are none)."""
    from sklearn.metrics import silhouette_samples

    rescaled = (silhouette_samples(x, labels) + 1) / 2
    per_label = pd.Series(rescaled).groupby(labels).mean()
    return {
        "asw_label": float(rescaled.mean()),
        "isolated_label_asw": float(per_label[isolated].mean()) if isolated else np.nan,
    }


def silhouette_batch(x, labels, batches) -> float:
    """Batch ASW: within each cell type, 1 - |silhouette| of the batches, averaged per type, then
    over types (types in one batch, or with one cell per batch, are skipped as in scib-metrics)."""
    from sklearn.metrics import silhouette_samples

    scores = []
    for label in np.unique(labels):
        inside = labels == label
        n_batches = len(np.unique(batches[inside]))
        if n_batches == 1 or n_batches == inside.sum():
            continue
        scores.append(np.mean(1 - np.abs(silhouette_samples(x[inside], batches[inside]))))
    return float(np.mean(scores)) if scores else np.nan


def classification_rows(x, labels, params: EvalParams) -> list[tuple]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels).astype(str)
    keep = labeled(labels)
    sizes = pd.Series(labels[keep]).value_counts()
    big = sizes.index[sizes >= params.min_cells_per_type]
    keep &= np.isin(labels, big)
    groups = [f"knn_k{k}" for k in params.knn_k] + ["logreg"]
    if len(big) < 2:
        note = (
            f"{len(big)} cell type(s) with at least {params.min_cells_per_type} cells "
            f"(of {len(sizes)}): classification is not defined"
        )
        return [_row(m, g, np.nan, note) for g in groups for m in ("accuracy", "macro_f1")]
    xtr, xte, ytr, yte = train_test_split(
        x[keep], labels[keep], test_size=params.test_fraction, stratify=labels[keep], random_state=params.seed
    )
    models = {f"knn_k{k}": KNeighborsClassifier(n_neighbors=k, metric="euclidean") for k in params.knn_k}
    models["logreg"] = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    rows = []
    for group, model in models.items():
        predicted = model.fit(xtr, ytr).predict(xte)
        note = f"{len(big)} cell types, {keep.sum()} cells"
        rows += [
            _row("accuracy", group, accuracy_score(yte, predicted), note),
            _row("macro_f1", group, f1_score(yte, predicted, average="macro"), note),
        ]
    return rows


def reconstruction_rows(recon: dict) -> pd.DataFrame:
    """A model's context diagnostic on the dataset as metric rows; with its unseen genes in the
    input, also the diagnostic on the seen and the unseen genes apart (group ``unseen_genes``) and
    each unseen gene's masked MSE (group ``unseen_gene_mse``, metric: the gene's token id), and on
    another organism's dataset each of its genes' (``species_gene_mse``): the pairs of the tables'
    per-gene tests."""
    rows = [
        {"metric": metric, "group": "reconstruction", "note": "evaluation dataset", "value": recon[metric]}
        for metric in RECONSTRUCTION_METRICS
    ]
    rows += [
        {"metric": f"{metric}_{group}", "group": "unseen_genes", "note": f"{group} genes", "value": recon[key]}
        for group in GENE_GROUPS
        for metric in (*RECONSTRUCTION_METRICS, "global_mean_mse")
        if (key := f"{metric}_{group}") in recon
    ]
    rows += [
        {"metric": str(token), "group": group, "note": f"{tokens} masked tokens", "value": mse}
        for group in PER_GENE_GROUPS
        for token, (tokens, mse) in recon.get(group, {}).items()
    ]
    return pd.DataFrame(rows)


def run(
    embedding: Path,
    out: OutputFile,
    run: str,
    gene_encoding: str,
    expression_encoding: str,
    seed: int,
    dataset: str,
    params: EvalParams,
    reconstruction: Path | None = None,
    threads: int = 1,
) -> pd.DataFrame:
    """The study's metrics (scIB batch and bio, kNN and logistic-regression classification) of one
    embedding table, as a tidy metric table at ``out``; a model's ``reconstruction`` JSON (its context
    diagnostic on this dataset) adds the reconstruction rows. An embedding without a model gives
    every metric as NaN with the reason. ``threads``: Leiden's resolutions run side by side."""
    cells, matrix, missing = read_embedding(embedding)
    try:
        rows = evaluate_embedding(matrix, cells.label.to_numpy(), cells.batch.to_numpy(), params, threads)
    except ScencodeError as exc:
        raise ScencodeError(f"{run} on {dataset}: {exc}", embedding) from None
    if reconstruction is not None:  # models only: baselines reconstruct nothing
        rows = pd.concat([rows, reconstruction_rows(read_reconstruction_errors(reconstruction))])
    if missing:  # no model: every metric is NaN, and the table says why
        rows = rows.assign(value=float("nan"), note=missing)
    table = metric_table(rows, RunIdentity(run, gene_encoding, expression_encoding, seed), dataset)
    write_table(table, out)
    return table
