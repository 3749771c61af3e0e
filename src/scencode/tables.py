"""From per-(configuration, dataset) metric tables to the study's tables.

* ``metrics.csv``: every row of every table (long form).
* ``summary.csv``: one row per configuration (gene × expression encoding × training-set size
  ``train_cells``; seeds pooled): mean and
  SD across datasets of batch and bio scores, kNN (k = 10) accuracy and macro F1, minimum training
  masked MSE, held-out test masked MSE, masked MSE on the evaluation datasets (``eval_mse``: how
  well pretraining transfers to unseen tissues), and scib-metrics' own aggregate (``scib_total``, when
  run); with several seeds, ``*_seed_sd`` is the SD across seeds within a dataset, averaged over
  datasets, so a difference between encodings can be set against training noise; ``note`` says why
  values are missing (no model, one batch, ...) and for which datasets.
* ``tests.csv``: paired Wilcoxon signed-rank tests across datasets (scipy): learned vs esm2 per
  expression encoding, esm2 vs esm2_permuted, and the declared reference expression encoding
  (``evaluate.reference_expression``) vs each other one (per gene encoding), with the
  matched-pairs rank-biserial effect size, the mean difference, Benjamini-Hochberg q-values within
  each family (comparison × metric × size) and the smallest p-value the exact test can reach with
  that many datasets (2 / 2^n: with 3 datasets no difference can be significant at 0.05).
* ``rank_stability.csv``: with several training-set sizes, Kendall's τ of the configurations'
  ranking between every pair of sizes, with a bootstrap interval over evaluation datasets.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
from scipy.stats import false_discovery_control, rankdata, wilcoxon

from .atomic import OutputFolder, atomic_path
from .errors import ScencodeError
from .formats import PER_GENE_GROUPS, read_metric_table
from .parquet_io import polars_frame
from .workflow_config import TISSUE_MIN_CELLS, shift_levels

log = logging.getLogger(__name__)

SUMMARY = {
    "batch_score": ("batch_score", "study"),
    "bio_score": ("bio_score", "study"),
    "accuracy": ("accuracy", "knn_k10"),
    "macro_f1": ("macro_f1", "knn_k10"),
    "min_train_mse": ("min_train_mse", "reconstruction"),
    "test_mse": ("test_mse", "reconstruction"),
    "eval_mse": ("masked_mse", "reconstruction"),
    # the context diagnostic on the evaluation datasets: a model near eval_gene_mean_mse learned
    # little beyond each gene's mean; eval_mse_no_context is the model without expression context
    "eval_mse_no_context": ("masked_mse_no_context", "reconstruction"),
    "eval_gene_mean_mse": ("gene_mean_mse", "reconstruction"),
    "final_val_loss": ("final_val_loss", "training"),
    "still_improving": ("still_improving", "training"),
    "checkpoint_step": ("checkpoint_step", "training"),
    "scib_total": ("total", "scib_metrics"),
    # what each result cost: training wall time, GPU-hours (CPU core-hours on a CPU), throughput, MFU
    "wall_hours": ("wall_hours", "cost"),
    "device_hours": ("device_hours", "cost"),
    "tokens_per_s": ("tokens_per_s", "cost"),
    "mfu": ("mfu", "cost"),
}
TESTED = ("batch_score", "bio_score", "accuracy", "macro_f1")


KEYS = ["gene_encoding", "expression_encoding", "train_cells"]  # train_cells: null for baselines (not trained)


def load_metrics(paths) -> pl.DataFrame:
    """Every metric table, checked (:func:`formats.read_metric_table`) and stacked (tables without a
    column get nulls there)."""
    if not paths:
        raise ScencodeError("tables: no metric table given")
    tables = [polars_frame(read_metric_table(p)).with_columns(pl.col("value").cast(pl.Float64)) for p in paths]
    return metric_frame(pl.concat(tables, how="diagonal_relaxed"))


def metric_frame(metrics) -> pl.DataFrame:
    """A long metric table (polars or pandas) with NaN values as missing, so that means skip them,
    and each row's training-set size (:func:`with_train_cells`), in one canonical row order: the
    aggregations below keep it (``maintain_order``), so their sums run in the same order every time
    and the tables are the same to the last bit (a join's or group_by's own order is not fixed)."""
    frame = metrics if isinstance(metrics, pl.DataFrame) else pl.from_pandas(metrics)
    frame = with_train_cells(frame.with_columns(pl.col("value").fill_nan(None)))
    return frame.sort("configuration", "dataset", "group", "metric")


def with_train_cells(metrics: pl.DataFrame) -> pl.DataFrame:
    """``train_cells``: the cells each run trained on, from its reconstruction table's training row
    (what pretraining drew, recorded in model.json), so that runs of one configuration at several
    sizes stay apart and seeds of one size pool. Null for baselines, which are not trained."""
    if "train_cells" in metrics.columns:
        return metrics
    sizes = (
        metrics.filter((pl.col("metric") == "train_cells") & (pl.col("group") == "training"))
        .select("configuration", train_cells=pl.col("value").cast(pl.Int64))
        .unique("configuration")
    )
    return metrics.join(sizes, on="configuration", how="left")


def summary_table(metrics: pl.DataFrame) -> pl.DataFrame:
    """One row per configuration: per summary metric, seeds averaged per dataset first, then mean,
    SD across datasets and the SD across seeds within a dataset averaged over datasets."""
    metrics = metric_frame(metrics)
    wanted = pl.DataFrame(
        {"name": list(SUMMARY), "metric": [m for m, _ in SUMMARY.values()], "group": [g for _, g in SUMMARY.values()]}
    )
    per_dataset = (
        metrics.join(wanted, on=["metric", "group"], maintain_order="left")
        .group_by(*KEYS, "name", "dataset", maintain_order=True)
        .agg(mean=pl.col("value").mean(), seed_sd=pl.col("value").std(ddof=1))
    )
    per_name = per_dataset.group_by(*KEYS, "name", maintain_order=True).agg(
        value=pl.col("mean").mean(),
        sd=pl.when(pl.col("mean").count() > 1).then(pl.col("mean").std(ddof=1)),
        seed_sd=pl.col("seed_sd").mean(),
        n=pl.col("mean").count(),  # the datasets (or runs, for a run-level value) this value averages
    )
    table = metrics.group_by(KEYS).agg(
        seeds=pl.col("seed").n_unique(), datasets=pl.col("dataset").filter(pl.col("dataset") != "*").n_unique()
    )
    for name in SUMMARY:
        table = table.join(
            per_name.filter(pl.col("name") == name).select(
                *KEYS,
                pl.col("value").alias(name),
                pl.col("sd").alias(f"{name}_sd"),
                pl.col("seed_sd").alias(f"{name}_seed_sd"),
                pl.col("n").alias(f"{name}_n"),
            ),
            on=KEYS,
            how="left",
            nulls_equal=True,
        )
    return (
        table.join(summary_notes(metrics, wanted), on=KEYS, how="left", nulls_equal=True)
        .with_columns(pl.col("note").fill_null(""))
        .sort(KEYS)
    )


def summary_notes(metrics: pl.DataFrame, wanted: pl.DataFrame) -> pl.DataFrame:
    """Why summary values are missing or rest on fewer datasets: per configuration, the notes of
    its missing summary values, each with the datasets it applies to."""
    notes = (
        metrics.join(wanted, on=["metric", "group"])
        .filter(pl.col("value").is_null() & (pl.col("note").fill_null("") != ""))
        .group_by(*KEYS, "note")
        .agg(pl.col("dataset").unique().sort().str.join(", "))
        .sort("note")
        .group_by(*KEYS, maintain_order=True)
        .agg(pl.format("{} ({})", "note", "dataset").str.join("; ").alias("note"))
    )
    return notes


def paired_tests(metrics: pl.DataFrame, reference: str = "soft") -> pl.DataFrame:
    """Paired Wilcoxon tests across datasets, all declared before the results: learned vs esm2 per
    expression encoding, esm2 vs esm2_permuted (protein knowledge, frozen geometry held fixed) and
    the ``reference`` expression encoding vs each other one, per gene encoding."""
    per = (
        metric_frame(metrics)
        .filter(pl.col("metric").is_in(TESTED) & pl.col("group").is_in(["study", "knn_k10"]))
        .group_by(*KEYS, "dataset", "metric", maintain_order=True)
        .agg(pl.col("value").mean())
    )
    rows = []
    expressions = sorted(per["expression_encoding"].unique())
    for size in per["train_cells"].unique().sort():  # configurations are compared at one size
        at = per.filter(pl.col("train_cells").eq_missing(size))
        for metric in TESTED:
            for expr in expressions:
                rows.append(_test(at, metric, ("learned", expr), ("esm2", expr), "learned vs esm2"))
                rows.append(_test(at, metric, ("esm2", expr), ("esm2_permuted", expr), "esm2 vs esm2_permuted"))
            for gene in ("learned", "esm2"):
                for expr in expressions:
                    if expr != reference:
                        rows.append(
                            _test(
                                at,
                                metric,
                                (gene, reference),
                                (gene, expr),
                                f"reference ({reference}) vs other expression encoding",
                            )
                        )
    tests = pl.DataFrame([r for r in rows if r is not None], schema=TEST_SCHEMA, orient="row")
    return with_q_values(tests)


TEST_SCHEMA = {
    "comparison": pl.String,
    "metric": pl.String,
    "train_cells": pl.Int64,
    "a": pl.String,
    "b": pl.String,
    "datasets": pl.Int64,
    "mean_a": pl.Float64,
    "mean_b": pl.Float64,
    "mean_difference": pl.Float64,
    "statistic": pl.Float64,
    "p_value": pl.Float64,
    "min_attainable_p": pl.Float64,
    "rank_biserial": pl.Float64,
}


def with_q_values(tests: pl.DataFrame) -> pl.DataFrame:
    """Benjamini-Hochberg q-values within each family of tests (one comparison on one metric at one
    training-set size)."""
    q = np.full(len(tests), np.nan)
    indexed = tests.with_row_index("row").filter(pl.col("p_value").is_not_nan())
    for _, family in indexed.group_by("comparison", "metric", "train_cells"):
        q[family["row"].to_numpy()] = false_discovery_control(family["p_value"].to_numpy(), method="bh")
    return tests.with_columns(q_value=pl.Series(q))


def _test(per: pl.DataFrame, metric: str, a: tuple, b: tuple, comparison: str) -> tuple | None:
    def values(config: tuple) -> pl.DataFrame:
        return per.filter(
            (pl.col("gene_encoding") == config[0])
            & (pl.col("expression_encoding") == config[1])
            & (pl.col("metric") == metric)
        )

    left, right = values(a), values(b)
    if left.is_empty() or right.is_empty():
        return None
    pair = (
        left.select("dataset", a=pl.col("value"))
        .join(right.select("dataset", b=pl.col("value")), on="dataset")
        .drop_nulls()
        .sort("dataset")
    )
    if pair.is_empty():  # a configuration without a model: nothing to test
        return None
    x, y = pair["a"].to_numpy(), pair["b"].to_numpy()
    diff = x - y
    nonzero = diff[diff != 0]  # scipy drops zero differences (zero_method="wilcox")
    statistic = p_value = rank_biserial = np.nan
    if len(nonzero) >= 2:
        result = wilcoxon(x, y)
        ranks = rankdata(np.abs(nonzero))
        statistic, p_value = float(result.statistic), float(result.pvalue)
        rank_biserial = float((ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum()) / ranks.sum())
    # the exact two-sided test's floor: every non-zero difference with the same sign
    # (2.0 ** (1 - n), not 2 / 2 ** n: an int 2 ** n of 1,180 species genes overflows a float)
    floor = min(1.0, 2.0 ** (1 - len(nonzero))) if len(nonzero) else np.nan
    return (
        comparison,
        metric,
        left["train_cells"][0],
        "-".join(a),
        "-".join(b),
        len(pair),
        x.mean(),
        y.mean(),
        diff.mean(),
        statistic,
        p_value,
        floor,
        rank_biserial,
    )


# in-distribution test split (and with the genes held out of training in the input), seen tissue in
# new batches, unseen tissue
SHIFT_LEVELS = ("id", "unseen_genes", "near", "far", "species")
IN_DISTRIBUTION_LEVELS = ("id", "unseen_genes")  # the training corpus's cells
# not in the study's summary (its evaluation datasets: near and far): the training corpus's cells,
# and another organism's datasets (a question the study did not ask); each has its shift columns
BEYOND_STUDY_LEVELS = (*IN_DISTRIBUTION_LEVELS, "species")
SHIFT_SCORES = ("batch_score", "bio_score", "accuracy", "macro_f1")


def by_level(metrics: pl.DataFrame, levels: dict[str, str]) -> dict[str, pl.DataFrame]:
    """The metric rows of each shift level's datasets (the dataset-less rows, ``*``, in none)."""
    level = pl.col("dataset").replace_strict(levels, default=None, return_dtype=pl.String)
    tagged = metrics.with_columns(level=level)
    return {name: tagged.filter(pl.col("level") == name).drop("level") for name in SHIFT_LEVELS}


