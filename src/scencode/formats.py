"""The files that pass between stages, read and written in one place. Stages import this module and
the shared modules (model, encodings, loader, shards, h5ad, reference, cellsets and the small
utilities), never each other.

- gene vocabulary (``vocab.parquet``): token order and its hash;
- gene-embedding table (``gene_embeddings.parquet``): one row per gene, its metadata in the schema;
- leakage audit (``leakage.json``): the training cells left out under the ``drop`` policy;
- checkpoint (``best.pt``/``last.pt``), run status (``model.json``: ``RunStatus``, whose checkpoint
  may be missing, with the reason) and training log (``train_log.parquet``);
- embedding table (``{run}/{dataset}.parquet``): cell_id, label, batch, embedding, and, when there is
  no model, why (schema metadata);
- metric table (``metrics/{run}/{dataset}.parquet``): tidy rows with the run's identity.
The corpus manifest and its shards are in ``shards``; the gene table reader in ``reference``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_path, write_json
from .errors import ScencodeError
from .parquet_io import column_matrix, matrix_column, read_parquet

log = logging.getLogger(__name__)

MISSING_KEY = b"scencode.missing"
# the context diagnostic of every model on every evaluation dataset (diagnostic.ReconstructionErrors)
RECONSTRUCTION_METRICS = ("masked_mse", "masked_mse_no_context", "gene_mean_mse")
GENE_GROUPS = ("seen", "unseen")  # a model with genes held out of training: its diagnostic on each
# per-gene masked MSE rows (metric: the token id), the pairs of the tables' per-gene tests: the genes
# held out of training (test split, unseen genes in the input) and another organism's genes
PER_GENE_GROUPS = ("unseen_gene_mse", "species_gene_mse")
METRIC_COLUMNS = [
    "configuration",
    "gene_encoding",
    "expression_encoding",
    "seed",
    "dataset",
    "metric",
    "group",
    "value",
    "note",
]


@dataclass(frozen=True)
class RunIdentity:
    """What a run is; the workflow passes it to each job (nothing is parsed out of ``run``).
    Baselines: gene encoding ``baseline``, expression encoding the baseline's kind."""

    run: str
    gene_encoding: str
    expression_encoding: str
    seed: int


def metric_table(rows: pd.DataFrame, identity: RunIdentity, dataset: str) -> pd.DataFrame:
    """Tidy metric rows (metric, group, value, note) with the run's identity and the dataset."""
    out = rows.assign(
        configuration=identity.run,
        gene_encoding=identity.gene_encoding,
        expression_encoding=identity.expression_encoding,
        seed=identity.seed,
        dataset=dataset,
    )
    if "note" not in out:
        out["note"] = ""
    return out[METRIC_COLUMNS].reset_index(drop=True)


def read_metric_table(path) -> pa.Table:
    """A metric table as :func:`metric_table` writes it, checked: the columns, at least one row,
    numeric values, and a note on every missing (null or NaN) value, so that nothing downstream
    averages over a value that is not there without saying why."""
    table = read_parquet(path, "metric table", tuple(METRIC_COLUMNS))
    if table.num_rows == 0:
        raise ScencodeError("metric table holds no rows", path)
    kind = table.schema.field("value").type
    if not (
        pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind) or pa.types.is_null(kind)
    ):
        raise ScencodeError(f"metric table's values are {kind}, not numbers", path)
    frame = table.select(["dataset", "metric", "value", "note"]).to_pandas()
    value = pd.to_numeric(frame["value"], errors="coerce").astype(float)
    unexplained = frame[value.isna() & (frame["note"].fillna("").str.strip() == "")]
    if len(unexplained):
        first = unexplained.iloc[0]
        raise ScencodeError(
            f"{len(unexplained)} missing value(s) with no note saying why (first: {first['metric']} on "
            f"{first['dataset']}); a missing metric must carry its reason",
            path,
        )
    return table


