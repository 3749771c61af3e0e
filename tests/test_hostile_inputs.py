"""The hostile-input probes' cases (issues 24 and 31), each reproduced as it was found: silently
wrong or destructive inputs are refused with one line naming the file and the problem, nothing is
written and nothing is deleted; the other cases fail in a way a user can act on. Issue 31's cases 1,
2 and 4 (folders and links) are in test_atomic.py; its every-step matrix in test_step_errors.py."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
import yaml
from helpers import GENES, REPO, leftovers, make_counts, tiny_adata

from scencode.atomic import HOST, OWNED
from scencode.errors import ScencodeError
from scencode.formats import write_embedding_files, write_vocab
from scencode.qc import QCParams, run_qc
from scencode.tokenize import DatasetInput, TokenizeParams, tokenize_corpus
from scencode.vocab import build_vocab

KEEP_ALL = QCParams(min_genes=0, min_counts=0, min_cells_per_gene=0, max_pct_mito=100)


def scencode(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scencode", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def one_error_line(result: subprocess.CompletedProcess, step: str) -> str:
    """The step failed with exactly one line, ``scencode <step>: error: ...``, and no traceback."""
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"scencode {step}: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def qc_cli(raw: Path, out: Path, gene_table_dir: Path, params: QCParams = KEEP_ALL):
    return scencode(
        "qc",
        "--raw",
        raw,
        "--out",
        out,
        "--report",
        out.with_suffix(".json"),
        "--gene-table",
        gene_table_dir,
        "--dataset",
        "d",
        "--params",
        json.dumps(asdict(params)),
    )


def qc_and_tokenize(adata: ad.AnnData, folder: Path, gene_table, params: QCParams = KEEP_ALL) -> Path:
    adata.write_h5ad(folder / "raw.h5ad")
    run_qc(folder / "raw.h5ad", folder / "qc.h5ad", folder / "qc.json", gene_table, params, "d")
    write_vocab(build_vocab([folder / "qc.h5ad"]), folder / "vocab.parquet")
    tokenize_corpus(
        "d",
        [DatasetInput("d", folder / "qc.h5ad")],
        folder / "vocab.parquet",
        folder / "tokens",
        TokenizeParams(val_fraction=0, test_fraction=0),
    )
    return folder / "tokens"


def shard_counts(corpus: Path, vocab: Path) -> dict[str, dict[str, int]]:
    """cell → {Ensembl id: count} as the shards hold them."""
    genes = pq.read_table(vocab).column("gene_id").to_pylist()
    table = pq.read_table(sorted(corpus.glob("part-*.parquet")), columns=["cell_id", "gene_ids", "counts"]).to_pylist()
    return {
        row["cell_id"].split(":", 1)[1]: {genes[g]: c for g, c in zip(row["gene_ids"], row["counts"])} for row in table
    }


# 1 ----------------------------------------------------------------------------------------------


def test_tokenize_refuses_a_folder_that_holds_other_files_and_deletes_nothing(demo_corpus, tmp_path):
    _, vocab = demo_corpus
    qc = demo_corpus[0].parent / "sim_lung_1.h5ad"
    target = tmp_path / "V" / "important"
    (target / "sub").mkdir(parents=True)
    (target / "thesis.tex").write_text("precious")
    result = scencode(
        "tokenize",
        "--corpus",
        "c",
        "--datasets",
        json.dumps([{"dataset_id": "a", "path": str(qc)}]),
        "--vocab",
        vocab,
        "--out",
        target,
    )
    line = one_error_line(result, "tokenize")
    assert str(target) in line and "not written by scencode tokenize" in line
    assert (target / "thesis.tex").read_text() == "precious" and (target / "sub").is_dir()
    assert leftovers(tmp_path) == []


def test_tokenize_replaces_its_own_earlier_corpus_and_fills_an_empty_folder(demo_corpus, tmp_path):
    _, vocab = demo_corpus
    inputs = [DatasetInput("a", demo_corpus[0].parent / "sim_lung_1.h5ad")]
    (tmp_path / "empty").mkdir()
    for _ in range(2):  # the second run replaces the first's corpus (its record lists every file)
        manifest = tokenize_corpus("c", inputs, vocab, tmp_path / "empty", TokenizeParams())
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == [OWNED, "manifest.json", "part-00000.parquet"]
    assert manifest["n_cells"] == pq.read_metadata(tmp_path / "empty" / "part-00000.parquet").num_rows


# 2, 3 -------------------------------------------------------------------------------------------


def test_a_float32_count_of_2_pow_31_is_refused(tmp_path, gene_table_dir):
    counts = make_counts(30)
    counts[4, 2] = np.float32(2**31)
    tiny_adata(counts).write_h5ad(tmp_path / "raw.h5ad")
    line = one_error_line(qc_cli(tmp_path / "raw.h5ad", tmp_path / "qc.h5ad", gene_table_dir), "qc")
    assert "raw.h5ad" in line and "beyond 16,777,216" in line and "2147483648.0 at row 4, column 2" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.h5ad"]


@pytest.mark.parametrize("each", [1.5e9, 1.0e7])  # the probe's value (refused on input), and one merging past it
def test_duplicate_genes_whose_merged_count_is_too_large_are_refused(tmp_path, gene_table_dir, each):
    counts = make_counts(30, 3)
    counts[:, :2] = 5
    counts[6, :2] = each
    adata = ad.AnnData(
        sp.csr_matrix(counts), var=pd.DataFrame(index=[GENES["TP53"], GENES["TP53"] + ".7", GENES["ACTB"]])
    )
    adata.obs_names = [f"c{i}" for i in range(30)]
    adata.write_h5ad(tmp_path / "raw.h5ad")
    line = one_error_line(qc_cli(tmp_path / "raw.h5ad", tmp_path / "qc.h5ad", gene_table_dir), "qc")
    assert "beyond 16,777,216" in line and ("merging" in line) == (each < 2**24)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.h5ad"]


# 4 ----------------------------------------------------------------------------------------------


def test_a_csr_matrix_with_duplicate_entries_is_canonicalised_before_any_metric(tmp_path, gene_table):
    dense = make_counts(20, 6, mean=5)
    canonical = sp.csr_matrix(dense)
    # every entry written twice, each half of the value: the same matrix, not in canonical format
    half = canonical.data / 2
    doubled = sp.csr_matrix(
        (np.repeat(half, 2), np.repeat(canonical.indices, 2), canonical.indptr * 2), shape=canonical.shape
    )
    assert not doubled.has_canonical_format
    reports = {}
    for name, matrix in (("canonical", canonical), ("duplicated", doubled)):
        adata = tiny_adata(dense)
        adata.X = matrix
        folder = tmp_path / name
        folder.mkdir()
        corpus = qc_and_tokenize(adata, folder, gene_table)
        obs = ad.read_h5ad(folder / "qc.h5ad").obs
        reports[name] = (obs[["n_genes", "total_counts"]], shard_counts(corpus, folder / "vocab.parquet"))
    pd.testing.assert_frame_equal(reports["duplicated"][0], reports["canonical"][0])
    assert reports["duplicated"][1] == reports["canonical"][1]
    assert reports["canonical"][0].n_genes.tolist() == (dense > 0).sum(axis=1).tolist()


# 5 ----------------------------------------------------------------------------------------------


def dry_run(workdir: Path, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--directory", str(workdir), "--configfile", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


def test_a_dataset_listed_twice_fails_the_dry_run(tmp_path):
    """First as train, then as eval: the second row would have replaced the first, and the training
    corpus lost a dataset."""
    rows = (REPO / "config" / "datasets" / "demo.tsv").read_text()
    (tmp_path / "datasets.tsv").write_text(rows + "sim_kidney_1\teval\tdemo\tsim_kidney_1\tcell_type\n")
    config = (
        (REPO / "config" / "config.yaml")
        .read_text()
        .replace("config/datasets/demo.tsv", str(tmp_path / "datasets.tsv"))
    )
    (tmp_path / "config.yaml").write_text(config)
    result = dry_run(tmp_path, tmp_path / "config.yaml")
    assert result.returncode != 0
    added = len([line for line in rows.splitlines() if not line.startswith("#")])  # header + rows: its row number
    output = result.stdout + result.stderr  # Snakemake shortens long paths in its message
    assert f"datasets.tsv: row {added}, column dataset: 'sim_kidney_1' is listed twice (first in" in output
    assert "datasets.tsv, row 3); each dataset has one row" in output
    assert not (tmp_path / "results").exists()


def test_a_config_key_written_twice_fails_the_dry_run(tmp_path):
    config = (REPO / "config" / "config.yaml").read_text().replace("\nvocab:\n", "\nvocab:\n  policy: union\n", 1)
    (tmp_path / "config.yaml").write_text(config)
    result = dry_run(tmp_path, tmp_path / "config.yaml")
    assert result.returncode != 0 and "key 'policy' is written twice in one mapping" in result.stdout + result.stderr


# 6 ----------------------------------------------------------------------------------------------


def test_all_null_labels_are_refused_at_qc(tmp_path, gene_table_dir):
    tiny_adata(cell_type=pd.Categorical([None] * 60, categories=["T cell"])).write_h5ad(tmp_path / "raw.h5ad")
    params = QCParams(min_genes=0, min_counts=0, max_pct_mito=100, label_key="cell_type")
    line = one_error_line(qc_cli(tmp_path / "raw.h5ad", tmp_path / "qc.h5ad", gene_table_dir, params), "qc")
    assert "label column 'cell_type' has no value in any of the 60 cells" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.h5ad"]


def test_embedding_files_are_written_both_or_neither(tmp_path):
    obs = pd.DataFrame({"label": [object(), object()], "batch": ["a", "b"]}, index=pd.Index(["x", "y"], name="cell_id"))
    with pytest.raises(
        TypeError, match="non-string objects"
    ):  # anndata cannot write them: the .h5ad fails after the Parquet
        write_embedding_files(obs, np.zeros((2, 3), np.float32), tmp_path / "e.parquet", tmp_path / "e.h5ad", "r", "d")
    assert list(tmp_path.iterdir()) == []


# 7 ----------------------------------------------------------------------------------------------


def test_a_truncated_h5ad_is_named(tmp_path, gene_table_dir):
    tiny_adata(make_counts(300)).write_h5ad(tmp_path / "good.h5ad")
    body = (tmp_path / "good.h5ad").read_bytes()
    (tmp_path / "raw.h5ad").write_bytes(body[: len(body) // 2])
    line = one_error_line(qc_cli(tmp_path / "raw.h5ad", tmp_path / "qc.h5ad", gene_table_dir), "qc")
    assert "raw.h5ad: not a readable h5ad file, truncated or damaged" in line
    assert not (tmp_path / "qc.h5ad").exists()


def test_a_dense_float16_matrix_is_read_exactly(tmp_path, gene_table, gene_table_dir):
    counts = make_counts(40)
    adata = tiny_adata(counts)
    adata.X = counts.astype(np.float16)
    corpus = qc_and_tokenize(adata, tmp_path, gene_table)
    stored = shard_counts(corpus, tmp_path / "vocab.parquet")
    expected = {f"cell{i}": {g: int(c) for g, c in zip(GENES.values(), row) if c} for i, row in enumerate(counts)}
    assert stored == expected


# 8 ----------------------------------------------------------------------------------------------


def test_a_large_loss_of_genes_is_a_warning_with_the_numbers(tmp_path, gene_table, caplog):
    names = gene_table.genes.gene_name
    repeated = names[names.duplicated(keep=False) & (names != gene_table.genes.gene_id)].drop_duplicates()
    _, status = gene_table.map_symbols(repeated.iloc[:300].astype(str).reset_index(drop=True))
    ambiguous = repeated.iloc[:300][status.to_numpy() == "ambiguous"].iloc[:135].tolist()
    unique = names[~names.duplicated(keep=False) & gene_table.genes.gene_type.eq("protein_coding")].iloc[:65].tolist()
    rng = np.random.default_rng(0)
    counts = rng.poisson(1.0, (300, 200)).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(counts), var=pd.DataFrame(index=list(map(str, ambiguous + unique))))
    adata.obs_names = [f"c{i}" for i in range(300)]
    adata.write_h5ad(tmp_path / "raw.h5ad")
    with caplog.at_level(logging.WARNING, logger="scencode.qc"):
        report = run_qc(
            tmp_path / "raw.h5ad",
            tmp_path / "qc.h5ad",
            tmp_path / "qc.json",
            gene_table,
            QCParams(min_genes=130, min_counts=0, max_pct_mito=100),
            "d",
        )
    assert report["genes"]["ambiguous"] == 135
    assert "d: 135 of 200 genes dropped in mapping to Ensembl ids (0 unmatched, 135 ambiguous symbols" in caplog.text
    removed = report["cells"]["removed"]
    assert (
        removed == ((counts > 0).sum(axis=1) < 130).sum() > 75
        and f"QC removed {removed} of 300 cells (300 → {300 - removed}" in caplog.text
    )


# 9 ----------------------------------------------------------------------------------------------


def test_a_checkpoint_of_another_vocabulary_is_named_with_the_vocabulary_it_expects(demo_corpus, tmp_path):
    import torch

    from scencode.embed import embed_corpus
    from scencode.loader import LoaderConfig
    from scencode.model import CellTransformer, ModelConfig

    corpus, _ = demo_corpus
    cfg = ModelConfig(
        vocab_size=40, gene_encoding="learned", expression_encoding="log", d_model=8, n_layers=1, n_heads=1, d_ff=16
    )
    other = "f" * 64
    torch.save(
        {"model_config": asdict(cfg), "model": CellTransformer(cfg).state_dict(), "vocab_hash": other},
        tmp_path / "best.pt",
    )
    with pytest.raises(ScencodeError) as error:
        embed_corpus(tmp_path / "best.pt", corpus, LoaderConfig(), tmp_path / "e.parquet", None, "r", "d")
    message = str(error.value)
    assert message.startswith(
        f"{tmp_path / 'best.pt'}: this model was trained on the vocabulary with hash ffffffffffff"
    )
    assert "(40 tokens)" in message and "retrain" in message and "re-run tokenize" not in message
    assert not (tmp_path / "e.parquet").exists()


# 10 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["pretrain"]["model"].update(d_model=-8), "-8"),
        (
            lambda c: c["pretrain"]["configurations"].append({"gene": "nope", "expression": "soft"}),
            "unknown gene encoding 'nope'",
        ),
        (lambda c: c["pretrain"]["loader"].update(p_mask=1.5), "1.5"),
        (lambda c: c["pretrain"]["train"].update(max_steps=0), "max_steps"),
        (lambda c: c.update(datasets=str(c["sheet"])), "bad.tsv: row {added} (dataset bad id!), column dataset"),
    ],
)
def test_plan_refuses_what_the_workflow_refuses(tmp_path, edit, message):
    from scencode.plan import run as plan

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    rows = (REPO / "config" / "datasets" / "demo.tsv").read_text()
    (tmp_path / "bad.tsv").write_text(rows + "bad id!\ttrain\tdemo\tsim_lung_1\n")
    config["sheet"] = tmp_path / "bad.tsv"  # for the case that points the config at it
    edit(config)
    config.pop("sheet")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ScencodeError, match=f"^{tmp_path}/(c.yaml|bad.tsv): ") as error:
        plan(tmp_path / "c.yaml")
    assert message.format(added=len([line for line in rows.splitlines() if not line.startswith("#")])) in str(
        error.value
    )


# 11 ---------------------------------------------------------------------------------------------


def test_outputs_that_cannot_be_written_are_refused_before_any_work(tmp_path, gene_table_dir):
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("x")
    missing_input = tmp_path / "not_read.h5ad"  # the output is checked first: the input is never opened
    cases = [
        (tmp_path / "a_folder", "output path is a folder, not a file"),
        (tmp_path / "a_file" / "qc.h5ad", "a_file is a file, not a folder"),
    ]
    for out, message in cases:
        line = one_error_line(qc_cli(missing_input, out, gene_table_dir), "qc")
        assert line.startswith(f"scencode qc: error: {out}: ") and message in line


def test_an_immutable_parent_is_refused_before_any_work(tmp_path, gene_table_dir):
    parent = tmp_path / "locked"
    parent.mkdir()
    if subprocess.run(["chattr", "+i", str(parent)], capture_output=True).returncode != 0:
        if os.geteuid() == 0:
            pytest.skip("this filesystem has no immutable attribute, and root writes any folder")
        parent.chmod(0o500)
    try:
        line = one_error_line(qc_cli(tmp_path / "not_read.h5ad", parent / "qc.h5ad", gene_table_dir), "qc")
        assert f"{parent / 'qc.h5ad'}: cannot write in {parent}" in line
    finally:
        subprocess.run(["chattr", "-i", str(parent)], capture_output=True)
        parent.chmod(0o700)


# 12 ---------------------------------------------------------------------------------------------


def test_a_signal_python_swallows_in_a_finaliser_still_stops_the_step(tmp_path):
    """A SIGTERM that lands in a finaliser (where Python prints 'Exception ignored in' and goes on)
    stops the step at its next commit: no output, exit 143."""
    out = tmp_path / "out.h5ad"
    code = (
        "import sys, time; from scencode import cli, atomic\n"
        "class Finalised:\n"
        "    def __del__(self):\n"
        "        print('finalising', flush=True); time.sleep(30)\n"
        "def step(source, out, seed=0):\n"
        "    Finalised()\n"  # collected at once: the signal lands inside __del__
        "    with atomic.atomic_path(out) as tmp:\n"
        "        tmp.write_bytes(b'complete')\n"
        "cli.step_function = lambda name: step\n"
        f"sys.exit(cli.main(['download', '--source', '{{}}', '--out', {str(out)!r}]))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "finalising"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert "Exception ignored" in err  # Python did swallow it
    assert proc.returncode == 143 and "stopped by SIGTERM" in err
    assert list(tmp_path.iterdir()) == []


# 13 ---------------------------------------------------------------------------------------------


def test_a_rerun_removes_the_temporaries_a_killed_writer_left(tmp_path, gene_table):
    tiny_adata().write_h5ad(tmp_path / "raw.h5ad")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    alive = str(os.getppid())  # another writer's temporaries, still running: left alone
    stale_file = tmp_path / f".qc.h5ad.{HOST}-{dead}.k2j4.tmp.h5ad"
    stale_dir = tmp_path / f".tokens.{HOST}-{dead}.x81f.tmp"
    running = tmp_path / f".qc.h5ad.{HOST}-{alive}.abcd.tmp.h5ad"
    elsewhere = tmp_path / f".qc.h5ad.othernode-{dead}.abcd.tmp.h5ad"  # another node's writer: unknown, kept
    stale_file.write_bytes(b"x" * 1000)
    (stale_dir / "part-00000.parquet").parent.mkdir()
    (stale_dir / "part-00000.parquet").write_bytes(b"x")
    running.write_bytes(b"x")
    elsewhere.write_bytes(b"x")
    qc_and_tokenize(tiny_adata(), tmp_path, gene_table)
    assert not stale_file.exists() and not stale_dir.exists() and running.exists() and elsewhere.exists()


# the property ----------------------------------------------------------------------------------


def _hostile_matrix(rng: np.random.Generator) -> tuple[sp.csr_matrix, list[str]]:
    """Counts near the limits in float32/float64/int64, duplicate entries, duplicate genes (an id
    and its versioned twin), empty rows, and now and then NaN or Inf."""
    n_cells, ids = int(rng.integers(3, 12)), list(GENES.values())
    var = ids + [ids[0] + ".3", ids[1] + ".9"]  # two genes that merge into TP53 and GAPDH
    dense = rng.poisson(3, (n_cells, len(var))).astype(np.float64)
    dense[rng.random(dense.shape) < 0.3] = 0
    dense[rng.integers(n_cells)] = 0  # an empty row
    for _ in range(int(rng.integers(0, 3))):
        dense[rng.integers(n_cells), rng.integers(len(var))] = rng.choice(
            [2.0**24, 2.0**24 - 1, 2.0**24 + 2, 2.0**31 - 1, 2.0**31, 1.5e9, 2.0**23, np.nan, np.inf]
        )
    matrix = sp.csr_matrix(dense)
    if rng.random() < 0.5:  # split each entry in two: duplicate entries, the same matrix
        with np.errstate(invalid="ignore"):  # inf - inf: NaN, hostile all the same
            first = np.floor(matrix.data / 2)
            data = np.stack([first, matrix.data - first], axis=1).ravel()
        matrix = sp.csr_matrix((data, np.repeat(matrix.indices, 2), matrix.indptr * 2), shape=matrix.shape)
    dtype = rng.choice(["float32", "float64", "int64"])
    if dtype == "int64" and not np.isfinite(matrix.data).all():
        dtype = "float64"
    return matrix.astype(dtype), var


def test_hostile_count_matrices_are_refused_or_stored_exactly(tmp_path, gene_table):
    rng = np.random.default_rng(24)
    outcomes = {"refused": 0, "stored": 0}
    for case in range(40):
        matrix, var = _hostile_matrix(rng)
        folder = tmp_path / str(case)
        folder.mkdir()
        adata = ad.AnnData(matrix, var=pd.DataFrame(index=var))
        adata.obs_names = [f"c{i}" for i in range(matrix.shape[0])]
        try:
            corpus = qc_and_tokenize(adata, folder, gene_table)
        except ScencodeError as exc:
            assert str(exc).startswith(str(folder / "raw.h5ad")), exc  # names the file
            assert not (folder / "qc.h5ad").exists() or not (folder / "tokens").exists()
            assert leftovers(folder) == []
            outcomes["refused"] += 1
            continue
        canonical = sp.csr_matrix(matrix.astype(np.float64))
        canonical.sum_duplicates()
        merged = pd.DataFrame(canonical.toarray(), columns=[v.split(".")[0] for v in var]).T.groupby(level=0).sum().T
        expected = {f"c{i}": {g: int(c) for g, c in row.items() if c} for i, row in merged.iterrows()}
        stored = shard_counts(corpus, folder / "vocab.parquet")
        assert stored == {cell: genes for cell, genes in expected.items() if genes}, case
        outcomes["stored"] += 1
    print(outcomes)
    assert outcomes["refused"] >= 5 and outcomes["stored"] >= 5, outcomes


# issue 31 ---------------------------------------------------------------------------------------


def step_error(capsys, step: str, *args) -> str:
    """Run a step in this process; it fails with one ``scencode <step>: error:`` line, returned."""
    from scencode.cli import main

    code = main([step, *map(str, args)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"scencode {step}: error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def demo_config(tmp_path: Path, edit) -> Path:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    edit(config)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "c.yaml"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(results_dir="-x"), "does not match '^[^-]'"),  # case 3
        (lambda c: c.update(results_dir=""), "does not match '^[^-]'"),
        (lambda c: c["vocab"].update(protein_genes="-genes.tsv"), "does not match '^[^-]'"),
        (lambda c: c.update(datasets=["-x.tsv"]), "does not match"),
        (lambda c: c["evaluate"].update(reference_expression="nosuch"), "reference_expression 'nosuch'"),  # case 6
        (lambda c: c["pretrain"]["train"].update(betas=[0.9, 1.5]), "1.5"),  # case 13
        (lambda c: c["pretrain"].update(train_cells=[1.0]), "train_cells 1.0 is ambiguous"),  # case 14
    ],
)
def test_the_dry_run_and_plan_refuse_what_a_step_would_refuse(tmp_path, edit, message):
    from scencode.plan import run as plan

    with pytest.raises(ScencodeError, match=f"^{tmp_path}/c.yaml: ") as error:
        plan(demo_config(tmp_path, edit))
    assert message in str(error.value)


def test_a_results_dir_that_reads_as_an_option_fails_snakemakes_dry_run(tmp_path):
    """Case 3 through Snakemake itself: refused when the DAG is built, nothing written anywhere."""
    config = demo_config(tmp_path, lambda c: c.update(results_dir="-x"))
    result = dry_run(tmp_path, config)
    assert result.returncode != 0 and "results_dir" in result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def sheet_with(tmp_path: Path, row: str) -> Path:
    rows = (REPO / "config" / "datasets" / "demo.tsv").read_text()
    (tmp_path / "bad.tsv").write_text(rows + row)
    return demo_config(tmp_path, lambda c: c.update(datasets=str(tmp_path / "bad.tsv")))


def test_a_300_character_dataset_id_is_refused_before_any_job(tmp_path):
    """Case 13: the file names built from it would pass 255 characters."""
    from scencode.plan import run as plan

    with pytest.raises(ScencodeError, match="is too long"):
        plan(sheet_with(tmp_path, "d" * 300 + "\ttrain\tdemo\tsim_lung_1\n"))


def test_a_sheet_cell_holding_a_line_break_is_named_as_such(tmp_path):
    """Case 13: the error says the row was split, not only that a label_key is missing."""
    from scencode.plan import run as plan

    with pytest.raises(ScencodeError, match="line break") as error:
        plan(sheet_with(tmp_path, "extra\teval\tdemo\tsim_lung_eval\tcell_\ntype\n"))
    assert "bad.tsv" in str(error.value)


def test_corpus_stats_catches_a_flipped_bit_in_a_dictionary_page(demo_corpus, tmp_path, capsys):
    """Case 5: one bit of the ``split`` column's dictionary page; corpus-stats reads through the
    one shard reader, which checks every page's CRC."""
    import shutil

    corpus = tmp_path / "train"
    shutil.copytree(demo_corpus[0], corpus)
    shard = corpus / "part-00000.parquet"
    meta = pq.read_metadata(shard)
    column = meta.row_group(0).column(meta.schema.names.index("split"))
    data = bytearray(shard.read_bytes())
    data[column.data_page_offset - 1] ^= 0x04  # the dictionary page's last byte: a value, not the header
    shard.write_bytes(bytes(data))
    out = tmp_path / "out"
    line = step_error(
        capsys,
        "corpus-stats",
        "--corpora",
        corpus,
        "--vocab",
        demo_corpus[1],
        "--context",
        64,
        "--out",
        out / "s.csv",
        "--figure",
        out / "s.png",
    )
    assert str(shard) in line and "corrupt" in line and not out.exists()


