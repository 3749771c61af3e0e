"""Another species: where a learned gene table has nothing and a protein embedding still says what
a gene is.

Models train on one organism (human, :data:`PRIMARY_ORGANISM`). Datasets of another (the sheet's
``organism`` column, e.g. Census mouse tissues) enter at evaluation only. Their genes keep their own
ids: QC maps them with the species' gene table, the vocabulary appends them as tokens no training cell
holds, ESM-2 embeds the species' own proteins, and a learned table reaches them through one-to-one
orthologs (the vocabulary's ``ortholog`` column; a gene without one gets the table's ``unknown``
vector, as an unseen gene does). The datasets are scored at the ``species`` shift level.

``scencode species`` writes one species' reference folder:

- ``proteins.pep.fa.gz``: its peptide FASTA (Ensembl's ``pep.all``, pinned by sha256);
- ``genes.parquet`` + ``symbols.parquet``: the gene table QC maps its datasets with, read from the
  FASTA's headers (protein-coding genes: the vocabulary's protein policy keeps no other);
- ``orthologs.parquet``: ``gene_id`` → ``human_gene_id``, one-to-one pairs only (a gene named in two
  pairs, on either side, is left out: which human row it should borrow is not defined).

The demo's species is simulated offline (``{"type": "simulated"}``): the demo's human genes renamed
to ids of their own (a seeded permutation), their proteins mutated from the human ones at
``identity``, and a ``without_ortholog`` fraction left out of the ortholog table. Its cells are drawn
from the human simulator's programs under the new names (:func:`rename_to_species`), so cell identity
carries over and only the gene names and proteins change.
"""

from __future__ import annotations

import logging
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

from .atomic import OutputFolder, atomic_path
from .errors import ScencodeError
from .genes import write_gene_table
from .parquet_io import read_parquet
from .workflow_config import PRIMARY_ORGANISM

log = logging.getLogger(__name__)

AMINO_ACIDS = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", np.uint8)
ORTHOLOG_COLUMNS = ("gene_id", "human_gene_id")
# HCOP's human–mouse file (HGNC Comparison of Orthology Predictions), the paper config's table
HCOP_COLUMNS = {"human_column": "human_ensembl_gene", "species_column": "mouse_ensembl_gene"}


def _rng(*keys) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(str(k).encode()) for k in keys])


# ------------------------------------------------------------------ the demo's simulated species


def simulated_genes(organism: str, without_ortholog: float) -> pd.DataFrame:
    """The simulated species' genes, one per demo human gene: ``gene_id`` (ENS<code>G + 11 digits,
    a seeded permutation, so an id says nothing of its human gene), ``gene_name`` (the human symbol
    in mouse style: Actb, mt-Co1), ``gene_type``, ``human_gene_id`` and ``ortholog`` (whether the
    ortholog table lists the pair)."""
    from .demo import demo_genes

    if not 0 <= without_ortholog < 1:
        raise ScencodeError(f"without_ortholog must be a fraction in [0, 1), got {without_ortholog!r}")
    human = demo_genes()
    rng = _rng("species_genes", organism)
    code = "".join(c for c in organism.upper() if c.isalpha())[:3] or "SPE"
    numbers = rng.permutation(len(human)) + 1
    names = human.gene_name.str.capitalize().where(
        ~human.gene_name.fillna("").str.startswith("MT-"), "mt-" + human.gene_name.str[3:].str.capitalize()
    )
    return pd.DataFrame(
        {
            "gene_id": [f"ENS{code}G{n:011d}" for n in numbers],
            "gene_name": names.to_numpy(),
            "gene_type": human.gene_type.to_numpy(),
            "human_gene_id": human.gene_id.to_numpy(),
            "ortholog": rng.random(len(human)) >= without_ortholog,
        }
    )


