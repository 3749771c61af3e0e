"""Corpus statistics: one lazy polars scan per corpus, checked against the shards read with pyarrow."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from scencode.corpus_stats import read_stats, run, training_figures
from scencode.errors import ScencodeError
from scencode.formats import load_vocab


def test_statistics_equal_what_the_shards_hold(demo_corpus, tmp_path):
    corpus, vocab = demo_corpus
    stats = run([corpus], vocab, context=40, out=tmp_path / "stats.csv", figure=tmp_path / "stats.png")
    table = pq.read_table(sorted(corpus.glob("part-*.parquet")), columns=["dataset_id", "split", "gene_ids"])
    n_genes = pc.list_value_length(table["gene_ids"]).to_numpy()
    datasets, splits = table["dataset_id"].to_numpy(), table["split"].to_numpy()
    vocab_genes = len(load_vocab(vocab)[0]) - 2
    assert len(stats) == len({(d, s) for d, s in zip(datasets, splits)}) == 6  # two datasets × three splits
    for row in stats.iter_rows(named=True):
        cells = (datasets == row["dataset_id"]) & (splits == row["split"])
        genes = n_genes[cells]
        assert row["corpus"] == "train" and row["cells"] == cells.sum()
        assert row["genes_per_cell_mean"] == pytest.approx(genes.mean())
        assert row["genes_per_cell_median"] == pytest.approx(np.quantile(genes, 0.5))
        assert row["genes_per_cell_p95"] == pytest.approx(np.quantile(genes, 0.95))
        assert (row["genes_per_cell_min"], row["genes_per_cell_max"]) == (genes.min(), genes.max())
        assert row["tokens"] == np.minimum(genes, 40).sum() < genes.sum()  # the cap bites on these cells
        seen = np.unique(np.concatenate(table["gene_ids"].filter(datasets == row["dataset_id"]).to_pylist()))
        assert row["dataset_genes_seen"] == len(seen)
        assert row["dataset_vocab_coverage"] == pytest.approx(len(seen) / vocab_genes)
    assert read_stats(tmp_path / "stats.csv").equals(stats)


def test_the_plan_reads_the_training_splits_tokens_per_cell(demo_corpus, tmp_path):
    corpus, vocab = demo_corpus
    stats = run([corpus], vocab, context=40, out=tmp_path / "stats.csv", figure=tmp_path / "stats.png")
    figures = training_figures(stats)
    train = stats.filter(stats["split"] == "train")
    assert figures["train_cells"] == train["cells"].sum()
    assert figures["tokens_per_cell"] == pytest.approx(train["tokens"].sum() / train["cells"].sum())
    assert sum(figures["cells_by_split"].values()) == stats["cells"].sum()


def test_the_figure_shows_each_dataset_beside_the_context_cap(demo_corpus, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    corpus, vocab = demo_corpus
    saved = []
    monkeypatch.setattr(plt, "close", saved.append)  # keep the figure to read it back
    run([corpus], vocab, context=40, out=tmp_path / "stats.csv", figure=tmp_path / "stats.png", caveat="demo data")
    left, right = saved[0].axes
    assert saved[0].get_suptitle() == "demo data"  # a run off the study's setup says so on every figure
    assert [t.get_text() for t in left.get_yticklabels()] == ["train · sim_blood_1", "train · sim_lung_1"]
    assert left.get_xlabel() == "non-zero vocabulary genes per cell" and right.get_xlabel() == "vocabulary coverage"
    assert [line.get_xdata()[0] for line in left.lines if line.get_linestyle() == "--"] == [40]
    assert all(0 < bar.get_width() <= 1 for bar in right.patches) and len(right.patches) == 2
    assert (tmp_path / "stats.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "stats.pdf").read_bytes()[:4] == b"%PDF"
    from scencode.plotting import layout_problems

    assert layout_problems(saved[0]) == []


def test_a_corpus_without_a_manifest_is_named(tmp_path, demo_corpus):
    (tmp_path / "broken").mkdir()
    with pytest.raises(ScencodeError, match="broken/manifest.json: corpus manifest not found"):
        run([tmp_path / "broken"], demo_corpus[1], context=40, out=tmp_path / "s.csv", figure=tmp_path / "s.png")
    assert not (tmp_path / "s.csv").exists()


def test_gene_medians_are_the_non_zero_medians_of_the_training_split(demo_corpus):
    """Against numpy's exact median of count / total × 10,000 over the training cells that express
    each gene: within the histogram's half-bin (0.9 %)."""
    import pyarrow.parquet as pq

    from scencode.corpus_stats import gene_medians
    from scencode.formats import load_vocab

    corpus, vocab = demo_corpus
    vocabulary, digest = load_vocab(vocab)
    table = gene_medians(corpus, len(vocabulary), digest)
    cells = pq.read_table(
        sorted(corpus.glob("part-*.parquet")), columns=["split", "gene_ids", "counts", "total_counts"]
    )
    cells = cells.to_pandas()
    cells = cells[cells.split == "train"]
    values = {}
    for genes, counts, total in zip(cells.gene_ids, cells.counts, cells.total_counts):
        for g, c in zip(genes, counts):
            values.setdefault(int(g), []).append(c / total * 10_000)
    medians = table["median"].to_numpy()
    checked = 0
    for gene, seen in values.items():
        exact = np.median(seen)
        assert abs(medians[gene] / exact - 1) < 0.0095 or len(seen) % 2 == 0, (gene, medians[gene], exact)
        assert table["cells"][gene] == len(seen)
        checked += len(seen) % 2 == 1
    assert checked > 100  # odd counts: the median is one of the values, no interpolation between two
    unseen = [g for g in range(2, len(vocabulary)) if g not in values]
    assert all(table["cells"][g] == 0 for g in unseen)


def test_gene_medians_hold_one_row_group_of_tokens_not_a_shard(gene_table, tmp_path, monkeypatch):
    """The rehearsal's 1M-cell corpus (100,000 cells a shard, as the paper's) took 7.6 GB in the gene
    medians job, asked 3.3 GB: its per-token temporaries were built for a whole shard at once. Read
    row group by row group, its numpy peak is bounded by a row group's tokens and the histogram,
    whatever the shard's size; the medians are the same."""
    import tracemalloc

    from conftest import qc_and_tokenize

    from scencode import corpus_stats

    vocab = tmp_path / "vocab.parquet"
    params = dict(val_fraction=0.0, test_fraction=0.0, cells_per_shard=5000, row_group_cells=200)
    corpus = qc_and_tokenize(tmp_path, {"sim_lung_1": 3000}, gene_table, vocab, "train", False, **params)
    vocabulary, digest = load_vocab(vocab)
    shards = sorted(corpus.glob("part-*.parquet"))
    assert len(shards) == 1 and pq.ParquetFile(shards[0]).metadata.num_row_groups >= 10
    expected = corpus_stats.gene_medians(corpus, len(vocabulary), digest)
    monkeypatch.setattr(corpus_stats, "COUNT_TOKENS", 1)  # count each row group as it is read
    tracemalloc.start()
    medians = corpus_stats.gene_medians(corpus, len(vocabulary), digest)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert medians.equals(expected)
    shard_tokens = int(pc.sum(pc.list_value_length(pq.read_table(shards[0], columns=["gene_ids"])["gene_ids"])).as_py())
    histogram = len(vocabulary) * corpus_stats.MEDIAN_BINS * 8
    # measured: 26.5 MB here row group by row group, 53.6 MB with the whole shard at once
    assert peak < 2.5 * histogram + 4 * shard_tokens, (peak, shard_tokens, histogram)
