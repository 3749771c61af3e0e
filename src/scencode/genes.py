"""The human gene table: Ensembl ids, symbols and the symbol → Ensembl id mapping used by QC.

Built from GENCODE 48 (the table CELLxGENE's schema validator uses) plus HGNC approved, previous
and alias symbols. A symbol resolves at the first source where it appears, in the order GENCODE
name, HGNC approved, HGNC previous, HGNC alias; a symbol naming several genes there is ambiguous.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_path
from .errors import ScencodeError

log = logging.getLogger(__name__)

PACKAGED_GENCODE = "genes_homo_sapiens_gencode48.csv.gz"
PACKAGED_HGNC = "hgnc_symbols_2024-10.tsv.gz"
GENCODE_COLUMNS = ["gene_id", "gene_name", "gene_version", "gene_length", "gene_type"]
SYMBOL_SOURCES = ["gencode", "hgnc_approved", "hgnc_previous", "hgnc_alias"]
ENSEMBL_GENE_RE = re.compile(r"^ENS[A-Z]*G\d{11}$")
_VERSION_SUFFIX = re.compile(r"\.\d+$")


def packaged_file(name: str) -> Path:
    return Path(str(resources.files("scencode") / "data" / name))


def strip_version(ids: pd.Series) -> pd.Series:
    return ids.astype(str).str.replace(_VERSION_SUFFIX, "", regex=True)


def looks_like_ensembl(ids: pd.Series, min_fraction: float = 0.9) -> bool:
    ids = strip_version(pd.Series(ids))
    return len(ids) > 0 and ids.str.match(ENSEMBL_GENE_RE).mean() >= min_fraction


def read_gencode(path: Path) -> pd.DataFrame:
    try:
        genes = pd.read_csv(path, header=None, names=GENCODE_COLUMNS, dtype=str)
    except Exception as exc:  # pandas raises many types for unreadable files
        raise ScencodeError(f"cannot read the GENCODE gene table ({exc})", path) from exc
    if genes.empty or not genes.gene_id.str.match(ENSEMBL_GENE_RE).all():
        raise ScencodeError("not a GENCODE gene table (columns gene_id, gene_name, gene_version, "
                            "gene_length, gene_type; Ensembl gene ids in the first)", path)
    genes["gene_id"] = strip_version(genes.gene_id)
    # GENCODE names id-only genes by their id: they have no symbol
    genes["gene_name"] = genes.gene_name.where(genes.gene_name != genes.gene_id)
    return genes[["gene_id", "gene_name", "gene_type"]].drop_duplicates("gene_id")


def read_hgnc_symbols(path: Path) -> pd.DataFrame:
    """HGNC complete set (or the packaged reduction of it) → long table (symbol, gene_id, source)."""
    try:
        hgnc = pd.read_csv(path, sep="\t", dtype=str,
                           usecols=["symbol", "alias_symbol", "prev_symbol", "ensembl_gene_id"])
    except Exception as exc:
        raise ScencodeError(f"cannot read the HGNC table ({exc})", path) from exc
    hgnc = hgnc[hgnc.ensembl_gene_id.notna()]
    parts = []
    for column, source in [("symbol", "hgnc_approved"), ("prev_symbol", "hgnc_previous"),
                           ("alias_symbol", "hgnc_alias")]:
        long = hgnc[[column, "ensembl_gene_id"]].dropna()
        long = long.assign(symbol=long[column].str.split("|")).explode("symbol")
        parts.append(pd.DataFrame({"symbol": long.symbol.str.strip(), "gene_id": long.ensembl_gene_id,
                                   "source": source}))
    return pd.concat(parts, ignore_index=True)


def build_gene_table(gencode: Path, hgnc: Path | None, out_dir: Path) -> dict:
    """Write ``genes.parquet`` and ``symbols.parquet`` into ``out_dir``; return a summary."""
    genes = read_gencode(Path(gencode))
    symbols = [pd.DataFrame({"symbol": genes.gene_name, "gene_id": genes.gene_id, "source": "gencode"})
               .dropna()]
    if hgnc is not None:
        symbols.append(read_hgnc_symbols(Path(hgnc)))
    symbols = pd.concat(symbols, ignore_index=True).drop_duplicates()
    # HGNC may point at ids GENCODE no longer has; such symbols cannot be used
    symbols = symbols[symbols.gene_id.isin(genes.gene_id) & (symbols.symbol != "")]
    symbols["priority"] = symbols.source.map({s: i for i, s in enumerate(SYMBOL_SOURCES)}).astype("int8")
    out_dir = Path(out_dir)
    for frame, name in [(genes, "genes.parquet"), (symbols, "symbols.parquet")]:
        with atomic_path(out_dir / name) as tmp:
            pq.write_table(pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False), tmp)
    return {"genes": len(genes), "symbols": int(symbols.symbol.nunique()),
            "protein_coding": int((genes.gene_type == "protein_coding").sum())}


@dataclass
class GeneTable:
    genes: pd.DataFrame  # gene_id, gene_name, gene_type
    symbols: pd.DataFrame  # symbol, gene_id, source, priority

    @classmethod
    def load(cls, folder: str | Path) -> "GeneTable":
        folder = Path(folder)
        for name in ("genes.parquet", "symbols.parquet"):
            if not (folder / name).exists():
                raise ScencodeError(f"gene table file {name} is missing (run the gene_table rule)", folder)
        return cls(pd.read_parquet(folder / "genes.parquet"), pd.read_parquet(folder / "symbols.parquet"))

    @classmethod
    def packaged(cls, tmp_dir: Path) -> "GeneTable":
        build_gene_table(packaged_file(PACKAGED_GENCODE), packaged_file(PACKAGED_HGNC), tmp_dir)
        return cls.load(tmp_dir)

    def map_symbols(self, symbols: pd.Series) -> tuple[pd.Series, pd.Series]:
        """Map symbols to Ensembl ids. Returns (gene_id or NaN, status) with status in
        {"matched", "unmatched", "ambiguous"}; vectorised through pandas joins."""
        query = pd.DataFrame({"symbol": pd.Series(symbols, dtype=str).str.strip().to_numpy()})
        table = self.symbols
        # first source where each symbol appears, and how many genes it names there
        first = table.groupby("symbol").priority.min().rename("first_priority")
        at_first = table.join(first, on="symbol")
        at_first = at_first[at_first.priority == at_first.first_priority]
        per_symbol = at_first.groupby("symbol").gene_id.agg(["nunique", "first"])
        hit = query.join(per_symbol, on="symbol")
        status = np.where(hit["nunique"].isna(), "unmatched",
                          np.where(hit["nunique"] == 1, "matched", "ambiguous"))
        gene_id = hit["first"].where(status == "matched")
        return pd.Series(gene_id.to_numpy(), dtype=object), pd.Series(status)

    def known_ids(self, ids: pd.Series) -> np.ndarray:
        return strip_version(pd.Series(ids)).isin(self.genes.gene_id).to_numpy()

    def mito_ids(self) -> set[str]:
        return set(self.genes.gene_id[self.genes.gene_name.fillna("").str.startswith("MT-")])


def run(out: Path, gencode: str | None = None, gencode_sha256: str | None = None, hgnc: str | None = None,
        hgnc_sha256: str | None = None) -> dict:
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
                    raise ScencodeError(f"gene table URL {location} has no sha256: pin it (gencode_sha256 / "
                                        f"hgnc_sha256) so a changed or tampered file is refused")
                target = Path(tmp) / Path(location).name
                download_url(location, target, sha256=sha256)
                return target
            return Path(location)

        summary = build_gene_table(resolve(gencode, PACKAGED_GENCODE, gencode_sha256),
                                   resolve(hgnc, PACKAGED_HGNC, hgnc_sha256), Path(out))
    log.info("gene table: %s", summary)
    return summary