@pytest.mark.parametrize("context", [0, -5])
def test_corpus_stats_refuses_a_context_below_one_gene(demo_corpus, tmp_path, capsys, context):
    """Case 14 (and 12): --context 0 gave 0 tokens, -5 a traceback."""
    line = step_error(
        capsys,
        "corpus-stats",
        "--corpora",
        demo_corpus[0],
        "--vocab",
        demo_corpus[1],
        "--context",
        context,
        "--out",
        tmp_path / "s.csv",
        "--figure",
        tmp_path / "s.png",
    )
    assert "--context must be at least 1" in line and list(tmp_path.iterdir()) == []


def metric_rows(**changes) -> pd.DataFrame:
    from helpers import synthetic_metrics

    return synthetic_metrics(3).assign(**changes)


@pytest.mark.parametrize(
    "table, message",
    [
        (
            lambda: metric_rows().assign(value=lambda m: m.value.where(m.index != 0, np.nan)),
            "1 missing value(s) with no note",
        ),
        (lambda: metric_rows().drop(columns="value"), "no column(s) value"),
        (lambda: metric_rows().iloc[:0], "holds no rows"),
        (lambda: metric_rows().assign(value="0.5"), "not numbers"),
    ],
)
def test_tables_refuse_a_metric_that_is_not_there_without_a_reason(tmp_path, capsys, table, message):
    """Case 7 (and 12): a NaN with no note, no value column, no rows, string values."""
    table().to_parquet(tmp_path / "m.parquet")
    line = step_error(capsys, "tables", "--metrics", tmp_path / "m.parquet", "--out-dir", tmp_path / "tables")
    assert "m.parquet" in line and message in line and not (tmp_path / "tables").exists()


