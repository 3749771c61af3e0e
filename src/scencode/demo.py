"""The embedded demo: seeded simulated datasets with real human Ensembl ids, and scanpy's
bundled ``pbmc68k_reduced`` turned back into integer counts.

The simulator draws counts the way droplet data look: gamma-distributed gene means, cell-type
expression programs (shared by name across tissues), marker genes that a cell type switches on and
every other type keeps off (as in real tissue: 5–44 such genes per type in CellBench and the Baron
pancreas, 0–4 without them), a tissue program, per-batch multiplicative gene effects and depth
shifts, log-normal library sizes and negative-binomial noise. A few percent of cells are "damaged"
(high mitochondrial fraction, low depth) so that QC has work to do.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import ScencodeError
from .reference import PACKAGED_GENCODE, packaged_file, read_gencode

N_EXTRA_GENES = 300  # protein-coding genes without a demo protein: the vocabulary policy has to choose
NB_THETA = 2.0
MARKERS_PER_TYPE = 20
MARKER_OFF = np.log(0.02)  # a marker outside its type: 2% of its base expression
SIMULATED_SPECIES = "simulated_species"  # the demo's second organism (scencode.species)


@dataclass(frozen=True)
class DemoDataset:
    tissue: str
    n_cells: int
    cell_types: tuple[str, ...]
    n_batches: int
    symbols_only: bool = False  # var names are symbols (some outdated), as in many public files
    organism: str | None = None  # another species (scencode.species): the human programs under its gene names
    extra_obs: dict = field(default_factory=dict)


TISSUE_TYPES = {
    "lung": (
        "alveolar type 2 cell",
        "alveolar macrophage",
        "endothelial cell",
        "fibroblast",
        "T cell",
        "club cell",
        "ciliated cell",
    ),
    "blood": (
        "CD4-positive T cell",
        "CD8-positive T cell",
        "B cell",
        "natural killer cell",
        "classical monocyte",
        "platelet",
        "plasmacytoid dendritic cell",
    ),
    "kidney": ("proximal tubule cell", "podocyte", "endothelial cell", "T cell", "macrophage"),
    "liver": ("hepatocyte", "cholangiocyte", "Kupffer cell", "endothelial cell", "T cell", "hepatic stellate cell"),
}

# A tissue no demo training dataset has, for the far level of distribution shift. Its cell types
# stay out of TISSUE_TYPES, so that the other datasets' marker genes are what they were.
UNSEEN_TISSUE_TYPES = {
    "pancreas": (
        "pancreatic A cell",
        "type B pancreatic cell",
        "pancreatic ductal cell",
        "pancreatic acinar cell",
        "endothelial cell",
        "macrophage",
    ),
}

DEMO_DATASETS: dict[str, DemoDataset] = {
    "sim_lung_1": DemoDataset("lung", 3000, TISSUE_TYPES["lung"], 3),
    "sim_blood_1": DemoDataset("blood", 2500, TISSUE_TYPES["blood"], 2),
    "sim_kidney_1": DemoDataset("kidney", 2000, TISSUE_TYPES["kidney"], 2),
    "sim_liver_1": DemoDataset("liver", 3500, TISSUE_TYPES["liver"], 3, symbols_only=True),
    "sim_lung_eval": DemoDataset("lung", 1500, TISSUE_TYPES["lung"][:6], 2),
    "sim_blood_eval": DemoDataset("blood", 1500, TISSUE_TYPES["blood"], 3),
    "sim_pancreas_eval": DemoDataset("pancreas", 1000, UNSEEN_TISSUE_TYPES["pancreas"], 2),
    # blood of the simulated second species: a seen tissue, so that only the species changes
    "sim_species_blood_eval": DemoDataset("blood", 1000, TISSUE_TYPES["blood"], 2, organism=SIMULATED_SPECIES),
}
PBMC = "pbmc68k_reduced"


def demo_names() -> list[str]:
    return [*DEMO_DATASETS, PBMC]


def make_demo_dataset(name: str, seed: int = 0, n_cells: int | None = None) -> ad.AnnData:
    """Build one demo dataset by name (see :data:`DEMO_DATASETS` and ``pbmc68k_reduced``)."""
    if name == PBMC:
        return pbmc68k_counts()
    if name not in DEMO_DATASETS:
        raise ScencodeError(f"unknown demo dataset {name!r}; known: {', '.join(demo_names())}")
    spec = DEMO_DATASETS[name]
    return simulate(spec, name, seed, n_cells or spec.n_cells)


def demo_genes() -> pd.DataFrame:
    """The demo's gene universe: genes with a shipped protein, other protein-coding genes and
    the mitochondrial genes, sorted by Ensembl id."""
    gencode = read_gencode(packaged_file(PACKAGED_GENCODE))
    with_protein = pd.read_csv(packaged_file("demo_proteins.csv.gz"), usecols=["gene_id"]).gene_id
    coding = gencode[(gencode.gene_type == "protein_coding") & gencode.gene_name.notna()]
    mito = coding[coding.gene_name.str.startswith("MT-")]
    others = coding[~coding.gene_id.isin(with_protein) & ~coding.gene_id.isin(mito.gene_id)]
    others = others.sample(N_EXTRA_GENES, random_state=0)
    keep = pd.concat([with_protein, others.gene_id, mito.gene_id])
    return gencode[gencode.gene_id.isin(keep)].sort_values("gene_id").reset_index(drop=True)


def _rng(*keys) -> np.random.Generator:
    # stable across processes, unlike hash()
    return np.random.default_rng([zlib.crc32(str(k).encode()) for k in keys])


def _program(n_genes: int, key: str, frac_up: float, frac_down: float, scale: float) -> np.ndarray:
    rng = _rng("program", key)
    lfc = np.zeros(n_genes)
    genes = rng.permutation(n_genes)
    n_up, n_down = int(frac_up * n_genes), int(frac_down * n_genes)
    lfc[genes[:n_up]] = np.abs(rng.normal(scale, scale / 2, n_up))
    lfc[genes[n_up : n_up + n_down]] = -np.abs(rng.normal(scale, scale / 2, n_down))
    return lfc


def _marker_switch(base: np.ndarray, types: np.ndarray) -> np.ndarray:
    """(types, genes) log fold changes: every cell type's markers (shared by name across tissues,
    drawn among the better-expressed half of the genes) are off in every other type of any tissue
    and on (2–6× their base) in their own."""
    expressed = np.flatnonzero(base >= np.median(base))
    markers = {
        t: _rng("markers", t).choice(expressed, MARKERS_PER_TYPE, replace=False)
        for t in sorted({t for tissue in TISSUE_TYPES.values() for t in tissue} | set(types))
    }
    switch = np.zeros((len(types), len(base)))
    switch[:, np.unique(np.concatenate(list(markers.values())))] = MARKER_OFF
    for i, t in enumerate(types):
        switch[i, markers[t]] = np.log(_rng("marker_level", t).uniform(2.0, 6.0, MARKERS_PER_TYPE))
    return switch


def simulate(spec: DemoDataset, name: str, seed: int, n_cells: int) -> ad.AnnData:
    genes = demo_genes()
    n_genes = len(genes)
    is_mito = genes.gene_name.str.startswith("MT-").to_numpy()
    base = _rng("gene_means", seed).gamma(0.6, 1.0, n_genes)
    base[is_mito] *= 8.0  # ~5% of reads are mitochondrial in healthy cells
    rng = _rng("dataset", name, seed)

    types = np.array(spec.cell_types)
    type_weights = rng.dirichlet(np.full(len(types), 4.0))
    cell_type = rng.choice(len(types), size=n_cells, p=type_weights)
    batch = rng.integers(0, spec.n_batches, n_cells)

    # log expression = base + cell-type program + tissue program + batch gene effect
    type_lfc = np.stack([_program(n_genes, t, 0.05, 0.03, 1.2) for t in types])
    type_lfc += _marker_switch(base, types)
    tissue_lfc = _program(n_genes, f"tissue:{spec.tissue}", 0.03, 0.0, 1.0)
    batch_lfc = rng.normal(0.0, 0.25, (spec.n_batches, n_genes))
    log_mu = np.log(base) + tissue_lfc + type_lfc[cell_type] + batch_lfc[batch]

    damaged = rng.random(n_cells) < 0.04
    log_mu[np.ix_(damaged, is_mito)] += np.log(8.0)
    prob = np.exp(log_mu - log_mu.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)

    depth_shift = np.exp(rng.normal(0.0, 0.35, spec.n_batches))
    library = rng.lognormal(np.log(2500.0), 0.5, n_cells) * depth_shift[batch]
    library[damaged] *= 0.3
    mean = prob * library[:, None]
    counts = rng.poisson(rng.gamma(NB_THETA, mean / NB_THETA)).astype(np.float32)

    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(types[cell_type]),
            "batch": pd.Categorical([f"{name}_run{b + 1}" for b in batch]),
            "tissue": spec.tissue,
        },
        index=[f"{name}-{i:06d}" for i in range(n_cells)],
    )
    var = pd.DataFrame({"feature_name": genes.gene_name.to_numpy()}, index=genes.gene_id.to_numpy())
    adata = ad.AnnData(sp.csr_matrix(counts), obs=obs, var=var)
    if spec.symbols_only:
        adata = _as_symbol_only(adata, rng)
    if spec.organism:
        from .species import rename_to_species

        adata = rename_to_species(adata, spec.organism)
    return adata


def _as_symbol_only(adata: ad.AnnData, rng: np.random.Generator) -> ad.AnnData:
    """Index genes by symbol, as many public files do: a few by an outdated (HGNC previous)
    symbol, a few by names no table knows; QC must recover the ids or drop and count them."""
    hgnc = pd.read_csv(packaged_file("hgnc_symbols_2024-10.tsv.gz"), sep="\t", dtype=str)
    prev = hgnc.dropna(subset=["prev_symbol"]).set_index("ensembl_gene_id").prev_symbol.str.split("|").str[0]
    symbols = adata.var.feature_name.to_numpy().astype(object)
    ids = adata.var_names.to_numpy()
    has_prev = np.flatnonzero(pd.Index(ids).isin(prev.index))
    for i in rng.choice(has_prev, size=min(20, len(has_prev)), replace=False):
        symbols[i] = prev[ids[i]]
    for k, i in enumerate(rng.choice(len(ids), size=5, replace=False)):
        symbols[i] = f"UNKNOWN-GENE-{k + 1}"
    adata = adata.copy()
    adata.var = pd.DataFrame(index=pd.Index(symbols, name=None))
    adata.var_names_make_unique()
    return adata


def pbmc68k_counts() -> ad.AnnData:
    """scanpy's bundled ``pbmc68k_reduced`` (700 cells, 765 genes, 10 cell types) as counts.

    Its ``.raw.X`` holds log1p(counts / total × target), rounded to 3 decimals, on a gene subset.
    The smallest non-zero value of each cell is a count of 1, so
    counts = round(expm1(x) / min_nonzero(expm1(x))). On this file the recovered values lie within
    0.11 of an integer (99th percentile 0.011).
    """
    import scanpy as sc

    source = sc.datasets.pbmc68k_reduced()
    x = sp.csr_matrix(source.raw.X, dtype=np.float64)
    x.data = np.expm1(x.data)
    unit = np.minimum.reduceat(x.data, x.indptr[:-1])  # every cell has non-zero genes
    x.data = np.rint(x.data / np.repeat(unit, np.diff(x.indptr)))
    obs = source.obs[["bulk_labels", "phase"]].copy()
    return ad.AnnData(x.astype(np.float32), obs=obs, var=pd.DataFrame(index=source.raw.var_names.copy()))
