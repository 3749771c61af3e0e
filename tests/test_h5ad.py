"""``scencode.h5ad``: streamed h5ad reading and writing, and what counts as raw counts."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scencode.errors import ScencodeError
from scencode.h5ad import ChunkedH5adWriter, count_problem, open_h5ad, read_qc_h5ad


def test_a_matrix_written_in_blocks_reads_back_whole(tmp_path):
    rng = np.random.default_rng(0)
    blocks = [sp.random(n, 30, density=0.2, format="csr", random_state=rng, dtype=np.float32) for n in (7, 0, 11)]
    writer = ChunkedH5adWriter(tmp_path / "x.h5ad", 30)
    for block in blocks:
        writer.append(block)
    obs = pd.DataFrame({"cell_type": ["a"] * 18}, index=[f"c{i}" for i in range(18)])
    writer.finish(obs, pd.DataFrame(index=[f"g{i}" for i in range(30)]))
    back = ad.read_h5ad(tmp_path / "x.h5ad")
    assert back.shape == (18, 30) and back.obs.cell_type.tolist() == ["a"] * 18
    assert np.array_equal(back.X.toarray(), sp.vstack(blocks).toarray())


@pytest.mark.parametrize(
    "values, why",
    [
        ([1.0, 2.5], "non-integer values"),
        ([1.0, -1.0], "negative values"),
        ([1.0, np.nan], "non-finite values"),
        ([1.0, 2.0**25], "counts beyond"),
    ],
)
def test_what_is_not_raw_counts_is_said(values, why):
    block = sp.csr_matrix(np.array([values], dtype=np.float64))
    assert why in count_problem(block)
    assert count_problem(sp.csr_matrix(np.array([[0, 3, 7]], dtype=np.int32))) is None


def test_a_file_that_is_not_an_h5ad_or_not_qcd_is_named(tmp_path):
    (tmp_path / "x.h5ad").write_text("not hdf5")
    with pytest.raises(ScencodeError, match="x.h5ad: not an h5ad file"):
        with open_h5ad(tmp_path / "x.h5ad"):
            pass
    ad.AnnData(np.ones((2, 2), np.float32)).write_h5ad(tmp_path / "raw.h5ad")
    with pytest.raises(ScencodeError, match="raw.h5ad: not an output of scencode qc"):
        read_qc_h5ad(tmp_path / "raw.h5ad")