def shift_columns(metrics: pl.DataFrame, levels: dict[str, str]) -> pl.DataFrame:
    """Per configuration and shift level: the main scores as ``<score>_<level>`` (mean over the
    level's datasets, seeds averaged first), ``_sd`` (across datasets) and ``_seed_sd`` (across
    seeds), and the gap to the in-distribution score (``<score>_gap_<level>`` = ID - level; for
    ``unseen_genes`` a negative gap is what the unseen genes in the input add)."""
    table = None
    for name, rows in by_level(metrics, levels).items():
        if rows.is_empty():
            continue
        part = summary_table(rows).select(
            *KEYS,
            *(
                pl.col(f"{score}{suffix}").alias(f"{score}_{name}{suffix}")
                for score in SHIFT_SCORES
                for suffix in ("", "_sd", "_seed_sd")
            ),
        )
        table = part if table is None else table.join(part, on=KEYS, how="full", coalesce=True, nulls_equal=True)
    if table is None:
        return pl.DataFrame(
            schema={"gene_encoding": pl.String, "expression_encoding": pl.String, "train_cells": pl.Int64}
        )
    gaps = [
        (pl.col(f"{score}_id") - pl.col(f"{score}_{name}")).alias(f"{score}_gap_{name}")
        for score in SHIFT_SCORES
        for name in SHIFT_LEVELS[1:]
        if f"{score}_id" in table.columns and f"{score}_{name}" in table.columns
    ]
    return table.with_columns(gaps)


