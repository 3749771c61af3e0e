"""The workflow's config and its dataset sheets, read and checked once for both their readers: the
Snakefile (``snakemake -n`` refuses a bad config before any job) and ``scencode plan`` (which prices
only what the workflow would run). Checks: no key written twice in a YAML file (the second would
silently replace the first), the JSON schemas (config and sheet rows), no dataset listed twice, and
what the DAG needs.

A dataset sheet (``config/datasets/*.tsv``) holds one row per dataset; the config names its sheets
under ``datasets``. Relative sheet paths are found from the working directory, else from the
repository (so ``snakemake --directory /scratch/run`` still finds ``config/datasets/demo.tsv``).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .errors import ScencodeError

REPOSITORY = Path(__file__).resolve().parents[2]
SCHEMA = REPOSITORY / "workflow" / "schemas" / "config.schema.yaml"
SHEET_SCHEMA = REPOSITORY / "workflow" / "schemas" / "datasets.schema.yaml"
QC_PREFIX = "qc_"  # sheet columns that override one QC setting of their dataset
TRAIN_CORPUS = "train"  # the training corpus's name; no dataset may take it
ID_TEST = "train_test"  # the training corpus's held-out test split, scored in distribution; reserved too
# the same cells with the genes held out of training (pretrain.unseen_genes) in the input; reserved too
ID_TEST_UNSEEN = "train_test_unseen"
PRIMARY_ORGANISM = "homo_sapiens"  # the organism models train on (scencode.species)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word; this loader refuses them."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ScencodeError(
                    f"key {key!r} is written twice in one mapping (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1}); the second would silently replace the first"
                )
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


def sheet_paths(config: dict) -> list[Path]:
    """The config's dataset sheets, found from the working directory, else from the repository."""
    names = config["datasets"] if isinstance(config["datasets"], list) else [config["datasets"]]
    paths = []
    for name in names:
        path = Path(name)
        if not path.is_absolute() and not path.exists() and (REPOSITORY / path).exists():
            path = REPOSITORY / path
        paths.append(path)
    return paths


def read_datasets(config: dict) -> dict[str, dict]:
    """Dataset name → its settings ({role, source, label_key, batch_key, n_cells, tissue, qc, ...}),
    from every sheet the config names; a dataset in two rows (of one sheet or two) is an error."""
    datasets: dict[str, dict] = {}
    where: dict[str, str] = {}
    for path in sheet_paths(config):
        for row_number, name, spec in read_sheet(path):
            if name in datasets:
                raise ScencodeError(
                    f"row {row_number}, column dataset: {name!r} is listed twice (first in "
                    f"{where[name]}); each dataset has one row",
                    path,
                )
            datasets[name], where[name] = spec, f"{path}, row {row_number}"
    return datasets


def sheet_schema() -> dict:
    """The sheet's row schema, with a ``qc_<key>`` column for each QC setting (rules from the config
    schema's ``$defs/qc``: a bound is written once)."""
    schema = yaml.safe_load(SHEET_SCHEMA.read_text())
    for key, rule in yaml.safe_load(SCHEMA.read_text())["$defs"]["qc"]["properties"].items():
        kinds = rule.get("type")
        if isinstance(kinds, list):  # an empty cell is the absent value: null is not written
            rule = {**rule, "type": next(k for k in kinds if k != "null")}
        schema["properties"][QC_PREFIX + key] = rule
    return schema


def read_sheet(path: Path):
    """(row number, dataset name, settings) of each row of one sheet, each row checked against the
    sheet schema; errors name the sheet, the row and the column."""
    import jsonschema
    import polars as pl

    schema = sheet_schema()
    columns = schema["properties"]
    try:
        frame = pl.read_csv(path, separator="\t", comment_prefix="#", quote_char=None, infer_schema=False)
    except FileNotFoundError:
        raise ScencodeError("dataset sheet not found", path) from None
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise ScencodeError(f"not a readable dataset sheet ({exc})", path) from None
    _check_line_shape(path)
    unknown = [c for c in frame.columns if c not in columns]
    if unknown:
        raise ScencodeError(f"unknown column(s) {', '.join(map(repr, unknown))} (known: {', '.join(columns)})", path)
    validator = jsonschema.Draft202012Validator(schema)
    for row_number, row in enumerate(frame.iter_rows(named=True), start=1):
        values = {
            c: _cell(text.strip(), columns[c], path, row_number, c)
            for c, text in row.items()
            if text is not None and text.strip()
        }
        error = jsonschema.exceptions.best_match(validator.iter_errors(values))
        if error is not None:
            column = f", column {error.path[0]}" if error.path else ""
            raise ScencodeError(
                f"row {row_number} (dataset {values.get('dataset', '?')}){column}: {error.message}"
                f"{_short_row_hint(path, row_number)}",
                path,
            )
        yield row_number, values["dataset"], _settings(values)


