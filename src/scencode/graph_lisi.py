"""scib's graph LISI (iLISI, cLISI), exactly as scib 1.1.7 computes it, without its helper binary.

scib (``scib.metrics.lisi``) builds scanpy's 15-neighbour graph, writes its connectivities as
Matrix Market text and runs a compiled helper (``knn_graph.cpp``) that takes, from each cell, the
90 cells nearest by shortest path over that graph, with the connectivities as edge lengths. Python
reads the helper's text output back and computes each cell's Simpson index of the labels over those
neighbours (perplexity 30). Three details decide the values and are kept here:

* edge lengths are the float32 connectivities as the Matrix Market text holds them (the shortest
  decimal that reads back as the float32) read as float64, and path lengths are rounded to six
  significant digits, as C++'s default stream output writes them;
* equal path lengths are common (many connectivities are exactly 1), so which cells make up the 90
  depends on the helper's priority queues; :func:`nearest_by_path` keeps the same queue discipline
  (its heaps' layout, eviction and tie order), so the same cells are chosen;
* a cell with fewer than 90 reachable cells gets Simpson index 1; a cell with no edge is left out;
  a perplexity search that ends with entropy 0 gives -1 (scib's value, kept).

The search is compiled with numba (in the tree through scanpy and umap-learn), per cell a bounded
Dijkstra that stops after 90 cells: about a second for 50,000 cells, where scib writes and parses
text files. ``tests/test_scib_golden.py`` checks both scores against scib 1.1.7's on real data.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numba import njit

NEIGHBORS = 90  # scib's k0
PERPLEXITY = 30  # scib: floor(k0 / 3)
TOLERANCE = 1e-5  # scib's perplexity search
MAX_TRIES = 50


def ilisi(connectivities: sp.csr_matrix, batches: np.ndarray) -> float:
    """scib.metrics.ilisi_graph (scaled): (median LISI of batches - 1) / (batches - 1)."""
    n_batches = len(np.unique(batches))
    return (np.nanmedian(lisi_per_cell(connectivities, batches)) - 1) / (n_batches - 1)


def clisi(connectivities: sp.csr_matrix, labels: np.ndarray) -> float:
    """scib.metrics.clisi_graph (scaled): (labels - median LISI of labels) / (labels - 1)."""
    n_labels = len(np.unique(labels))
    return (n_labels - np.nanmedian(lisi_per_cell(connectivities, labels))) / (n_labels - 1)


def lisi_per_cell(connectivities: sp.csr_matrix, groups: np.ndarray, n_neighbors: int = NEIGHBORS) -> np.ndarray:
    """1 / Simpson index of ``groups`` over each connected cell's graph neighbourhood (scib's
    ``lisi_graph_py``); cells without an edge are left out, as scib's helper skips them."""
    graph = sp.csr_matrix(connectivities, copy=True)
    graph.sort_indices()  # the order the Matrix Market file lists each row's edges in
    lengths = graph.data.astype(str).astype(np.float64) if graph.dtype == np.float32 else graph.data.astype(np.float64)
    codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)[1].astype(np.int64)
    indptr, indices = graph.indptr.astype(np.int64), graph.indices.astype(np.int64)
    sources = np.flatnonzero(np.diff(indptr) > 0)
    neighbours, distances, found = nearest_by_path(indptr, indices, lengths, sources, n_neighbors)
    distances = six_significant_digits(distances)
    simpson = _simpson(neighbours, distances, found, codes, int(codes.max()) + 1, np.log(PERPLEXITY))
    return 1 / simpson


def six_significant_digits(values: np.ndarray) -> np.ndarray:
    """What C++'s ``ostream << double`` writes (printf %g, six significant digits), read back."""
    out = values.copy()
    positive = np.isfinite(values) & (values > 0)
    v = values[positive]
    shift = 5 - np.floor(np.log10(v))
    scaled = v * 10.0**shift
    rounded = np.rint(scaled) / 10.0**shift
    # where the product is too close to a half for the float multiply to decide, let printf decide
    unsure = np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6
    rounded[unsure] = [float(f"{x:g}") for x in v[unsure]]
    out[positive] = rounded
    return out


# ------------------------------------------------------------------ compiled kernels
# Two binary heaps over the same entries, a min-heap (next cell to settle) and a max-heap (the
# worst candidate, evicted when a shorter one arrives), in the layout of scib's helper: slot 0's
# child is slot 1 and slot s's children are 2s and 2s + 1.


@njit(cache=True)
def _better(a, b, is_min):
    return a < b if is_min else a > b


@njit(cache=True)
def _swap(weight, node, slot_of, a, b):
    slot_of[node[a]], slot_of[node[b]] = b, a
    weight[a], weight[b] = weight[b], weight[a]
    node[a], node[b] = node[b], node[a]


@njit(cache=True)
def _sift_up(weight, node, slot_of, size, slot, is_min):
    if slot == 0 or slot >= size:
        return
    while slot > 0:
        parent = slot // 2
        if not _better(weight[slot], weight[parent], is_min):
            break
        _swap(weight, node, slot_of, slot, parent)
        slot = parent


@njit(cache=True)
def _sift_down(weight, node, slot_of, size, slot, is_min):
    while slot < size:
        left, right = 2 * slot, 2 * slot + 1
        if right < size:
            child = left if _better(weight[left], weight[right], is_min) else right
        elif left < size:
            child = left
        else:
            break
        if not _better(weight[child], weight[slot], is_min):
            break
        _swap(weight, node, slot_of, slot, child)
        slot = child


