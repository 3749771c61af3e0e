"""The workflow's config, read and checked once for both its readers: the Snakefile (``snakemake
-n`` refuses a bad config before any job) and ``scencode plan`` (which prices only what the
workflow would run). Checks: no key written twice in a YAML file (the second would silently replace
the first: a dataset listed as train, then as eval), the JSON schema, and what the DAG needs.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .errors import ScencodeError

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
TRAIN_CORPUS = "train"  # the training corpus's name; no dataset may take it


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word; this loader refuses them."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ScencodeError(f"key {key!r} is written twice in one mapping (lines {seen[key] + 1} and "
                                    f"{key_node.start_mark.line + 1}); the second would silently replace the first")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict:
    """A YAML config file; a key repeated within one mapping is an error naming the file and lines."""
    path = Path(path)
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except ScencodeError as exc:
        raise ScencodeError(str(exc), path) from None
    except (OSError, yaml.YAMLError) as exc:
        raise ScencodeError(f"not a readable config ({exc})", path) from None


def configurations(config: dict) -> dict[str, tuple[dict, int]]:
    """Run name → (configuration entry, seed), one per entry and seed."""
    pretrain = config["pretrain"]
    runs = {}
    for entry in pretrain["configurations"]:
        for seed in entry.get("seeds", pretrain["seeds"]):
            name = f"{entry['gene']}-{entry['expression']}-s{seed}"
            if name in runs:
                raise ScencodeError(f"config: pretrain.configurations lists {name} twice")
            runs[name] = (entry, seed)
    return runs


def model_settings(config: dict, entry: dict) -> dict:
    """A configuration's model settings: the shared ones, its overrides, its encodings."""
    model = {**config["pretrain"]["model"], **entry.get("model", {})}
    model.update(gene_encoding=entry["gene"], expression_encoding=entry["expression"])
    return model


def check(config: dict, schema: Path = SCHEMA) -> None:
    """Schema (defaults filled in, as Snakemake's ``validate`` does), datasets, configurations."""
    from snakemake.utils import validate  # a dependency already; its errors name the failing key

    if not schema.exists():
        raise ScencodeError("config schema not found (scencode must be installed from its repository, "
                            "pip install -e .)", schema)
    try:
        validate(config, schema=str(schema))
    except Exception as exc:  # snakemake's WorkflowError: the schema's message names key and value
        raise ScencodeError(f"config does not match its schema: {' '.join(str(exc).split())[:600]}") from None
    datasets = config["datasets"]
    if not any(spec["role"] == "train" for spec in datasets.values()):
        raise ScencodeError("config: 'datasets' has no dataset with role 'train'")
    if TRAIN_CORPUS in datasets:
        raise ScencodeError(f"config: dataset name {TRAIN_CORPUS!r} is reserved for the training corpus")
    for name, spec in datasets.items():
        if spec["role"] == "eval" and not spec.get("label_key"):
            raise ScencodeError(f"config: evaluation dataset {name!r} needs 'label_key'")
    _check_models(config)


def _check_models(config: dict) -> None:
    """Encoding names, their options and the model's shape, checked when the DAG is built (not
    after download, QC, ESM-2 and tokenize have run)."""
    from .model import ModelConfig

    for name, (entry, _) in configurations(config).items():
        try:
            ModelConfig(vocab_size=1, **model_settings(config, entry)).validate()
        except (ScencodeError, TypeError) as exc:
            raise ScencodeError(f"config: pretrain configuration {name}: {exc}") from None


def load(path: str | Path) -> dict:
    """Read and check a config file as the workflow does."""
    config = read_yaml(path)
    try:
        check(config)
    except ScencodeError as exc:
        raise ScencodeError(str(exc), path) from None
    return config
