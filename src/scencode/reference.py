"""Reference data every stage may read: files shipped inside the package (GENCODE 48, HGNC 2024-10,
the demo's proteins, the study's results) and the gene table reader (``GeneTable``: Ensembl ids,
symbols and the symbol → Ensembl id mapping), whose files the gene_table rule writes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ScencodeError

PACKAGED_GENCODE = "genes_homo_sapiens_gencode48.csv.gz"


PACKAGED_HGNC = "hgnc_symbols_2024-10.tsv.gz"


GENCODE_COLUMNS = ["gene_id", "gene_name", "gene_version", "gene_length", "gene_type"]


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
        raise ScencodeError(
            "not a GENCODE gene table (columns gene_id, gene_name, gene_version, "
            "gene_length, gene_type; Ensembl gene ids in the first)",
            path,
        )
    genes["gene_id"] = strip_version(genes.gene_id)
    # GENCODE names id-only genes by their id: they have no symbol
    genes["gene_name"] = genes.gene_name.where(genes.gene_name != genes.gene_id)
    return genes[["gene_id", "gene_name", "gene_type"]].drop_duplicates("gene_id")


@dataclass
class GeneTable:
    genes: pd.DataFrame  # gene_id, gene_name, gene_type
    symbols: pd.DataFrame  # symbol, gene_id, source, priority

    @classmethod
    def load(cls, folder: str | Path) -> GeneTable:
        folder = Path(folder)
        for name in ("genes.parquet", "symbols.parquet"):
            if not (folder / name).exists():
                raise ScencodeError(f"gene table file {name} is missing (run the gene_table rule)", folder)
        return cls(pd.read_parquet(folder / "genes.parquet"), pd.read_parquet(folder / "symbols.parquet"))

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
        status = np.where(hit["nunique"].isna(), "unmatched", np.where(hit["nunique"] == 1, "matched", "ambiguous"))
        gene_id = hit["first"].where(status == "matched")
        return pd.Series(gene_id.to_numpy(), dtype=object), pd.Series(status)

    def known_ids(self, ids: pd.Series) -> np.ndarray:
        return strip_version(pd.Series(ids)).isin(self.genes.gene_id).to_numpy()

    def mito_ids(self) -> set[str]:
        """Mitochondrial genes: MT- in human, mt- in mouse (MGI) and the demo's simulated species."""
        return set(self.genes.gene_id[self.genes.gene_name.fillna("").str.upper().str.startswith("MT-")])