def mutate(sequences: pd.Series, identity: float, seed_key: str) -> pd.Series:
    """Each residue kept with probability ``identity``, else replaced by another amino acid (uniform
    over the other 19); vectorised over all sequences at once."""
    if not 0 < identity <= 1:
        raise ScencodeError(f"identity must be a fraction in (0, 1], got {identity!r}")
    joined = np.frombuffer("".join(sequences).encode(), np.uint8).copy()
    rng = _rng("mutate", seed_key)
    change = rng.random(len(joined)) >= identity
    # a uniform draw among the 19 others: shift the residue's index by 1..19 (mod 20)
    index = np.searchsorted(AMINO_ACIDS, joined[change]).clip(0, len(AMINO_ACIDS) - 1)
    joined[change] = AMINO_ACIDS[(index + rng.integers(1, len(AMINO_ACIDS), change.sum())) % len(AMINO_ACIDS)]
    text = joined.tobytes().decode()
    ends = np.cumsum(sequences.str.len().to_numpy())
    return pd.Series([text[a:b] for a, b in zip(np.r_[0, ends[:-1]], ends)], index=sequences.index)


def simulated_proteins(genes: pd.DataFrame, organism: str, identity: float) -> pd.DataFrame:
    """(gene_id, gene_name, protein_id, sequence): the demo's human proteins mutated at ``identity``,
    under the species' gene ids."""
    from .reference import packaged_file

    human = pd.read_csv(packaged_file("demo_proteins.csv.gz"))
    table = human.merge(genes, left_on="gene_id", right_on="human_gene_id", suffixes=("_human", ""))
    return pd.DataFrame(
        {
            "gene_id": table.gene_id.to_numpy(),
            "gene_name": table.gene_name.to_numpy(),
            "protein_id": [f"{organism[:3].upper()}P{i:011d}" for i in range(1, len(table) + 1)],
            "sequence": mutate(table.sequence, identity, organism).to_numpy(),
        }
    )


def rename_to_species(adata, organism: str):
    """A demo dataset drawn by the human simulator, its genes renamed to the species' (var names
    its ids, ``feature_name`` its symbols): the cells are the human programs under new names."""
    genes = simulated_genes(organism, 0.0).set_index("human_gene_id")  # ids do not depend on the fraction
    species = genes.reindex(adata.var_names)
    if species.gene_id.isna().any():
        raise ScencodeError("the dataset holds genes the simulated species does not have")
    adata = adata.copy()
    adata.var = pd.DataFrame({"feature_name": species.gene_name.to_numpy()}, index=species.gene_id.to_numpy())
    return adata


# ------------------------------------------------------------------ a real species' files


def genes_from_fasta(proteins: pd.DataFrame) -> pd.DataFrame:
    """(gene_id, gene_name, gene_type) of the genes an Ensembl peptide FASTA names."""
    genes = proteins.drop_duplicates("gene_id")
    return pd.DataFrame(
        {
            "gene_id": genes.gene_id.to_numpy(),
            "gene_name": genes.gene_symbol.replace("", None).to_numpy(),
            "gene_type": genes.gene_biotype.replace("", "protein_coding").to_numpy(),
        }
    ).sort_values("gene_id", ignore_index=True)


def one_to_one(pairs: pd.DataFrame) -> pd.DataFrame:
    """The pairs (gene_id, human_gene_id) in which each gene, on either side, appears once."""
    pairs = pairs.dropna().drop_duplicates()
    once = ~pairs.gene_id.duplicated(keep=False) & ~pairs.human_gene_id.duplicated(keep=False)
    return pairs[once].sort_values("gene_id", ignore_index=True)


def read_ortholog_file(path: Path, human_column: str, species_column: str) -> pd.DataFrame:
    """One-to-one pairs from a tab-separated ortholog table (HCOP's by default); ids without an
    Ensembl id ('-' in HCOP) are left out."""
    from .reference import ENSEMBL_GENE_RE, strip_version

    try:
        table = pd.read_csv(path, sep="\t", dtype=str, usecols=[human_column, species_column])
    except (OSError, ValueError, EOFError, pd.errors.ParserError) as exc:
        raise ScencodeError(
            f"not a readable ortholog table with columns {human_column}, {species_column} ({exc})", path
        ) from None
    pairs = pd.DataFrame(
        {"gene_id": strip_version(table[species_column]), "human_gene_id": strip_version(table[human_column])}
    )
    pairs = pairs[pairs.gene_id.str.match(ENSEMBL_GENE_RE) & pairs.human_gene_id.str.match(ENSEMBL_GENE_RE)]
    if pairs.empty:
        raise ScencodeError(f"no pair of Ensembl gene ids in columns {human_column}, {species_column}", path)
    return one_to_one(pairs)


