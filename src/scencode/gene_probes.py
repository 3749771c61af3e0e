"""What the gene encodings learned: linear and kNN probes of each vocabulary gene's effective
embedding (the gene encoder's output: the learned table, or the MLP over the frozen ESM-2 table)
on gene properties from HGNC, beside reference tables (the raw ESM-2 table, its rows permuted
across genes, a random table).

Properties: the HGNC gene group (families with at least ``min_members`` genes in the vocabulary;
protein sequence should know them), protein length in tertiles (sequence should know it) and the
chromosome (sequence should not: a control). Seeded, stratified k-fold; macro F1 of a kNN and a
logistic-regression probe (scikit-learn), in the tidy long form of the cell metrics.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import OutputFile, atomic_path
from .errors import ScencodeError
from .formats import METRIC_COLUMNS, SPECIAL_TOKENS, load_vocab, model_checkpoint, read_gene_table, read_protein_lengths
from .reference import packaged_file

log = logging.getLogger(__name__)
HGNC_PROPERTIES = "hgnc_gene_properties_2024-10.tsv.gz"
PROBES = ("knn", "logreg", "chance")  # chance: a stratified guess (the figure's reference line)
PROBE_METRICS = tuple(f"{probe}_{score}" for probe in PROBES for score in ("macro_f1", "auroc"))
CHROMOSOME = re.compile(r"^(\d{1,2}|X|Y)(?=[pq]|$| )")


@dataclass
class ProbeParams:
    min_members: int = 10  # a family (or chromosome) needs this many vocabulary genes to be a class
    folds: int = 5
    knn_k: int = 10
    seed: int = 0

    def validate(self) -> None:
        if self.min_members < self.folds or self.folds < 2 or self.knn_k < 1:
            raise ScencodeError(f"gene_probes: need folds ≥ 2, min_members ≥ folds and knn_k ≥ 1 ({self})")


def gene_properties(genes: pd.Index, lengths: pd.Series | None = None) -> pd.DataFrame:
    """Per gene id: family (the first HGNC gene group), chromosome (from the cytogenetic location)
    and protein-length tertile (from ``lengths``); missing where unknown."""
    hgnc = pd.read_csv(packaged_file(HGNC_PROPERTIES), sep="\t", dtype=str).drop_duplicates("ensembl_gene_id")
    hgnc = hgnc.set_index("ensembl_gene_id").reindex(genes)
    family = hgnc.gene_group.str.strip('"').str.split("|").str[0]
    chromosome = hgnc.location.str.extract(CHROMOSOME, expand=False)
    out = pd.DataFrame({"family": family, "chromosome": chromosome}, index=genes)
    if lengths is not None and lengths.reindex(genes).notna().any():
        known = lengths.reindex(genes)
        out["protein_length"] = pd.qcut(known, 3, labels=["short", "middle", "long"]).astype(object)
    return out


def probe(embedding: np.ndarray, labels: pd.Series, params: ProbeParams) -> dict:
    """Macro F1 and AUROC (the field's metric for gene tasks; one-vs-rest macro average with more
    than two classes) of each probe predicting ``labels`` (classes with at least ``min_members``
    genes; others left out) from standardised ``embedding`` rows, out of fold; and what chance gives."""
    from sklearn.metrics import f1_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = labels.value_counts()
    # a class needs a member in every fold (fewer genes, e.g. a partial ESM-2 table: left out)
    keep = labels.isin(counts.index[counts >= max(params.min_members, params.folds)]).to_numpy()
    y = labels.to_numpy()[keep]
    classes = np.unique(y)
    if len(classes) < 2:
        return {"genes": int(keep.sum()), "classes": len(classes), "scores": {}}
    x = embedding[keep]
    folds = StratifiedKFold(params.folds, shuffle=True, random_state=params.seed)
    scores = {}
    for name, model in _probe_models(params, len(y) // params.folds).items():
        # one out-of-fold pass: the class probabilities give the AUROC, their argmax the prediction
        proba = cross_val_predict(make_pipeline(StandardScaler(), model), x, y, cv=folds, method="predict_proba")
        scores[f"{name}_macro_f1"] = float(f1_score(y, classes[proba.argmax(1)], average="macro"))
        scores[f"{name}_auroc"] = float(
            roc_auc_score(y, proba[:, 1]) if len(classes) == 2 else roc_auc_score(y, proba, multi_class="ovr")
        )
    return {"genes": len(y), "classes": len(classes), "scores": scores}


def transfer_probe(embedding: np.ndarray, labels: pd.Series, unseen: np.ndarray, params: ProbeParams) -> dict:
    """Each probe fitted on the genes the models trained on and scored on those they never saw
    (``unseen``, ``pretrain.unseen_genes``): where a learned table has one vector for every unseen
    gene and a protein embedding still says what the gene is. Classes with ``min_members`` seen
    genes and at least two unseen ones; AUROC and macro F1 as in :func:`probe`."""
    from sklearn.base import clone
    from sklearn.metrics import f1_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = labels.to_numpy()
    seen_counts, unseen_counts = labels[~unseen].value_counts(), labels[unseen].value_counts()
    classes = np.array(
        sorted(c for c in seen_counts.index if seen_counts[c] >= params.min_members and unseen_counts.get(c, 0) >= 2)
    )
    train, test = ~unseen & np.isin(y, classes), unseen & np.isin(y, classes)
    if len(classes) < 2:
        return {"genes": int(test.sum()), "trained_on": int(train.sum()), "classes": len(classes), "scores": {}}
    scores = {}
    for name, model in _probe_models(params, int(train.sum())).items():
        fitted = make_pipeline(StandardScaler(), clone(model)).fit(embedding[train], y[train])
        proba = fitted.predict_proba(embedding[test])
        scores[f"{name}_macro_f1_unseen"] = float(f1_score(y[test], classes[proba.argmax(1)], average="macro"))
        scores[f"{name}_auroc_unseen"] = float(
            roc_auc_score(y[test], proba[:, 1])
            if len(classes) == 2
            else roc_auc_score(y[test], proba, multi_class="ovr", labels=classes)
        )
    return {"genes": int(test.sum()), "trained_on": int(train.sum()), "classes": len(classes), "scores": scores}


def _probe_models(params: ProbeParams, n_train: int) -> dict:
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    return {
        "knn": KNeighborsClassifier(min(params.knn_k, n_train)),
        "logreg": LogisticRegression(max_iter=2000, random_state=params.seed),
        "chance": DummyClassifier(strategy="stratified", random_state=params.seed),
    }


def probe_rows(
    name: str,
    identity: dict,
    embedding: np.ndarray,
    properties: pd.DataFrame,
    params: ProbeParams,
    unseen: np.ndarray | None = None,
) -> list[dict]:
    """The probes' rows; with ``unseen`` (the genes held out of training), also each probe fitted on
    the seen genes and scored on the unseen ones (metrics ``*_unseen``)."""
    rows = []
    for prop in properties.columns:
        known = properties[prop].notna().to_numpy()
        result = probe(embedding[known], properties[prop][known], params)
        note = (
            f"{result['genes']} genes, {result['classes']} classes (≥ {params.min_members} genes each), "
            f"{params.folds}-fold"
        )
        values = {
            metric: (result["scores"].get(metric, np.nan), note, bool(result["scores"])) for metric in PROBE_METRICS
        }
        if unseen is not None and unseen.any():
            moved = transfer_probe(embedding[known], properties[prop][known], unseen[known], params)
            note = f"fitted on {moved['trained_on']} seen genes, scored on {moved['genes']} unseen, {moved['classes']} classes"
            values |= {
                f"{metric}_unseen": (moved["scores"].get(f"{metric}_unseen", np.nan), note, bool(moved["scores"]))
                for metric in PROBE_METRICS
            }
        for metric, (value, why, scored) in values.items():
            rows.append(
                {
                    **identity,
                    "configuration": name,
                    "dataset": "genes",
                    "metric": metric,
                    "group": f"gene_probe_{prop}",
                    "value": value,
                    "note": why if scored else f"fewer than two classes ({why})",
                }
            )
    return rows


def model_gene_embeddings(checkpoint: Path, vocab_hash: str, vocab: Path) -> tuple[np.ndarray, np.ndarray]:
    """Each vocabulary token's effective gene embedding: the gene encoder's output as the model uses
    it (a learned table's unseen genes: its one unknown vector) of a model trained on ``vocab``
    (another vocabulary's rows would be other genes), and the genes it held out of training."""
    import torch

    from .model import load_model

    model, ckpt = load_model(checkpoint, torch.device("cpu"))
    if ckpt.vocab_hash != vocab_hash:
        raise ScencodeError(
            f"the model was trained on another vocabulary ({ckpt.vocab_hash[:12]}…) than {vocab} "
            f"({vocab_hash[:12]}…): its gene rows are other genes",
            checkpoint,
        )
    with torch.no_grad():
        vectors = model.gene_vectors(torch.arange(model.cfg.vocab_size)).float().numpy()
    return vectors, model.unseen_genes.numpy()


def reference_tables(
    genes: pd.Index, esm_table: Path | None, dim: int, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name → (table aligned to ``genes``, the genes it has a row for): the raw ESM-2 table, its rows
    permuted across those genes (same geometry, no protein knowledge), and a random Gaussian table.
    A gene the ESM-2 table lacks is left out of its probes, not given a row of zeros."""
    rng = np.random.default_rng(seed)
    tables = {}
    if esm_table is not None:
        ids, matrix, _ = read_gene_table(esm_table)
        row = pd.Series(np.arange(len(ids)), index=ids).reindex(genes)
        covered = row.notna().to_numpy()
        if not covered.any():
            raise ScencodeError("the ESM-2 table holds none of the vocabulary's genes", esm_table)
        aligned = np.zeros((len(genes), matrix.shape[1]), np.float32)
        aligned[covered] = matrix[row.dropna().astype(int).to_numpy()]
        permuted = aligned.copy()
        permuted[covered] = aligned[covered][rng.permutation(int(covered.sum()))]
        tables["esm2_table"] = (aligned, covered)
        tables["esm2_table_permuted"] = (permuted, covered)
    tables["random_table"] = (rng.normal(size=(len(genes), dim)).astype(np.float32), np.ones(len(genes), bool))
    return tables


RUN_KEYS = ("run", "gene_encoding", "expression_encoding", "seed", "model")


def gene_probes(
    runs: list[dict], vocab: Path, esm_table: Path | None, params: ProbeParams, tasks: dict | None = None
) -> pd.DataFrame:
    """The probe table of every run ({run, gene_encoding, expression_encoding, seed, model}) and of
    the reference tables; ``tasks``: the field's gene tasks (name → label file, ``gene_tasks``),
    probed as properties ``task_<name>`` beside their published AUROCs."""
    from .gene_tasks import anchor_rows, read_labels

    vocabulary, digest = load_vocab(vocab)
    for i, run in enumerate(runs):
        lacking = [key for key in RUN_KEYS if key not in run] if isinstance(run, dict) else list(RUN_KEYS)
        if lacking:
            raise ScencodeError(f"--runs entry {i} lacks {', '.join(lacking)} (each needs {', '.join(RUN_KEYS)})")
    genes = pd.Index(vocabulary.gene_id[len(SPECIAL_TOKENS) :])
    lengths = read_protein_lengths(esm_table) if esm_table is not None else None
    properties = gene_properties(genes, lengths)
    rows, dim, unseen = [], 64, None
    for name, path in (tasks or {}).items():
        labels = read_labels(path, name)
        properties[f"task_{name}"] = labels.reindex(genes).to_numpy()
        log.info(
            "gene task %s: %d of its %d genes in the vocabulary",
            name,
            properties[f"task_{name}"].notna().sum(),
            len(labels),
        )
        rows += anchor_rows(name)
    for run in runs:
        identity = {
            "gene_encoding": run["gene_encoding"],
            "expression_encoding": run["expression_encoding"],
            "seed": run["seed"],
        }
        checkpoint, missing = model_checkpoint(run["model"])
        if checkpoint is None:  # no usable model: its rows say why
            rows += _missing_rows(run["run"], identity, properties.columns, missing)
            continue
        embedding, held_out = model_gene_embeddings(checkpoint, digest, vocab)
        embedding, held_out = embedding[len(SPECIAL_TOKENS) :], held_out[len(SPECIAL_TOKENS) :]
        dim = embedding.shape[1]
        unseen = held_out if held_out.any() else unseen  # every run holds out the same genes
        rows += probe_rows(run["run"], identity, embedding, properties, params, held_out)
    for name, (table, covered) in reference_tables(genes, esm_table, dim, params.seed).items():
        identity = {"gene_encoding": name, "expression_encoding": "reference", "seed": params.seed}
        split = None if unseen is None else unseen[covered]  # the references on the models' split
        rows += probe_rows(f"reference-{name}", identity, table[covered], properties[covered], params, split)
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def _missing_rows(name: str, identity: dict, props, why: str) -> list[dict]:
    return [
        {
            **identity,
            "configuration": name,
            "dataset": "genes",
            "metric": metric,
            "group": f"gene_probe_{prop}",
            "value": np.nan,
            "note": why,
        }
        for prop in props
        for metric in PROBE_METRICS
    ]


def draw(table: pd.DataFrame, path: Path, caveat: str = "") -> list[Path]:
    """Logistic-regression macro F1 per property (panels) and encoding (bars: the run's colour and
    hatch; reference tables grey), with the stratified guess as the chance line; PNG and PDF."""
    from . import plotting

    data = table[(table.metric == "logreg_macro_f1") & (table.gene_encoding != "published")]
    chance = table[table.metric == "chance_macro_f1"].groupby("group").value.mean()
    props = sorted(data.group.unique())
    runs = data[data.expression_encoding != "reference"]
    styles = plotting.EncodingStyles.of(runs)
    n_bars = data.groupby(["gene_encoding", "expression_encoding"]).ngroups
    fig, axes = plotting.figure(
        max(2.0, 0.3 * n_bars + 0.8) * len(props) + 0.6, 3.8, 1, len(props), sharey=True, squeeze=False
    )
    for ax, prop in zip(axes[0], props):
        part = data[data.group == prop].groupby(["gene_encoding", "expression_encoding"]).value.mean().reset_index()
        labels = [f"{g} · {e}" for g, e in zip(part.gene_encoding, part.expression_encoding)]
        bars = ax.bar(range(len(part)), part.value.fillna(0), edgecolor="black", linewidth=0.4)
        for bar, gene, expr in zip(bars, part.gene_encoding, part.expression_encoding):
            reference = expr == "reference"
            bar.set(
                facecolor=plotting.REFERENCE_COLOUR if reference else styles.colour(expr),
                hatch="///" if reference else styles.gene(gene).hatch,
            )
        plotting.mark_missing(ax, range(len(part)), part.value.isna())
        if prop in chance and np.isfinite(chance[prop]):
            ax.axhline(chance[prop], color="black", linestyle="--", linewidth=0.8, label="chance (stratified guess)")
        ax.set_xticks(range(len(part)), labels, rotation=60, ha="right", rotation_mode="anchor", fontsize=6)
        ax.set_title(prop.removeprefix("gene_probe_").replace("_", " "))
    axes[0][0].set_ylabel("macro F1, logistic regression\n(out of fold)")
    if len(chance):
        plotting.legend_outside(axes[0][-1])
    plotting.caveat(fig, caveat)
    return plotting.save(fig, path)


def run(
    runs: list[dict],
    vocab: Path,
    out: OutputFile,
    figure: OutputFile,
    esm_table: Path | None = None,
    params: ProbeParams | None = None,
    caveat: str = "",
    tasks: dict | None = None,
) -> pd.DataFrame:
    """Gene-property probes of every run's gene embeddings and of the reference tables: the long
    table at ``out`` (CSV) and a figure at ``figure``. ``runs``: JSON list of {run, gene_encoding,
    expression_encoding, seed, model (model.json or checkpoint)}; ``tasks``: JSON {task: label
    file} of the field's gene tasks (``scencode gene-task``)."""
    params = params or ProbeParams()
    table = gene_probes(runs, vocab, esm_table, params, tasks)
    with atomic_path(out, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    draw(table, Path(figure), caveat)
    log.info("gene probes: %d runs, %d rows", len(runs), len(table))
    return table
