"""``scencode.checkpoints``: what resumes a run, and what it refuses to resume from."""

import dataclasses

import pytest
import torch

from scencode.checkpoints import CheckpointStore, Optimisation, State, run_identity
from scencode.errors import ScencodeError
from scencode.model import CellTransformer
from scencode.pretrain import RunSpec
from scencode.run_config import LoaderConfig, ModelConfig, TrainConfig


def run_spec(tmp_path, name="learned-soft-s0", **train) -> RunSpec:
    model = ModelConfig(30, "learned", "log", d_model=8, n_layers=1, n_heads=2, d_ff=8)
    return RunSpec(name, tmp_path, tmp_path, tmp_path, model, LoaderConfig(), TrainConfig(**train))


def optimisation(spec: RunSpec) -> Optimisation:
    model = CellTransformer(spec.model)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return Optimisation(model, model, optimizer, scheduler, torch.amp.GradScaler(enabled=False))


def test_the_identity_follows_what_shapes_the_run_not_how_it_is_run(tmp_path):
    base = run_identity(run_spec(tmp_path), "v" * 64)
    assert run_identity(run_spec(tmp_path, num_workers=7, max_steps=5), "v" * 64) == base
    assert run_identity(run_spec(tmp_path, lr=1e-3), "v" * 64) != base
    assert run_identity(run_spec(tmp_path), "w" * 64) != base
    assert run_identity(run_spec(tmp_path, name="esm2-soft-s0"), "v" * 64) != base


def test_a_saved_state_resumes_with_its_weights(tmp_path):
    spec = run_spec(tmp_path)
    store = CheckpointStore(tmp_path, spec, "v" * 64, writes=True)
    optim = optimisation(spec)
    assert store.resume(optim) is None  # nothing to resume
    store.save("last.pt", optim, State(step=7, epoch=1))
    fresh = optimisation(spec)
    state = store.resume(fresh)
    assert (state.step, state.epoch) == (7, 1)
    for key, value in optim.model.state_dict().items():
        assert torch.equal(fresh.model.state_dict()[key], value)


def test_another_runs_checkpoint_is_refused_and_changed_settings_start_over(tmp_path):
    spec = run_spec(tmp_path)
    CheckpointStore(tmp_path, spec, "v" * 64, writes=True).save("last.pt", optimisation(spec), State(step=3))
    other = dataclasses.replace(spec, name="esm2-soft-s0")
    with pytest.raises(ScencodeError, match="belongs to configuration 'learned-soft-s0'"):
        CheckpointStore(tmp_path, other, "v" * 64, writes=True).resume(optimisation(other))
    changed = run_spec(tmp_path, lr=1e-2)
    assert CheckpointStore(tmp_path, changed, "v" * 64, writes=True).resume(optimisation(changed)) is None
    assert not (tmp_path / "last.pt").exists() and len(list(tmp_path.glob("last.stale-*.pt"))) == 1  # kept aside