def _fetch(source: dict, out: Path, what: str) -> None:
    from .fetch import download_url, link_local

    if source.get("type") == "url":
        if "sha256" not in source:
            raise ScencodeError(f"{what} URL {source.get('url')} has no sha256: pin it (null: unpinned on purpose)")
        digest = download_url(source["url"], out, sha256=source["sha256"])
        if not source["sha256"]:
            log.warning("downloaded %s UNPINNED: its sha256 is %s; pin it in the config", source["url"], digest)
    elif source.get("type") == "local":
        link_local(source["path"], out, check_hdf5=False)
    else:
        raise ScencodeError(f"unknown {what} source type {source.get('type')!r}; choose one of url, local")


def read_orthologs(folder: str | Path) -> pd.DataFrame:
    """A species folder's one-to-one orthologs (gene_id, human_gene_id)."""
    return read_parquet(Path(folder) / "orthologs.parquet", "ortholog table", ORTHOLOG_COLUMNS).to_pandas()


# ------------------------------------------------------------------ the step


def run(organism: str, source: dict, out: OutputFolder) -> dict:
    """One species' reference folder (proteins.pep.fa.gz, genes.parquet, symbols.parquet,
    orthologs.parquet): ``source`` {"type": "simulated", "identity", "without_ortholog"} (the demo)
    or {"type": "files", "proteins": {url|local source}, "orthologs": {url|local source, human_column,
    species_column}}."""
    from .esm.proteins import run as fetch_proteins
    from .esm.proteins import write_peptide_fasta

    if organism == PRIMARY_ORGANISM:
        raise ScencodeError(f"{organism} is the organism models train on, not another species")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fasta = out / "proteins.pep.fa.gz"
    if source.get("type") == "simulated":
        genes = simulated_genes(organism, float(source.get("without_ortholog", 0.2)))
        proteins = simulated_proteins(genes, organism, float(source.get("identity", 0.85)))
        write_peptide_fasta(proteins.protein_id, proteins.gene_id, proteins.gene_name, proteins.sequence, fasta)
        orthologs = genes.loc[genes.ortholog, list(ORTHOLOG_COLUMNS)]
        table = genes[["gene_id", "gene_name", "gene_type"]].sort_values("gene_id", ignore_index=True)
    elif source.get("type") == "files":
        # the esm proteins step's fetch: pinned by sha256, parsed, removed again if it does not parse
        table = genes_from_fasta(fetch_proteins(source["proteins"], fasta))
        orthologs_source = source["orthologs"]
        columns = {key: orthologs_source.get(key, default) for key, default in HCOP_COLUMNS.items()}
        location = orthologs_source.get("url") or orthologs_source.get("path", "")
        with tempfile.TemporaryDirectory(dir=out) as tmp:  # the source table is read, not kept
            raw = Path(tmp) / Path(location).name  # its name says whether it is compressed
            _fetch(orthologs_source, raw, "ortholog table")
            try:
                orthologs = read_ortholog_file(raw, **columns)
            except ScencodeError as exc:  # named by where it came from, not the temporary copy
                raise ScencodeError(str(exc).removeprefix(f"{exc.path}: "), location) from None
    else:
        raise ScencodeError(f"unknown species source type {source.get('type')!r}; choose one of simulated, files")
    symbols = pd.DataFrame({"symbol": table.gene_name, "gene_id": table.gene_id, "source": "ensembl"}).dropna()
    write_gene_table(table, symbols, out)
    with atomic_path(out / "orthologs.parquet") as tmp:
        pl.from_pandas(orthologs.reset_index(drop=True)).write_parquet(tmp)
    summary = {
        "organism": organism,
        "genes": len(table),
        "one_to_one_orthologs": len(orthologs),
        "without_ortholog": int((~table.gene_id.isin(orthologs.gene_id)).sum()),
    }
    log.info("species %s: %s", organism, summary)
    return summary