def read_csv_table(path, what: str, columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A CSV table scencode wrote, holding ``columns``: a missing, empty or other file is one error
    naming the file and ``what`` it should be."""
    path = Path(path)
    if not path.is_file():
        raise ScencodeError(f"{what} not found" if not path.exists() else f"is a folder, not a {what}", path)
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ScencodeError(f"not a readable {what} ({' '.join(str(exc).split())[:200]})", path) from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ScencodeError(f"not a {what}: no column(s) {', '.join(missing)}", path)
    if table.empty:
        raise ScencodeError(f"{what} holds no rows", path)
    return table


SUMMARY_COLUMNS = ("gene_encoding", "expression_encoding", "train_cells", "batch_score", "bio_score")


def read_summary(path) -> pd.DataFrame:
    """``summary.csv`` as ``scencode tables`` writes it."""
    return read_csv_table(path, "summary table (summary.csv)", SUMMARY_COLUMNS)


def read_unseen_genes_table(path) -> pd.DataFrame:
    """``unseen_genes.csv`` as ``scencode tables`` writes it (pretrain.unseen_genes)."""
    columns = (
        "gene_encoding",
        "expression_encoding",
        "masked_mse_seen",
        "masked_mse_unseen",
        "gene_mean_mse_unseen",
        "global_mean_mse_seen",
        "global_mean_mse_unseen",
        "unseen_vs_gene_mean",
        "unseen_vs_global_mean",
    )
    return read_csv_table(path, "unseen genes table (unseen_genes.csv)", columns)


def read_metrics_csv(path) -> pd.DataFrame:
    """``metrics.csv`` (every metric value, long) as ``scencode tables`` writes it."""
    return read_csv_table(path, "metrics table (metrics.csv)", tuple(METRIC_COLUMNS))


def write_table(table: pd.DataFrame, path) -> None:
    with atomic_path(path, suffix=".parquet") as tmp:
        table.to_parquet(tmp, index=False)


def read_embedding(path) -> tuple[pd.DataFrame, np.ndarray, str]:
    """(cells: cell_id, label, batch; matrix; why there is no embedding, or "") from an embedding
    Parquet file."""
    table = read_parquet(path, "embedding file", ("cell_id", "label", "batch", "embedding"))
    matrix = column_matrix(table, "embedding")
    missing = (table.schema.metadata or {}).get(MISSING_KEY, b"").decode()
    return table.drop(["embedding"]).to_pandas(), matrix, missing


def write_reconstruction_errors(errors: dict, path) -> None:
    """A model's context diagnostic on one corpus (embed's ``--reconstruction`` JSON): the
    :data:`RECONSTRUCTION_METRICS`, the cells and the masked tokens they were measured on."""
    write_json(errors, path)


def read_reconstruction_errors(path) -> dict:
    """The diagnostic :func:`write_reconstruction_errors` wrote; a file without its keys is refused,
    naming them. A metric measured on no token is NaN (null in the file)."""
    try:
        errors = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ScencodeError(f"reconstruction errors unreadable ({exc}): rerun the embed step", path) from None
    lacking = [key for key in (*RECONSTRUCTION_METRICS, "cells") if key not in errors]
    if lacking:
        raise ScencodeError(f"reconstruction errors lack {', '.join(lacking)}: rerun the embed step", path)
    return {**errors, **{m: float("nan") if errors[m] is None else float(errors[m]) for m in RECONSTRUCTION_METRICS}}


def _embedding_table(cells: pd.DataFrame, matrix: np.ndarray, missing: str = "") -> pa.Table:
    table = pa.table(
        {
            "cell_id": cells.cell_id.astype(str).to_numpy(),
            "label": cells.label.astype(str).to_numpy(),
            "batch": cells.batch.astype(str).to_numpy(),
            "embedding": matrix_column(matrix),
        }
    )
    if missing:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), MISSING_KEY: missing.encode()})
    return table


def write_embedding(cells: pd.DataFrame, matrix: np.ndarray, path, missing: str = "") -> None:
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(_embedding_table(cells, matrix, missing), tmp)


@dataclass
class RunStatus:
    """``model.json``: how a pretraining run ended, which checkpoint evaluation uses and from which
    step (``checkpoint`` None: no usable model, ``note`` says why; the evaluation tables carry it),
    what the settings could not do, the training set, the components' scales and what it cost."""

    configuration: str
    gene_encoding: str
    expression_encoding: str
    seed: int
    status: str  # completed | early_stopped | diverged
    steps: int
    total_steps: int
    train_cells: dict  # requested ("all", a count or a fraction), cells drawn, per dataset
    steps_per_epoch: int
    best_val_loss: float | None
    checkpoint: str | None
    checkpoint_step: int | None
    final_val_loss: float | None
    still_improving: bool
    warnings: list[str]
    calibration: dict
    ranks: dict  # world_size
    component_rms: dict  # start, end: gene / expression embedding RMS
    cost: dict
    note: str = ""


