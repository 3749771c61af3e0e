"""``scencode.parquet_io``: Parquet read with named errors; matrices as fixed-size list columns."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scencode.errors import ScencodeError
from scencode.parquet_io import column_matrix, matrix_column, read_parquet


def test_a_matrix_survives_the_column_round_trip(tmp_path):
    matrix = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    pq.write_table(pa.table({"embedding": matrix_column(matrix)}), tmp_path / "m.parquet")
    back = column_matrix(read_parquet(tmp_path / "m.parquet", "embedding table", ("embedding",)), "embedding")
    assert back.dtype == np.float32 and np.array_equal(back, matrix)


def test_a_missing_file_column_or_a_non_parquet_file_is_named(tmp_path):
    with pytest.raises(ScencodeError, match="absent.parquet"):
        read_parquet(tmp_path / "absent.parquet", "embedding table")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "t.parquet")
    with pytest.raises(ScencodeError, match=r"t.parquet: .*embedding"):
        read_parquet(tmp_path / "t.parquet", "embedding table", ("embedding",))
    (tmp_path / "text.parquet").write_text("cell_id,x\n")
    with pytest.raises(ScencodeError, match="text.parquet"):
        read_parquet(tmp_path / "text.parquet", "embedding table")