def test_summary_counts_say_how_many_datasets_each_value_averages(tmp_path):
    """Case 7: with a value missing (and its note), the summary's count for that value is 2, not 3."""
    from scencode.tables import write_tables

    metrics = metric_rows()
    gone = (metrics.configuration == "learned-soft-s0") & (metrics.metric == "bio_score") & (metrics.dataset == "ds0")
    metrics.loc[gone, ["value", "note"]] = [np.nan, "one batch"]
    metrics.to_parquet(tmp_path / "m.parquet")
    write_tables([tmp_path / "m.parquet"], tmp_path)
    summary = pd.read_csv(tmp_path / "summary.csv").set_index(["gene_encoding", "expression_encoding"])
    assert summary.loc[("learned", "soft"), "datasets"] == 3
    assert (
        summary.loc[("learned", "soft"), "bio_score_n"] == 2 and summary.loc[("learned", "soft"), "batch_score_n"] == 3
    )
    kept = metrics[~gone & (metrics.configuration == "learned-soft-s0") & (metrics.metric == "bio_score")]
    assert summary.loc[("learned", "soft"), "bio_score"] == pytest.approx(kept.value.mean())
    assert "one batch (ds0)" in summary.loc[("learned", "soft"), "note"]


def test_gene_probes_use_only_the_genes_the_esm2_table_has(demo_corpus, tmp_path):
    """Case 8: a table holding 10 of the vocabulary's genes is probed on those 10, never on zero rows."""
    from scencode.formats import load_vocab, write_gene_table
    from scencode.gene_probes import ProbeParams, gene_probes

    vocab, _ = load_vocab(demo_corpus[1])
    genes = vocab.gene_id[2:12].to_numpy()
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"gene_id": genes, "gene_symbol": "", "embedding": list(rng.normal(size=(10, 8)))})
    write_gene_table(table, tmp_path / "esm.parquet", {})
    probes = gene_probes([], demo_corpus[1], tmp_path / "esm.parquet", ProbeParams(min_members=2))

    def genes_probed(table: str) -> list[int]:
        notes = probes[probes.gene_encoding == table].note
        return [int(re.search(r"(\d+) genes", note).group(1)) for note in notes]

    assert genes_probed("esm2_table") and max(genes_probed("esm2_table")) <= 10
    assert max(genes_probed("random_table")) > 10  # the random table has every gene


