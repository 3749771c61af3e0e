"""The study's figures from the tables alone (no model is loaded), in the house style of
``plotting``: one look per encoding, the same in every figure, and the baselines beside the models
on every score figure (the random baseline is the chance level of an embedding)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from scipy.stats import spearmanr

from . import plotting
from .atomic import OutputFolder, atomic_path
from .errors import ScencodeError
from .formats import (
    RunStatus,
    read_metrics_csv,
    read_run_status,
    read_summary,
    read_train_log,
    read_unseen_genes_table,
)
from .plotting import EncodingStyles, legend_outside
from .reference import packaged_file

log = logging.getLogger(__name__)

PAPER_METRICS = {
    "macro_f1": "macro_f1_mean",
    "accuracy": "accuracy",
    "batch_score": "batch_score",
    "bio_score": "bio_score",
    "min_train_mse": "min_train_mse",
}


def label(row) -> str:
    return f"{row.gene_encoding} · {row.expression_encoding}"


def save(fig, out_dir: Path, name: str) -> list[Path]:
    return plotting.save(fig, Path(out_dir) / f"{name}.png")


def explain_if_empty(ax, why: str) -> None:
    """A panel with nothing to draw says why instead of showing empty axes."""
    if not (ax.lines or ax.collections or ax.patches or ax.images):
        ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, fontsize=7, color="grey", wrap=True)


def legend_handles(styles: EncodingStyles, table: pd.DataFrame):
    return styles.legend_handles(table.gene_encoding.unique(), table.expression_encoding.unique())


def _points(ax, rows: pd.DataFrame, x: str, y: str, styles: EncodingStyles, xerr: str | None = None) -> None:
    """One marker per configuration (its gene encoding's shape and fill, its expression's colour)."""
    for row in rows.itertuples():
        ax.errorbar(
            getattr(row, x),
            getattr(row, y),
            xerr=None if xerr is None else np.nan_to_num(getattr(row, xerr)),
            yerr=np.nan_to_num(getattr(row, f"{y}_sd", np.nan)),
            linestyle="",
            capsize=2,
            markersize=7,
            alpha=0.9,
            **styles.point(row.gene_encoding, row.expression_encoding),
        )


def _not_shown(fig, rows: pd.DataFrame) -> None:
    if len(rows):
        plotting.note(fig, "not shown (see summary.csv's note): " + ", ".join(label(r) for r in rows.itertuples()))


def fig_batch_vs_bio(summary: pd.DataFrame, styles: EncodingStyles | None = None):
    styles = styles or EncodingStyles.of(summary)
    fig, ax = plotting.figure(5.6, 3.6)
    _points(ax, summary, "batch_score", "bio_score", styles, xerr="batch_score_sd")
    ax.set_xlabel("batch correction score (mean ± SD over datasets)")
    ax.set_ylabel("bio conservation score")
    legend_outside(ax, handles=legend_handles(styles, summary))
    _not_shown(fig, summary[summary.batch_score.isna() | summary.bio_score.isna()])
    return fig


def _bars(ax, summary: pd.DataFrame, column: str, styles: EncodingStyles):
    x = np.arange(len(summary))
    ax.bar(
        x,
        summary[column],
        yerr=summary.get(f"{column}_sd"),
        capsize=2,
        color=[styles.colour(e) for e in summary.expression_encoding],
        edgecolor="black",
        linewidth=0.5,
    )
    for patch, gene in zip(ax.patches, summary.gene_encoding):
        patch.set_hatch(styles.gene(gene).hatch)
    plotting.mark_missing(ax, x, summary[column].isna())
    ax.set_xticks(x, [label(r) for r in summary.itertuples()], rotation=60, ha="right", rotation_mode="anchor")


def fig_classification(summary: pd.DataFrame, styles: EncodingStyles | None = None):
    styles = styles or EncodingStyles.of(summary)
    data = summary.sort_values("macro_f1", ascending=False)
    fig, axes = plotting.figure(max(7.0, 0.5 * len(data) + 2), 3.6, 1, 2)
    for ax, column, title in zip(axes, ("accuracy", "macro_f1"), ("kNN accuracy (k = 10)", "kNN macro F1")):
        _bars(ax, data, column, styles)
        ax.set_title(title)
        ax.set_ylim(0, 1.05)
    return fig


def fig_min_train_mse(summary: pd.DataFrame, styles: EncodingStyles | None = None):
    styles = styles or EncodingStyles.of(summary)
    data = summary.dropna(subset=["min_train_mse"]).sort_values("min_train_mse", ascending=False)
    fig, ax = plotting.figure(max(4.0, 0.45 * len(data) + 1.5), 3.6)
    _bars(ax, data.assign(min_train_mse_sd=np.nan), "min_train_mse", styles)
    ax.set_ylabel("minimum training masked MSE")
    explain_if_empty(ax, "no trained model in the tables")
    return fig


def fig_loss_curves(logs: dict[str, tuple[RunStatus, pd.DataFrame]], styles: EncodingStyles | None = None):
    """``logs``: run name → (its model.json status, its training log)."""
    statuses = [status for status, _ in logs.values()]
    styles = styles or EncodingStyles([s.gene_encoding for s in statuses], [s.expression_encoding for s in statuses])
    fig, axes = plotting.figure(8.0, 3.2, 1, 2, sharey=True)
    for name, (status, history) in sorted(logs.items()):
        line = styles.line(status.gene_encoding, status.expression_encoding)
        whole = (status.train_cells or {}).get("requested", "all") == "all"  # a smaller training set: thin, faint
        style = {"color": line["color"], "linestyle": line["linestyle"], "linewidth": 1.6 if whole else 0.8}
        style["alpha"] = 1.0 if whole else 0.55
        train = history.dropna(subset=["train_loss"])
        val = history.dropna(subset=["val_loss"])
        axes[0].plot(train.step, train.train_loss, label=name, **style)
        axes[1].plot(val.step, val.val_loss, marker="o", markersize=2, **style)
    axes[0].set_title("training masked MSE")
    axes[1].set_title("validation masked MSE")
    losses = pd.concat([h[["train_loss", "val_loss"]] for _, h in logs.values()]).stack() if logs else pd.Series()
    spread = losses[losses > 0].max() / losses[losses > 0].min() if (losses > 0).any() else 1.0
    for ax in axes:
        ax.set_xlabel("optimiser step")
        if spread > 3:  # a loss that falls by orders of magnitude; else a log axis has no tick to label
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))  # 0.6, not 6×10⁻¹
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        else:
            ax.ticklabel_format(axis="y", useOffset=False)
    if logs:
        legend_outside(axes[1], handles=axes[0].get_legend_handles_labels()[0], fontsize=6)
    return fig


def fig_heatmap(metrics: pd.DataFrame):
    keep = metrics[
        ((metrics.group == "study") | ((metrics.group == "knn_k10") & (metrics.metric == "macro_f1")))
        & (metrics.dataset != "*")
    ]
    # groupby keeps configurations whose values are all NaN (no model): they show as grey "n/a" rows
    table = keep.groupby(["configuration", "metric", "dataset"]).value.mean().unstack(["metric", "dataset"])
    table = table.sort_index(axis=1).dropna(axis=1, how="all")  # e.g. batch scores of a one-batch dataset
    fig, ax = plotting.figure(2.5 + 0.3 * table.shape[1], 2.0 + 0.25 * table.shape[0])
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(table.to_numpy(dtype=float)), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(
        range(table.shape[1]),
        [f"{m} · {d}" for m, d in table.columns],
        rotation=60,
        ha="right",
        rotation_mode="anchor",
        fontsize=6,
    )
    ax.set_yticks(range(table.shape[0]), table.index, fontsize=6)
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
    return fig


def paper_results() -> pd.DataFrame:
    return pd.read_csv(packaged_file("paper_results.csv"))


def fig_paper_comparison(
    summary: pd.DataFrame, caveat: str = "", styles: EncodingStyles | None = None
) -> tuple[Figure, pd.DataFrame]:
    """This run's summary against the study's numbers; ``caveat`` (a run far from the study's setup,
    e.g. the demo) is printed on the figure and in the table, so a ρ is not read as a reproduction."""
    styles = styles or EncodingStyles.of(summary)
    paper = paper_results()
    merged = summary.merge(paper, on=["gene_encoding", "expression_encoding"], suffixes=("", "_paper"))
    fig, axes = plotting.figure(8.0, 5.4, 2, 3)
    axes = axes.ravel()
    rows = []
    for ax, (ours, theirs) in zip(axes, PAPER_METRICS.items()):
        paper_column = theirs if theirs not in summary.columns else f"{theirs}_paper"
        pair = merged[[ours, paper_column, "gene_encoding", "expression_encoding"]].dropna()
        rho = spearmanr(pair[ours], pair[paper_column]).statistic if len(pair) > 2 else np.nan
        rows.append({"metric": ours, "configurations": len(pair), "spearman_rho": rho, "caveat": caveat})
        for row in pair.itertuples():
            ax.plot(
                getattr(row, paper_column),
                getattr(row, ours),
                linestyle="",
                **styles.point(row.gene_encoding, row.expression_encoding),
            )
        ax.ticklabel_format(useOffset=False)  # near-equal values read as themselves, not as an offset
        ax.set_xlabel(f"study ({theirs})")
        ax.set_ylabel(f"this run ({ours})")
        ax.set_title(f"{ours}: ρ = {rho:.2f}" if np.isfinite(rho) else ours)
    for spare in axes[len(PAPER_METRICS) :]:  # the free panel holds the legend
        spare.axis("off")
        spare.legend(handles=legend_handles(styles, merged), loc="center")
    return fig, pd.DataFrame(rows)


def fig_cost(summary: pd.DataFrame, metrics: pd.DataFrame, styles: EncodingStyles | None = None):
    """Bio conservation against what training cost (device-hours, log axis), one point per
    configuration; the axis says GPU-hours or CPU core-hours, as the runs recorded."""
    styles = styles or EncodingStyles.of(summary)
    fig, ax = plotting.figure(5.6, 3.6)
    shown = summary.dropna(subset=["device_hours", "bio_score"])
    _points(ax, shown, "device_hours", "bio_score", styles)
    notes = metrics[(metrics.metric == "device_hours") & metrics.value.notna()].note.dropna()
    unit = "GPU-hours" if notes.str.contains("GPU-hours").any() else "CPU core-hours"
    if len(shown):
        _log_x_at(ax, np.unique(shown.device_hours.to_numpy(dtype=float)), "{:.3g}")
        legend_outside(ax, handles=legend_handles(styles, shown))
    ax.set_xlabel(f"training cost ({unit}, mean over seeds)")
    ax.set_ylabel("bio conservation score")
    explain_if_empty(ax, "no training cost with a bio score in the tables\n(model.json's cost, per configuration)")
    return fig


SHIFT = {
    "id": "in distribution",
    "unseen_genes": "in distribution, unseen genes in the input",
    "near": "near (seen tissue)",
    "far": "far (unseen tissue)",
    "species": "another species",
}


def fig_shift(summary: pd.DataFrame, score: str = "bio_score", styles: EncodingStyles | None = None):
    """Each configuration's score in distribution, near and far (mean over the level's datasets,
    error bars: the seeds' SD where there are several, else the datasets' SD), the baselines first
    (hatched): PCA, and the random embedding as the chance level."""
    styles = styles or EncodingStyles.of(summary)
    summary = pd.concat([summary[summary.gene_encoding == "baseline"], summary[summary.gene_encoding != "baseline"]])
    levels = [level for level in SHIFT if f"{score}_{level}" in summary.columns]
    fig, ax = plotting.figure(max(5.0, 0.3 * len(summary) * max(1, len(levels)) + 2.5), 3.8)
    width = 0.8 / max(1, len(levels))
    x = np.arange(len(summary))

    def shade(i: int):  # one blue per level, light (in distribution) to dark (far), whatever their number
        return matplotlib.colormaps["Blues"](0.35 + 0.6 * i / max(1, len(levels) - 1))

    for i, level in enumerate(levels):
        spread = summary.get(f"{score}_{level}_seed_sd")
        if spread is None or spread.isna().all():
            spread = summary.get(f"{score}_{level}_sd")
        bars = ax.bar(
            x + (i - (len(levels) - 1) / 2) * width,
            summary[f"{score}_{level}"],
            width,
            yerr=None if spread is None else np.nan_to_num(spread),
            capsize=2,
            label=SHIFT[level],
            color=shade(i),
            edgecolor="black",
            linewidth=0.4,
        )
        for bar, gene in zip(bars, summary.gene_encoding):
            bar.set_hatch("///" if gene == "baseline" else "")
    ax.set_xticks(x, [label(r) for r in summary.itertuples()], rotation=60, ha="right", rotation_mode="anchor")
    ax.set_ylabel(score.replace("_", " ") + " by distribution shift")
    if levels:
        plotting.mark_missing(ax, x, summary[[f"{score}_{level}" for level in levels]].isna().all(axis=1))
        handles = [Patch(facecolor=shade(i), label=SHIFT[lv]) for i, lv in enumerate(levels)]
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="///", label="baseline (random: chance)"))
        legend_outside(ax, handles=handles)
    explain_if_empty(ax, "no evaluation dataset has a shift level\n(tables/shift_levels.csv)")
    return fig


def fig_unseen_genes(unseen: pd.DataFrame | None, styles: EncodingStyles | None = None):
    """Genes held out of training (``pretrain.unseen_genes``): left, each configuration's masked MSE
    on the genes it never trained on over the reference that knows no gene (one mean x̃ for every
    masked token; below 1: the model knows something of a gene it never saw), a black tick at the
    same ratio on the genes it trained on; right, what putting the unseen genes into the input does
    to kNN accuracy (included − left out)."""
    fig, axes = plotting.figure(2 * max(4.0, 0.45 * (0 if unseen is None else len(unseen)) + 1.5), 3.8, 1, 2)
    if unseen is not None and len(unseen):
        styles = styles or EncodingStyles.of(unseen)
        data = unseen.assign(
            unseen_ratio=unseen.masked_mse_unseen / unseen.global_mean_mse_unseen,
            seen_ratio=unseen.masked_mse_seen / unseen.global_mean_mse_seen,
        ).sort_values("unseen_ratio")
        _bars(axes[0], data.assign(unseen_ratio_sd=np.nan), "unseen_ratio", styles)
        axes[0].scatter(
            np.arange(len(data)), data.seen_ratio, marker="_", s=200, color="black", zorder=3, label="genes trained on"
        )
        axes[0].axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        axes[0].legend(fontsize=7, loc="upper left")
        if "accuracy_difference" in data.columns:
            _bars(axes[1], data.assign(accuracy_difference_sd=np.nan), "accuracy_difference", styles)
            axes[1].axhline(0.0, color="grey", linewidth=0.8)
    axes[0].set_ylabel("masked MSE / one-mean MSE\non genes never trained on")
    axes[1].set_ylabel("kNN accuracy: unseen genes\nin the input − left out")
    for ax in axes:
        explain_if_empty(ax, "no unseen genes in this run\n(pretrain.unseen_genes: 0)")
    return fig


SCALING_SCORES = {
    "bio_score": "bio conservation score",
    "batch_score": "batch correction score",
    "accuracy": "kNN accuracy (k = 10)",
}


def fig_scaling(summary: pd.DataFrame, styles: EncodingStyles | None = None):
    """Each main score against the cells a configuration trained on (log axis, ticks at the sizes
    trained), one line per configuration (error bars: SD over datasets); baselines, which do not
    train, as horizontal lines."""
    styles = styles or EncodingStyles.of(summary)
    models = summary[summary.gene_encoding != "baseline"].dropna(subset=["train_cells"])
    baselines = summary[summary.gene_encoding == "baseline"]
    fig, axes = plotting.figure(3.3 * len(SCALING_SCORES) + 1.8, 3.4, 1, len(SCALING_SCORES), squeeze=False)
    sizes = np.unique(models.train_cells.to_numpy(dtype=float))
    for ax, (score, title) in zip(axes[0], SCALING_SCORES.items()):
        for (gene, expression), runs in models.groupby(["gene_encoding", "expression_encoding"]):
            runs = runs.sort_values("train_cells")
            ax.errorbar(
                runs.train_cells,
                runs[score],
                yerr=np.nan_to_num(runs.get(f"{score}_sd", 0.0)),
                capsize=2,
                markersize=5,
                label=f"{gene} · {expression}",
                **styles.line(gene, expression),
            )
        for row in baselines.dropna(subset=[score]).itertuples():
            ax.axhline(
                getattr(row, score),
                color=styles.colour(row.expression_encoding),
                linestyle=styles.gene("baseline").linestyle,
                linewidth=1,
                label=f"baseline · {row.expression_encoding}",
            )
        if len(sizes):
            _log_x_at(ax, sizes, "{:,.0f}")
        ax.set_xlabel("training cells")
        ax.set_ylabel(title)
        explain_if_empty(ax, "no training-set size in the tables\n(model.json's train_cells)")
    if len(models) or len(baselines):
        legend_outside(axes[0][-1], fontsize=6)
    return fig


def _log_x_at(ax, values: np.ndarray, form: str, ratio: float = 1.6) -> None:
    """A log axis labelled at the data's own values (sorted, positive), those at least ``ratio``
    apart: a range under a decade has no decade tick to label, and matplotlib's minor labels collide."""
    values = np.sort(values[values > 0])
    kept = [values[-1]]
    for value in values[::-1][1:]:
        if kept[-1] / value >= ratio:
            kept.append(value)
    ax.set_xscale("log")
    ax.set_xlim(values[0] / 1.5, values[-1] * 1.5)
    axis = ax.xaxis
    axis.set_major_locator(matplotlib.ticker.FixedLocator(sorted(kept)))
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: form.format(v)))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def main_size(summary: pd.DataFrame) -> pd.DataFrame:
    """The study's figures show each configuration at its largest training-set size (and the
    baselines); fig6_scaling shows every size."""
    trained = summary.gene_encoding != "baseline"
    largest = summary[trained].groupby(["gene_encoding", "expression_encoding"]).train_cells.transform("max")
    return summary[~trained | (summary.train_cells == largest.reindex(summary.index)) | summary.train_cells.isna()]


