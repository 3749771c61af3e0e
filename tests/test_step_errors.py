"""Every step's errors in one line (issue 31): each ``scencode`` step given a malformed input of
each class (missing, empty, wrong type, wrong schema, another vocabulary) fails with exactly one
``scencode <step>: error:`` line naming the file, a non-zero exit and nothing written. The steps run
in this process (``cli.main``), so the matrix costs no interpreter start-ups."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from helpers import leftovers, synthetic_metrics, tiny_adata

from scencode.cli import main

CLASSES = ("missing", "empty", "folder", "other_schema")
# the tiny model's identity (conftest.tiny_model), as the reconstruction step is told it
TINY_RUN = ["--run", "learned-soft-s3", "--gene-encoding", "learned", "--expression-encoding", "soft", "--seed", "3"]


def malformed(kind: str, folder: Path, suffix: str) -> Path:
    """A file of ``kind`` where a ``suffix`` input is expected."""
    path = folder / f"bad_{kind}{suffix}"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
    elif kind == "other_schema":
        if suffix == ".parquet":
            pd.DataFrame({"x": [1, 2]}).to_parquet(path)
        elif suffix == ".csv":
            path.write_text("x,y\n1,2\n")
        elif suffix == ".h5ad":
            ad.AnnData(np.ones((3, 2), np.float32)).write_h5ad(path)  # no gene ids, no counts
        elif suffix == ".json":
            path.write_text("[1, 2]")
        else:
            path.write_text("neither FASTA nor anything else\n")
    return path


@pytest.fixture(scope="module")
def valid(tmp_path_factory, demo_corpus, labelled_corpus, tiny_model, gene_table_dir) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("valid")
    metrics = folder / "metrics.parquet"
    synthetic_metrics(3).to_parquet(metrics)
    raw = folder / "raw.h5ad"
    tiny_adata().write_h5ad(raw)
    corpus, vocab = demo_corpus
    return {
        "raw": raw,
        "qc": corpus.parent / "sim_lung_1.h5ad",
        "vocab": vocab,
        "corpus": corpus,
        "labelled": labelled_corpus,
        "model": tiny_model,
        "train_log": tiny_model.parent / "train_log.parquet",
        "metrics": metrics,
        "gene_table": gene_table_dir,
    }


# step → (the flag under test, the input's suffix, the other arguments given valid inputs and an output folder)
CASES = {
    "qc": (
        "--raw",
        ".h5ad",
        lambda v, o: [
            "--out",
            o / "q.h5ad",
            "--report",
            o / "q.json",
            "--gene-table",
            v["gene_table"],
            "--dataset",
            "d",
        ],
    ),
    "vocab": ("--qc", ".h5ad", lambda v, o: ["--out", o / "vocab.parquet"]),
    "tokenize": (
        "--vocab",
        ".parquet",
        lambda v, o: [
            "--corpus",
            "c",
            "--datasets",
            json.dumps([{"dataset_id": "a", "path": str(v["qc"])}]),
            "--out",
            o / "t",
        ],
    ),
    "corpus-stats": (
        "--vocab",
        ".parquet",
        lambda v, o: ["--corpora", v["corpus"], "--context", "64", "--out", o / "s.csv", "--figure", o / "s.png"],
    ),
    "esm-embed": ("--fasta", ".fa", lambda v, o: ["--out", o / "e.parquet", "--weights", v["raw"]]),
    "esm-coverage": (
        "--table",
        ".parquet",
        lambda v, o: ["--qc", v["qc"], "--gene-table", v["gene_table"], "--out", o / "c.json"],
    ),
    "embed": (
        "--model",
        ".json",
        lambda v, o: [
            "--corpus",
            v["labelled"],
            "--run",
            "r",
            "--dataset",
            "lung",
            "--out",
            o / "e.parquet",
            "--reconstruction",
            o / "r.json",
        ],
    ),
    "reconstruction": (
        "--train-log",
        ".parquet",
        lambda v, o: [
            "--model",
            v["model"],
            "--corpus",
            v["corpus"],
            "--out",
            o / "r.parquet",
            *TINY_RUN,
        ],
    ),
    "baseline": (
        "--qc",
        ".h5ad",
        lambda v, o: ["--kind", "pca", "--dataset", "d", "--label-key", "cell_type", "--out", o / "b.parquet"],
    ),
    "evaluate": (
        "--embedding",
        ".parquet",
        lambda v, o: [
            "--out",
            o / "m.parquet",
            "--run",
            "r",
            "--gene-encoding",
            "learned",
            "--expression-encoding",
            "soft",
            "--seed",
            "0",
            "--dataset",
            "d",
        ],
    ),
    "gene-probes": (
        "--vocab",
        ".parquet",
        lambda v, o: ["--runs", json.dumps([]), "--out", o / "g.csv", "--figure", o / "g.png"],
    ),
    "tables": ("--metrics", ".parquet", lambda v, o: ["--out-dir", o / "tables"]),
    "figures": ("--summary", ".csv", lambda v, o: ["--metrics", o / "none.csv", "--out-dir", o / "figures"]),
    "provenance": ("--sheets", ".tsv", lambda v, o: ["--config", "{}", "--out", o / "p.json"]),
}


@pytest.mark.parametrize("kind", CLASSES)
@pytest.mark.parametrize("step", list(CASES))
def test_every_step_refuses_a_malformed_input_in_one_line_naming_it(step, kind, valid, tmp_path, capsys):
    flag, suffix, others = CASES[step]
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    bad = malformed(kind, inputs, suffix)
    code = main([step, flag, str(bad), *map(str, others(valid, out))])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"scencode {step}: error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert bad.name in lines[0], lines[0]
    assert list(out.iterdir()) == [] and leftovers(tmp_path) == []


@pytest.mark.parametrize("step", ["corpus-stats", "embed", "reconstruction", "pretrain"])
def test_a_corpus_of_another_vocabulary_is_named(step, valid, tmp_path, capsys, gene_table):
    """The corpus and the vocabulary (or the model's vocabulary) disagree: one line naming both."""
    from scencode.formats import write_vocab
    from scencode.vocab import build_vocab

    other = tmp_path / "other_vocab.parquet"
    write_vocab(build_vocab([valid["qc"]]).iloc[:-3], other)  # three genes fewer: another vocabulary
    out = tmp_path / "out"
    out.mkdir()
    args = {
        "corpus-stats": [
            "--corpora",
            valid["corpus"],
            "--vocab",
            other,
            "--context",
            "64",
            "--out",
            out / "s.csv",
            "--figure",
            out / "s.png",
        ],
        "embed": [
            "--model",
            valid["model"],
            "--corpus",
            valid["labelled"],
            "--run",
            "r",
            "--dataset",
            "lung",
            "--out",
            out / "e.parquet",
            "--reconstruction",
            out / "r.json",
        ],
        "reconstruction": [
            "--model",
            valid["model"],
            "--train-log",
            valid["train_log"],
            "--corpus",
            valid["corpus"],
            "--out",
            out / "r.parquet",
            *TINY_RUN,
        ],
        "pretrain": ["--name", "learned-soft-s0", "--corpus", valid["corpus"], "--vocab", other, "--out", out / "run"],
    }[step]
    if step in ("embed", "reconstruction"):  # the model's vocabulary is the demo's; the corpus another's
        from scencode.tokenize import DatasetInput, TokenizeParams, tokenize_corpus

        corpus = tmp_path / "lung"
        tokenize_corpus("lung", [DatasetInput("lung", valid["qc"])], other, corpus, TokenizeParams())
        args[args.index("--corpus") + 1] = corpus
    code = main([step, *map(str, args)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"scencode {step}: error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert "vocabulary" in lines[0], lines[0]
    assert list(out.iterdir()) == []