def test_gene_probes_refuse_a_run_entry_without_its_keys(demo_corpus, tmp_path, capsys):
    """Case 12."""
    line = step_error(
        capsys,
        "gene-probes",
        "--runs",
        json.dumps([{"run": "r"}]),
        "--vocab",
        demo_corpus[1],
        "--out",
        tmp_path / "g.csv",
        "--figure",
        tmp_path / "g.png",
    )
    assert "--runs entry 0 lacks gene_encoding, expression_encoding, seed, model" in line


def test_gene_probes_refuse_a_model_of_another_vocabulary(tiny_model, demo_corpus, tmp_path, capsys):
    """Case 12: the model's rows would be other genes."""
    other = tmp_path / "vocab.parquet"
    write_vocab(build_vocab([demo_corpus[0].parent / "sim_lung_1.h5ad"]).iloc[:-3], other)
    runs = [
        {
            "run": "learned-soft-s3",
            "gene_encoding": "learned",
            "expression_encoding": "soft",
            "seed": 3,
            "model": str(tiny_model),
        }
    ]
    line = step_error(
        capsys,
        "gene-probes",
        "--runs",
        json.dumps(runs),
        "--vocab",
        other,
        "--out",
        tmp_path / "g.csv",
        "--figure",
        tmp_path / "g.png",
    )
    assert "another vocabulary" in line and not (tmp_path / "g.csv").exists()


