from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from helpers import GENES, leftovers, make_counts, tiny_adata

from scencode.errors import ScencodeError
from scencode.formats import SPECIAL_TOKENS, load_vocab, write_vocab
from scencode.qc import QCParams, run_qc
from scencode.shards import shard_tables, verify_corpus
from scencode.tokenize import DatasetInput, TokenizeParams, assign_split, tokenize_corpus
from scencode.vocab import build_vocab

LOOSE = QCParams(min_genes=1, min_counts=1, max_pct_mito=100, min_cells_per_gene=1)


def qc_file(tmp_path, gene_table, name, counts, genes=None, **obs):
    adata = tiny_adata(counts, **obs)
    if genes is not None:
        adata = adata[:, genes].copy()
    raw = tmp_path / f"{name}_raw.h5ad"
    adata.write_h5ad(raw)
    out = tmp_path / f"{name}.h5ad"
    run_qc(raw, out, tmp_path / f"{name}.json", gene_table, LOOSE, name)
    return out


@pytest.fixture
def two_datasets(tmp_path, gene_table):
    rng = np.random.default_rng(0)
    a = rng.poisson(2.0, (300, len(GENES))).astype(np.float32)
    b = rng.poisson(1.0, (200, 5)).astype(np.float32)
    pa_ = qc_file(
        tmp_path, gene_table, "a", a, cell_type=rng.choice(["T", "B"], 300), batch=rng.choice(["r1", "r2"], 300)
    )
    pb_ = qc_file(tmp_path, gene_table, "b", b, genes=list(GENES.values())[:5])
    return pa_, pb_


def test_vocabulary_policies_and_special_tokens(two_datasets, tmp_path):
    a, b = two_datasets
    union = build_vocab([a, b], "union")
    inter = build_vocab([a, b], "intersection")
    assert list(union.gene_id[:2]) == list(SPECIAL_TOKENS) and union.token_id.tolist() == list(range(len(union)))
    assert len(union) == 2 + len(GENES) and len(inter) == 2 + 5
    assert list(union.gene_id[2:]) == sorted(GENES.values())
    genes = tmp_path / "protein_genes.csv"
    pd.DataFrame({"gene_id": [GENES["TP53"], GENES["ALB"], "ENSG00000000003"]}).to_csv(genes, index=False)
    protein = build_vocab([a, b], "protein", genes)
    assert sorted(protein.gene_id[2:]) == sorted([GENES["TP53"], GENES["ALB"]])
    with pytest.raises(ScencodeError, match="needs a list of genes"):
        build_vocab([a], "protein")
    digest = write_vocab(union, tmp_path / "vocab.parquet")
    loaded, loaded_digest = load_vocab(tmp_path / "vocab.parquet")
    assert loaded_digest == digest and loaded.equals(union)
    assert build_vocab([b, a], "union").equals(union)  # dataset order does not change ids


def make_corpus(tmp_path, datasets, name="train", labels=False, **params):
    vocab = tmp_path / "vocab.parquet"
    if not vocab.exists():
        write_vocab(build_vocab([d.path for d in datasets]), vocab)
    return tokenize_corpus(name, datasets, vocab, tmp_path / "tokens" / name, TokenizeParams(**params), labels)


def read_corpus(folder):
    return pq.read_table(sorted(folder.glob("part-*.parquet"))).to_pandas()


def test_shards_reproduce_the_count_matrix(two_datasets, tmp_path):
    import anndata as ad

    a, b = two_datasets
    manifest = make_corpus(
        tmp_path, [DatasetInput("a", a), DatasetInput("b", b)], cells_per_shard=128, row_group_cells=32, chunk_cells=50
    )
    table = pd.concat([read_corpus(tmp_path / "tokens" / "train")])
    vocab, _ = load_vocab(tmp_path / "vocab.parquet")
    token = pd.Series(vocab.token_id.to_numpy(), index=vocab.gene_id)
    for name, path in [("a", a), ("b", b)]:
        adata = ad.read_h5ad(path)
        rows = table[table.dataset_id == name]
        dense = np.zeros((len(rows), len(vocab)), np.int64)
        for i, (g, c) in enumerate(zip(rows.gene_ids, rows.counts)):
            dense[i, g] = c
            assert np.all(np.diff(g) > 0)
        kept = np.asarray(adata.X.sum(1)).ravel() > 0
        expected = np.zeros_like(dense)
        expected[:, token[adata.var_names].to_numpy()] = adata.X.toarray()[kept]
        np.testing.assert_array_equal(dense, expected)
        assert rows.cell_id.tolist() == [f"{name}:{c}" for c in adata.obs_names[kept]]
        np.testing.assert_allclose(rows.total_counts, np.asarray(adata.X.sum(1)).ravel()[kept])
    assert [s["n_cells"] for s in manifest["shards"]] == [128, 128, 128, manifest["n_cells"] - 384]
    assert pq.ParquetFile(tmp_path / "tokens" / "train" / "part-00000.parquet").metadata.num_row_groups == 4
    assert sum(manifest["splits"].values()) == manifest["n_cells"] == len(table)
    assert manifest["nnz"]["total"] == sum(len(g) for g in table.gene_ids)
    verify_corpus(tmp_path / "tokens" / "train")


