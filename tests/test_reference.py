"""``scencode.reference``: packaged reference files and Ensembl ids."""

import pandas as pd

from scencode.reference import looks_like_ensembl, packaged_file, strip_version


def test_version_suffixes_are_stripped_and_ids_recognised():
    ids = pd.Series(["ENSG00000141510.18", "ENSG00000111640", "ENSG00000075624.17"])
    assert strip_version(ids).tolist()[:2] == ["ENSG00000141510", "ENSG00000111640"]
    assert looks_like_ensembl(ids)
    assert not looks_like_ensembl(pd.Series(["TP53", "GAPDH", "ACTB"]))
    assert not looks_like_ensembl(pd.Series([], dtype=str))


def test_the_packaged_tables_ship_with_the_package():
    genes = packaged_file("genes_homo_sapiens_gencode48.csv.gz")
    assert genes.exists()
    table = pd.read_csv(genes, header=None, nrows=50)
    assert looks_like_ensembl(table[0])