@njit(cache=True)
def _push(weight, node, slot_of, size, cell, distance, is_min):
    weight[size], node[size], slot_of[cell] = distance, cell, size
    _sift_up(weight, node, slot_of, size + 1, size, is_min)
    return size + 1


@njit(cache=True)
def _pop(weight, node, slot_of, size, is_min):
    """Remove the top entry; the new size."""
    last = size - 1
    removed = node[0]
    _swap(weight, node, slot_of, 0, last)
    slot_of[removed] = -1
    _sift_down(weight, node, slot_of, last, 0, is_min)
    return last


@njit(cache=True)
def _erase(weight, node, slot_of, size, slot, is_min):
    """Remove the entry at ``slot``; the new size. The moved entry sifts down only when strictly
    worse than the removed one (on a tie it stays: the helper's rule, which decides tie order)."""
    removed, old, last = node[slot], weight[slot], size - 1
    _swap(weight, node, slot_of, slot, last)
    slot_of[removed] = -1
    if _better(old, weight[slot], is_min):
        _sift_down(weight, node, slot_of, last, slot, is_min)
    else:
        _sift_up(weight, node, slot_of, last, slot, is_min)
    return last


@njit(cache=True)
def _reweigh(weight, node, slot_of, size, slot, distance, is_min):
    if _better(distance, weight[slot], is_min):
        weight[slot] = distance
        _sift_up(weight, node, slot_of, size, slot, is_min)
    elif _better(weight[slot], distance, is_min):
        weight[slot] = distance
        _sift_down(weight, node, slot_of, size, slot, is_min)


@njit(cache=True)
def nearest_by_path(indptr, indices, lengths, sources, k):
    """For each source, its ``k`` nearest cells by shortest path (``found`` says how many exist)."""
    n = len(indptr) - 1
    neighbours = np.full((len(sources), k), -1, np.int64)
    distances = np.full((len(sources), k), np.nan)
    found = np.zeros(len(sources), np.int64)
    capacity = k + 2
    min_w, min_n = np.empty(capacity), np.empty(capacity, np.int64)
    max_w, max_n = np.empty(capacity), np.empty(capacity, np.int64)
    in_min, in_max = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    for row in range(len(sources)):
        start = sources[row]
        n_min = _push(min_w, min_n, in_min, 0, start, 0.0, True)
        n_max = _push(max_w, max_n, in_max, 0, start, 0.0, False)
        count = 0
        while n_min > 0:
            cell, distance = min_n[0], min_w[0]
            n_min = _pop(min_w, min_n, in_min, n_min, True)
            if cell != start:
                neighbours[row, count], distances[row, count] = cell, distance
                count += 1
                if count >= k:
                    break
            for e in range(indptr[cell], indptr[cell + 1]):
                other, through = indices[e], distance + lengths[e]
                if in_max[other] >= 0:  # a candidate, or settled (then in the max-heap only)
                    if in_min[other] >= 0 and through < min_w[in_min[other]]:
                        _reweigh(min_w, min_n, in_min, n_min, in_min[other], through, True)
                        _reweigh(max_w, max_n, in_max, n_max, in_max[other], through, False)
                elif n_max <= k:
                    n_min = _push(min_w, min_n, in_min, n_min, other, through, True)
                    n_max = _push(max_w, max_n, in_max, n_max, other, through, False)
                elif through < max_w[0]:
                    worst = max_n[0]
                    n_max = _pop(max_w, max_n, in_max, n_max, False)
                    n_min = _erase(min_w, min_n, in_min, n_min, in_min[worst], True)
                    n_min = _push(min_w, min_n, in_min, n_min, other, through, True)
                    n_max = _push(max_w, max_n, in_max, n_max, other, through, False)
        found[row] = count
        for slot in range(n_min):  # reset the lookups this source touched
            in_min[min_n[slot]] = -1
        for slot in range(n_max):
            in_max[max_n[slot]] = -1
    return neighbours, distances, found


@njit(cache=True)
def _entropy(distances, beta):
    """scib's Hbeta: the entropy of exp(-beta d) normalised, and those probabilities."""
    p = np.exp(-distances * beta)
    total = np.sum(p)
    if total == 0:
        return 0.0, np.zeros(len(distances))
    return np.log(total) + beta * np.sum(distances * p) / total, p / total


@njit(cache=True)
def _simpson(neighbours, distances, found, codes, n_groups, log_perplexity):
    """scib's compute_simpson_index_graph: per cell, the perplexity-calibrated Simpson index."""
    k = neighbours.shape[1]
    simpson = np.empty(len(neighbours))
    for row in range(len(neighbours)):
        if found[row] < k:
            simpson[row] = 1.0  # scib: "does not have enough neighbors"
            continue
        d = distances[row]
        beta, low, high = 1.0, -np.inf, np.inf
        h, p = _entropy(d, beta)
        diff, tries = h - log_perplexity, 0
        while abs(diff) > TOLERANCE and tries < MAX_TRIES:
            if diff > 0:
                low = beta
                beta = beta * 2 if high == np.inf else (beta + high) / 2
            else:
                high = beta
                beta = beta / 2 if low == -np.inf else (beta + low) / 2
            h, p = _entropy(d, beta)
            diff, tries = h - log_perplexity, tries + 1
        if h == 0:
            simpson[row] = -1.0
            continue
        per_group = np.zeros(n_groups)
        for j in range(k):
            per_group[codes[neighbours[row, j]]] += p[j]
        simpson[row] = np.sum(per_group * per_group)
    return simpson