def write_run_status(status: RunStatus, path: str | Path) -> None:
    write_json(asdict(status), path)


def read_run_status(path: str | Path) -> RunStatus:
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ScencodeError(f"not a readable model status file ({exc})", path) from exc
    expected = {f.name for f in fields(RunStatus) if f.default is MISSING}
    missing = sorted(expected - set(values)) if isinstance(values, dict) else ["all"]
    if missing:
        raise ScencodeError(
            f"model status file lacks {', '.join(missing)} (written by another version of scencode?); "
            "rerun pretraining with --forcerun pretrain",
            path,
        )
    known = {f.name for f in fields(RunStatus)}
    return RunStatus(**{k: v for k, v in values.items() if k in known})


def model_checkpoint(model: str | Path) -> tuple[Path | None, str]:
    """The checkpoint to evaluate, or None and why. ``model`` is a run's ``model.json`` (the
    workflow: a run may end without a usable model, which evaluation reports rather than fails on)
    or a checkpoint file (direct use: a missing file is an error)."""
    model = Path(model)
    if model.suffix != ".json":
        if not model.exists():
            raise ScencodeError("model checkpoint not found", model)
        return model, ""
    status = read_run_status(model)
    name = status.configuration
    if not status.checkpoint:
        return None, f"no model for {name}: {status.note or 'training wrote no checkpoint'}"
    checkpoint = model.parent / status.checkpoint
    if not checkpoint.exists():
        return None, (
            f"no model for {name}: {checkpoint} is missing (model.json lists it); retrain with --forcerun pretrain"
        )
    return checkpoint, ""


# train_log.parquet: one row per logged step or validation (NaN where a row has no such value)
LOG_COLUMNS = ("step", "epoch", "lr", "train_loss", "val_loss", "grad_norm", "tokens_per_s", "cells_per_s")


def write_train_log(rows: dict[str, list], path: str | Path, configuration: str, steps_per_epoch: int) -> None:
    table = pa.table(
        {k: pa.array(rows[k], pa.int64() if k in ("step", "epoch") else pa.float64()) for k in LOG_COLUMNS}
    )
    table = table.replace_schema_metadata(
        {b"configuration": configuration.encode(), b"steps_per_epoch": str(steps_per_epoch).encode()}
    )
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)


def read_train_log(path: str | Path) -> pd.DataFrame:
    return read_parquet(path, "training log", ("step", "train_loss", "val_loss")).to_pandas()


