"""``scencode <step>``: one subcommand per workflow step, a dispatcher only.

Each step is a function of a stage module (:data:`STEPS`); its flags are the function's parameters,
so every step follows one convention: inputs and outputs are named flags (``--out`` for the main
output), a settings dataclass arrives as ``--params`` JSON (a rule's slice of config, so a changed
setting reruns exactly the jobs that read it), lists take several values, ``dict``/``list[dict]``
parameters take JSON. Only the chosen step's module is imported (torch only where a step needs it).
"""

from __future__ import annotations

import argparse
import collections.abc
import contextlib
import dataclasses
import importlib
import inspect
import json
import logging
import signal
import sys
import traceback
import types
import typing
from pathlib import Path

from .atomic import TERMINATED_EXIT, Output, Terminated, check_writable, raise_terminated, stop_signal
from .errors import ScencodeError
from .settings import parse

# step → (module, function, help)
STEPS = {
    "gene-table": ("genes", "run", "build the gene table (Ensembl ids, symbols) used by QC"),
    "species": (
        "species",
        "run",
        "another organism's gene table, proteins and one-to-one orthologs to human (simulated for the demo)",
    ),
    "download": ("download", "run", "fetch one dataset to an h5ad"),
    "qc": ("qc", "run", "filter cells and genes, harmonise gene ids, check raw counts"),
    "leakage": ("leakage", "run", "audit training vs evaluation datasets for shared data"),
    "vocab": ("vocab", "run", "build the shared gene vocabulary"),
    "tokenize": ("tokenize", "run", "write a corpus of Parquet token shards"),
    "check-shards": ("shards", "check", "verify a corpus against its manifest"),
    "corpus-stats": (
        "corpus_stats",
        "run",
        "cells, genes per cell, tokens after the context cap and vocabulary coverage of token corpora",
    ),
    "gene-medians": (
        "corpus_stats",
        "gene_medians_run",
        "per-gene non-zero medians of the training corpus (Geneformer's normalisation; the rank encoding)",
    ),
    "unseen-genes": (
        "unseen_genes",
        "run",
        "draw the genes held out of every training cell (pretrain.unseen_genes), stratified by expression",
    ),
    "proteins": ("esm.proteins", "run", "fetch a peptide FASTA (Ensembl pep.all, or the demo's)"),
    "esm-tiny": ("esm.embed", "tiny", "save a randomly initialised tiny ESM-2 (demo and tests)"),
    "esm-embed": ("esm.embed", "run", "ESM-2 gene embeddings from a peptide FASTA"),
    "esm-import": ("esm.gene_tables", "import_run", "import a published gene/protein embedding table"),
    "esm-coverage": ("esm.gene_tables", "coverage", "which dataset genes have a protein embedding"),
    "pretrain": ("pretrain", "run", "pretrain one encoding configuration (resumes from last.pt)"),
    "embed": ("embed", "run", "cell embeddings of a model on an evaluation corpus, with the context diagnostic"),
    "reconstruction": ("reconstruction", "run", "minimum training and held-out test masked MSE of a model"),
    "baseline": ("baselines", "run", "a baseline embedding (pca, scvi or random) of an evaluation dataset"),
    "evaluate": ("evaluate", "run", "scIB, classification and reconstruction metrics of one embedding"),
    "scib-benchmark": (
        "scib_benchmark",
        "run",
        "scib-metrics' own default set and aggregate, every embedding of one dataset",
    ),
    "gene-probes": (
        "gene_probes",
        "run",
        "probe what each run's gene embeddings learned (HGNC families, protein length, chromosome)",
    ),
    "gene-task": (
        "gene_tasks",
        "run",
        "download one of the field's gene tasks (Geneformer's labels) from its commit-pinned URL",
    ),
    "tables": ("tables", "run", "metrics.csv, summary.csv and tests.csv from metric tables"),
    "figures": ("figures", "run", "the study's figures from the tables"),
    "provenance": ("provenance", "run", "what produced the results: versions, commit, config hash, hardware"),
    "batch": ("cli", "batch", "several steps in one process, each with its own log (jobs_per_run: the CPU demo)"),
    "plan": (
        "plan",
        "run",
        "what a configured run costs (GPU-/CPU-hours, memory, disk, wall time), before any job is submitted",
    ),
}


def step_function(step: str):
    module, function, _ = STEPS[step]
    return getattr(importlib.import_module(f"{__package__}.{module}"), function)


SEQUENCES = (list, tuple, collections.abc.Sequence)  # flags that take several values


def _unwrap_optional(hint):
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {text[:80]}") from None


