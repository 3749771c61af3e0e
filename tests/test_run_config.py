"""A run's settings (``scencode.run_config``): one definition the DAG, the plan and the trainer read,
torch-free so that building the DAG does not import torch."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
from helpers import REPO

from scencode import workflow_config
from scencode.errors import ScencodeError
from scencode.plan import job_resources
from scencode.run_config import RunSettings, encoder_catalog, parsed_run_settings, run_settings


def test_the_source_catalog_of_encoders_is_the_live_registry():
    import inspect

    from scencode.encodings import EXPRESSION_ENCODERS, GENE_ENCODERS
    from scencode.run_config import BUILT_IN

    catalog = encoder_catalog()
    for kind, registry in (("gene", GENE_ENCODERS), ("expression", EXPRESSION_ENCODERS)):
        assert set(catalog[kind]) == set(registry)
        for name, cls in registry.items():
            params = inspect.signature(cls.__init__).parameters.values()
            options = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - BUILT_IN
            assert catalog[kind][name].options == options, name
            assert catalog[kind][name].needs_gene_table == getattr(cls, "needs_gene_table", False), name


def test_building_the_demos_dag_does_not_import_torch():
    code = (
        "import sys\n"
        "from snakemake.cli import main\n"
        "sys.argv = ['snakemake', '-n', '--quiet', '--cores', '1']\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "print(sorted(m for m in ('torch', 'numba', 'jax') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def demo_with(**train) -> dict:
    config = copy.deepcopy(workflow_config.load(REPO / "config" / "config.yaml"))
    config["pretrain"]["train"].update(train)
    return config


def pretrain_minutes(config: dict, run: str) -> float:
    return job_resources("pretrain", config, run)["estimate_min"]


def trainer_settings(config: dict, run: str) -> RunSettings:
    """What the trainer parses: the JSON the workflow's pretrain rule passes it."""
    entry, seed, size = workflow_config.configurations(config)[run]
    return RunSettings.from_params(json.loads(json.dumps(run_settings(config, entry, seed, size))), vocab_size=0)


def test_the_plan_prices_the_settings_the_trainer_runs():
    base = demo_with(max_steps=None, epochs=2)
    runs = list(workflow_config.configurations(base))
    first = runs[0]
    # epochs: the trainer runs twice as many, the plan prices twice as long
    doubled = demo_with(max_steps=None, epochs=4)
    assert trainer_settings(doubled, first).train.epochs == 4
    assert pretrain_minutes(doubled, first) == pytest.approx(2 * pretrain_minutes(base, first))
    # max_steps: the trainer stops there whatever the epochs; the plan prices those steps
    capped = demo_with(max_steps=10, epochs=4)
    settings = trainer_settings(capped, first)
    assert settings.train.max_steps == 10
    per_step = pretrain_minutes(capped, first) / 10
    assert pretrain_minutes(demo_with(max_steps=20, epochs=4), first) == pytest.approx(20 * per_step)
    # a configuration's own override reaches the trainer and the plan, for that run only
    override = copy.deepcopy(base)
    override["pretrain"]["configurations"][0]["train"] = {"epochs": 6}
    runs_after = workflow_config.configurations(override)
    mine = [r for r, (entry, _, _) in runs_after.items() if entry is override["pretrain"]["configurations"][0]]
    others = [r for r in runs_after if r not in mine]
    assert mine and others
    assert trainer_settings(override, mine[0]).train.epochs == 6
    assert pretrain_minutes(override, mine[0]) == pytest.approx(3 * pretrain_minutes(base, mine[0]))
    assert pretrain_minutes(override, others[0]) == pytest.approx(pretrain_minutes(base, others[0]))


def test_a_run_with_bad_settings_is_refused_naming_the_key():
    config = demo_with()
    entry, seed, size = next(iter(workflow_config.configurations(config).values()))
    with pytest.raises(ScencodeError, match="unknown TrainConfig setting"):
        parsed_run_settings({**config, "pretrain": {**config["pretrain"], "train": {"epoch": 3}}}, entry, seed, size)
    with pytest.raises(ScencodeError, match="takes no option 'nbins'"):
        parsed_run_settings(
            config, {**entry, "expression": "hard", "model": {"expression_options": {"nbins": 3}}}, seed, size
        )
    with pytest.raises(ScencodeError, match="unknown gene encoding 'word2vec'"):
        parsed_run_settings(config, {**entry, "gene": "word2vec"}, seed, size)
    with pytest.raises(ScencodeError, match="unknown pretrain settings section"):
        RunSettings.from_params({"optimizer": {}})