UNSEEN_GENE_GROUP, SPECIES_GENE_GROUP = (
    PER_GENE_GROUPS  # evaluate's per-gene rows: metric = token id, value = masked MSE
)
UNSEEN_DIAGNOSTIC = tuple(
    f"{metric}_{group}"
    for group in ("seen", "unseen")
    for metric in ("masked_mse", "gene_mean_mse", "global_mean_mse", "masked_mse_no_context")
)


def unseen_genes_table(metrics: pl.DataFrame, levels: dict[str, str]) -> pl.DataFrame:
    """Per configuration, what the genes held out of training do (``pretrain.unseen_genes``): the
    masked MSE, the gene-mean reference and the no-context MSE on the seen and on the unseen genes
    (the test split with them in the input), ``unseen_vs_gene_mean`` (masked MSE / gene-mean MSE on
    the unseen genes: below 1, the model predicts a gene it never trained on better than that gene's
    own mean would, an oracle it cannot have), ``unseen_vs_global_mean`` (against one mean for every
    token, the reference that knows no gene: below 1, the model knows something of a gene it never
    trained on), and the main scores with the unseen genes left out (``_left_out``, as trained)
    and in the input (``_included``), with the difference (included - left out). Seeds averaged
    first; ``_seed_sd`` across seeds."""
    diagnostic = (
        metric_frame(metrics)
        .filter((pl.col("group") == "unseen_genes") & pl.col("metric").is_in(UNSEEN_DIAGNOSTIC))
        .group_by(*KEYS, "metric", maintain_order=True)
        .agg(pl.col("value").mean(), seed_sd=pl.col("value").std(ddof=1), seeds=pl.col("seed").n_unique())
    )
    # every configuration scored on the level is a row, measured or not (an empty test split, no model)
    in_input = [d for d, level in levels.items() if level == "unseen_genes"]
    scored = metric_frame(metrics).filter(pl.col("dataset").is_in(in_input))
    table = scored.group_by(KEYS, maintain_order=True).agg(seeds=pl.col("seed").n_unique())
    if not diagnostic.is_empty():
        wide = diagnostic.pivot(on="metric", index=[*KEYS], values="value")
        table = table.join(wide, on=KEYS, how="left", nulls_equal=True)
    for metric in UNSEEN_DIAGNOSTIC:
        if metric not in table.columns:
            table = table.with_columns(pl.lit(None, pl.Float64).alias(metric))
    table = table.with_columns(
        unseen_vs_gene_mean=pl.col("masked_mse_unseen") / pl.col("gene_mean_mse_unseen"),
        unseen_vs_global_mean=pl.col("masked_mse_unseen") / pl.col("global_mean_mse_unseen"),
    )
    shift = shift_columns(metrics, {d: v for d, v in levels.items() if v in IN_DISTRIBUTION_LEVELS})
    renamed = {}
    for score in SHIFT_SCORES:
        for level, name in (("id", "left_out"), ("unseen_genes", "included")):
            for suffix in ("", "_seed_sd"):
                if f"{score}_{level}{suffix}" in shift.columns:
                    renamed[f"{score}_{level}{suffix}"] = f"{score}_{name}{suffix}"
    scores = shift.select(*KEYS, *renamed).rename(renamed)
    table = table.join(scores, on=KEYS, how="left", nulls_equal=True)
    table = table.with_columns(
        (pl.col(f"{score}_included") - pl.col(f"{score}_left_out")).alias(f"{score}_difference")
        for score in SHIFT_SCORES
        if f"{score}_included" in table.columns and f"{score}_left_out" in table.columns
    )
    return table.sort(KEYS)