def add_arguments(parser: argparse.ArgumentParser, function) -> dict:
    """Flags from the function's signature; returns the settings dataclasses to build after parsing."""
    hints = typing.get_type_hints(function)
    settings = {}
    for name, param in inspect.signature(function).parameters.items():
        hint = _unwrap_optional(hints.get(name, str))
        flag = "--" + name.replace("_", "-")
        kwargs = {"dest": name, "required": param.default is inspect.Parameter.empty}
        if not kwargs["required"]:
            kwargs["default"] = param.default
        origin = typing.get_origin(hint)
        if hint is bool:
            kwargs = {"dest": name, "action": "store_true"}
        elif dataclasses.is_dataclass(hint):  # settings: every key has a default
            settings[name] = hint
            kwargs.update(
                type=_json, required=False, default=None, help=f"{getattr(hint, '__name__', hint)} settings as JSON"
            )
        elif hint is dict or origin is dict or (origin in SEQUENCES and typing.get_args(hint)[0] in (dict,)):
            kwargs.update(type=_json, help="JSON")
        elif origin in SEQUENCES:
            kwargs.update(nargs="+" if kwargs["required"] else "*", type=typing.get_args(hint)[0])
        elif origin is typing.Literal:
            kwargs.update(choices=typing.get_args(hint))
        else:
            kwargs["type"] = hint
        parser.add_argument(flag, **kwargs)  # type: ignore[arg-type]  # argparse's stubs type each keyword alone
    return settings


def build_parser(step: str | None = None) -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="scencode", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    settings = {}
    for name, (_, _, help_text) in STEPS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == step:  # its flags from the function's signature, what it does from its docstring
            function = step_function(name)
            p.description = f"{help_text}\n\n{inspect.getdoc(function) or ''}"
            p.formatter_class = argparse.RawDescriptionHelpFormatter
            settings = add_arguments(p, function)
    return parser, settings


def step_flags(step: str) -> set[str]:
    """The flags ``scencode <step>`` takes (``--help`` among them)."""
    parser = argparse.ArgumentParser(add_help=True)
    add_arguments(parser, step_function(step))
    return {flag for action in parser._actions for flag in action.option_strings}


def check_outputs(function, args: dict) -> None:
    """Every output the step will write can be written: refused now, not after the computation."""
    for name, hint in typing.get_type_hints(function, include_extras=True).items():
        marker = next(
            (
                m
                for h in (hint, *typing.get_args(hint))
                for m in getattr(h, "__metadata__", ())
                if isinstance(m, Output)
            ),
            None,
        )
        if marker is not None and args.get(name) is not None:
            check_writable(args[name], folder=marker.folder)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    argv = sys.argv[1:] if argv is None else list(argv)
    step = next((a for a in argv if not a.startswith("-")), None)
    parser, settings = build_parser(step if step in STEPS else None)
    args = vars(parser.parse_args(argv))
    step = args.pop("step")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, raise_terminated)
    try:
        for name, cls in settings.items():
            args[name] = parse(cls, args[name])
        function = step_function(step)
        check_outputs(function, args)
        function(**args)
        if stop_signal() is not None:  # raised where Python ignores exceptions (a finaliser): stop all the same
            raise Terminated(stop_signal())
    except ScencodeError as exc:
        print(f"scencode {step}: error: {exc}", file=sys.stderr)
        return 1
    except Terminated as exc:
        print(f"scencode {step}: stopped by {exc}; no partial output was kept", file=sys.stderr)
        return TERMINATED_EXIT
    return 0


def batch(jobs: list[dict]) -> None:
    """Run ``jobs`` (each ``{"argv": [step, flags…], "log": path}``) one after another in this process,
    each step's output and log in its own log file, as if each were its own job. A CPU run whose
    steps spend longer importing scanpy, scikit-learn and torch than computing (the demo's scoring)
    pays the imports once per batch. Stops at the first step that fails, naming its log."""
    checked = [_batch_job(job, i) for i, job in enumerate(jobs, 1)]
    root = logging.getLogger()
    for i, (argv, log_path) in enumerate(checked, 1):
        with log_path.open("w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            handlers, root.handlers = root.handlers, [logging.StreamHandler(log)]
            root.handlers[0].setFormatter(logging.Formatter(LOG_FORMAT))
            try:
                code = main(argv)
            except Exception:  # a step's own failure, not the batch's: its traceback goes to its log
                traceback.print_exc()
                code = 1
            finally:
                root.handlers = handlers
        if code == TERMINATED_EXIT:
            raise Terminated(stop_signal())
        if code:
            raise ScencodeError(f"step {i} of {len(checked)} ({' '.join(argv[:1])}) failed; its log: {log_path}")


def _batch_job(job, i: int) -> tuple[list[str], Path]:
    argv, log_path = (job.get("argv"), job.get("log")) if isinstance(job, dict) else (None, None)
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv) and isinstance(log_path, str)):
        raise ScencodeError(f'batch job {i}: expected {{"argv": [step, flags…], "log": path}}, got {str(job)[:120]}')
    if argv[0] not in STEPS or argv[0] == "batch":
        raise ScencodeError(f"batch job {i}: {argv[0]!r} is not a step a batch can run")
    return argv, Path(log_path)


if __name__ == "__main__":
    sys.exit(main())
