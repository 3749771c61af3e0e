"""Embedding evaluation corpora with a trained model (``scencode.embed``)."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
from helpers import write_status

from scencode.loader import LoaderConfig


def test_embeddings_are_deterministic_and_sample_genes_by_the_seed(tiny_model, labelled_corpus, tmp_path):
    import anndata as ad

    from scencode.embed import embed_corpus
    from scencode.formats import read_embedding

    checkpoint, corpus = tiny_model.with_name("best.pt"), labelled_corpus

    def embed(name, **loader):
        cfg = LoaderConfig(**{"batch_size": 16, "bucket_batches": 2, "seed": 3, "context": 16, **loader})  # K < M
        embed_corpus(checkpoint, corpus, cfg, tmp_path / f"{name}.parquet", tmp_path / f"{name}.h5ad", "m", "lung")
        cells, matrix, missing = read_embedding(tmp_path / f"{name}.parquet")
        return cells, matrix

    cells, first = embed("a")
    _, again = embed("b")
    _, other_seed = embed("c", seed=4)
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert len(cells) == manifest["n_cells"] > 100 and cells.cell_id.is_unique and cells.label.notna().all()
    assert np.array_equal(first, again)  # bit-identical: the same genes, the same model
    _, top = embed("d", gene_sampling="top_expressed")
    _, top_again = embed("e", gene_sampling="top_expressed")

    def cells_changed(x, y):
        return int((~np.isclose(x, y, atol=1e-5).all(1)).sum())

    # the seed picks which K genes and which values are hidden (cells are embedded as trained)
    assert cells_changed(first, other_seed) == len(cells)
    assert np.array_equal(top, top_again) and cells_changed(top, first) > 0
    h5ad = ad.read_h5ad(tmp_path / "a.h5ad")
    assert list(h5ad.obs_names) == list(cells.cell_id) and np.array_equal(h5ad.obsm["X_scencode"], first)


IDENTITY = ("--run", "esm2-soft-s0", "--gene-encoding", "esm2", "--expression-encoding", "soft", "--seed", "0")


def _scencode(*args):
    return subprocess.run([sys.executable, "-m", "scencode", *map(str, args)], capture_output=True, text=True)


def test_a_deleted_checkpoint_gives_empty_outputs_and_nan_metrics_that_say_why(tmp_path):
    import anndata as ad

    from scencode.formats import read_embedding

    model = write_status(tmp_path / "models" / "esm2-soft-s0", "esm2-soft-s0").parent  # best.pt was deleted
    out = tmp_path / "lung.parquet"
    result = _scencode(
        "embed",
        "--model",
        model / "model.json",
        "--corpus",
        tmp_path / "no_corpus_needed",
        "--run",
        "esm2-soft-s0",
        "--dataset",
        "lung",
        "--out",
        out,
        "--h5ad",
        tmp_path / "lung.h5ad",
        "--reconstruction",
        tmp_path / "lung.json",
    )
    assert result.returncode == 0, result.stderr
    cells, matrix, missing = read_embedding(out)
    assert len(cells) == 0 and "best.pt is missing" in missing
    assert "best.pt is missing" in ad.read_h5ad(tmp_path / "lung.h5ad").uns["scencode"]["missing"]
    result = _scencode(
        "evaluate",
        "--embedding",
        out,
        "--reconstruction",
        tmp_path / "lung.json",
        *IDENTITY,
        "--dataset",
        "lung",
        "--out",
        tmp_path / "m.parquet",
    )
    assert result.returncode == 0, result.stderr
    metrics = pd.read_parquet(tmp_path / "m.parquet")
    assert {"bio_score", "batch_score", "accuracy", "macro_f1", "masked_mse"} <= set(metrics.metric)
    assert metrics.value.isna().all() and metrics.note.str.contains("no model for esm2-soft-s0").all()


def test_a_checkpoint_path_that_does_not_exist_is_an_error(tmp_path):
    result = _scencode(
        "embed",
        "--model",
        tmp_path / "best.pt",
        "--corpus",
        tmp_path,
        "--run",
        "esm2-soft-s0",
        "--dataset",
        "lung",
        "--out",
        tmp_path / "e.parquet",
        "--h5ad",
        tmp_path / "e.h5ad",
        "--reconstruction",
        tmp_path / "r.json",
    )
    assert result.returncode == 1 and "best.pt: model checkpoint not found" in result.stderr
    assert not (tmp_path / "e.parquet").exists()


def test_an_empty_held_out_split_gives_an_embedding_that_says_why(tiny_model, demo_corpus, tmp_path):
    """A small training corpus's test split can hold no cell (test_fraction × cells < 1): the
    in-distribution set is then missing with its reason, not a failed job (found by the rehearsal)."""
    from scencode.embed import embed_corpus
    from scencode.formats import read_embedding
    from scencode.tokenize import DatasetInput, TokenizeParams, tokenize_corpus

    qc = demo_corpus[0].parent / "sim_lung_1.h5ad"
    corpus = tmp_path / "train"
    tokenize_corpus("train", [DatasetInput("a", qc)], demo_corpus[1], corpus, TokenizeParams(test_fraction=0))
    info = embed_corpus(
        tiny_model.with_name("best.pt"), corpus, LoaderConfig(batch_size=16), tmp_path / "e.parquet", None,
        "m", "train_test", split="test",
    )  # fmt: skip
    cells, matrix, missing = read_embedding(tmp_path / "e.parquet")
    assert info["cells"] == 0 and len(cells) == 0 and missing == "no cells in the training corpus's test split"
