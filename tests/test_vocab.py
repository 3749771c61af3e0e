"""``scencode.vocab``: the shared gene vocabulary and its policies."""

import pandas as pd
import pytest

from scencode.errors import ScencodeError
from scencode.formats import SPECIAL_TOKENS
from scencode.vocab import build_vocab, read_gene_list


@pytest.fixture(scope="module")
def qc_files(demo_corpus):
    """The two QC'd demo datasets the demo corpus was built from."""
    folder = demo_corpus[0].parent
    files = [f for f in sorted(folder.rglob("*.h5ad")) if not f.stem.endswith("_raw")]
    assert len(files) == 2
    return files


def test_union_intersection_and_protein_policies_nest(qc_files, tmp_path):
    union = build_vocab(qc_files, "union")
    both = build_vocab(qc_files, "intersection")
    assert union.gene_id.tolist()[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    assert union.token_id.tolist() == list(range(len(union)))
    assert set(both.gene_id) <= set(union.gene_id) and len(both) <= len(union)
    keep = union.gene_id[len(SPECIAL_TOKENS) :: 2]
    pd.DataFrame({"gene_id": keep}).to_csv(tmp_path / "proteins.tsv", sep="\t", index=False)
    protein = build_vocab(qc_files, "protein", tmp_path / "proteins.tsv")
    assert set(protein.gene_id[len(SPECIAL_TOKENS) :]) == set(keep)


def test_bad_policies_and_gene_lists_are_named(qc_files, tmp_path):
    with pytest.raises(ScencodeError, match="unknown vocabulary policy 'all'"):
        build_vocab(qc_files, "all")
    with pytest.raises(ScencodeError, match="needs a list of genes"):
        build_vocab(qc_files, "protein")
    (tmp_path / "g.csv").write_text("symbol\nTP53\n")
    with pytest.raises(ScencodeError, match="g.csv: gene list has no 'gene_id' column"):
        read_gene_list(tmp_path / "g.csv")
