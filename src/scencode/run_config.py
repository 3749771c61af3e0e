"""The settings of a pretraining run, torch-free: the model's shape and encodings, the loader and
the training loop, as dataclasses the workflow (when it builds the DAG), ``scencode plan`` and the
trainer all read, from one function (:func:`run_settings`).

Encoder names and options are checked against the encoder classes in ``encodings.py`` without
importing torch: their ``@gene_encoder``/``@expression_encoder`` decorators and ``__init__``
signatures are read from the source (:func:`encoder_catalog`); in a process that has imported
``encodings`` (the trainer, or a user who registered an encoder of their own) the live registry
answers instead.
"""

from __future__ import annotations

import ast
import functools
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ScencodeError
from .settings import parse

GENE_SAMPLING = ("random", "top_expressed")
LAYOUTS = ("packed", "padded")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BUILT_IN = {"self", "d_model", "vocab_size", "gene_table", "gene_medians"}  # passed by the model, not options


@dataclass(frozen=True)
class EncoderSpec:
    options: frozenset[str]
    needs_gene_table: bool
    needs_gene_medians: bool = False


@functools.cache
def encoder_catalog() -> dict[str, dict[str, EncoderSpec]]:
    """kind ("gene", "expression") → name → its options and whether it reads the gene table, read
    from ``encodings.py``'s source (a subclass without ``__init__`` takes its base's)."""
    tree = ast.parse((Path(__file__).parent / "encodings.py").read_text())
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}

    def init_args(cls: ast.ClassDef) -> set[str]:
        for node in cls.body:
            if isinstance(node, ast.FunctionDef) and node.name == "__init__":
                args = node.args
                return {a.arg for a in args.args + args.kwonlyargs}
        bases = [classes[b.id] for b in cls.bases if isinstance(b, ast.Name) and b.id in classes]
        return init_args(bases[0]) if bases else set()

    def flag(cls: ast.ClassDef, name: str) -> bool:
        for node in cls.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == name for t in node.targets):
                return bool(ast.literal_eval(node.value))
        bases = [classes[b.id] for b in cls.bases if isinstance(b, ast.Name) and b.id in classes]
        return flag(bases[0], name) if bases else False

    catalog: dict[str, dict[str, EncoderSpec]] = {"gene": {}, "expression": {}}
    for cls in classes.values():
        for deco in cls.decorator_list:
            func = deco.func if isinstance(deco, ast.Call) else None
            if isinstance(deco, ast.Call) and isinstance(func, ast.Name) and func.id.endswith("_encoder"):
                kind = func.id.removesuffix("_encoder")
                name = ast.literal_eval(deco.args[0])
                catalog[kind][name] = EncoderSpec(
                    frozenset(init_args(cls) - BUILT_IN),
                    flag(cls, "needs_gene_table"),
                    flag(cls, "needs_gene_medians"),
                )
    return catalog


def _encoders(kind: str) -> dict[str, EncoderSpec]:
    live = sys.modules.get(f"{__package__}.encodings")
    if live is None:
        return encoder_catalog()[kind]
    import inspect

    registry = live.GENE_ENCODERS if kind == "gene" else live.EXPRESSION_ENCODERS
    specs = {}
    for name, cls in registry.items():
        params = inspect.signature(cls.__init__).parameters.values()
        options = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - BUILT_IN
        specs[name] = EncoderSpec(
            frozenset(options), getattr(cls, "needs_gene_table", False), getattr(cls, "needs_gene_medians", False)
        )
    return specs


def encoder(kind: str, name: str) -> EncoderSpec:
    encoders = _encoders(kind)
    if name not in encoders:
        raise ScencodeError(f"unknown {kind} encoding {name!r}; registered: {', '.join(sorted(encoders))}")
    return encoders[name]


def needs_gene_table(name: str) -> bool:
    """Whether a gene encoding reads a gene-embedding table (its class says: ``needs_gene_table``)."""
    return encoder("gene", name).needs_gene_table


def needs_gene_medians(name: str) -> bool:
    """Whether an expression encoding reads the training corpus's gene medians (rank)."""
    return encoder("expression", name).needs_gene_medians