def test_tokenize_refuses_a_raw_h5ad(demo_corpus, tmp_path, capsys):
    """Case 9: NaN and -1 entries, 2.5, NaN totals: a file QC never saw is refused, not read."""
    counts = make_counts(20)
    counts[0, 0], counts[1, 1], counts[2, 2] = np.nan, -1, 2.5
    tiny_adata(counts).write_h5ad(tmp_path / "raw.h5ad")
    line = step_error(
        capsys,
        "tokenize",
        "--corpus",
        "c",
        "--datasets",
        json.dumps([{"dataset_id": "a", "path": str(tmp_path / "raw.h5ad")}]),
        "--vocab",
        demo_corpus[1],
        "--out",
        tmp_path / "tokens",
    )
    assert "raw.h5ad: not an output of scencode qc" in line and not (tmp_path / "tokens").exists()


def test_repeated_cell_names_become_unique_whatever_names_exist(tmp_path, gene_table):
    """Case 10: ``A, A, A-dup1`` gave a second ``A-dup1``."""
    adata = tiny_adata(make_counts(3))
    adata.obs_names = ["A", "A", "A-dup1"]
    adata.write_h5ad(tmp_path / "raw.h5ad")
    run_qc(tmp_path / "raw.h5ad", tmp_path / "qc.h5ad", tmp_path / "qc.json", gene_table, KEEP_ALL, "d")
    names = list(ad.read_h5ad(tmp_path / "qc.h5ad").obs_names)
    assert len(set(names)) == 3 and names[0] == "A" and names[2] == "A-dup1"


