"""Genes held out of training (issue 34, part 1): the draw, the loader's filter over a whole epoch,
what each gene encoder gives an unseen gene, the diagnostic on seen and unseen genes, the tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl
import pytest
import torch
from test_pretrain import spec

from scencode.corpus_stats import gene_medians_run
from scencode.errors import ScencodeError
from scencode.formats import SPECIAL_TOKENS, load_vocab
from scencode.loader import LoaderConfig, ShardBatches, without_genes
from scencode.model import CellTransformer, ModelConfig, load_model
from scencode.pretrain import fit, setup
from scencode.unseen_genes import STRATA, draw, read_unseen_genes, run


@pytest.fixture(scope="module")
def unseen_table(demo_corpus, tmp_path_factory):
    corpus, vocab = demo_corpus
    folder = tmp_path_factory.mktemp("unseen")
    gene_medians_run(corpus, vocab, folder / "medians.parquet")
    run(folder / "medians.parquet", vocab, 0.2, 7, folder / "unseen.parquet")
    return folder / "unseen.parquet", folder / "medians.parquet"


def test_the_draw_is_seeded_and_takes_the_fraction_in_every_expression_stratum():
    vocab = pd.DataFrame({"gene_id": [*SPECIAL_TOKENS, *(f"ENSG{i:011d}" for i in range(1000))]})
    cells = np.r_[0, 0, np.random.default_rng(0).zipf(1.5, 1000)]
    cells[5:55] = 0  # never expressed in training: not drawn
    unseen = draw(vocab, cells, 0.1, seed=3)
    assert unseen.equals(draw(vocab, cells, 0.1, seed=3))
    assert not unseen.equals(draw(vocab, cells, 0.1, seed=4))
    tokens = unseen["token_id"].to_numpy()
    assert (tokens >= len(SPECIAL_TOKENS)).all() and (cells[tokens] > 0).all()
    assert len(tokens) == pytest.approx(95, abs=STRATA)
    # the same share of the rare and of the common genes: each decile holds its tenth
    per_stratum = unseen.group_by("stratum").len().sort("stratum")["len"].to_list()
    assert len(per_stratum) == STRATA and max(per_stratum) - min(per_stratum) <= 1
    assert np.median(cells[tokens]) == pytest.approx(np.median(cells[cells > 0]), rel=0.5)
    with pytest.raises(ScencodeError, match="fraction in"):
        draw(vocab, cells, 1.0, seed=3)


def test_the_table_is_checked_against_the_vocabulary(unseen_table, demo_corpus, tmp_path):
    path, medians = unseen_table
    vocab, digest = load_vocab(demo_corpus[1])
    mask = read_unseen_genes(path, digest, len(vocab))
    assert mask.sum() == pl.read_parquet(path).height > 0 and not mask[: len(SPECIAL_TOKENS)].any()
    with pytest.raises(ScencodeError, match="another vocabulary") as caught:
        read_unseen_genes(path, "0" * 64, len(vocab))
    assert str(path) in str(caught.value)


def test_leaving_genes_out_keeps_each_cells_other_genes_in_order():
    rng = np.random.default_rng(1)
    lengths = rng.integers(0, 30, 50)
    genes = np.concatenate([np.sort(rng.choice(np.arange(2, 200), n, replace=False)) for n in lengths])
    counts = rng.integers(1, 50, len(genes))
    drop = np.zeros(200, bool)
    drop[rng.choice(200, 40, replace=False)] = True
    kept_genes, kept_counts, kept_lengths = without_genes(genes, counts, lengths, drop)
    starts = np.cumsum(lengths) - lengths
    expected = [
        (g[~drop[g]], c[~drop[g]]) for g, c in ((genes[s : s + n], counts[s : s + n]) for s, n in zip(starts, lengths))
    ]
    assert kept_lengths.tolist() == [len(g) for g, _ in expected]
    assert np.array_equal(kept_genes, np.concatenate([g for g, _ in expected]))
    assert np.array_equal(kept_counts, np.concatenate([c for _, c in expected]))


def test_an_unseen_gene_is_in_no_training_batch_over_a_whole_epoch(unseen_table, demo_corpus):
    corpus, vocab = demo_corpus
    mask = read_unseen_genes(unseen_table[0], load_vocab(vocab)[1], len(load_vocab(vocab)[0]))
    loader = LoaderConfig(batch_size=16, context=64, bucket_batches=2, seed=3)
    seen_with, seen_without, cells = set(), set(), [0, 0]
    for batch in ShardBatches(corpus, "train", loader, epoch=0, drop_genes=mask):
        seen_with |= set(batch.gene_ids.tolist())
        cells[0] += batch.n_cells
    for batch in ShardBatches(corpus, "train", loader, epoch=0):
        seen_without |= set(batch.gene_ids.tolist())
        cells[1] += batch.n_cells
    unseen = set(np.flatnonzero(mask).tolist())
    assert cells[0] == cells[1] > 400  # every training cell still comes, without those genes
    assert not seen_with & unseen
    assert seen_without & unseen  # the check can fail: without the filter they are there


def test_a_learned_table_gives_every_unseen_gene_one_vector_and_esm2_its_own_row():
    vocab_size = 12
    unseen = torch.zeros(vocab_size, dtype=torch.bool)
    unseen[[4, 7]] = True
    ids = torch.tensor([2, 4, 7, 9])
    learned = CellTransformer(
        ModelConfig(vocab_size, "learned", "soft", d_model=8, n_layers=1, n_heads=2, d_ff=8), unseen_genes=unseen
    )
    vectors = learned.gene_vectors(ids)
    seen_rows = learned.genes.table.weight[2:][~unseen[2:]]
    assert torch.allclose(vectors[1], seen_rows.mean(0)) and torch.equal(vectors[1], vectors[2])
    assert torch.equal(vectors[0], learned.genes.table.weight[2]) and torch.equal(
        vectors[3], learned.genes.table.weight[9]
    )
    table = torch.randn(vocab_size, 6)
    esm = CellTransformer(
        ModelConfig(vocab_size, "esm2", "soft", d_model=8, n_layers=1, n_heads=2, d_ff=8),
        gene_table=table,
        unseen_genes=unseen,
    )
    assert torch.equal(esm.gene_vectors(ids), esm.genes(ids))  # a protein embedding exists whatever training saw
    assert not torch.equal(esm.gene_vectors(ids)[1], esm.gene_vectors(ids)[2])


def test_a_model_trained_without_some_genes_keeps_them_and_is_scored_on_each_group(
    unseen_table, demo_corpus, labelled_corpus, tmp_path
):
    from dataclasses import replace

    from scencode import embed
    from scencode.formats import read_reconstruction_errors

    corpus, vocab = demo_corpus
    path, medians = unseen_table
    run_spec = replace(spec(corpus, vocab, tmp_path / "m", max_steps=4), unseen_genes=path)
    fit(setup(run_spec))
    model, _ = load_model(tmp_path / "m" / "best.pt", torch.device("cpu"))
    mask = read_unseen_genes(path, load_vocab(vocab)[1], model.cfg.vocab_size)
    assert np.array_equal(model.unseen_genes.numpy(), mask)
    loader = LoaderConfig(batch_size=16, context=64, bucket_batches=2, seed=3)
    results = {}
    for how in ("leave_out", "include"):
        out = tmp_path / how
        embed.run(
            tmp_path / "m" / "model.json",
            labelled_corpus,
            "learned-soft-s3",
            "lung",
            out / "e.parquet",
            out / "r.json",
            loader,
            unseen_genes=how,
        )
        results[how] = read_reconstruction_errors(out / "r.json")
    assert "masked_mse_unseen" not in results["leave_out"]
    included = results["include"]
    assert included["masked_tokens_unseen"] > 0 and included["masked_tokens_seen"] > 0
    assert included["masked_tokens_seen"] + included["masked_tokens_unseen"] == included["masked_tokens"]
    # the reference that knows no gene is never better than the one that knows each gene's mean
    for group in ("seen", "unseen"):
        assert included[f"global_mean_mse_{group}"] >= included[f"gene_mean_mse_{group}"] > 0
    # the per-gene errors are the pairs of the tests: they average (token-weighted) to the group's
    per_gene = np.array(list(included["unseen_gene_mse"].values()))
    assert np.average(per_gene[:, 1], weights=per_gene[:, 0]) == pytest.approx(included["masked_mse_unseen"])
    assert {int(t) for t in included["unseen_gene_mse"]} <= set(np.flatnonzero(mask).tolist())
    # the gene probes score the model's genes on the unseen ones apart, the reference tables on the same split
    from scencode.gene_probes import ProbeParams, gene_probes

    run_entry = {"run": "learned-soft-s3", "gene_encoding": "learned", "expression_encoding": "soft", "seed": 3}
    probes = gene_probes([{**run_entry, "model": tmp_path / "m" / "model.json"}], vocab, None, ProbeParams())
    moved = probes[(probes.metric == "logreg_auroc_unseen") & (probes.group == "gene_probe_chromosome")]
    assert set(moved.configuration) == {"learned-soft-s3", "reference-random_table"}
    assert moved.note.nunique() == 1 and "unseen" in moved.note.iloc[0] and moved.value.notna().all()
    with pytest.raises(ScencodeError, match="--unseen-genes must be one of"):
        embed.run(
            tmp_path / "m" / "model.json",
            labelled_corpus,
            "x",
            "lung",
            tmp_path / "x.parquet",
            tmp_path / "x.json",
            loader,
            unseen_genes="both",
        )