def draw_all(
    summary_csv, metrics_csv, runs: dict, out_dir, caveat: str = "", unseen_genes_csv: Path | None = None
) -> list[Path]:
    """``runs``: each run's model.json → its train_log.parquet; ``unseen_genes_csv``: the tables'
    unseen_genes.csv, where genes were held out of training (fig7_unseen_genes)."""
    out_dir = Path(out_dir)
    every_size = read_summary(summary_csv)
    summary = main_size(every_size)
    metrics = read_metrics_csv(metrics_csv)
    models = summary[summary.gene_encoding != "baseline"]
    logs = {}
    for model, train_log in runs.items():  # the run's identity from its status file
        status = read_run_status(model)
        logs[status.configuration] = (status, read_train_log(train_log))
    styles = EncodingStyles.of(every_size)  # one look per encoding in every figure of the run
    comparison_figure, comparison = fig_paper_comparison(models, caveat, styles)
    drawn = {
        "fig1_batch_vs_bio": fig_batch_vs_bio(summary, styles),
        "fig2_classification": fig_classification(summary, styles),
        "fig3_min_train_mse": fig_min_train_mse(models, styles),
        "loss_curves": fig_loss_curves(logs, styles),
        "heatmap_per_dataset": fig_heatmap(metrics),
        "fig4_cost_vs_bio": fig_cost(models, metrics, styles),
        "fig5_shift": fig_shift(summary, styles=styles),
        "fig6_scaling": fig_scaling(every_size, styles),
        "paper_comparison": comparison_figure,
    }
    if unseen_genes_csv is not None:
        unseen = main_size(read_unseen_genes_table(unseen_genes_csv))
        drawn["fig7_unseen_genes"] = fig_unseen_genes(unseen, styles)
    paths = []
    for name, fig in drawn.items():
        plotting.caveat(fig, caveat)
        paths += save(fig, out_dir, name)
    with atomic_path(out_dir / "paper_comparison.csv", suffix=".csv") as tmp:
        comparison.to_csv(tmp, index=False)
    return paths


def run(
    summary: Path,
    metrics: Path,
    out_dir: OutputFolder,
    train_logs: Sequence[Path] = (),
    models: Sequence[Path] = (),
    caveat: str = "",
    unseen_genes: Path | None = None,
) -> list[Path]:
    """The study's figures (PNG and PDF in ``out_dir``) from the tables and the runs' training logs
    with their status files (``models``: each log's model.json, in the same order); ``caveat``:
    printed on the paper comparison (e.g. demo data, tiny models); ``unseen_genes``: the tables'
    unseen_genes.csv (adds fig7_unseen_genes)."""
    if len(models) != len(train_logs):
        raise ScencodeError(f"{len(train_logs)} training logs but {len(models)} model.json files: one per run")
    paths = draw_all(summary, metrics, dict(zip(models, train_logs)), out_dir, caveat, unseen_genes)
    log.info("figures: %s", ", ".join(p.name for p in paths))
    return paths