def _line_widths(path: Path) -> tuple[int, list[tuple[int, int]]]:
    """The header's number of tab-separated cells, and (line number, cells) of each data row."""
    text = enumerate(path.read_text().splitlines(), start=1)
    widths = [(n, line.count("\t") + 1) for n, line in text if line.strip() and not line.startswith("#")]
    return (widths[0][1], widths[1:]) if widths else (0, [])


def _check_line_shape(path: Path) -> None:
    """No row has more cells than the header (the reader would drop them without a word)."""
    width, rows = _line_widths(path)
    for n, cells in rows:
        if cells > width:
            raise ScencodeError(f"line {n} has {cells} tab-separated cells, the header {width}", path)


def _short_row_hint(path: Path, row_number: int) -> str:
    """Why a row may be wrong that the schema cannot see: it has fewer cells than the header, as
    each half of a row split by a line break inside a cell has."""
    width, rows = _line_widths(path)
    if row_number <= len(rows) and rows[row_number - 1][1] < width:
        n, cells = rows[row_number - 1]
        return f" (line {n} has {cells} of the header's {width} cells: does a cell above or here hold a line break?)"
    return ""


def _cell(text: str, column: dict, path: Path, row: int, name: str):
    kind = column.get("type")
    try:
        if kind == "integer":
            return int(text)
        if kind == "number":  # "100" stays an int, as YAML reads it
            try:
                return int(text)
            except ValueError:
                return float(text)
        if kind == "object":
            return json.loads(text)
    except ValueError:
        expected = {"integer": "an integer", "number": "a number", "object": "a JSON object"}[str(kind)]
        raise ScencodeError(f"row {row}, column {name}: {text!r} is not {expected}", path) from None
    return text


def _settings(row: dict) -> dict:
    """A sheet row as the workflow's dataset settings."""
    kind, location = row["source"], row.get("source_id")
    source = {"type": kind}
    if kind == "demo":
        source.update(name=location, **({"n_cells": row["n_cells"]} if "n_cells" in row else {}))
    elif kind == "local":
        source["path"] = location
    elif kind == "url":
        source.update(url=location, sha256=row["sha256"])
    else:
        source.update({"dataset_id": location} if location else {"query": row["census_query"]})
    spec = {
        key: row[key]
        for key in ("role", "description", "n_cells", "label_key", "batch_key", "tissue", "organism")
        if key in row
    }
    spec["source"] = source
    qc = {key.removeprefix(QC_PREFIX): value for key, value in row.items() if key.startswith(QC_PREFIX)}
    if qc:
        spec["qc"] = qc
    return spec


TISSUE_MIN_CELLS = 500  # default evaluate.shift_min_cells


def shift_levels(
    datasets: dict[str, dict], measured: dict[str, dict[str, int]] | None = None, min_cells: int = TISSUE_MIN_CELLS
) -> dict[str, str]:
    """Dataset → distribution-shift level: the training corpus's held-out test split is ``id`` (and
    ``unseen_genes`` with the genes held out of training in its input); an
    evaluation dataset is ``near`` when the training data hold its tissue (new batches, seen tissue)
    and ``far`` when they do not; ``species`` when it is of another organism than the training data.
    ``unknown``: it has no tissue, or some training dataset has none
    (it could hold the tissue, so far cannot be claimed).

    A dataset's tissues are its sheet's ``tissue`` where filled in, else ``measured`` (dataset →
    cells per tissue, as QC recorded them from the data's ``tissue_general``): a training tissue
    counts when the training datasets hold at least ``min_cells`` of its cells; an evaluation
    dataset's tissue is the one most of its cells have."""
    measured = measured or {}
    trained: set[str] = set()
    untagged = False
    pooled: dict[str, int] = {}
    for name, spec in datasets.items():
        if spec["role"] != "train":
            continue
        if spec.get("tissue"):
            trained.add(spec["tissue"])
        elif measured.get(name):
            for tissue, cells in measured[name].items():
                pooled[tissue] = pooled.get(tissue, 0) + cells
        else:
            untagged = True
    trained |= {tissue for tissue, cells in pooled.items() if cells >= min_cells}
    levels = {ID_TEST: "id", ID_TEST_UNSEEN: "unseen_genes"}
    for name, spec in datasets.items():
        if spec["role"] == "eval" and organism(spec) != PRIMARY_ORGANISM:
            levels[name] = "species"  # whatever its tissue: the genes themselves are new
        elif spec["role"] == "eval":
            main = spec.get("tissue") or _main_tissue(measured.get(name, {}))
            levels[name] = "near" if main in trained else "unknown" if main is None or untagged else "far"
    return levels


