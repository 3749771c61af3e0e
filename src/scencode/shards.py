"""Parquet token shards: schema, manifest, and validated reading.

A corpus is a folder ``part-00000.parquet, …`` plus ``manifest.json``; the manifest records each
shard's cell count, size and sha256, so a truncated or altered shard is caught on read.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import ScencodeError

MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: shards carry Parquet page checksums, verified on every read


def shard_schema(with_labels: bool) -> pa.Schema:
    fields = [
        pa.field("cell_id", pa.string(), nullable=False),
        pa.field("dataset_id", pa.string(), nullable=False),
        pa.field("gene_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("counts", pa.list_(pa.int32()), nullable=False),
        pa.field("total_counts", pa.float32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
    if with_labels:
        fields += [pa.field("label", pa.string()), pa.field("batch", pa.string())]
    return pa.schema(fields)


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def file_sha256(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def footer_sha256(path: Path) -> str:
    """sha256 of the Parquet footer (schema, row groups, statistics): page checksums cover the
    data pages, this covers the rest, at the cost of one small read per shard."""
    try:
        with open(path, "rb") as fh:
            fh.seek(-8, 2)
            length = struct.unpack("<I", fh.read(4))[0]
            fh.seek(-(8 + length), 2)
            return hashlib.sha256(fh.read(8 + length)).hexdigest()
    except (OSError, struct.error) as exc:
        raise ScencodeError(f"corrupt or truncated shard ({exc})", path) from exc


def check_footer(path: Path, shard: dict) -> None:
    if footer_sha256(path) != shard["footer_sha256"]:
        raise ScencodeError("shard footer is altered (its sha256 differs from the manifest)", path)


def read_manifest(corpus_dir: str | Path) -> dict:
    path = Path(corpus_dir) / MANIFEST
    if not path.exists():
        raise ScencodeError("corpus manifest not found (tokenization incomplete?)", path)
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ScencodeError(f"corrupt manifest ({exc})", path) from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ScencodeError(
            f"corpus format {manifest.get('format_version')!r}, this scencode reads format "
            f"{FORMAT_VERSION} (shards with page checksums): re-run tokenize "
            "(snakemake --forcerun tokenize)",
            path,
        )
    return manifest


def verify_corpus(corpus_dir: str | Path, checksums: bool = True, vocab_hash: str | None = None) -> dict:
    """Check every shard against the manifest (presence, size, sha256, row count, schema)."""
    corpus_dir = Path(corpus_dir)
    manifest = read_manifest(corpus_dir)
    if vocab_hash is not None and manifest["vocab_hash"] != vocab_hash:
        raise ScencodeError(
            f"shards were tokenized with another vocabulary (hash {manifest['vocab_hash'][:12]}…, "
            f"expected {vocab_hash[:12]}…); re-run tokenize",
            corpus_dir,
        )
    for shard in manifest["shards"]:
        path = corpus_dir / shard["file"]
        if not path.exists():
            raise ScencodeError("shard listed in the manifest is missing", path)
        if path.stat().st_size != shard["bytes"] or (checksums and file_sha256(path) != shard["sha256"]):
            raise ScencodeError("shard is truncated or altered (size or sha256 differs from the manifest)", path)
        check_footer(path, shard)
        rows = open_shard(path).metadata.num_rows
        if rows != shard["n_cells"]:
            raise ScencodeError(f"shard holds {rows} cells, manifest says {shard['n_cells']}", path)
    return manifest


def open_shard(path: str | Path) -> pq.ParquetFile:
    """A shard whose pages are checked against their CRC32 as they are decoded: a changed byte in
    the data fails the read, naming the shard (the manifest's sha256 covers the whole file, but
    hashing every shard before every epoch would read the corpus twice)."""
    try:
        return pq.ParquetFile(path, page_checksum_verification=True)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ScencodeError(f"corrupt or truncated shard ({exc})", path) from exc


def read_shard(
    corpus_dir: str | Path, shard: dict, columns: list[str] | None = None, row_group: int | None = None
) -> pa.Table:
    """One shard (or one of its row groups) as the manifest lists it: the footer checked against the
    manifest, every page against its CRC32 as it is decoded; any failure names the shard. Every step
    that reads shards reads them here."""
    path = Path(corpus_dir) / shard["file"]
    if not path.is_file():
        raise ScencodeError("shard listed in the manifest is missing", path)
    check_footer(path, shard)
    try:
        parquet = open_shard(path)
        table = (
            parquet.read(columns=columns) if row_group is None else parquet.read_row_group(row_group, columns=columns)
        )
    except (pa.ArrowException, OSError) as exc:
        raise ScencodeError(f"corrupt or truncated shard ({' '.join(str(exc).split())[:300]})", path) from None
    _check_splits(table, path)
    return table


SPLITS = ("train", "val", "test")  # what tokenize writes in ``split``


def _check_splits(table: pa.Table, path: Path) -> None:
    # a changed byte that keeps a page's checksum valid still cannot invent a split
    if "split" in table.column_names:
        unknown = set(pc.unique(table.column("split")).to_pylist()) - set(SPLITS)
        if unknown:
            raise ScencodeError(f"corrupt shard: split value(s) {sorted(map(str, unknown))} (known: {SPLITS})", path)


def shard_tables(
    corpus_dir: str | Path, columns: list[str] | None = None, manifest: dict | None = None
) -> Iterator[pa.Table]:
    """Every shard of a corpus in order, each read by :func:`read_shard`."""
    manifest = manifest or read_manifest(corpus_dir)
    for shard in manifest["shards"]:
        yield read_shard(corpus_dir, shard, columns)


def check(corpus: Path) -> dict:
    """Verify a corpus against its manifest (every shard's size, checksum, rows, schema) and print it."""
    import json

    manifest = verify_corpus(corpus, checksums=True)
    print(json.dumps({k: manifest[k] for k in ("corpus", "n_cells", "splits", "nnz", "vocab_hash")}, indent=2))
    return manifest
