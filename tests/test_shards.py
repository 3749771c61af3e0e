"""``scencode.shards``: the corpus manifest and the one reader of shards, which checks what it reads."""

import json
import shutil

import pytest

from scencode.errors import ScencodeError
from scencode.shards import SPLITS, read_manifest, shard_tables, verify_corpus


@pytest.fixture
def corpus_copy(demo_corpus, tmp_path):
    target = tmp_path / "corpus"
    shutil.copytree(demo_corpus[0], target)
    return target


def test_a_corpus_reads_back_every_cell_its_manifest_lists(demo_corpus):
    manifest = verify_corpus(demo_corpus[0])
    tables = list(shard_tables(demo_corpus[0], ["cell_id", "split"]))
    assert sum(t.num_rows for t in tables) == sum(s["n_cells"] for s in manifest["shards"])
    assert {v for t in tables for v in t.column("split").to_pylist()} <= set(SPLITS)


def test_a_changed_byte_a_missing_shard_and_another_format_are_named(corpus_copy):
    manifest = read_manifest(corpus_copy)
    first = corpus_copy / manifest["shards"][0]["file"]
    data = bytearray(first.read_bytes())
    data[len(data) // 3] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(ScencodeError, match=f"{first.name}: shard is truncated or altered"):
        verify_corpus(corpus_copy)
    with pytest.raises(ScencodeError, match=first.name):  # the reader, without hashing the file
        list(shard_tables(corpus_copy))
    first.unlink()
    with pytest.raises(ScencodeError, match=f"{first.name}: shard listed in the manifest is missing"):
        verify_corpus(corpus_copy)
    path = corpus_copy / "manifest.json"
    path.write_text(json.dumps({**manifest, "format_version": 1}))
    with pytest.raises(ScencodeError, match="corpus format 1, this scencode reads format"):
        read_manifest(corpus_copy)


def test_a_corpus_of_another_vocabulary_is_refused(demo_corpus):
    with pytest.raises(ScencodeError, match="tokenized with another vocabulary"):
        verify_corpus(demo_corpus[0], checksums=False, vocab_hash="0" * 64)