SPECIES_SCORES = (*SHIFT_SCORES, "eval_mse", "eval_mse_no_context", "eval_gene_mean_mse")


def species_table(metrics: pl.DataFrame, levels: dict[str, str]) -> pl.DataFrame:
    """Per configuration, its scores on another organism's datasets (scencode.species) beside the
    near level's (the training organism, seen tissues, new batches): ``<score>_species``,
    ``<score>_near`` and ``<score>_difference`` (species - near), the masked-value diagnostic on both
    (``eval_mse``, its no-context and gene-mean references) and ``<level>_vs_gene_mean`` (masked MSE /
    gene-mean MSE: below 1, the model predicts a gene better than the gene's own mean in the dataset).
    Seeds averaged first; ``_seed_sd`` across seeds. A configuration scored on the species level is a
    row, measured or not."""
    rows = by_level(metrics, levels)
    table = metric_frame(rows["species"]).group_by(KEYS, maintain_order=True).agg(seeds=pl.col("seed").n_unique())
    for level in ("species", "near"):
        if rows[level].is_empty():
            continue
        part = summary_table(rows[level])
        columns = [f"{score}{suffix}" for score in SPECIES_SCORES for suffix in ("", "_seed_sd")]
        part = part.select(
            *KEYS,
            *(
                pl.col(c).alias(c.replace(c.removesuffix("_seed_sd"), f"{c.removesuffix('_seed_sd')}_{level}", 1))
                for c in columns
                if c in part.columns
            ),
        )
        table = table.join(part, on=KEYS, how="left", nulls_equal=True)
    for level in ("species", "near"):
        if f"eval_mse_{level}" in table.columns and f"eval_gene_mean_mse_{level}" in table.columns:
            table = table.with_columns(
                (pl.col(f"eval_mse_{level}") / pl.col(f"eval_gene_mean_mse_{level}")).alias(f"{level}_vs_gene_mean")
            )
    table = table.with_columns(
        (pl.col(f"{score}_species") - pl.col(f"{score}_near")).alias(f"{score}_difference")
        for score in SHIFT_SCORES
        if f"{score}_species" in table.columns and f"{score}_near" in table.columns
    )
    return table.sort(KEYS)


