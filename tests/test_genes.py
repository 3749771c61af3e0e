import pandas as pd
from helpers import GENES


def test_symbols_map_through_gencode_names(gene_table):
    ids, status = gene_table.map_symbols(pd.Series(["TP53", "GAPDH"]))
    assert ids.tolist() == [GENES["TP53"], GENES["GAPDH"]]
    assert status.tolist() == ["matched", "matched"]


def test_outdated_symbols_map_through_hgnc_previous_symbols(gene_table):
    table = gene_table.symbols
    previous = table[table.source == "hgnc_previous"]
    only_previous = previous[~previous.symbol.isin(table[table.priority < 2].symbol)]
    unique = only_previous.groupby("symbol").gene_id.nunique()
    symbol = unique[unique == 1].index[0]
    ids, status = gene_table.map_symbols(pd.Series([symbol]))
    assert status[0] == "matched"
    assert ids[0] == only_previous.set_index("symbol").gene_id[symbol]


def test_symbols_naming_several_genes_are_ambiguous_and_unknown_are_unmatched(gene_table):
    gencode = gene_table.symbols[gene_table.symbols.source == "gencode"]
    per_symbol = gencode.groupby("symbol").gene_id.nunique()
    ambiguous = per_symbol[per_symbol > 1].index[0]
    ids, status = gene_table.map_symbols(pd.Series([ambiguous, "NOT-A-GENE-XYZ"]))
    assert status.tolist() == ["ambiguous", "unmatched"]
    assert ids.isna().all()


def test_mitochondrial_genes_are_the_mt_symbols(gene_table):
    mito = gene_table.mito_ids()
    assert GENES["MT-CO1"] in mito and GENES["TP53"] not in mito
    assert len(mito) == 37  # 13 protein-coding, 2 rRNA, 22 tRNA genes on chrM