def check_encoder(kind: str, name: str, options: dict) -> None:
    """Options an encoder does not take are refused (a typo would otherwise be silently ignored)."""
    known = encoder(kind, name).options
    unknown = sorted(set(options) - known)
    if unknown:
        raise ScencodeError(
            f"{kind} encoding {name!r} takes no option {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(sorted(known)) or 'none'}"
        )


def block_params(n_layers: int, d_model: int, d_ff: int) -> float:
    """Weights of the encoder blocks (attention 4·d², feed-forward 2·d·d_ff): what a token's FLOPs
    scale with (6 x this per trained token, the usual convention)."""
    return n_layers * (4 * d_model**2 + 2 * d_model * d_ff)


@dataclass
class ModelConfig:
    vocab_size: int
    gene_encoding: str = "learned"
    expression_encoding: str = "continuous"
    d_model: int = 512
    n_layers: int = 12
    n_heads: int = 8
    d_ff: int = 1024
    dropout: float = 0.1
    gene_options: dict = field(default_factory=dict)
    expression_options: dict = field(default_factory=dict)

    def validate(self) -> None:
        if min(self.d_model, self.n_layers, self.n_heads, self.d_ff, self.vocab_size) <= 0:
            raise ScencodeError(f"model dimensions must be positive: {asdict(self)}")
        if self.d_model % self.n_heads:
            raise ScencodeError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if not 0 <= self.dropout < 1:
            raise ScencodeError(f"dropout {self.dropout} is not in [0, 1)")
        check_encoder("gene", self.gene_encoding, self.gene_options)
        check_encoder("expression", self.expression_encoding, self.expression_options)


@dataclass
class LoaderConfig:
    batch_size: int = 512
    context: int = 1024  # K = min(context, non-zero genes)
    p_mask: float = 0.5
    c_norm: float = 1e4
    bucket_batches: int = 50  # batches per shuffle buffer / length bucket pool
    seed: int = 777
    # which K of a cell's M genes: "random" (seeded hashes, the study's) or "top_expressed" (the K
    # highest counts, ties broken by the same hashes; deterministic whatever the seed's epoch)
    gene_sampling: str = "random"
    layout: str = "packed"  # packed: real tokens only (offsets) | padded: (cells, longest) + valid

    def validate(self) -> None:
        for key in ("context", "batch_size", "bucket_batches"):
            if getattr(self, key) < 1:
                raise ScencodeError(f"loader.{key} must be ≥ 1, got {getattr(self, key)}")
        if not self.c_norm > 0:
            raise ScencodeError(f"loader.c_norm must be > 0, got {self.c_norm}")
        if self.gene_sampling not in GENE_SAMPLING:
            raise ScencodeError(f"gene_sampling {self.gene_sampling!r}: choose one of {', '.join(GENE_SAMPLING)}")
        if self.layout not in LAYOUTS:
            raise ScencodeError(f"layout {self.layout!r}: choose one of {', '.join(LAYOUTS)}")
        if not 0 < self.p_mask < 1:
            raise ScencodeError(f"p_mask {self.p_mask} must be in (0, 1)")