def per_gene_tests(per_gene: pl.DataFrame, group: str = UNSEEN_GENE_GROUP, genes: str = "unseen genes") -> pl.DataFrame:
    """Does transfer win on genes never trained on? Paired Wilcoxon tests over the genes (``group``'s
    per-gene rows: the unseen genes, or another organism's) of their masked MSE (seeds and datasets
    averaged; ``datasets`` then counts genes): learned vs esm2 per expression encoding, and esm2 vs
    esm2_permuted."""
    per = (
        metric_frame(per_gene.filter(pl.col("group") == group))
        .group_by(*KEYS, "metric", maintain_order=True)
        .agg(pl.col("value").mean())
        .select(*KEYS, dataset=pl.col("metric"), metric=pl.lit(group), value=pl.col("value"))
    )
    rows = []
    for size in per["train_cells"].unique().sort():
        at = per.filter(pl.col("train_cells").eq_missing(size))
        for expr in sorted(at["expression_encoding"].unique()):
            comparisons = (
                (("learned", expr), ("esm2", expr), f"learned vs esm2 (pairs: {genes})"),
                (("esm2", expr), ("esm2_permuted", expr), f"esm2 vs esm2_permuted (pairs: {genes})"),
            )
            rows += [_test(at, group, a, b, name) for a, b, name in comparisons]
    tests = pl.DataFrame([r for r in rows if r is not None], schema=TEST_SCHEMA, orient="row")
    return with_q_values(tests)


