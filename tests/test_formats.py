"""``scencode.formats``: the files between stages, each defined and read in one place."""

import numpy as np
import pandas as pd
import pytest
import torch

from scencode.errors import ScencodeError
from scencode.formats import Checkpoint, metric_table, read_metric_table, read_run_status


def test_a_checkpoint_round_trips_and_a_foreign_file_is_named(tmp_path):
    ckpt = Checkpoint(model_config={"vocab_size": 3}, model={"w": torch.ones(2)}, vocab_hash="v" * 64, step=5)
    ckpt.write(tmp_path / "best.pt")
    back = Checkpoint.read(tmp_path / "best.pt")
    assert back.step == 5 and torch.equal(back.model["w"], torch.ones(2)) and not back.resumable
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ScencodeError, match="other.pt: not a scencode model checkpoint \\(no model_config, model"):
        Checkpoint.read(tmp_path / "other.pt")


def test_a_metric_table_with_an_unexplained_missing_value_is_refused(tmp_path):
    from scencode.formats import RunIdentity

    rows = pd.DataFrame({"metric": ["nmi", "ari"], "group": "study", "value": [0.5, np.nan], "note": ["", ""]})
    table = metric_table(rows, RunIdentity("learned-soft-s0", "learned", "soft", 0), "ds")
    table.to_parquet(tmp_path / "m.parquet")
    with pytest.raises(ScencodeError, match="m.parquet: .*ari"):
        read_metric_table(tmp_path / "m.parquet")
    table.loc[1, "note"] = "one batch: no batch score"
    table.to_parquet(tmp_path / "ok.parquet")
    assert read_metric_table(tmp_path / "ok.parquet").num_rows == 2


def test_a_status_file_of_another_version_says_how_to_rerun(tmp_path):
    (tmp_path / "model.json").write_text('{"configuration": "learned-soft-s0"}')
    with pytest.raises(ScencodeError, match="model.json: model status file lacks .*--forcerun pretrain"):
        read_run_status(tmp_path / "model.json")
