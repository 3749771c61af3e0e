"""The config schema's step sections and the settings dataclasses say the same thing: the same keys,
and every bound or choice the schema states is the one the dataclass enforces (the schema refuses a
config before any job runs; the dataclass refuses the same value when a step is called directly)."""

from dataclasses import fields

import pytest
import yaml

from scencode import workflow_config
from scencode.errors import ScencodeError
from scencode.evaluate import EvalParams
from scencode.gene_probes import ProbeParams
from scencode.loader import LoaderConfig
from scencode.model import ModelConfig
from scencode.pretrain import TrainConfig
from scencode.qc import QCParams
from scencode.scib_benchmark import BenchmarkerParams
from scencode.settings import parse
from scencode.tokenize import TokenizeParams

SCHEMA = yaml.safe_load(workflow_config.SCHEMA.read_text())
MODEL_BASE = {"vocab_size": 10, "gene_encoding": "learned", "expression_encoding": "soft"}

# schema section → the dataclass its step parses it into, and the fields the workflow sets itself
SECTIONS = {
    "$defs/model": (ModelConfig, set(MODEL_BASE)),
    "$defs/loader": (LoaderConfig, {"seed"}),  # the configuration's seed
    "$defs/train": (TrainConfig, {"train_cells"}),  # pretrain.train_cells, a section of its own
    "$defs/qc": (QCParams, {"label_key", "batch_key"}),  # the dataset sheet's columns
    "properties/tokenize": (TokenizeParams, set()),
    "properties/evaluate/properties/metrics": (EvalParams, set()),
    "properties/evaluate/properties/scib_benchmarker": (BenchmarkerParams, set()),
    "properties/evaluate/properties/gene_probes": (ProbeParams, set()),
}


# keys of a section that the workflow reads itself and does not pass to the step
WORKFLOW_KEYS = {"properties/evaluate/properties/scib_benchmarker": {"datasets"}}  # which jobs exist


def section(path: str) -> dict:
    node = SCHEMA
    for key in path.split("/"):
        node = node[key]
    return {**node, "properties": {k: v for k, v in node["properties"].items() if k not in WORKFLOW_KEYS.get(path, ())}}


# bounds across fields (d_model divisible by n_heads, min_members ≥ folds) are the dataclass's alone;
# a probe of one field sets the other so that only the probed bound decides
COMPANIONS = {("ModelConfig", "d_model"): {"n_heads": 1}, ("ProbeParams", "min_members"): {"folds": 2}}


def accepts(cls, key, value) -> bool:
    base = {**(MODEL_BASE if cls is ModelConfig else {}), **COMPANIONS.get((cls.__name__, key), {})}
    try:
        parse(cls, {**base, key: value})
    except ScencodeError:
        return False
    return True


def probes(spec: dict):
    """(value, whether the schema allows it) at each bound the schema states."""
    integer = "integer" in (spec.get("type") if isinstance(spec.get("type"), list) else [spec.get("type")])
    step = 1 if integer else 1e-6
    if "minimum" in spec:
        yield spec["minimum"], True
        yield spec["minimum"] - step, False
    if "exclusiveMinimum" in spec:
        yield spec["exclusiveMinimum"], False
        yield spec["exclusiveMinimum"] + step, True
    if "maximum" in spec:
        yield spec["maximum"], True
        yield spec["maximum"] + step, False
    if "exclusiveMaximum" in spec:
        yield spec["exclusiveMaximum"], False
        yield spec["exclusiveMaximum"] - step, True
    for choice in spec.get("enum", []):
        yield choice, True
    if "enum" in spec:
        yield "not-a-choice", False


@pytest.mark.parametrize("path", SECTIONS)
def test_a_schema_section_names_the_dataclass_fields(path):
    cls, set_by_workflow = SECTIONS[path]
    assert set(section(path)["properties"]) == {f.name for f in fields(cls)} - set_by_workflow


@pytest.mark.parametrize("path", SECTIONS)
def test_every_bound_in_the_schema_is_the_dataclass_bound(path):
    cls, _ = SECTIONS[path]
    disagreements = [
        f"{key}={value!r}: schema {'allows' if allowed else 'refuses'} it, {cls.__name__} does not"
        for key, spec in section(path)["properties"].items()
        for value, allowed in probes(spec)
        if accepts(cls, key, value) != allowed
    ]
    assert not disagreements, disagreements


def test_the_probes_see_a_missing_bound():
    """The check can fail: a bound the dataclass does not enforce is reported."""
    assert accepts(TrainConfig, "lr", 0.0) is False
    assert list(probes({"type": "integer", "minimum": 1})) == [(1, True), (0, False)]