RANKED_SCORES = ("bio_score", "batch_score", "accuracy", "macro_f1")
BOOTSTRAP = 1000


def rank_stability(metrics: pl.DataFrame, seed: int = 0, n_boot: int = BOOTSTRAP) -> pl.DataFrame:
    """Does the ranking of configurations hold as training data grow? For every pair of training-set
    sizes and each main score: Kendall's τ (scipy, τ-b) between the configurations' scores at the two
    sizes (mean over the datasets both have, seeds averaged first), and a percentile bootstrap
    interval (95 %) from resampling those datasets with replacement (seeded). Baselines are left out
    (they do not train); a configuration enters a pair when it has a score at both sizes."""
    from scipy.stats import kendalltau

    per = (
        metric_frame(metrics)
        .filter(
            pl.col("metric").is_in(RANKED_SCORES)
            & pl.col("group").is_in(["study", "knn_k10"])
            & pl.col("train_cells").is_not_null()
            & (pl.col("dataset") != "*")
        )
        .group_by(*KEYS, "dataset", "metric", maintain_order=True)
        .agg(pl.col("value").mean())
        .drop_nulls("value")
    )
    sizes = sorted(per["train_cells"].unique())
    rng = np.random.default_rng(seed)
    rows = []
    for score in RANKED_SCORES:
        wide = (
            per.filter(pl.col("metric") == score)
            .with_columns(configuration=pl.concat_str("gene_encoding", "expression_encoding", separator="-"))
            .pivot(on="dataset", index=["configuration", "train_cells"], values="value")
        )
        for i, small in enumerate(sizes):
            for large in sizes[i + 1 :]:
                a, b = (wide.filter(pl.col("train_cells") == n).drop("train_cells") for n in (small, large))
                both = a.join(b, on="configuration", suffix="__b")
                datasets = [
                    c
                    for c in a.columns[1:]
                    if f"{c}__b" in both.columns and both[c].is_not_null().all() and both[f"{c}__b"].is_not_null().all()
                ]
                if both.height < 2 or not datasets:
                    continue
                x = both.select(datasets).to_numpy()
                y = both.select(f"{c}__b" for c in datasets).to_numpy()
                tau = kendalltau(x.mean(1), y.mean(1)).statistic
                draws = rng.integers(0, len(datasets), (n_boot, len(datasets)))
                boot = np.array([kendalltau(x[:, d].mean(1), y[:, d].mean(1)).statistic for d in draws])
                low, high = np.nanpercentile(boot, [2.5, 97.5]) if np.isfinite(boot).any() else (np.nan, np.nan)
                rows.append(
                    (score, small, large, both.height, len(datasets), float(tau), float(low), float(high), n_boot)
                )
    return pl.DataFrame(
        rows,
        orient="row",
        schema={
            "score": pl.String,
            "train_cells_a": pl.Int64,
            "train_cells_b": pl.Int64,
            "configurations": pl.Int64,
            "datasets": pl.Int64,
            "kendall_tau": pl.Float64,
            "tau_low": pl.Float64,
            "tau_high": pl.Float64,
            "bootstrap": pl.Int64,
        },
    )


