"""A trained model's reconstruction table: how well it predicts masked expression on the training
corpus's held-out test split, its minimum training loss, how training ended and what it cost.

In the workflow the embed step has already measured the diagnostic on the held-out split (the
in-distribution evaluation set); where it used the training loader's settings this step reads that
file instead of loading the model and reading the split again.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .atomic import OutputFile
from .diagnostic import masked_mse
from .formats import (
    RECONSTRUCTION_METRICS,
    RunIdentity,
    metric_table,
    model_checkpoint,
    read_reconstruction_errors,
    read_run_status,
    read_train_log,
    write_table,
)
from .loader import LoaderConfig

COST_METRICS = {
    "wall_hours": ("wall_seconds", 1 / 3600),
    "device_hours": ("device_hours", 1),
    "tokens_per_s": ("tokens_per_s", 1),
    "cells_per_s": ("cells_per_s", 1),
    "mfu": ("mfu", 1),
}


def cost_rows(cost: dict | None) -> list[dict]:
    """What training cost (model.json's ``cost``), as metric rows of group ``cost``; the note names
    the device and whether device_hours are GPU-hours or CPU core-hours."""
    if not cost:
        return [
            {"metric": m, "group": "cost", "value": float("nan"), "note": "no cost recorded in model.json"}
            for m in COST_METRICS
        ]
    note = f"{cost['device']} x {cost['devices']}, device_hours in {cost['device_hours_unit']}"
    return [
        {
            "metric": m,
            "group": "cost",
            "note": note if cost.get(key) is not None else f"no MFU: {cost['peak']}",
            "value": float("nan") if cost.get(key) is None else cost[key] * scale,
        }
        for m, (key, scale) in COST_METRICS.items()
    ]


def run(
    model: Path,
    train_log: Path,
    corpus: Path,
    out: OutputFile,
    run: str,
    gene_encoding: str,
    expression_encoding: str,
    seed: int,
    params: LoaderConfig,
    test_errors: Path | None = None,
) -> pd.DataFrame:
    """A model's reconstruction table (``out`` Parquet): minimum logged training masked MSE, the context
    diagnostic on the training corpus's held-out test split, and how training ended. ``test_errors``:
    that diagnostic as the embed step already measured it on the split with these loader settings
    (its reconstruction JSON), read instead of measured again; without it the model is loaded."""
    log_table = read_train_log(train_log)
    checkpoint, missing = model_checkpoint(model)
    nan = float("nan")
    if checkpoint is None:
        test, test_note = {metric: nan for metric in RECONSTRUCTION_METRICS}, missing
    else:
        test = (
            read_reconstruction_errors(test_errors) if test_errors else masked_mse(checkpoint, corpus, "test", params)
        )
        test_note = f"held-out test split, {test['cells']} cells"
    # a checkpoint given directly has no status: how training ended is then unknown (NaN)
    status = read_run_status(model) if Path(model).suffix == ".json" else None
    min_train = log_table.train_loss.min()
    rows = pd.DataFrame(
        [
            {
                "metric": "min_train_mse",
                "group": "reconstruction",
                "value": min_train,
                "note": "minimum logged training masked MSE"
                if pd.notna(min_train)
                else "no finite training loss was logged (see model.json)",
            },
            {"metric": "test_mse", "group": "reconstruction", "value": test["masked_mse"], "note": test_note},
            *(
                {
                    "metric": f"test_{metric}",
                    "group": "reconstruction",
                    "value": test.get(metric, nan),
                    "note": test_note,
                }
                for metric in RECONSTRUCTION_METRICS[1:]
            ),
            # how training ended: the report shows whether a configuration was still improving
            {
                "metric": "final_val_loss",
                "group": "training",
                "value": (status and status.final_val_loss) or nan,
                "note": f"validation loss at the last step ({status and status.steps})",
            },
            {
                "metric": "still_improving",
                "group": "training",
                "value": float(bool(status and status.still_improving)),
                "note": "1: the last validation was the best (more training would likely help)",
            },
            {
                "metric": "checkpoint_step",
                "group": "training",
                "value": (status and status.checkpoint_step) or nan,
                "note": "step of the evaluated checkpoint (best validation, the last step included)",
            },
            *cost_rows(status.cost if status else None),
        ]
    )
    training_set = (status and status.train_cells) or {}
    size = pd.DataFrame(
        [
            {
                "metric": "train_cells",
                "group": "training",
                "value": float(training_set.get("cells", nan)),
                "note": f"training cells (requested: {training_set.get('requested', 'unknown')})",
            }
        ]
    )
    if checkpoint is None:  # no usable model: how training ended says nothing about an evaluated one
        training = rows.group == "training"
        rows.loc[training, "value"], rows.loc[training, "note"] = nan, missing
    # the training-set size stays: it is what the run was set up with, and tables key runs by it
    rows = pd.concat([rows, size], ignore_index=True)
    table = metric_table(rows, RunIdentity(run, gene_encoding, expression_encoding, seed), "*")
    write_table(table, out)
    return table
