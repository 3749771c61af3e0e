"""scib's graph LISI (scencode.graph_lisi): the path search against scipy's Dijkstra, the text
rounding against printf, and scib's edge cases. Agreement with scib 1.1.7 itself on real data is
tests/test_scib_golden.py."""

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import dijkstra

from scencode import graph_lisi


def _random_graph(n: int, degree: int, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n), degree)
    cols = rng.integers(0, n, n * degree)
    keep = rows != cols
    graph = sp.coo_matrix((rng.random(keep.sum()) + 0.01, (rows[keep], cols[keep])), shape=(n, n)).tocsr()
    return graph.maximum(graph.T).tocsr()  # symmetric, as scanpy's connectivities


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_path_search_finds_the_k_nearest_cells_by_shortest_path(seed):
    graph = _random_graph(400, 4, seed)  # real-valued lengths: no ties, one right answer
    k = 25
    sources = np.arange(graph.shape[0])
    neighbours, distances, found = graph_lisi.nearest_by_path(
        graph.indptr.astype(np.int64), graph.indices.astype(np.int64), graph.data, sources, k
    )
    exact = dijkstra(graph, directed=True)
    np.fill_diagonal(exact, np.inf)
    expected = np.sort(exact, axis=1)[:, :k]
    assert (found == k).all()
    np.testing.assert_allclose(np.sort(distances, axis=1), expected, rtol=1e-12)
    for row in range(0, 400, 37):
        assert set(neighbours[row]) == set(np.argsort(exact[row])[:k])


def test_cells_with_too_few_reachable_cells_get_simpson_one_and_cells_without_edges_are_left_out():
    # two components of 5 cells (a path each) and one cell with no edge
    blocks = [sp.diags([np.ones(4), np.ones(4)], [-1, 1], shape=(5, 5)) for _ in range(2)]
    graph = sp.block_diag([*blocks, sp.csr_matrix((1, 1))]).tocsr()
    groups = np.array(list("aabbbababaa"))
    lisi = graph_lisi.lisi_per_cell(graph, groups, n_neighbors=90)
    assert lisi.shape == (10,)  # the isolated cell is not scored
    assert (lisi == 1).all()  # scib: "does not have enough neighbors" → Simpson 1


def test_a_well_mixed_neighbourhood_scores_the_number_of_groups():
    rng = np.random.default_rng(0)
    graph = _random_graph(3000, 15, 0)
    lisi = graph_lisi.lisi_per_cell(graph, rng.integers(0, 3, 3000))
    assert 2.4 < np.median(lisi) <= 3  # random labels: near every group (30 effective neighbours sample them)
    separated = graph_lisi.lisi_per_cell(graph, np.zeros(3000, int))
    np.testing.assert_allclose(separated, 1.0)  # one group: Simpson 1 everywhere


def test_path_lengths_are_rounded_as_cpp_writes_them():
    values = np.concatenate(
        [
            np.random.default_rng(0).random(2000) * 10.0 ** np.arange(-3, 5).repeat(250),
            [1.0000005, 2.2500005, 0.1234565, 0.0],
        ]
    )
    expected = np.array([float(f"{v:g}") for v in values])
    np.testing.assert_array_equal(graph_lisi.six_significant_digits(values), expected)


def test_scaling_follows_scib():
    graph = _random_graph(600, 15, 3)
    groups = np.random.default_rng(1).integers(0, 4, 600)
    median = np.median(graph_lisi.lisi_per_cell(graph, groups))
    assert graph_lisi.ilisi(graph, groups) == pytest.approx((median - 1) / 3)
    assert graph_lisi.clisi(graph, groups) == pytest.approx((4 - median) / 3)
