"""The hostile-input probe's cases (issue 24), each reproduced as it was found: silently wrong or
destructive inputs are refused with one line naming the file and the problem, nothing is written
and nothing is deleted; the other cases fail in a way a user can act on."""

from __future__ import annotations

import json
import logging
import os
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
