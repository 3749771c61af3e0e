"""The human gene table: Ensembl ids, symbols and the symbol → Ensembl id mapping used by QC.

Built from GENCODE 48 (the table CELLxGENE's schema validator uses) plus HGNC approved, previous
and alias symbols. A symbol resolves at the first source where it appears, in the order GENCODE
name, HGNC approved, HGNC previous, HGNC alias; a symbol naming several genes there is ambiguous.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import OutputFolder, atomic_path
from .errors import ScencodeError
from .reference import PACKAGED_GENCODE, PACKAGED_HGNC, GeneTable, packaged_file, read_gencode

log = logging.getLogger(__name__)

SYMBOL_SOURCES = ["gencode", "ensembl", "hgnc_approved", "hgnc_previous", "hgnc_alias"]


def read_hgnc_symbols(path: Path) -> pd.DataFrame:
    """HGNC complete set (or the packaged reduction of it) → long table (symbol, gene_id, source)."""
    try:
        hgnc = pd.read_csv(
            path, sep="\t", dtype=str, usecols=["symbol", "alias_symbol", "prev_symbol", "ensembl_gene_id"]
        )
    except Exception as exc:
        raise ScencodeError(f"cannot read the HGNC table ({exc})", path) from exc
    hgnc = hgnc[hgnc.ensembl_gene_id.notna()]
    parts = []
    for column, source in [
        ("symbol", "hgnc_approved"),
        ("prev_symbol", "hgnc_previous"),
        ("alias_symbol", "hgnc_alias"),
    ]:
        long = hgnc[[column, "ensembl_gene_id"]].dropna()
        long = long.assign(symbol=long[column].str.split("|")).explode("symbol")
        parts.append(
            pd.DataFrame({"symbol": long.symbol.str.strip(), "gene_id": long.ensembl_gene_id, "source": source})
        )
    return pd.concat(parts, ignore_index=True)


def write_gene_table(genes: pd.DataFrame, symbols: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    """``genes.parquet`` (gene_id, gene_name, gene_type) and ``symbols.parquet`` (symbol, gene_id,
    source, priority) in ``out_dir``, the folder :class:`GeneTable` reads; returns the symbols kept."""
    symbols = symbols.drop_duplicates()
    # HGNC may point at ids GENCODE no longer has; such symbols cannot be used
    symbols = symbols[symbols.gene_id.isin(genes.gene_id) & (symbols.symbol != "")]
    symbols = symbols.assign(priority=symbols.source.map({s: i for i, s in enumerate(SYMBOL_SOURCES)}).astype("int8"))
    for frame, name in [(genes, "genes.parquet"), (symbols, "symbols.parquet")]:
        with atomic_path(out_dir / name) as tmp:
            pq.write_table(pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False), tmp)
    return symbols


def build_gene_table(gencode: Path, hgnc: Path | None, out_dir: Path) -> dict:
    """Write ``genes.parquet`` and ``symbols.parquet`` into ``out_dir``; return a summary."""
    genes = read_gencode(Path(gencode))
    symbols = [pd.DataFrame({"symbol": genes.gene_name, "gene_id": genes.gene_id, "source": "gencode"}).dropna()]
    if hgnc is not None:
        symbols.append(read_hgnc_symbols(Path(hgnc)))
    symbols = write_gene_table(genes, pd.concat(symbols, ignore_index=True), Path(out_dir))
    return {
        "genes": len(genes),
        "symbols": int(symbols.symbol.nunique()),
        "protein_coding": int((genes.gene_type == "protein_coding").sum()),
    }


def run(
    out: OutputFolder,
    gencode: str | None = None,
    gencode_sha256: str | None = None,
    hgnc: str | None = None,
    hgnc_sha256: str | None = None,
) -> dict:
    """The gene table (genes.parquet, symbols.parquet in folder ``out``) from GENCODE and HGNC files,
    paths or pinned URLs; none given: the packaged GENCODE 48 and HGNC 2024-10 sets."""
    import tempfile

    from .fetch import download_url

    with tempfile.TemporaryDirectory() as tmp:

        def resolve(location, packaged, sha256):
            if not location:
                return packaged_file(packaged)
            if "://" in location:
                if not sha256:
                    raise ScencodeError(
                        f"gene table URL {location} has no sha256: pin it (gencode_sha256 / "
                        f"hgnc_sha256) so a changed or tampered file is refused"
                    )
                target = Path(tmp) / Path(location).name
                download_url(location, target, sha256=sha256)
                return target
            return Path(location)

        summary = build_gene_table(
            resolve(gencode, PACKAGED_GENCODE, gencode_sha256), resolve(hgnc, PACKAGED_HGNC, hgnc_sha256), Path(out)
        )
    log.info("gene table: %s", summary)
    return summary


def packaged_gene_table(folder: Path) -> GeneTable:
    """The gene table of the packaged GENCODE 48 and HGNC 2024-10 sets, built in ``folder``."""
    build_gene_table(packaged_file(PACKAGED_GENCODE), packaged_file(PACKAGED_HGNC), folder)
    return GeneTable.load(folder)