@dataclass
class TrainConfig:
    lr: float = 3e-4
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.95)
    grad_accum: int = 32
    epochs: int = 3
    max_steps: int | None = None  # stop earlier than `epochs` (demo, smoke tests)
    warmup_steps: int = 2000
    grad_clip: float = 1.0
    val_every: int = 500
    val_cells: int = 50_000
    patience: int = 100  # validation rounds without improvement
    checkpoint_every: int = 500
    log_every: int = 50
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    num_workers: int = 2
    missing_genes: str = "error"  # esm2 genes without an embedding: error | zero
    # stop: fail the job (last.pt keeps the last good state); finish: end the run as "diverged", keep
    # best.pt only if a validation before the divergence wrote one (evaluation then says why if not)
    on_nonfinite: str = "stop"
    calibration_batches: int = 8  # training batches the initial scales are measured on (model.calibrate)
    # a smaller training set: a count of cells (≥ 1) or a fraction of the training split (< 1), drawn
    # per dataset in proportion and nested (loader.TrainSubset); None: the whole training split
    train_cells: float | None = None

    def validate(self) -> None:
        """Refuse settings that cannot run, naming the key."""
        positive = (
            "lr",
            "grad_accum",
            "epochs",
            "grad_clip",
            "val_cells",
            "patience",
            "checkpoint_every",
            "log_every",
            "calibration_batches",
        )
        for key in positive:
            if not getattr(self, key) > 0:
                raise ScencodeError(f"train.{key} must be > 0, got {getattr(self, key)!r}")
        for key in ("warmup_steps", "val_every", "num_workers", "weight_decay"):
            if getattr(self, key) < 0:
                raise ScencodeError(f"train.{key} must be ≥ 0, got {getattr(self, key)!r}")
        if self.train_cells is not None and self.train_cells <= 0:
            raise ScencodeError(
                f"train.train_cells must be a count ≥ 1 or a fraction in (0, 1), got {self.train_cells!r}"
            )
        if self.max_steps is not None and self.max_steps < 1:
            raise ScencodeError(f"train.max_steps must be ≥ 1 or null, got {self.max_steps!r}")
        for key, allowed in (
            ("precision", PRECISIONS),
            ("missing_genes", ("error", "zero")),
            ("on_nonfinite", ("stop", "finish")),
        ):
            if getattr(self, key) not in allowed:
                raise ScencodeError(f"train.{key} {getattr(self, key)!r}: choose one of {', '.join(allowed)}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ScencodeError(f"train.betas must be two numbers in [0, 1), got {self.betas!r}")

    def schedule_warnings(self, total_steps: int) -> list[str]:
        """Settings that cannot do what they say for a run of ``total_steps`` optimiser steps."""
        out = []
        if self.warmup_steps >= total_steps:
            out.append(
                f"warmup_steps {self.warmup_steps} ≥ total steps {total_steps}: the learning rate never "
                f"leaves warmup (it peaks at {self.lr * total_steps / max(1, self.warmup_steps):.3g}, "
                f"not lr {self.lr:g}) and never decays"
            )
        if self.val_every > total_steps or not self.val_every:
            out.append(f"val_every {self.val_every} > total steps {total_steps}: only the final validation runs")
        elif self.patience * self.val_every >= total_steps:
            out.append(
                f"patience {self.patience} validations × val_every {self.val_every} = "
                f"{self.patience * self.val_every} steps ≥ total steps {total_steps}: early stopping cannot fire"
            )
        return out


@dataclass(frozen=True)
class RunSettings:
    """One run's settings, parsed and checked."""

    model: ModelConfig
    loader: LoaderConfig
    train: TrainConfig

    @classmethod
    def from_params(cls, params: dict | None, vocab_size: int | None = None) -> RunSettings:
        """From the JSON the workflow passes the trainer ({"model", "loader", "train"}), every key
        and type checked; the model is validated against ``vocab_size`` (None: with a stand-in
        size, for the DAG's check and the plan; 0: later, once the trainer has read the vocabulary)."""
        params = params or {}
        unknown = sorted(set(params) - {"model", "loader", "train"})
        if unknown:
            raise ScencodeError(
                f"unknown pretrain settings section(s): {', '.join(unknown)} (known: model, loader, train)"
            )
        size = 1 if vocab_size is None else vocab_size
        model = parse(ModelConfig, {"vocab_size": size, **params.get("model", {})}, validate=size > 0)
        return cls(model, parse(LoaderConfig, params.get("loader")), parse(TrainConfig, params.get("train")))


def run_settings(config: dict, entry: dict, seed: int, size: int | float | None) -> dict[str, dict]:
    """The model, loader and train settings of one run as the trainer receives them (JSON-able): the
    shared ones, then its configuration's overrides, its seed and its training-set size."""
    pretrain = config["pretrain"]
    model = {**pretrain["model"], **entry.get("model", {}), "gene_encoding": entry["gene"]}
    model["expression_encoding"] = entry["expression"]
    return {
        "model": model,
        "loader": {**pretrain["loader"], **entry.get("loader", {}), "seed": seed},
        "train": {**pretrain["train"], **entry.get("train", {}), **({"train_cells": size} if size else {})},
    }


def parsed_run_settings(config: dict, entry: dict, seed: int, size: int | float | None) -> RunSettings:
    """:func:`run_settings` parsed into the dataclasses and checked (what the plan prices and the
    DAG's check refuses before any job runs)."""
    return RunSettings.from_params(run_settings(config, entry, seed, size))
