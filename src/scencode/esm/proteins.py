"""Protein sequences per gene from an Ensembl peptide FASTA (``Homo_sapiens.GRCh38.pep.all.fa.gz``).

Ensembl headers look like::

    >ENSP00000369497.3 pep chromosome:GRCh38:19:58345183:58353492:-1 gene:ENSG00000121410.12
     transcript:ENST00000263100.8 gene_biotype:protein_coding transcript_biotype:protein_coding
     gene_symbol:A1BG description:... [Source:HGNC Symbol;Acc:HGNC:5]

Isoform policy: ``mean`` (every isoform, embeddings averaged), ``longest``, or ``canonical`` (the
isoform a release tags ``Ensembl_canonical``, else the longest).
"""

from __future__ import annotations

import gzip
import logging
import re
import zlib
from pathlib import Path

import pandas as pd

from ..atomic import OutputFile, atomic_path
from ..errors import ScencodeError
from ..reference import ENSEMBL_GENE_RE

log = logging.getLogger(__name__)

ISOFORM_POLICIES = ("mean", "longest", "canonical")
_FIELD = re.compile(r"(\w+):(\S+)")
_AMINO = re.compile(r"^[A-Za-z*.-]+$")


def _open_text(path: Path):
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt") if gzipped else open(path)


def read_peptide_fasta(path: str | Path) -> pd.DataFrame:
    """Parse a peptide FASTA into (protein_id, gene_id, transcript_id, gene_biotype, gene_symbol,
    canonical, sequence); Ensembl version suffixes are stripped from gene ids."""
    path = Path(path)
    if not path.exists():
        raise ScencodeError("protein FASTA not found", path)
    records: list[dict] = []
    seq: list[str] = []
    header, header_line = None, 0
    try:
        with _open_text(path) as fh:
            for number, line in enumerate(fh, 1):
                line = line.strip()
                if line.startswith(">"):
                    if header is not None:
                        records.append(_record(header, seq, path, header_line))
                    header, seq, header_line = line[1:], [], number
                elif line:
                    if header is None:
                        raise ScencodeError(f"line {number}: sequence before the first '>' header", path)
                    if not _AMINO.match(line):
                        raise ScencodeError(f"line {number}: not an amino-acid sequence ({line[:30]!r})", path)
                    seq.append(line)
    except (EOFError, OSError, zlib.error, UnicodeDecodeError) as exc:
        raise ScencodeError(f"truncated or unreadable FASTA ({exc})", path) from exc
    if header is None:
        raise ScencodeError("no FASTA record in the file", path)
    records.append(_record(header, seq, path, header_line))
    return pd.DataFrame.from_records(records)


def _record(header: str, seq: list[str], path: Path, line: int) -> dict:
    fields = dict(_FIELD.findall(header))
    if "gene" not in fields:
        raise ScencodeError(f"line {line}: header has no 'gene:' field (not an Ensembl peptide FASTA?)", path)
    sequence = "".join(seq).rstrip("*")
    if not sequence:
        raise ScencodeError(f"line {line}: record has no sequence (truncated file?)", path)
    gene_id = re.sub(r"\.\d+$", "", fields["gene"])
    if not ENSEMBL_GENE_RE.match(gene_id):
        raise ScencodeError(f"line {line}: gene id {fields['gene']!r} is not an Ensembl gene id", path)
    return {
        "protein_id": header.split()[0],
        "gene_id": gene_id,
        "transcript_id": re.sub(r"\.\d+$", "", fields.get("transcript", "")),
        "gene_biotype": fields.get("gene_biotype", ""),
        "gene_symbol": fields.get("gene_symbol", ""),
        "canonical": "Ensembl_canonical" in header,
        "sequence": sequence,
    }


def select_isoforms(proteins: pd.DataFrame, policy: str) -> pd.DataFrame:
    """The sequences to embed per gene under ``policy`` (ties broken by protein id)."""
    if policy not in ISOFORM_POLICIES:
        raise ScencodeError(f"unknown isoform policy {policy!r}; choose one of {', '.join(ISOFORM_POLICIES)}")
    proteins = proteins.assign(length=proteins.sequence.str.len())
    # identical sequences of one gene are embedded once
    proteins = proteins.drop_duplicates(["gene_id", "sequence"])
    if policy == "mean":
        return proteins.sort_values(["gene_id", "protein_id"]).reset_index(drop=True)
    order = ["gene_id", "length", "protein_id"]
    ascending = [True, False, True]
    if policy == "canonical":
        order.insert(1, "canonical")
        ascending.insert(1, False)
    return proteins.sort_values(order, ascending=ascending).drop_duplicates("gene_id").reset_index(drop=True)


def demo_fasta(out: str | Path) -> None:
    """An Ensembl-style FASTA of the demo's shipped proteins (real human sequences, RefSeq ids)."""
    from ..reference import packaged_file

    table = pd.read_csv(packaged_file("demo_proteins.csv.gz"))
    write_peptide_fasta(table.refseq_protein_id, table.gene_id, table.symbol, table.sequence, out)


def write_peptide_fasta(protein_ids, gene_ids, symbols, sequences, out: str | Path) -> None:
    """An Ensembl-style peptide FASTA of protein-coding genes (what :func:`read_peptide_fasta` reads),
    gzipped with a fixed mtime so that the same proteins give the same bytes."""
    lines = [
        f">{protein} pep gene:{gene} gene_biotype:protein_coding transcript_biotype:protein_coding "
        f"gene_symbol:{symbol}\n{sequence}\n"
        for protein, gene, symbol, sequence in zip(protein_ids, gene_ids, symbols, sequences)
    ]
    with atomic_path(out, suffix=".fa.gz") as tmp, open(tmp, "wb") as raw:
        # no file name in the gzip header either: the temporary name would differ each time
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as fh:
            fh.write("".join(lines).encode())


def run(source: dict, out: OutputFile) -> pd.DataFrame:
    """Fetch a peptide FASTA to ``out``: ``source`` (JSON) {"type": "demo"} | {"type": "url", "url",
    "sha256"} | {"type": "local", "path"}; the file must parse, or nothing is kept."""
    from ..fetch import download_url, link_local

    kind = source.get("type")
    if kind == "demo":
        demo_fasta(out)
    elif kind == "url":
        if "sha256" not in source:
            raise ScencodeError(
                f"protein URL {source.get('url')} has no sha256: pin it in esm.proteins.sha256 "
                "(or write sha256: null to download it unpinned on purpose)"
            )
        digest = download_url(source["url"], out, sha256=source["sha256"])
        if source["sha256"]:
            log.info("downloaded %s (sha256 %s, as pinned)", source["url"], digest)
        else:
            log.warning(
                "downloaded %s UNPINNED: its sha256 is %s; write it in esm.proteins.sha256 so that "
                "a changed file is refused next time",
                source["url"],
                digest,
            )
    elif kind == "local":
        link_local(source["path"], out, check_hdf5=False)
    else:
        raise ScencodeError(f"unknown protein source type {kind!r}; choose one of demo, url, local")
    try:
        proteins = read_peptide_fasta(out)
    except ScencodeError:
        Path(out).unlink(missing_ok=True)
        raise
    log.info("proteins: %d sequences of %d genes", len(proteins), proteins.gene_id.nunique())
    return proteins