@dataclass
class Checkpoint:
    """``best.pt``/``last.pt``, one definition for the trainer that writes and resumes them and the
    steps that evaluate the model. What evaluation needs comes first; the rest (optimiser, scheduler,
    scaler, RNG, loop state) only resuming reads."""

    model_config: dict  # run_config.ModelConfig's fields
    model: dict  # the state dict (frozen gene tables travel in it)
    vocab_hash: str  # the vocabulary the token ids belong to
    name: str = ""  # the run
    identity: str = ""  # the hash of the settings that shape the run (pretrain.RunSpec.identity)
    step: int = 0
    optimizer: dict | None = None
    scheduler: dict | None = None
    scaler: dict | None = None
    rng: object = None  # torch's CPU RNG state
    state: dict | None = None  # pretrain.State's fields

    def write(self, path: Path) -> None:
        import torch

        with atomic_path(path, suffix=".pt") as tmp:
            torch.save({f.name: getattr(self, f.name) for f in fields(self)}, tmp)

    @classmethod
    def read(cls, path: Path) -> Checkpoint:
        payload = load_checkpoint(path)
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [k for k in required if k not in payload] if isinstance(payload, dict) else required
        if missing:
            raise ScencodeError(f"not a scencode model checkpoint (no {', '.join(missing)})", path)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in payload.items() if k in known})

    @property
    def resumable(self) -> bool:
        return None not in (self.optimizer, self.scheduler, self.scaler, self.rng, self.state)


def write_missing_embedding(reason: str, out_parquet, out_h5ad, run: str, dataset: str) -> None:
    log.warning("%s on %s: %s", run, dataset, reason)
    obs = pd.DataFrame({"label": [], "batch": []}, index=pd.Index([], name="cell_id"), dtype=str)
    write_embedding_files(obs, np.zeros((0, 1), np.float32), out_parquet, out_h5ad, run, dataset, reason)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint file's contents, read with ``weights_only`` (no code runs), or a one-line error."""
    import torch  # here: reading tables needs no torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged files
        text = " ".join(str(exc).split())
        refused = re.search(r"unsupported (?:global:? )?GLOBAL (\S+)", text, re.IGNORECASE)  # torch's wordings
        if refused:  # a pickle that asks for code: name what it asked for, which the message says late
            raise ScencodeError(
                f"checkpoint refused: it asks to load {refused.group(1)}, which a scencode checkpoint never holds "
                "(read with weights_only)",
                path,
            ) from None
        if text.startswith("Weights only load failed"):  # the reason follows torch's advice, and is what matters
            reason = re.sub(
                r"^.*(?:WeightsUnpickler error: |trusted source\. )|\s*Check the documentation.*$", "", text
            )
            raise ScencodeError(f"checkpoint refused by the weights-only reader ({reason[:200]})", path) from None
        raise ScencodeError(f"corrupted checkpoint ({type(exc).__name__}: {text[:300]})", path) from None


def write_gene_table(genes: pd.DataFrame, path: str | Path, meta: dict) -> None:
    matrix = np.stack(genes.embedding.to_numpy()).astype(np.float32)
    table = pa.table(
        {
            "gene_id": pa.array(genes.gene_id.astype(str)),
            "gene_symbol": pa.array(genes.get("gene_symbol", pd.Series([""] * len(genes))).astype(str)),
            "n_isoforms": pa.array(genes.get("n_isoforms", pd.Series([1] * len(genes))).astype(np.int32)),
            # mean residues of the isoforms embedded (NaN: an imported table that does not say)
            "protein_length": pa.array(
                genes.get("protein_length", pd.Series([np.nan] * len(genes))).astype(np.float32)
            ),
            "embedding": matrix_column(matrix),
        }
    )
    meta = {**meta, "dim": matrix.shape[1], "n_genes": len(genes)}
    table = table.replace_schema_metadata({f"scencode_{k}".encode(): str(v).encode() for k, v in meta.items()})
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)