def write_tables(metric_paths, out_dir, reference_expression: str = "soft", levels: dict | None = None) -> dict:
    """``levels``: dataset → shift level (:data:`SHIFT_LEVELS`). The study's summary and tests are over
    the evaluation datasets of the training organism (near and far); the shift columns and each
    level's tests (in distribution, unseen genes, species) sit beside them."""
    metrics = load_metrics(metric_paths)
    per_gene = metrics.filter(pl.col("group").is_in(PER_GENE_GROUPS))  # the per-gene tests' pairs, not a table's rows
    metrics = metrics.filter(~pl.col("group").is_in(PER_GENE_GROUPS))
    levels = levels or {}
    beyond = [d for d, level in levels.items() if level in BEYOND_STUDY_LEVELS]
    evaluation = metrics.filter(~pl.col("dataset").is_in(beyond))
    summary = summary_table(evaluation)
    shift = shift_columns(metrics, levels)
    if shift.width > len(KEYS):
        summary = summary.join(shift, on=KEYS, how="left", nulls_equal=True)
    tests = paired_tests(evaluation, reference_expression).with_columns(level=pl.lit("evaluation"))
    for name, rows in by_level(metrics, levels).items():
        if not rows.is_empty():
            tests = pl.concat([tests, paired_tests(rows, reference_expression).with_columns(level=pl.lit(name))])
    tables = {
        "metrics.csv": metrics,
        "summary.csv": summary,
        "tests.csv": tests,
        "rank_stability.csv": rank_stability(evaluation),
    }
    if "unseen_genes" in levels.values():  # pretrain.unseen_genes: the test split scored with them in the input
        tables["unseen_genes.csv"] = unseen_genes_table(metrics, levels)
        tables["tests.csv"] = pl.concat([tests, per_gene_tests(per_gene).with_columns(level=pl.lit("unseen_genes"))])
    if "species" in levels.values():  # datasets of another organism (scencode.species)
        tables["species.csv"] = species_table(metrics, levels)
        species_tests = per_gene_tests(per_gene, SPECIES_GENE_GROUP, "species genes")
        tables["tests.csv"] = pl.concat([tables["tests.csv"], species_tests.with_columns(level=pl.lit("species"))])
    for name, table in tables.items():
        with atomic_path(Path(out_dir) / name, suffix=".csv") as tmp:
            # pandas writes the CSV: floats as the shortest repr, missing values as empty cells
            table.to_pandas().to_csv(tmp, index=False)
    return {name: len(table) for name, table in tables.items()}


def measured_tissues(qc_reports) -> dict[str, dict[str, int]]:
    """Dataset → cells per tissue kept by QC (its report's ``tissues``)."""
    out = {}
    for path in qc_reports:
        try:
            report = json.loads(Path(path).read_text())
            out[report["dataset_id"]] = dict(report.get("tissues", {}))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ScencodeError(f"not a readable QC report ({exc})", path) from None
    return out


def levels_from_data(shift: dict, qc_reports) -> dict[str, str]:
    """``shift``: {datasets: name → {role, tissue}, min_cells, scored: the datasets scored}; the
    levels of the scored datasets, from the sheet's tissues and the tissues QC found in the data."""
    try:
        datasets, scored = shift["datasets"], set(shift["scored"])
        min_cells = int(shift.get("min_cells", TISSUE_MIN_CELLS))
    except (KeyError, TypeError, ValueError) as exc:
        raise ScencodeError(f"--shift needs datasets, scored and min_cells ({exc})") from None
    levels = shift_levels(datasets, measured_tissues(qc_reports), min_cells)
    return {d: level for d, level in levels.items() if d in scored}


def run(
    metrics: list[Path],
    out_dir: OutputFolder,
    reference_expression: str = "soft",
    levels: dict | None = None,
    shift: dict | None = None,
    qc_reports: Sequence[Path] = (),
) -> dict:
    """metrics.csv, summary.csv, tests.csv and rank_stability.csv in ``out_dir`` from per-(run, dataset) metric tables;
    ``reference_expression``: the expression encoding compared with each other one (declared in
    config, not picked from the results); ``levels``: JSON dataset → shift level (id: the training
    corpus's held-out test split; near: a training tissue in new batches; far: a tissue no training
    dataset has); ``shift`` with ``qc_reports`` instead: the levels decided from the data
    (:func:`levels_from_data`), written to ``shift_levels.csv``."""
    if shift is not None:
        levels = levels_from_data(shift, qc_reports)
        with atomic_path(Path(out_dir) / "shift_levels.csv", suffix=".csv") as tmp:
            pl.DataFrame({"dataset": list(levels), "level": list(levels.values())}).sort("dataset").write_csv(tmp)
        log.info("shift levels: %s", levels)
    counts = write_tables(metrics, out_dir, reference_expression, levels)
    log.info("tables: %s", counts)
    return counts
