"""``scencode.run_report``: what a finished run reports in model.json and its training log."""

import math

from scencode.formats import read_run_status, read_train_log


def test_a_completed_run_says_how_it_ended_what_to_evaluate_and_what_it_cost(tiny_model):
    status = read_run_status(tiny_model)
    assert status.status == "completed" and status.steps == status.total_steps == 4
    assert status.checkpoint == "best.pt" and status.checkpoint_step == 4
    assert (tiny_model.parent / status.checkpoint).exists()
    assert status.gene_encoding == "learned" and status.expression_encoding == "soft" and status.seed == 3
    cost = status.cost
    assert cost["device_hours_unit"] == "CPU core-hours" and cost["mfu"] is None  # no peak on a CPU
    assert cost["real_tokens"] > 0 and math.isclose(cost["tokens_per_s"], cost["real_tokens"] / cost["wall_seconds"])
    assert set(status.component_rms) == {"start", "end"}


def test_the_training_log_has_a_row_per_logged_step_and_the_validation(tiny_model):
    log = read_train_log(tiny_model.parent / "train_log.parquet")
    # log_every (50) is past the run's four steps: the last step is logged all the same
    assert log.dropna(subset=["train_loss"]).step.tolist() == [4]
    assert log.dropna(subset=["val_loss"]).step.tolist() == [4]
