"""``scencode.cellsets``: which cells a metric is scored on, and the exact kNN graph."""

import numpy as np

from scencode.cellsets import knn_graph, labeled, seeded_subsample


def test_unlabelled_cells_are_told_apart_whatever_their_spelling():
    labels = np.array(["T cell", "unknown", " Unknown ", None, "", "NaN", "B cell"], dtype=object)
    assert labeled(labels).tolist() == [True, False, False, False, False, False, True]


def test_a_subsample_is_seeded_sorted_and_says_what_it_left_out():
    cells = np.arange(1000)
    kept, note = seeded_subsample(cells, 100, seed=3)
    again, _ = seeded_subsample(cells, 100, seed=3)
    assert len(kept) == 100 and np.array_equal(kept, again) and np.all(np.diff(kept) > 0)
    assert note == "scored on 100 of 1000 labeled cells (seeded subsample)"
    assert not np.array_equal(kept, seeded_subsample(cells, 100, seed=4)[0])
    whole, none = seeded_subsample(cells, 1000, seed=3)
    assert np.array_equal(whole, cells) and none == ""


def test_the_knn_graph_is_exact_and_includes_each_cell_first():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    graph = knn_graph(x, 6)
    assert graph.indices.shape == (200, 6) and np.array_equal(graph.indices[:, 0], np.arange(200))
    brute = np.argsort(((x[:, None] - x[None]) ** 2).sum(-1), axis=1)[:, :6]
    assert np.array_equal(np.sort(graph.indices, 1), np.sort(brute, 1))