def test_tokenize_refuses_repeated_cell_ids(demo_corpus, tmp_path):
    """Case 10: a QC'd file whose names repeat (an older QC, or edited) is refused, not written twice."""
    import h5py

    qc = tmp_path / "qc.h5ad"
    adata = ad.read_h5ad(demo_corpus[0].parent / "sim_lung_1.h5ad")
    adata.obs_names = ["same"] * adata.n_obs
    adata.write_h5ad(qc)
    with h5py.File(qc, "r") as f:
        assert "uns/scencode_qc" in f
    with pytest.raises(ScencodeError, match="qc.h5ad: cell names repeat"):
        tokenize_corpus("c", [DatasetInput("a", qc)], demo_corpus[1], tmp_path / "t", TokenizeParams())
    assert not (tmp_path / "t").exists()


def test_a_batch_column_with_missing_values_is_refused_at_qc(tmp_path, gene_table):
    """Case 11: NaN batches became a batch called "nan" that the batch metrics mixed."""
    adata = tiny_adata(make_counts(6), run=["a", "b", None, "a", "b", "a"])
    adata.write_h5ad(tmp_path / "raw.h5ad")
    params = QCParams(**{**asdict(KEEP_ALL), "batch_key": "run"})
    with pytest.raises(ScencodeError, match="raw.h5ad: batch column 'run' has no value for 1 of the 6 cells"):
        run_qc(tmp_path / "raw.h5ad", tmp_path / "qc.h5ad", tmp_path / "qc.json", gene_table, params, "d")
    assert not (tmp_path / "qc.h5ad").exists()


