"""The study's figures from the tables alone (no model is loaded): one colour per expression
encoding and one marker/hatch per gene encoding, the same in every figure."""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from .atomic import OutputFolder, atomic_path  # noqa: E402
from .errors import ScencodeError  # noqa: E402
from .formats import RunStatus, read_metrics_csv, read_run_status, read_summary, read_train_log  # noqa: E402
from .reference import packaged_file  # noqa: E402

log = logging.getLogger(__name__)

EXPRESSION_COLOURS = {
    "soft": "#1b9e77",
    "continuous": "#7570b3",
    "log": "#d95f02",
    "hard": "#e7298a",
    "autobin": "#66a61e",
    "pca": "#666666",
    "random": "#bbbbbb",
}
GENE_MARKERS = {"learned": "o", "esm2": "s", "random_frozen": "^", "baseline": "X"}
GENE_HATCHES = {"learned": "", "esm2": "//", "random_frozen": "..", "baseline": "xx"}
GENE_LINESTYLES = {"learned": "-", "esm2": "--", "random_frozen": ":"}
PAPER_METRICS = {
    "macro_f1": "macro_f1_mean",
    "accuracy": "accuracy",
    "batch_score": "batch_score",
    "bio_score": "bio_score",
    "min_train_mse": "min_train_mse",
}
plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False})


def colour(expression: str) -> str:
    """A fixed colour per expression encoding; a user's new encoding gets one from its name
    (crc32, not hash(): Python salts str hashes per process, so figures drawn in separate runs would
    disagree)."""
    palette = plt.get_cmap("tab10")
    return EXPRESSION_COLOURS.get(expression, palette(zlib.crc32(expression.encode()) % 10))


def label(row) -> str:
    return f"{row.gene_encoding} · {row.expression_encoding}"


def save(fig, out_dir: Path, name: str) -> list[Path]:
    paths = []
    for ext in ("png", "pdf"):
        with atomic_path(out_dir / f"{name}.{ext}", suffix=f".{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=200, bbox_inches="tight")
        paths.append(out_dir / f"{name}.{ext}")
    plt.close(fig)
    return paths


def explain_if_empty(ax, why: str) -> None:
    """A panel with nothing to draw says why instead of showing empty axes."""
    if not (ax.lines or ax.collections or ax.patches or ax.images):
        ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, fontsize=8, color="grey", wrap=True)


def legend_handles(summary: pd.DataFrame):
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=colour(e), marker="o", linestyle="", label=e)
        for e in sorted(summary.expression_encoding.unique())
    ]
    handles += [
        Line2D([], [], color="black", marker=GENE_MARKERS.get(g, "o"), linestyle="", markerfacecolor="none", label=g)
        for g in sorted(summary.gene_encoding.unique())
    ]
    return handles


def fig_batch_vs_bio(summary: pd.DataFrame, out_dir: Path):
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    for row in summary.itertuples():
        ax.errorbar(
            row.batch_score,
            row.bio_score,
            xerr=np.nan_to_num(row.batch_score_sd),
            yerr=np.nan_to_num(row.bio_score_sd),
            fmt=GENE_MARKERS.get(row.gene_encoding, "o"),
            color=colour(row.expression_encoding),
            capsize=2,
            markersize=7,
            alpha=0.9,
        )
    ax.set_xlabel("batch correction score (mean ± SD over datasets)")
    ax.set_ylabel("bio conservation score")
    ax.legend(handles=legend_handles(summary), fontsize=7, frameon=False, loc="best")
    absent = summary[summary.batch_score.isna() | summary.bio_score.isna()]
    if len(absent):
        fig.text(
            0.01,
            -0.02,
            "not shown (see summary.csv's note): " + ", ".join(label(r) for r in absent.itertuples()),
            fontsize=6,
            va="top",
            wrap=True,
        )
    return save(fig, out_dir, "fig1_batch_vs_bio")


def _bars(ax, summary: pd.DataFrame, column: str):
    x = np.arange(len(summary))
    ax.bar(
        x,
        summary[column],
        yerr=summary.get(f"{column}_sd"),
        capsize=2,
        color=[colour(e) for e in summary.expression_encoding],
        hatch=None,
        edgecolor="black",
        linewidth=0.5,
    )
    for patch, gene in zip(ax.patches, summary.gene_encoding):
        patch.set_hatch(GENE_HATCHES.get(gene, ""))
    for i in np.flatnonzero(summary[column].isna().to_numpy()):  # e.g. no model: summary.csv's note says why
        ax.text(
            x[i],
            0.03,
            "not available",
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=7,
            rotation=90,
            color="#555555",
        )
    ax.set_xticks(x, [label(r) for r in summary.itertuples()], rotation=60, ha="right", fontsize=7)


