"""Two real DDP processes (gloo, CPU): balanced shares, nothing left out, nothing hanging."""

import json
import os
import socket
import subprocess
import sys

import pyarrow.parquet as pq

RANK_SCRIPT = """
import json, sys
from pathlib import Path
from scencode.loader import LoaderConfig
from scencode.model import ModelConfig
from scencode.pretrain import RunSpec, TrainConfig, fit, setup

corpus, vocab, out = map(Path, sys.argv[1:4])
spec = RunSpec("learned-continuous-s3", corpus, vocab, out,
               ModelConfig(0, "learned", "continuous", d_model=16, n_layers=1, n_heads=2, d_ff=16,
                           expression_options={"hidden": 8}),
               LoaderConfig(batch_size=16, context=64, bucket_batches=2, seed=3),
               TrainConfig(grad_accum=3, epochs=2, warmup_steps=1, val_every=0, val_cells=50, checkpoint_every=1000,
                           log_every=5, num_workers=0))
run = setup(spec)
seen = {}


class Counted:
    \"\"\"The run's schedule, counting what each epoch delivers to this rank.\"\"\"

    def __init__(self, schedule):
        self.schedule = schedule

    def batches(self, state):
        for batch in self.schedule.batches(state):
            epoch = seen.setdefault(str(state.epoch), {"batches": 0, "cells": 0})
            epoch["batches"] += 1
            epoch["cells"] += batch.n_cells
            yield batch


shares = run.schedule.shares(0)
run.schedule = Counted(run.schedule)
state = fit(run)
(out / f"rank{run.ranks.rank}.json").write_text(json.dumps({"seen": seen, "repeated": state.repeated_cells,
                                                            "shares": shares}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_run_equal_shares_and_see_every_cell(demo_corpus, tmp_path):
    corpus, vocab = demo_corpus
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(corpus), str(vocab), str(tmp_path / "run")],
            env={
                **os.environ,
                "RANK": str(r),
                "LOCAL_RANK": str(r),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    ranks = [json.loads((tmp_path / "run" / f"rank{r}.json").read_text()) for r in range(2)]
    shares = ranks[0]["shares"]
    assert shares[0] != shares[1]  # the corpus gives the ranks unequal shares: the case under test
    table = pq.read_table(sorted(corpus.glob("part-*.parquet")), columns=["split"]).column("split").to_pylist()
    n_train = table.count("train")
    for epoch in ("0", "1"):
        batches = [r["seen"][epoch]["batches"] for r in ranks]
        assert batches[0] == batches[1]  # equal steps: no rank waits for another
        assert sum(r["seen"][epoch]["cells"] for r in ranks) >= n_train  # nobody's cells left out
    repeated = sum(r["repeated"] for r in ranks)
    assert repeated == sum(r["seen"][e]["cells"] for r in ranks for e in ("0", "1")) - 2 * n_train > 0
    status = json.loads((tmp_path / "run" / "model.json").read_text())
    assert status["ranks"] == {"world_size": 2, "repeated_cells": repeated} and status["status"] == "completed"