def test_same_input_and_config_give_byte_identical_shards(two_datasets, tmp_path):
    a, b = two_datasets
    data = [DatasetInput("a", a), DatasetInput("b", b)]
    first = make_corpus(tmp_path, data)
    second = make_corpus(tmp_path, data)  # replaces the first corpus
    assert [s["sha256"] for s in first["shards"]] == [s["sha256"] for s in second["shards"]]
    assert first["config_hash"] == second["config_hash"]


def test_split_is_a_stable_function_of_the_cell_id():
    ids = pd.Series([f"ds:cell{i}" for i in range(20000)])
    params = TokenizeParams(val_fraction=0.05, test_fraction=0.1)
    split = assign_split(ids, params)
    assert abs((split == "test").mean() - 0.1) < 0.01 and abs((split == "val").mean() - 0.05) < 0.01
    np.testing.assert_array_equal(assign_split(ids[::-1], params), split[::-1])  # independent of neighbours
    other_salt = assign_split(ids, TokenizeParams(val_fraction=0.05, test_fraction=0.1, split_salt="x"))
    assert (other_salt != split).mean() > 0.1


def test_evaluation_corpus_carries_label_and_batch(two_datasets, tmp_path):
    a, b = two_datasets
    make_corpus(tmp_path, [DatasetInput("a", a, "cell_type", "batch")], name="eval_a", labels=True)
    table = read_corpus(tmp_path / "tokens" / "eval_a")
    assert set(table.label) == {"T", "B"} and set(table.batch) == {"r1", "r2"}
    make_corpus(tmp_path, [DatasetInput("a", a, "cell_type", None)], name="one_batch", labels=True)
    assert set(read_corpus(tmp_path / "tokens" / "one_batch").batch) == {"a"}


def test_missing_label_column_fails_without_partial_corpus(two_datasets, tmp_path):
    a, b = two_datasets
    with pytest.raises(ScencodeError, match="label column 'cell_type' is missing"):
        # the first dataset is written before the second fails: nothing may remain
        make_corpus(
            tmp_path, [DatasetInput("a", a, "cell_type"), DatasetInput("b", b, "cell_type")], name="bad", labels=True
        )
    assert not (tmp_path / "tokens" / "bad").exists() and leftovers(tmp_path / "tokens") == []


def test_dataset_sharing_no_gene_with_the_vocabulary_is_rejected(two_datasets, tmp_path, gene_table):
    a, b = two_datasets
    write_vocab(build_vocab([b]), tmp_path / "vocab.parquet")  # the first 5 genes only
    only_others = qc_file(tmp_path, gene_table, "c", make_counts(), genes=list(GENES.values())[5:])
    with pytest.raises(ScencodeError, match="c.h5ad: none of its 3 gene ids is in the vocabulary"):
        make_corpus(tmp_path, [DatasetInput("c", only_others)], name="c")


def test_truncated_or_altered_shards_are_caught_and_named(two_datasets, tmp_path):
    a, b = two_datasets
    make_corpus(tmp_path, [DatasetInput("a", a)], cells_per_shard=100)
    folder = tmp_path / "tokens" / "train"
    shard = folder / "part-00001.parquet"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ScencodeError, match="part-00001.parquet: shard is truncated or altered"):
        verify_corpus(folder)
    with pytest.raises(ScencodeError, match="part-00001.parquet: corrupt or truncated shard"):
        for _ in shard_tables(folder):
            pass
    shard.write_bytes(data)
    with pytest.raises(ScencodeError, match="another vocabulary"):
        verify_corpus(folder, vocab_hash="f" * 64)


