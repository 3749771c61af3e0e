"""The study's figures (``scencode.figures``): what each one shows."""

import numpy as np
import pandas as pd
import pytest
from helpers import synthetic_metrics, with_a_configuration_without_a_model, write_status

from scencode.figures import draw_all
from scencode.tables import summary_table

RUNS = ("learned-soft-s0", "learned-hard-s0", "esm2-soft-s0", "esm2-hard-s0")


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """Every figure drawn from synthetic tables and two training logs: name → the matplotlib figure
    as it was saved (figures.save is wrapped to keep it)."""
    from scencode import figures

    tmp_path = tmp_path_factory.mktemp("figures")
    metrics = with_a_configuration_without_a_model(synthetic_metrics())
    metrics.to_csv(tmp_path / "metrics.csv", index=False)
    summary_table(metrics).to_pandas().to_csv(tmp_path / "summary.csv", index=False)
    runs = {}
    for run in RUNS[:2]:
        log = pd.DataFrame(
            {
                "step": [1, 2, 3],
                "epoch": 0,
                "lr": 1e-3,
                "train_loss": [1.0, 0.5, 0.3],
                "val_loss": [np.nan, 0.6, np.nan],
                "grad_norm": 1.0,
                "tokens_per_s": 1.0,
                "cells_per_s": 1.0,
            }
        )
        (tmp_path / run).mkdir()
        log.to_parquet(tmp_path / run / "train_log.parquet")
        runs[write_status(tmp_path / run, run)] = tmp_path / run / "train_log.parquet"
    configurations = [run.rsplit("-", 1)[0].split("-") for run in RUNS]
    unseen = pd.DataFrame(configurations, columns=["gene_encoding", "expression_encoding"]).assign(
        train_cells=1000,
        masked_mse_unseen=[0.9, 0.8, 0.5, 0.55],
        gene_mean_mse_unseen=0.6,
        masked_mse_seen=0.3,
        gene_mean_mse_seen=0.4,
        global_mean_mse_unseen=0.8,
        global_mean_mse_seen=0.7,
        accuracy_difference=[-0.02, -0.01, 0.03, 0.02],
    )
    ratios = {
        "unseen_vs_gene_mean": unseen.masked_mse_unseen / 0.6,
        "unseen_vs_global_mean": unseen.masked_mse_unseen / 0.8,
    }
    unseen.assign(**ratios).to_csv(tmp_path / "unseen.csv", index=False)
    kept, save = {}, figures.save

    def keep(fig, out_dir, name):
        kept[name] = fig
        return save(fig, out_dir, name)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(figures, "save", keep)
        paths = draw_all(
            tmp_path / "summary.csv", tmp_path / "metrics.csv", runs, tmp_path / "figures", "", tmp_path / "unseen.csv"
        )
    return kept, paths, tmp_path / "figures"


def plotted(ax) -> int:
    return len(ax.lines) + len(ax.collections) + len(ax.patches) + len(ax.images) + len(ax.containers)


def test_every_figure_is_written_with_labelled_non_empty_panels(drawn):
    kept, paths, _ = drawn
    assert {p.name for p in paths} == {f"{name}.{ext}" for name in kept for ext in ("png", "pdf")}
    assert {"fig1_batch_vs_bio", "fig2_classification", "fig3_min_train_mse", "loss_curves"} <= set(kept)
    assert {"heatmap_per_dataset", "paper_comparison", "fig7_unseen_genes"} <= set(kept)
    for name, fig in kept.items():
        panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        assert panels, name
        for ax in panels:
            if not ax.axison:  # a panel that holds the legend
                assert ax.get_legend() is not None, name
                continue
            assert plotted(ax) > 0 or ax.texts, f"{name}: an empty panel that does not say why"
            assert ax.get_xlabel() or ax.get_ylabel() or ax.get_title() or ax.get_xticklabels(), name


def test_batch_versus_bio_has_one_point_per_configuration_with_a_model(drawn):
    kept, _, _ = drawn
    ax = kept["fig1_batch_vs_bio"].axes[0]
    assert ax.get_xlabel().lower().startswith("batch") and ax.get_ylabel().lower().startswith("bio")
    points = sum(len(c.get_offsets()) for c in ax.collections) + sum(len(line.get_xdata()) == 1 for line in ax.lines)
    assert points >= len(RUNS)  # esm2-log has no model: it is not a point


def test_loss_curves_have_one_line_per_run_in_each_panel(drawn):
    kept, _, _ = drawn
    train, val = kept["loss_curves"].axes[:2]
    assert train.get_title() == "training masked MSE" and val.get_title() == "validation masked MSE"
    assert len(train.lines) == len(val.lines) == 2
    assert sorted(line.get_label() for line in train.lines) == sorted(RUNS[:2])
    assert list(train.lines[0].get_ydata()) == [1.0, 0.5, 0.3] and list(val.lines[0].get_ydata()) == [0.6]


def test_the_paper_comparison_lists_the_studys_metrics(drawn):
    _, _, folder = drawn
    comparison = pd.read_csv(folder / "paper_comparison.csv")
    assert set(comparison.metric) == {"macro_f1", "accuracy", "batch_score", "bio_score", "min_train_mse"}


def test_a_status_file_per_training_log_is_required(tmp_path):
    from scencode.errors import ScencodeError
    from scencode.figures import run

    with pytest.raises(ScencodeError, match="2 training logs but 1 model.json files"):
        run(tmp_path / "s.csv", tmp_path / "m.csv", tmp_path, [tmp_path / "a", tmp_path / "b"], [tmp_path / "a"])


def test_every_figure_keeps_its_text_inside_the_canvas_and_its_tick_labels_apart(drawn):
    from scencode.plotting import layout_problems

    kept, _, _ = drawn
    for name, fig in kept.items():
        assert layout_problems(fig) == [], name
    train = kept["loss_curves"].axes[0]  # a loss axis a reader can read: its values are labelled
    assert any(t.get_text() for t in train.get_yticklabels() + train.get_yticklabels(minor=True))


def test_the_same_configuration_looks_the_same_in_every_figure(drawn):
    kept, _, _ = drawn
    scatter = kept["fig1_batch_vs_bio"].axes[0]
    loss = kept["loss_curves"].axes[0]
    colours = {line.get_label(): line.get_color() for line in loss.lines}  # run name -> colour
    points = {(line.get_marker(), line.get_color()) for line in scatter.lines if len(line.get_xdata()) == 1}
    assert colours["learned-soft-s0"] != colours["learned-hard-s0"]
    assert ("o", colours["learned-soft-s0"]) in points and ("o", colours["learned-hard-s0"]) in points