def _main_tissue(cells_per_tissue: dict[str, int]) -> str | None:
    return max(sorted(cells_per_tissue), key=lambda tissue: cells_per_tissue[tissue]) if cells_per_tissue else None


def use_gpus(config: dict) -> bool:
    """Whether GPU jobs ask for a GPU: ``use_gpus`` true or false, or auto (the default): whether
    this machine has CUDA. The SLURM profile sets it to true: jobs run on the cluster's nodes."""
    choice = config.get("use_gpus", "auto")
    if choice == "auto":
        return has_cuda_gpu()
    return choice in (True, "true")


def has_cuda_gpu() -> bool:
    """An NVIDIA GPU this process may use, asked of the driver rather than torch (importing torch
    would cost every ``snakemake -n`` seconds): the driver's device list, else ``nvidia-smi -L``."""
    import os
    import shutil
    import subprocess

    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir():
        return any(gpus.iterdir())
    if shutil.which("nvidia-smi"):
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        return listing.returncode == 0 and "GPU" in listing.stdout
    return False


def size_tag(size: int | float | None) -> str:
    """The run name's training-set size: none for the whole split, ``-n<count>`` or ``-f<fraction>``
    (0.1 → ``-f0p1``: run names hold letters, digits and underscores)."""
    if size is None:
        return ""
    if isinstance(size, int) or float(size).is_integer():
        return f"-n{int(size)}"
    return "-f" + repr(float(size)).replace(".", "p")


def configurations(config: dict) -> dict[str, tuple[dict, int, int | float | None]]:
    """Run name → (configuration entry, seed, training-set size), one per entry, size and seed;
    size None: the whole training split (``pretrain.train_cells``, or the entry's own list)."""
    pretrain = config["pretrain"]
    runs = {}
    for entry in pretrain["configurations"]:
        for size in entry.get("train_cells", pretrain.get("train_cells", ["all"])):
            if isinstance(size, float) and size.is_integer():  # 1.0: one cell, or the whole split?
                raise ScencodeError(
                    f"config: pretrain train_cells {size!r} is ambiguous: write {int(size)} for a count of cells, "
                    "'all' for the whole training split, or a fraction below 1"
                )
            size = None if size == "all" else size
            for seed in entry.get("seeds", pretrain["seeds"]):
                name = f"{entry['gene']}-{entry['expression']}{size_tag(size)}-s{seed}"
                if name in runs:
                    raise ScencodeError(f"config: pretrain.configurations lists {name} twice")
                runs[name] = (entry, seed, size)
    return runs