def test_a_dataset_that_shares_few_genes_with_the_vocabulary_is_flagged(caplog):
    from scencode.tokenize import DatasetInput, vocab_overlap

    d = DatasetInput("pbmc", Path("pbmc.h5ad"), "label", None)
    few = vocab_overlap(d, np.full(100, 12), np.full(100, 250))  # pbmc68k with the demo vocabulary
    assert few["vocab_genes_per_cell"] == 12 and "only 12 of its 250 non-zero genes" in few["vocab_overlap_warning"]
    assert "only 12" in caplog.text
    assert vocab_overlap(d, np.full(100, 400), np.full(100, 600))["vocab_overlap_warning"] is None
    assert vocab_overlap(d, np.full(100, 100), np.full(100, 2000))["vocab_overlap_warning"]  # 5% of each cell


def test_a_same_size_byte_change_anywhere_in_a_shard_fails_the_read_naming_it(two_datasets, tmp_path):
    """Training and embedding read shards without re-hashing them: page checksums catch a changed
    byte as the page is decoded (without them, 15 of 40 such flips read back silently)."""
    from scencode.loader import LoaderConfig, ShardBatches

    a, _ = two_datasets
    make_corpus(tmp_path, [DatasetInput("a", a)], cells_per_shard=1000)
    folder = tmp_path / "tokens" / "train"
    shard = folder / "part-00000.parquet"
    data = shard.read_bytes()
    cfg = LoaderConfig(batch_size=32, context=64, bucket_batches=2)
    for position in np.random.default_rng(0).integers(4, len(data) - 8, 20):
        changed = bytearray(data)
        changed[position] ^= 0x5A
        shard.write_bytes(bytes(changed))
        with pytest.raises(ScencodeError, match="part-00000.parquet"):
            list(ShardBatches(folder, None, cfg, shuffle=False, mask=False))
    shard.write_bytes(data)


def test_a_corpus_of_an_older_format_asks_for_a_new_tokenization(two_datasets, tmp_path):
    a, _ = two_datasets
    make_corpus(tmp_path, [DatasetInput("a", a)])
    manifest = tmp_path / "tokens" / "train" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"format_version": 2', '"format_version": 1'))
    with pytest.raises(ScencodeError, match="re-run tokenize"):
        verify_corpus(tmp_path / "tokens" / "train")


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_block_to_lists_keeps_vocabulary_genes_with_counts_in_token_order(order):
    from scencode.tokenize import block_to_lists

    rng = np.random.default_rng(1)
    dense = rng.poisson(0.7, (40, 12)).astype(np.float32)
    dense[5] = 0  # a cell with no count
    block = sp.csr_matrix(dense)
    block.data[::7] = 0  # explicit zeros stored in the matrix
    col_to_token = np.arange(12, dtype=np.int32) + 2
    col_to_token[[3, 8]] = -1  # genes outside the vocabulary
    if order == "shuffled":
        col_to_token[col_to_token >= 0] = rng.permutation(col_to_token[col_to_token >= 0])
    offsets, tokens, counts, kept = block_to_lists(block.copy(), col_to_token, order == "sorted")
    stored = block.toarray()
    rows = [r for r in range(40) if any(stored[r, c] > 0 and col_to_token[c] >= 0 for c in range(12))]
    assert kept.tolist() == [r in rows for r in range(40)] and len(offsets) == len(rows) + 1
    for i, r in enumerate(rows):
        expected = sorted(
            (col_to_token[c], int(stored[r, c])) for c in range(12) if stored[r, c] > 0 and col_to_token[c] >= 0
        )
        got = list(zip(tokens[offsets[i] : offsets[i + 1]].tolist(), counts[offsets[i] : offsets[i + 1]].tolist()))
        assert got == expected


def test_a_failing_write_stops_tokenization_with_no_corpus_left(two_datasets, tmp_path, monkeypatch):
    """Shards are written on a second thread; its error reaches the caller and nothing is kept."""
    from scencode import tokenize

    a, b = two_datasets
    calls = []
    original = tokenize.ShardWriter.write

    def fail_on_third(self, table):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("No space left on device")
        original(self, table)

    monkeypatch.setattr(tokenize.ShardWriter, "write", fail_on_third)
    with pytest.raises(OSError, match="No space left"):
        make_corpus(tmp_path, [DatasetInput("a", a), DatasetInput("b", b)], chunk_cells=50)
    assert not (tmp_path / "tokens" / "train").exists() and not leftovers(tmp_path / "tokens")