def read_gene_table(path: str | Path) -> tuple[pd.Index, np.ndarray, dict]:
    """(gene ids, embedding matrix float32, metadata) of a gene-embedding table."""
    table = read_parquet(path, "gene embedding table")
    if "gene_id" not in table.column_names or "embedding" not in table.column_names:
        raise ScencodeError("gene embedding table needs 'gene_id' and 'embedding' columns", path)
    matrix = column_matrix(table, "embedding")
    meta = {k.decode().removeprefix("scencode_"): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return pd.Index(table.column("gene_id").to_pylist()), matrix.astype(np.float32), meta


def read_protein_lengths(path: str | Path) -> pd.Series:
    """Gene id → mean protein length of a gene-embedding table (NaN where the table does not say)."""
    table = read_parquet(path, "gene embedding table")
    if "protein_length" not in table.column_names:
        return pd.Series(np.nan, index=pd.Index(table.column("gene_id").to_pylist()))
    return pd.Series(table.column("protein_length").to_numpy(), index=pd.Index(table.column("gene_id").to_pylist()))


def excluded_cells(audit_json: str | Path | None, dataset: str) -> np.ndarray:
    """Barcodes of ``dataset`` the audit leaves out of training (``drop``); ``*``: all."""
    if audit_json is None:
        return np.array([], dtype=object)
    return np.array(json.loads(Path(audit_json).read_text()).get("drop", {}).get(dataset, []), dtype=object)


SPECIAL_TOKENS = ("<pad>", "<cls>")
HASH_KEY = b"scencode_vocab_hash"


def vocab_hash(tokens) -> str:
    return hashlib.sha256("\n".join(map(str, tokens)).encode()).hexdigest()


def dataset_genes(qc_path: str | Path) -> pd.DataFrame:
    """The genes (id, symbol, type) of a QC'd .h5ad."""
    from .h5ad import open_qc_h5ad, read_frame  # anndata/h5py: not needed to load a vocabulary (GPU nodes)

    with open_qc_h5ad(qc_path) as f:
        var = read_frame(f, "var")
    return pd.DataFrame(
        {
            "gene_id": var.index.astype(str),
            "gene_symbol": var.get("gene_symbol", ""),
            "gene_type": var.get("gene_type", ""),
        }
    )


def write_vocab(vocab: pd.DataFrame, path: str | Path) -> str:
    digest = vocab_hash(vocab.gene_id)
    table = pa.Table.from_pandas(vocab, preserve_index=False)
    table = table.replace_schema_metadata({HASH_KEY: digest.encode()})
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    return digest


def load_vocab(path: str | Path) -> tuple[pd.DataFrame, str]:
    path = Path(path)
    table = read_parquet(path, "vocabulary", ("token_id", "gene_id"))
    vocab = table.to_pandas()
    digest = vocab_hash(vocab.gene_id)
    stored = (table.schema.metadata or {}).get(HASH_KEY, b"").decode()
    if stored != digest or list(vocab.gene_id[: len(SPECIAL_TOKENS)]) != list(SPECIAL_TOKENS):
        raise ScencodeError("vocabulary file is inconsistent (hash or special tokens differ)", path)
    return vocab, digest


def write_embedding_files(
    obs: pd.DataFrame, matrix: np.ndarray, out_parquet, out_h5ad, run: str, dataset: str, missing: str = ""
) -> None:
    """Parquet and .h5ad of one embedding, both or neither (renamed into place only when both are
    written); ``missing`` (no model) writes empty ones that carry the reason."""
    with contextlib.ExitStack() as stack:
        parquet_tmp = stack.enter_context(atomic_path(out_parquet, suffix=".parquet"))
        pq.write_table(_embedding_table(obs.reset_index(), matrix, missing), parquet_tmp)
        if out_h5ad is None:
            return
        import anndata as ad  # here: embedding runs without anndata when no .h5ad is asked for (a bare GPU node)

        info = {"configuration": run, "dataset": dataset, **({"missing": missing} if missing else {})}
        adata = ad.AnnData(obs=obs, obsm={"X_scencode": matrix}, uns={"scencode": info})
        adata.write_h5ad(stack.enter_context(atomic_path(out_h5ad, suffix=".h5ad")))