def check(config: dict, schema: Path = SCHEMA) -> dict[str, dict]:
    """Schema (defaults filled in, as Snakemake's ``validate`` does), dataset sheets, configurations;
    returns the datasets (:func:`read_datasets`)."""
    from snakemake.utils import validate  # a dependency already; its errors name the failing key

    if not schema.exists():
        raise ScencodeError(
            "config schema not found (scencode must be installed from its repository, pip install -e .)", schema
        )
    try:
        validate(config, schema=str(schema))
    except Exception as exc:  # snakemake's WorkflowError: the schema's message names key and value
        raise ScencodeError(f"config does not match its schema: {' '.join(str(exc).split())[:600]}") from None
    datasets = read_datasets(config)
    if not any(spec["role"] == "train" for spec in datasets.values()):
        raise ScencodeError("config: 'datasets' has no dataset with role 'train'")
    for reserved in (TRAIN_CORPUS, ID_TEST, ID_TEST_UNSEEN):
        if reserved in datasets:
            raise ScencodeError(
                f"config: dataset name {reserved!r} is reserved (the training corpus and its held-out test split)"
            )
    for name, spec in datasets.items():
        if spec["role"] == "eval" and not spec.get("label_key"):
            raise ScencodeError(f"config: evaluation dataset {name!r} needs 'label_key'")
    evaluation = sorted(name for name, spec in datasets.items() if spec["role"] == "eval")
    benchmarked = (config["evaluate"].get("scib_benchmarker") or {}).get("datasets") or []
    unknown = [name for name in benchmarked if name not in evaluation]
    if unknown:
        raise ScencodeError(
            f"config: evaluate.scib_benchmarker.datasets names {', '.join(map(repr, unknown))}, not an evaluation "
            f"dataset; the evaluation datasets: {', '.join(evaluation)}"
        )
    _check_organisms(config, datasets)
    _check_reference_expression(config)
    check_models(config)
    return datasets


def organism(spec: dict) -> str:
    """A dataset's organism: its sheet's, else the one models train on."""
    return spec.get("organism") or PRIMARY_ORGANISM


def _check_organisms(config: dict, datasets: dict[str, dict]) -> None:
    """Models train on human cells; another organism is an evaluation dataset whose species the
    config describes (where its proteins and orthologs come from)."""
    described = config.get("species") or {}
    for name, spec in datasets.items():
        kind = organism(spec)
        if kind == PRIMARY_ORGANISM:
            continue
        if spec["role"] == "train":
            raise ScencodeError(
                f"config: training dataset {name!r} is {kind}; models train on {PRIMARY_ORGANISM} "
                "(another organism is an evaluation dataset: the species shift level)"
            )
        if kind not in described:
            raise ScencodeError(
                f"config: dataset {name!r} is {kind}, which config 'species' does not describe "
                f"(described: {', '.join(sorted(described)) or 'none'})"
            )


def _check_reference_expression(config: dict) -> None:
    """The declared reference of the 'reference vs other' tests is a configured expression encoding:
    another name would silently drop those tests from tests.csv (and change every q-value)."""
    reference = config["evaluate"].get("reference_expression", "soft")
    configured = sorted({entry["expression"] for entry in config["pretrain"]["configurations"]})
    if reference not in configured:
        raise ScencodeError(
            f"config: evaluate.reference_expression {reference!r} is not an expression encoding of "
            f"pretrain.configurations ({', '.join(configured)})"
        )


def check_models(config: dict) -> None:
    """Encoding names, their options, the model's shape and every training and loader setting of
    every run, checked when the DAG is built (not after download, QC, ESM-2 and tokenize have run)."""
    from .run_config import parsed_run_settings

    for name, (entry, seed, size) in configurations(config).items():
        try:
            settings = parsed_run_settings(config, entry, seed, size)
        except (ScencodeError, TypeError) as exc:
            raise ScencodeError(f"config: pretrain configuration {name}: {exc}") from None
        gpus, nodes = pretrain_processes(config, entry)
        if settings.train.grad_accum % (gpus * nodes):
            raise ScencodeError(
                f"config: pretrain configuration {name}: train.grad_accum {settings.train.grad_accum} is the "
                f"micro-batches of one optimiser step over all {gpus * nodes} processes (gpus {gpus} × nodes "
                f"{nodes}) and must be a multiple of them"
            )


def pretrain_processes(config: dict, entry: dict) -> tuple[int, int]:
    """GPUs per node and nodes of a configuration's pretraining job: its own, else ``pretrain``'s."""
    pretrain = config["pretrain"]
    return int(entry.get("gpus", pretrain.get("gpus", 1))), int(entry.get("nodes", pretrain.get("nodes", 1)))


def load(path: str | Path) -> dict:
    """Read and check a config file as the workflow does; its ``datasets`` are the sheets' rows."""
    config = read_yaml(path)
    try:
        datasets = check(config)
    except ScencodeError as exc:
        raise exc if exc.path else ScencodeError(str(exc), path) from None
    return {**config, "datasets": datasets}