def fig_classification(summary: pd.DataFrame, out_dir: Path):
    data = summary.sort_values("macro_f1", ascending=False)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    for ax, column, title in zip(axes, ("accuracy", "macro_f1"), ("kNN accuracy (k = 10)", "kNN macro F1")):
        _bars(ax, data, column)
        ax.set_title(title)
        ax.set_ylim(0, 1.05)
    return save(fig, out_dir, "fig2_classification")


def fig_min_train_mse(summary: pd.DataFrame, out_dir: Path):
    data = summary.dropna(subset=["min_train_mse"]).sort_values("min_train_mse", ascending=False)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    _bars(ax, data.assign(min_train_mse_sd=np.nan), "min_train_mse")
    ax.set_ylabel("minimum training masked MSE")
    return save(fig, out_dir, "fig3_min_train_mse")


def fig_loss_curves(logs: dict[str, tuple[RunStatus, pd.DataFrame]], out_dir: Path):
    """``logs``: run name → (its model.json status, its training log)."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
    for name, (status, history) in sorted(logs.items()):
        gene, expression = status.gene_encoding, status.expression_encoding
        style = dict(color=colour(expression), linestyle=GENE_LINESTYLES.get(gene, "-."), linewidth=1.2)
        train = history.dropna(subset=["train_loss"])
        val = history.dropna(subset=["val_loss"])
        axes[0].plot(train.step, train.train_loss, label=name, **style)
        axes[1].plot(val.step, val.val_loss, marker="o", markersize=2, **style)
    axes[0].set_title("training masked MSE")
    axes[1].set_title("validation masked MSE")
    for ax in axes:
        ax.set_xlabel("optimiser step")
        ax.set_yscale("log")
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):  # 0.6, not 6×10⁻¹
            axis(matplotlib.ticker.FormatStrFormatter("%g"))
    axes[1].legend(
        *axes[0].get_legend_handles_labels(), fontsize=6, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1)
    )  # outside the axes: curves stay visible
    return save(fig, out_dir, "loss_curves")


def fig_heatmap(metrics: pd.DataFrame, out_dir: Path):
    keep = metrics[
        ((metrics.group == "study") | ((metrics.group == "knn_k10") & (metrics.metric == "macro_f1")))
        & (metrics.dataset != "*")
    ]
    # groupby keeps configurations whose values are all NaN (no model): they show as grey "n/a" rows
    table = keep.groupby(["configuration", "metric", "dataset"]).value.mean().unstack(["metric", "dataset"])
    table = table.sort_index(axis=1).dropna(axis=1, how="all")  # e.g. batch scores of a one-batch dataset
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * table.shape[1], 1 + 0.3 * table.shape[0]))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(table.to_numpy(dtype=float)), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(table.shape[1]), [f"{m}\n{d}" for m, d in table.columns], rotation=60, ha="right", fontsize=6)
    ax.set_yticks(range(table.shape[0]), table.index, fontsize=7)
    for (i, j), value in np.ndenumerate(table.to_numpy(dtype=float)):
        ax.text(
            j,
            i,
            f"{value:.2f}" if np.isfinite(value) else "n/a",
            ha="center",
            va="center",
            fontsize=5,
            color="white" if np.isfinite(value) and value < 0.5 else "black",
        )
    fig.colorbar(image, ax=ax, fraction=0.03)
    return save(fig, out_dir, "heatmap_per_dataset")


def paper_results() -> pd.DataFrame:
    return pd.read_csv(packaged_file("paper_results.csv"))


def fig_paper_comparison(summary: pd.DataFrame, out_dir: Path, caveat: str = "") -> tuple[list[Path], pd.DataFrame]:
    """This run's summary against the study's numbers; ``caveat`` (a run far from the study's setup,
    e.g. the demo) is printed on the figure and in the table, so a ρ is not read as a reproduction."""
    paper = paper_results()
    merged = summary.merge(paper, on=["gene_encoding", "expression_encoding"], suffixes=("", "_paper"))
    fig, axes = plt.subplots(2, 3, figsize=(8, 5.2))
    axes = axes.ravel()
    rows = []
    for ax, (ours, theirs) in zip(axes, PAPER_METRICS.items()):
        paper_column = theirs if theirs not in summary.columns else f"{theirs}_paper"
        pair = merged[[ours, paper_column, "gene_encoding", "expression_encoding"]].dropna()
        rho = spearmanr(pair[ours], pair[paper_column]).statistic if len(pair) > 2 else np.nan
        rows.append({"metric": ours, "configurations": len(pair), "spearman_rho": rho, "caveat": caveat})
        for row in pair.itertuples():
            ax.scatter(
                getattr(row, paper_column),
                getattr(row, ours),
                color=colour(row.expression_encoding),
                marker=GENE_MARKERS.get(row.gene_encoding, "o"),
            )
        ax.set_xlabel(f"study ({theirs})")
        ax.set_ylabel(f"this run ({ours})")
        ax.set_title(f"{ours}: ρ = {rho:.2f}" if np.isfinite(rho) else ours)
    for spare in axes[len(PAPER_METRICS) :]:  # the free panel holds the legend
        spare.axis("off")
        spare.legend(handles=legend_handles(merged), fontsize=7, frameon=False, loc="center")
    if caveat:
        fig.suptitle(caveat, color="firebrick", fontsize=8, wrap=True)
    fig.tight_layout()
    return save(fig, out_dir, "paper_comparison"), pd.DataFrame(rows)


def fig_cost(summary: pd.DataFrame, metrics: pd.DataFrame, out_dir: Path):
    """Bio conservation against what training cost (device-hours, log axis), one point per
    configuration; the axis says GPU-hours or CPU core-hours, as the runs recorded."""
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    shown = summary.dropna(subset=["device_hours", "bio_score"])
    for row in shown.itertuples():
        ax.errorbar(
            row.device_hours,
            row.bio_score,
            yerr=np.nan_to_num(row.bio_score_sd),
            fmt=GENE_MARKERS.get(row.gene_encoding, "o"),
            color=colour(row.expression_encoding),
            capsize=2,
            markersize=7,
            alpha=0.9,
        )
    notes = metrics[(metrics.metric == "device_hours") & metrics.value.notna()].note.dropna()
    unit = "GPU-hours" if notes.str.contains("GPU-hours").any() else "CPU core-hours"
    ax.set_xscale("log")
    ax.set_xlabel(f"training cost ({unit}, mean over seeds)")
    ax.set_ylabel("bio conservation score")
    ax.legend(handles=legend_handles(shown), fontsize=7, frameon=False, loc="best")
    explain_if_empty(ax, "no training cost with a bio score in the tables\n(model.json's cost, per configuration)")
    return save(fig, out_dir, "fig4_cost_vs_bio")


SHIFT = {"id": "in distribution", "near": "near (seen tissue)", "far": "far (unseen tissue)"}


def fig_shift(summary: pd.DataFrame, out_dir: Path, score: str = "bio_score"):
    """Each configuration's score in distribution, near and far (mean over the level's datasets,
    error bars: the seeds' SD where there are several, else the datasets' SD)."""
    levels = [level for level in SHIFT if f"{score}_{level}" in summary.columns]
    fig, ax = plt.subplots(figsize=(max(4.5, 0.55 * len(summary) * max(1, len(levels)) / 2), 3.6))
    width = 0.8 / max(1, len(levels))
    x = np.arange(len(summary))
    for i, level in enumerate(levels):
        spread = summary.get(f"{score}_{level}_seed_sd")
        if spread is None or spread.isna().all():
            spread = summary.get(f"{score}_{level}_sd")
        ax.bar(
            x + (i - (len(levels) - 1) / 2) * width,
            summary[f"{score}_{level}"],
            width,
            yerr=None if spread is None else np.nan_to_num(spread),
            capsize=2,
            label=SHIFT[level],
            color=plt.get_cmap("Blues")(0.45 + 0.25 * i),
        )
    ax.set_xticks(x, [label(r) for r in summary.itertuples()], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(score.replace("_", " ") + " by distribution shift")
    if levels:
        ax.legend(fontsize=7, frameon=False)
    explain_if_empty(ax, "no evaluation dataset has a shift level\n(the dataset sheet's tissue column)")
    return save(fig, out_dir, "fig5_shift")


SCALING_SCORES = {
    "bio_score": "bio conservation score",
    "batch_score": "batch correction score",
    "accuracy": "kNN accuracy (k = 10)",
}


def fig_scaling(summary: pd.DataFrame, out_dir: Path):
    """Each main score against the cells a configuration trained on (log axis), one line per
    configuration (error bars: SD over datasets); baselines, which do not train, as dashed lines."""
    models = summary[summary.gene_encoding != "baseline"].dropna(subset=["train_cells"])
    baselines = summary[summary.gene_encoding == "baseline"]
    fig, axes = plt.subplots(1, len(SCALING_SCORES), figsize=(3.6 * len(SCALING_SCORES), 3.4), squeeze=False)
    for ax, (score, title) in zip(axes[0], SCALING_SCORES.items()):
        for (gene, expression), runs in models.groupby(["gene_encoding", "expression_encoding"]):
            runs = runs.sort_values("train_cells")
            ax.errorbar(
                runs.train_cells,
                runs[score],
                yerr=np.nan_to_num(runs.get(f"{score}_sd", 0.0)),
                color=colour(expression),
                marker=GENE_MARKERS.get(gene, "o"),
                linestyle=GENE_LINESTYLES.get(gene, "-"),
                capsize=2,
                markersize=5,
                label=f"{gene} · {expression}",
            )
        for row in baselines.dropna(subset=[score]).itertuples():
            ax.axhline(
                getattr(row, score),
                color=colour(row.expression_encoding),
                linestyle=":",
                linewidth=1,
                label=f"baseline · {row.expression_encoding}",
            )
        ax.set_xscale("log")
        ax.set_xlabel("training cells")
        ax.set_ylabel(title)
        explain_if_empty(ax, "no training-set size in the tables\n(model.json's train_cells)")
    axes[0][-1].legend(fontsize=6, frameon=False, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return save(fig, out_dir, "fig6_scaling")


def main_size(summary: pd.DataFrame) -> pd.DataFrame:
    """The study's figures show each configuration at its largest training-set size (and the
    baselines); fig6_scaling shows every size."""
    trained = summary.gene_encoding != "baseline"
    largest = summary[trained].groupby(["gene_encoding", "expression_encoding"]).train_cells.transform("max")
    return summary[~trained | (summary.train_cells == largest.reindex(summary.index)) | summary.train_cells.isna()]


def draw_all(summary_csv, metrics_csv, runs: dict, out_dir, caveat: str = "") -> list[Path]:
    """``runs``: each run's model.json → its train_log.parquet."""
    out_dir = Path(out_dir)
    every_size = read_summary(summary_csv)
    summary = main_size(every_size)
    metrics = read_metrics_csv(metrics_csv)
    models = summary[summary.gene_encoding != "baseline"]
    logs = {}
    for model, train_log in runs.items():  # the run's identity from its status file
        status = read_run_status(model)
        logs[status.configuration] = (status, read_train_log(train_log))
    paths = [
        *fig_batch_vs_bio(summary, out_dir),
        *fig_classification(summary, out_dir),
        *fig_min_train_mse(models, out_dir),
        *fig_loss_curves(logs, out_dir),
        *fig_heatmap(metrics, out_dir),
        *fig_cost(models, metrics, out_dir),
        *fig_shift(models, out_dir),
        *fig_scaling(every_size, out_dir),
    ]
    comparison_paths, comparison = fig_paper_comparison(models, out_dir, caveat)
    with atomic_path(out_dir / "paper_comparison.csv", suffix=".csv") as tmp:
        comparison.to_csv(tmp, index=False)
    return paths + comparison_paths


def run(
    summary: Path,
    metrics: Path,
    out_dir: OutputFolder,
    train_logs: list[Path] = (),
    models: list[Path] = (),
    caveat: str = "",
) -> list[Path]:
    """The study's figures (PNG and PDF in ``out_dir``) from the tables and the runs' training logs
    with their status files (``models``: each log's model.json, in the same order); ``caveat``:
    printed on the paper comparison (e.g. demo data, tiny models)."""
    if len(models) != len(train_logs):
        raise ScencodeError(f"{len(train_logs)} training logs but {len(models)} model.json files: one per run")
    paths = draw_all(summary, metrics, dict(zip(models, train_logs)), out_dir, caveat=caveat)
    log.info("figures: %s", ", ".join(p.name for p in paths))
    return paths
