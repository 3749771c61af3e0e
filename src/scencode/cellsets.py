"""Which cells the metrics are computed on, and their neighbours: shared by the study's metrics
(evaluate) and scib-metrics' Benchmarker (scib_benchmark), so that both score the same cells."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

MAX_CELLS_SCIB = 100_000  # larger datasets are subsampled (seeded) for the O(n²) scIB metrics
SUBSAMPLE_SEED = 0


UNLABELED = {"", "nan", "none", "unknown", "unassigned", "na"}


def labeled(labels: np.ndarray) -> np.ndarray:
    return ~pd.Series(labels, dtype=object).fillna("").astype(str).str.strip().str.lower().isin(UNLABELED).to_numpy()


def seeded_subsample(cells: np.ndarray, max_cells: int, seed: int) -> tuple[np.ndarray, str]:
    """At most ``max_cells`` of ``cells`` (indices; seeded, in order), and a note saying so when
    some were left out (scIB metrics are O(n²) in the cells)."""
    if len(cells) <= max_cells:
        return cells, ""
    pick = np.sort(np.random.default_rng(seed).choice(cells, max_cells, replace=False))
    return pick, f"scored on {max_cells} of {len(cells)} labeled cells (seeded subsample)"


def knn_graph(x: np.ndarray, k: int):
    """Exact Euclidean kNN (scikit-learn) in scib-metrics' format. Exact search avoids pynndescent's
    per-process numba compilation (~20 s), which dominates on evaluation-sized data."""
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    distances, indices = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)
    return NeighborsResults(indices=indices, distances=distances)


def cache_graph_kernels() -> None:
    """Keep the numba kernels of the neighbour-graph libraries (umap-learn's connectivities,
    pynndescent's search, which scib-metrics' kBET calls) compiled on disk, with numba's own cache
    (what ``cache=True`` does; these libraries do not ask for it). Every evaluate or Benchmarker job is
    a new process and compiled them again: a demo evaluate job took 19.7 s, 15.6 s cached; pynndescent
    took 21 of a Benchmarker job's 94 s. Same code, same results (checked on the demo's metrics). Where
    no cache folder is writable numba refuses, and the kernels compile as before."""
    import pynndescent  # noqa: F401  (imports its submodules)
    import umap.umap_  # noqa: F401
    from numba.core.caching import NullCache
    from numba.core.registry import CPUDispatcher

    for name, module in list(sys.modules.items()):
        if not name.startswith(("umap.", "pynndescent.")):
            continue
        for kernel in vars(module).values():
            if isinstance(kernel, CPUDispatcher) and isinstance(
                getattr(kernel, "_cache", None), NullCache
            ):  # not cached yet
                try:
                    kernel.enable_caching()
                except RuntimeError as error:  # numba: no writable cache locator
                    log.debug("numba kernel %s.%s not cached: %s", name, getattr(kernel, "__name__", kernel), error)


# why a metric is not defined on a dataset: the study's metrics and the Benchmarker say it alike
SINGLE_BATCH = "single batch: batch mixing is not defined"
SINGLE_CELL_TYPE = "single cell type: conservation is not defined"