def test_an_obs_column_anndata_cannot_read_is_named(tmp_path, gene_table_dir, capsys):
    """Case 12: a 2-D obs column at qc gave a traceback."""
    import h5py

    tiny_adata(make_counts(6)).write_h5ad(tmp_path / "raw.h5ad")
    with h5py.File(tmp_path / "raw.h5ad", "a") as f:
        f["obs"].create_dataset("twod", data=np.ones((6, 2)))
        f["obs"].attrs["column-order"] = np.array(["twod"], dtype=object).astype(h5py.string_dtype())
    line = step_error(
        capsys,
        "qc",
        "--raw",
        tmp_path / "raw.h5ad",
        "--out",
        tmp_path / "q.h5ad",
        "--report",
        tmp_path / "q.json",
        "--gene-table",
        gene_table_dir,
        "--dataset",
        "d",
    )
    assert "raw.h5ad" in line and "obs" in line and not (tmp_path / "q.h5ad").exists()


@pytest.mark.parametrize(
    "datasets, message",
    [("[]", "--datasets is empty"), ('[{"name": "a", "qc": "x.h5ad"}]', "entry 0 lacks role")],
)
def test_leakage_refuses_entries_it_cannot_audit(tmp_path, capsys, datasets, message):
    """Case 12."""
    line = step_error(
        capsys, "leakage", "--datasets", datasets, "--out", tmp_path / "l.json", "--table", tmp_path / "l.csv"
    )
    assert message in line and list(tmp_path.iterdir()) == []


def test_provenance_refuses_a_config_that_is_not_an_object(tmp_path, capsys):
    """Case 12: --config '[1,2]'."""
    line = step_error(
        capsys,
        "provenance",
        "--config",
        "[1, 2]",
        "--sheets",
        REPO / "config/datasets/demo.tsv",
        "--out",
        tmp_path / "p.json",
    )
    assert "JSON object" in line and list(tmp_path.iterdir()) == []


def test_a_refused_checkpoint_names_the_global_it_asked_for(tmp_path):
    """Case 12: the refusal was cut at 120 characters, before torch's message names the global."""

    from scencode.formats import load_checkpoint

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    import torch

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ScencodeError, match=r"evil.pt: checkpoint refused: it asks to load \S*system"):
        load_checkpoint(tmp_path / "evil.pt")
    torch.save({"x": Evil()}, tmp_path / "evil4.pt", pickle_protocol=4)  # another protocol, another wording
    with pytest.raises(
        ScencodeError, match=r"evil4.pt: checkpoint refused by the weights-only reader \(Unsupported operand"
    ):
        load_checkpoint(tmp_path / "evil4.pt")
