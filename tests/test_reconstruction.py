import pandas as pd
import pytest

from scencode.embed import run as embed
from scencode.errors import ScencodeError
from scencode.loader import LoaderConfig
from scencode.reconstruction import run as reconstruction

LOADER = LoaderConfig(batch_size=16, context=64, bucket_batches=2, seed=3)  # the tiny model's training loader
IDENTITY = {"run": "learned-soft-s3", "gene_encoding": "learned", "expression_encoding": "soft", "seed": 3}


def test_the_embed_steps_measurement_of_the_test_split_is_the_one_reconstruction_makes(
    tiny_model, labelled_corpus, tmp_path
):
    corpus = labelled_corpus  # embedding needs labels; the workflow's training corpus has them when scored
    errors = tmp_path / "train_test.reconstruction.json"
    embed(tiny_model, corpus, "learned-soft-s3", "train_test", tmp_path / "e.parquet", errors, LOADER, split="test")
    common = dict(model=tiny_model, train_log=tiny_model.parent / "train_log.parquet", corpus=corpus, params=LOADER)
    measured = reconstruction(**common, out=tmp_path / "measured.parquet", **IDENTITY)
    read = reconstruction(**common, out=tmp_path / "read.parquet", test_errors=errors, **IDENTITY)
    pd.testing.assert_frame_equal(measured, read)
    test = measured.set_index("metric")
    assert test.loc["test_mse", "value"] > 0 and test.loc["test_mse", "note"].startswith("held-out test split, ")
    assert int(test.loc["test_mse", "note"].split(", ")[1].split()[0]) > 0  # measured on cells, not on none


def test_a_diagnostic_file_without_its_metrics_is_refused_naming_them(tiny_model, demo_corpus, tmp_path):
    errors = tmp_path / "r.json"
    errors.write_text('{"cells": 3, "masked_mse": 0.5}')
    with pytest.raises(ScencodeError, match="lack masked_mse_no_context, gene_mean_mse: rerun the embed step"):
        reconstruction(
            tiny_model,
            tiny_model.parent / "train_log.parquet",
            demo_corpus[0],
            tmp_path / "out.parquet",
            params=LOADER,
            test_errors=errors,
            **IDENTITY,
        )
    assert not (tmp_path / "out.parquet").exists()
