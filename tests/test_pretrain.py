import json
import math
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from helpers import mean_masked_mse

from scencode.errors import ScencodeError
from scencode.formats import load_vocab, write_gene_table, write_vocab
from scencode.loader import LoaderConfig
from scencode.model import ModelConfig
from scencode.pretrain import RunSpec, TrainConfig, fit, parameter_groups, setup

SMALL_MODEL = dict(d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.1)
SMALL_LOADER = dict(batch_size=16, context=64, bucket_batches=2, seed=3)
SMALL_TRAIN = dict(
    grad_accum=2,
    max_steps=12,
    warmup_steps=2,
    val_every=4,
    val_cells=100,
    checkpoint_every=3,
    log_every=2,
    num_workers=0,
)


def spec(corpus, vocab, out, name="learned-soft-s3", gene="learned", expression="soft", table=None, **train):
    return RunSpec(
        name,
        corpus,
        vocab,
        out,
        ModelConfig(
            0,
            gene,
            expression,
            **SMALL_MODEL,
            expression_options={"hidden": 16} if expression in ("soft", "continuous") else {},
        ),
        LoaderConfig(**SMALL_LOADER),
        TrainConfig(**{**SMALL_TRAIN, **train}),
        table,
    )


def weights(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture
def esm_table(demo_corpus, tmp_path):
    vocab, _ = load_vocab(demo_corpus[1])
    genes = vocab.gene_id[2:]
    path = tmp_path / "genes.parquet"
    rng = np.random.default_rng(0)
    write_gene_table(pd.DataFrame({"gene_id": genes, "embedding": list(rng.normal(size=(len(genes), 8)))}), path, {})
    return path


def test_training_writes_checkpoints_and_a_log(demo_corpus, tmp_path):
    corpus, vocab = demo_corpus
    state = fit(setup(spec(corpus, vocab, tmp_path)))
    assert state.step == 12 and math.isfinite(state.best_val)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["name"] == "learned-soft-s3" and "blocks.0.qkv.weight" in best["model"]
    logged = pq.read_table(tmp_path / "train_log.parquet").to_pandas()
    assert set(logged.columns) == {
        "step",
        "epoch",
        "lr",
        "train_loss",
        "val_loss",
        "grad_norm",
        "tokens_per_s",
        "cells_per_s",
    }
    val = logged.val_loss.dropna()
    assert len(val) == 3 and val.iloc[-1] < val.iloc[0]
    status = json.loads((tmp_path / "model.json").read_text())
    assert status["status"] == "completed" and status["checkpoint"] == "best.pt" and status["steps"] == 12


def test_model_json_says_what_training_cost(demo_corpus, tmp_path):
    from scencode.reconstruction import cost_rows

    corpus, vocab = demo_corpus
    fit(setup(spec(corpus, vocab, tmp_path, max_steps=4)))
    cost = json.loads((tmp_path / "model.json").read_text())["cost"]
    assert cost["wall_seconds"] > 0 and cost["devices"] == 1 and cost["device"].startswith("cpu")
    assert cost["device_hours_unit"] == "CPU core-hours" and cost["mfu"] is None
    assert 0 < cost["cells"] <= 4 * 2 * SMALL_LOADER["batch_size"] < cost["real_tokens"]  # 4 steps of 2 micro-batches
    assert cost["tokens_per_s"] == pytest.approx(cost["real_tokens"] / cost["wall_seconds"])
    rows = {r["metric"]: r for r in cost_rows(cost)}
    assert rows["wall_hours"]["value"] == pytest.approx(cost["wall_seconds"] / 3600)
    assert math.isnan(rows["mfu"]["value"]) and rows["mfu"]["note"] == "no MFU: cpu (no peak defined)"


def run_cli(out, corpus, vocab, max_steps):
    params = {
        "model": {**SMALL_MODEL, "gene_encoding": "learned", "expression_encoding": "hard"},
        "loader": SMALL_LOADER,
        "train": {**SMALL_TRAIN, "max_steps": max_steps, "checkpoint_every": 1000},
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scencode",
            "pretrain",
            "--name",
            "learned-hard-s3",
            "--corpus",
            str(corpus),
            "--vocab",
            str(vocab),
            "--out",
            str(out),
            "--threads",
            "1",
            "--params",
            json.dumps(params),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )


def test_killed_run_resumes_to_identical_weights(demo_corpus, tmp_path):
    corpus, vocab = demo_corpus
    whole = run_cli(tmp_path / "whole", corpus, vocab, 40)
    assert whole.wait(timeout=300) == 0, whole.stderr.read()

    killed = run_cli(tmp_path / "killed", corpus, vocab, 40)
    for line in killed.stderr:  # kill it once training is under way
        if "step 6 loss" in line:
            killed.send_signal(signal.SIGTERM)
            break
    assert killed.wait(timeout=300) == 143
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["state"]["step"] < 40
    resumed = run_cli(tmp_path / "killed", corpus, vocab, 40)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a, b = weights(tmp_path / "whole" / "last.pt"), weights(tmp_path / "killed" / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = pq.read_table(tmp_path / "whole" / "train_log.parquet").to_pandas()
    lb = pq.read_table(tmp_path / "killed" / "train_log.parquet").to_pandas()
    pd.testing.assert_series_equal(la.train_loss, lb.train_loss)


def test_checkpoint_of_another_configuration_is_refused(demo_corpus, tmp_path):
    corpus, vocab = demo_corpus
    fit(setup(spec(corpus, vocab, tmp_path, max_steps=2)))
    with pytest.raises(ScencodeError, match="belongs to configuration 'learned-soft-s3', not 'learned-log-s3'"):
        fit(setup(spec(corpus, vocab, tmp_path, name="learned-log-s3", expression="log")))


def test_changed_settings_start_over_and_keep_the_old_state(demo_corpus, tmp_path):
    corpus, vocab = demo_corpus
    fit(setup(spec(corpus, vocab, tmp_path, max_steps=2)))
    state = fit(setup(spec(corpus, vocab, tmp_path, max_steps=3, lr=1e-2)))
    assert state.step == 3 and list(tmp_path.glob("last.stale-*.pt"))


def test_a_checkpoint_of_another_model_version_restarts_training_and_is_refused_by_embed(
    demo_corpus, esm_table, tmp_path, caplog
):
    """A checkpoint written before frozen tables were standardised has no centre/scale buffers: it
    must neither resume nor be evaluated with a map the model was not trained with."""
    from scencode.model import load_model

    corpus, vocab = demo_corpus

    def esm2_run(steps):
        return spec(
            corpus, vocab, tmp_path, "esm2-log-s3", "esm2", "log", esm_table, missing_genes="zero", max_steps=steps
        )

    fit(setup(esm2_run(2)))
    for name in ("last.pt", "best.pt"):
        old = torch.load(tmp_path / name, weights_only=True)
        del old["model"]["genes.centre"], old["model"]["genes.scale"]
        torch.save(old, tmp_path / name)
    with pytest.raises(ScencodeError, match="does not fit this version of the model.*genes.centre.*forcerun pretrain"):
        load_model(tmp_path / "best.pt", torch.device("cpu"))
    state = fit(setup(esm2_run(3)))
    assert state.step == 3 and list(tmp_path.glob("last.stale-*.pt")) and "another version of the model" in caplog.text


def test_corrupted_checkpoint_is_set_aside_and_training_starts_over(demo_corpus, tmp_path, caplog):
    """A damaged last.pt would fail every retry the same way: it is kept aside, named, and the run
    starts from step 0 instead."""
    corpus, vocab = demo_corpus
    (tmp_path / "last.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    state = fit(setup(spec(corpus, vocab, tmp_path, max_steps=2)))
    assert state.step == 2
    corrupt = list(tmp_path.glob("last.corrupt-*.pt"))
    assert len(corrupt) == 1 and corrupt[0].read_bytes().startswith(b"PK\x03\x04 not really")
    assert "corrupted checkpoint" in caplog.text and corrupt[0].name in caplog.text


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(demo_corpus, tmp_path, monkeypatch):
    corpus, vocab = demo_corpus
    run = setup(spec(corpus, vocab, tmp_path, max_steps=10))
    _explode_after(run, monkeypatch, 14)  # micro-batch 15 = step 7
    with pytest.raises(ScencodeError, match="loss became nan at step 7"):
        fit(run)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["state"]["step"] == 6  # the checkpoint of step 6, untouched
    logged = pq.read_table(tmp_path / "train_log.parquet").to_pandas()
    assert math.isnan(logged.train_loss.iloc[-1])  # the divergence is recorded


def _explode_after(run, monkeypatch, micro_batches):
    """Training forward passes after the first ``micro_batches`` give NaN (validation is untouched)."""
    real, calls = run.model.forward, []

    def explodes(batch):
        out = real(batch)
        if not run.model.training:
            return out
        calls.append(1)
        pred, sse, n = out
        return (pred * float("nan"), sse * float("nan"), n) if len(calls) > micro_batches else out

    monkeypatch.setattr(run.model, "forward", explodes)


@pytest.mark.parametrize("explode_after, has_best", [(2, False), (10, True)])
def test_divergence_with_finish_ends_the_run_and_says_which_model_is_usable(
    demo_corpus, tmp_path, monkeypatch, explode_after, has_best
):
    corpus, vocab = demo_corpus
    (tmp_path / "best.pt").write_bytes(b"an earlier run's model")  # must not pass for this run's
    run = setup(spec(corpus, vocab, tmp_path, on_nonfinite="finish"))
    _explode_after(run, monkeypatch, explode_after)  # micro-batch 3 = step 1; 11 = step 5 (after val at 4)
    fit(run)
    status = json.loads((tmp_path / "model.json").read_text())
    assert status["status"] == "diverged" and f"diverged at step {explode_after // 2}" in status["note"]
    assert (status["checkpoint"] == "best.pt") == has_best == (tmp_path / "best.pt").exists()
    assert list(tmp_path.glob("best.stale-*.pt"))
    if has_best:
        assert (
            weights(tmp_path / "best.pt") and torch.load(tmp_path / "best.pt", weights_only=True)["state"]["step"] == 4
        )
    else:
        assert "no checkpoint" in status["note"]


def test_shards_of_another_vocabulary_are_refused(demo_corpus, tmp_path):
    corpus, vocab = demo_corpus
    table, _ = load_vocab(vocab)
    other = tmp_path / "other_vocab.parquet"
    write_vocab(table.iloc[:-1], other)
    with pytest.raises(ScencodeError, match="another vocabulary"):
        setup(spec(corpus, other, tmp_path / "run"))


def test_esm2_needs_a_table_covering_the_vocabulary(demo_corpus, esm_table, tmp_path):
    corpus, vocab = demo_corpus
    with pytest.raises(ScencodeError, match="needs a gene embedding table"):
        setup(spec(corpus, vocab, tmp_path / "a", name="esm2-soft-s3", gene="esm2"))
    ids = pq.read_table(esm_table).to_pandas()
    partial = tmp_path / "partial.parquet"
    write_gene_table(ids.iloc[10:], partial, {})
    with pytest.raises(ScencodeError, match="10 of .* vocabulary genes have no embedding"):
        setup(spec(corpus, vocab, tmp_path / "b", name="esm2-soft-s3", gene="esm2", table=partial))
    state = fit(
        setup(
            spec(
                corpus,
                vocab,
                tmp_path / "c",
                name="esm2-soft-s3",
                gene="esm2",
                table=partial,
                missing_genes="zero",
                max_steps=2,
            )
        )
    )
    assert state.step == 2
    trained = setup(
        spec(
            corpus,
            vocab,
            tmp_path / "d",
            name="random_frozen-log-s3",
            gene="random_frozen",
            expression="log",
            table=esm_table,
            max_steps=2,
        )
    )
    assert trained.model.genes.table.shape[1] == 8


def test_unknown_encoder_from_the_cli_lists_the_registered_ones(demo_corpus, tmp_path):
    corpus, vocab = demo_corpus
    params = {"model": {"gene_encoding": "learned", "expression_encoding": "quantum"}}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scencode",
            "pretrain",
            "--name",
            "x-y-s0",
            "--corpus",
            str(corpus),
            "--vocab",
            str(vocab),
            "--out",
            str(tmp_path),
            "--params",
            json.dumps(params),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "unknown expression encoding 'quantum'; registered:" in result.stderr
    assert not (tmp_path / "best.pt").exists()


def test_a_learning_rate_far_too_high_diverges_without_a_checkpoint(demo_corpus, tmp_path):
    corpus, vocab = demo_corpus
    fit(setup(spec(corpus, vocab, tmp_path, lr=1e30, warmup_steps=1, on_nonfinite="finish")))
    status = json.loads((tmp_path / "model.json").read_text())
    assert status["status"] == "diverged" and status["checkpoint"] is None and status["steps"] < 4
    assert not (tmp_path / "best.pt").exists()


def _two_batches_of_different_lengths(corpus):
    from scencode.loader import ShardBatches

    cfg = LoaderConfig(**{**SMALL_LOADER, "batch_size": 8, "context": 4096, "layout": "padded"})
    batches = list(ShardBatches(corpus, "train", cfg))
    batches.sort(key=lambda b: b.valid.shape[1])
    short, long = batches[0], batches[-1]
    assert short.valid.shape[1] < long.valid.shape[1] // 2  # cells of very different lengths
    return short, long


def _combined(a, b):
    from scencode.model import Batch

    width = max(a.valid.shape[1], b.valid.shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731 (zeros = padding)
    return Batch(
        **{
            k: torch.cat([pad(getattr(a, k)), pad(getattr(b, k))])
            for k in ("gene_ids", "counts", "xnorm", "masked", "valid")
        }
    )


def test_an_accumulated_step_has_the_gradient_of_the_combined_batch(demo_corpus, tmp_path):
    """One objective whatever the batching: every masked token weighs the same."""
    from scencode.pretrain import accumulate_gradients

    corpus, vocab = demo_corpus
    run = setup(spec(corpus, vocab, tmp_path, grad_accum=2))
    model = run.model
    for module in model.modules():  # no dropout: the two computations see the same network
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    short, long = _two_batches_of_different_lengths(corpus)
    assert accumulate_gradients(run, [short, long])
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    mean_masked_mse(model, _combined(short, long)).backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(grads[name], p.grad, atol=1e-5, rtol=1e-4), name
    # the old weighting (mean of per-micro-batch means) differs: the test can tell them apart
    model.zero_grad(set_to_none=True)
    ((mean_masked_mse(model, short) + mean_masked_mse(model, long)) / 2).backward()
    assert not torch.allclose(grads["head.2.bias"], model.head[2].bias.grad, atol=1e-5)


def test_no_gradient_crosses_an_epoch_boundary(demo_corpus, tmp_path, monkeypatch):
    from scencode import pretrain
    from scencode.loader import ShardBatches

    corpus, vocab = demo_corpus
    n_batches = sum(1 for _ in ShardBatches(corpus, "train", LoaderConfig(**SMALL_LOADER)))
    accum = next(k for k in range(3, 12) if n_batches % k)  # an epoch that ends mid-step
    run = setup(spec(corpus, vocab, tmp_path, grad_accum=accum, max_steps=None, epochs=2, val_every=1000))
    steps, real = [], pretrain.train_step

    def checked(run, micro_batches):
        assert all(p.grad is None for p in run.model.parameters())  # nothing left from before
        steps.append((run.state.epoch, len(micro_batches)))
        return real(run, micro_batches)

    monkeypatch.setattr(pretrain, "train_step", checked)
    state = fit(run)
    per_epoch = {e: [n for ep, n in steps if ep == e] for e in (0, 1)}
    assert all(per_epoch.values())
    for sizes in per_epoch.values():  # full steps, then one partial step with the leftovers
        assert all(n == accum for n in sizes[:-1]) and sum(sizes) == n_batches
    assert per_epoch[0][-1] == n_batches % accum  # the partial step: the leftovers, not carried over
    assert state.step == len(steps)


def test_the_evaluated_checkpoint_is_the_best_validation_including_the_last_step(demo_corpus, tmp_path):
    corpus, vocab = demo_corpus
    fit(setup(spec(corpus, vocab, tmp_path, max_steps=10, val_every=4, lr=3e-3)))
    logged = pq.read_table(tmp_path / "train_log.parquet").to_pandas()
    val = logged.dropna(subset=["val_loss"])
    assert val.step.tolist() == [4, 8, 10]  # the final step is always validated
    status = json.loads((tmp_path / "model.json").read_text())
    best = val.loc[val.val_loss.idxmin()]
    assert status["checkpoint_step"] == int(best.step) == torch.load(tmp_path / "best.pt", weights_only=True)["step"]
    assert status["final_val_loss"] == pytest.approx(val.val_loss.iloc[-1])
    assert status["still_improving"] == (int(best.step) == 10)
    assert status["gene_encoding"] == "learned" and status["expression_encoding"] == "soft"
    assert set(status["component_rms"]) == {"start", "end"}
    assert status["component_rms"]["start"]["gene"] == pytest.approx(1.0, rel=0.05)
    assert status["component_rms"]["start"]["expression"] == pytest.approx(1.0, rel=0.05)


def test_settings_that_cannot_do_what_they_say_are_reported_with_numbers(demo_corpus, tmp_path):
    # the paper's scale: ≈10M cells / (512 × 32) × 3 epochs ≈ 1,830 steps
    warnings = TrainConfig(warmup_steps=2000, val_every=500, patience=100).schedule_warnings(1830)
    assert any("warmup_steps 2000 ≥ total steps 1830" in w and "never decays" in w for w in warnings)
    assert any("early stopping cannot fire" in w for w in warnings)
    assert TrainConfig(warmup_steps=10, val_every=50, patience=2).schedule_warnings(1000) == []
    corpus, vocab = demo_corpus
    fit(setup(spec(corpus, vocab, tmp_path, max_steps=4, warmup_steps=10, val_every=20)))
    status = json.loads((tmp_path / "model.json").read_text())
    assert any("warmup_steps 10 ≥ total steps 4" in w for w in status["warnings"])
    assert any("val_every 20 > total steps 4" in w for w in status["warnings"])


@pytest.mark.parametrize(
    "key, value",
    [
        ("precision", "fp8"),
        ("grad_accum", 0),
        ("lr", -1.0),
        ("max_steps", 0),
        ("on_nonfinite", "ignore"),
        ("betas", (0.9, 1.5)),
    ],
)
def test_invalid_training_settings_are_refused_naming_the_key(key, value):
    with pytest.raises(ScencodeError, match=f"train.{key}"):
        TrainConfig(**{key: value}).validate()


def test_weight_decay_falls_on_weight_matrices_only():
    from scencode.model import CellTransformer

    model = CellTransformer(ModelConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, d_ff=32))
    decayed, kept = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.1 and kept["weight_decay"] == 0.0
    assert decayed["params"] and all(p.dim() == 2 for p in decayed["params"])
    kept_names = [names[id(p)] for p in kept["params"]]
    assert kept_names and all(model.get_parameter(n).dim() == 1 for n in kept_names)
    assert {"blocks.0.ln1.weight", "ln_f.weight", "blocks.0.qkv.bias", "mask_vector"} <= set(kept_names)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(decayed["params"]) + len(kept["params"]) == len(trainable)


def test_a_stop_signal_checkpoints_exits_143_and_the_rerun_resumes(demo_corpus, tmp_path):
    """SLURM's preemption or time limit (SIGTERM, SIGUSR1): the step under way finishes, last.pt is
    written, the job exits 143 as every stopped step does (one path: the CLI's), and a rerun resumes."""
    import json
    import signal
    import subprocess
    import sys
    import time

    corpus, vocab = demo_corpus
    params = {
        "model": {**SMALL_MODEL, "gene_encoding": "learned", "expression_encoding": "log"},
        "loader": SMALL_LOADER,
        "train": {**SMALL_TRAIN, "max_steps": 100_000, "checkpoint_every": 100_000, "val_every": 0, "log_every": 1},
    }
    command = [sys.executable, "-m", "scencode", "pretrain", "--name", "learned-log-s3", "--corpus", str(corpus)]
    command += ["--vocab", str(vocab), "--threads", "1", "--params", json.dumps(params), "--out", str(tmp_path / "m")]
    job = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    seen = ""
    while "step 2" not in seen and time.monotonic() < deadline:  # training is under way
        seen += job.stderr.readline()
    job.send_signal(signal.SIGUSR1)
    _, rest = job.communicate(timeout=120)
    assert job.returncode == 143, seen + rest
    assert "stopped by SIGUSR1 at step" in rest and "last.pt saved, rerun to resume" in rest
    stopped_at = torch.load(tmp_path / "m" / "last.pt", weights_only=True)["step"]
    assert stopped_at >= 2
    params["train"]["max_steps"] = stopped_at + 2
    command[command.index("--params") + 1] = json.dumps(params)
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resumed learned-log-s3 at step {stopped_at}" in again.stderr


def test_a_rank_configuration_trains_on_the_corpus_medians_and_keeps_them_in_its_checkpoint(demo_corpus, tmp_path):
    from dataclasses import replace

    from scencode.corpus_stats import gene_medians_run, read_gene_medians
    from scencode.model import load_model

    corpus, vocab = demo_corpus
    medians = tmp_path / "medians.parquet"
    gene_medians_run(corpus, vocab, medians)
    rank = spec(corpus, vocab, tmp_path / "m", name="learned-rank-s3", expression="rank", max_steps=4)
    with pytest.raises(ScencodeError, match="pass --gene-medians"):
        setup(rank)
    fit(setup(replace(rank, gene_medians=medians)))
    model, _ = load_model(tmp_path / "m" / "best.pt", torch.device("cpu"))  # as embed and reconstruction load it
    expected = torch.from_numpy(read_gene_medians(medians, load_vocab(vocab)[1])).float()
    assert torch.equal(model.expression.medians, expected) and not torch.equal(expected, torch.ones_like(expected))


def test_a_stop_signal_to_every_process_of_the_job_still_checkpoints(demo_corpus, tmp_path):
    """SLURM signals every process of a job, DataLoader workers included: a worker killed by SIGTERM
    made the trainer fail ('DataLoader worker exited unexpectedly', exit 1, no last.pt); the workers
    leave the signal to the trainer, which finishes its step, checkpoints and exits 143."""
    import os
    import time

    corpus, vocab = demo_corpus
    params = {
        "model": {**SMALL_MODEL, "gene_encoding": "learned", "expression_encoding": "log"},
        "loader": SMALL_LOADER,
        "train": {**SMALL_TRAIN, "max_steps": 100_000, "checkpoint_every": 100_000, "val_every": 0, "log_every": 1},
    }
    params["train"]["num_workers"] = 2
    command = [sys.executable, "-m", "scencode", "pretrain", "--name", "learned-log-s3", "--corpus", str(corpus)]
    command += ["--vocab", str(vocab), "--threads", "1", "--params", json.dumps(params), "--out", str(tmp_path / "m")]
    job = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen, deadline = "", time.monotonic() + 120
    while "step 3 loss" not in seen and time.monotonic() < deadline:
        seen += job.stderr.readline()
    os.killpg(job.pid, signal.SIGTERM)  # the trainer and its two workers, as SLURM does
    _, rest = job.communicate(timeout=120)
    assert job.returncode == 143 and "last.pt saved, rerun to resume" in rest, seen + rest
    assert torch.load(tmp_path / "m" / "last.pt", weights_only=True)["step"] >= 3
