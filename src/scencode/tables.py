"""From per-(configuration, dataset) metric tables to the study's tables.

* ``metrics.csv``: every row of every table (long form).
* ``summary.csv``: one row per configuration (gene × expression encoding; seeds pooled): mean and
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
  each family (comparison × metric) and the smallest p-value the exact test can reach with that
  many datasets (2 / 2^n: with 3 datasets no difference can be significant at 0.05).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control, wilcoxon

from .atomic import OutputFolder, atomic_path

log = logging.getLogger(__name__)

SUMMARY = {"batch_score": ("batch_score", "study"), "bio_score": ("bio_score", "study"),
           "accuracy": ("accuracy", "knn_k10"), "macro_f1": ("macro_f1", "knn_k10"),
           "min_train_mse": ("min_train_mse", "reconstruction"), "test_mse": ("test_mse", "reconstruction"),
           "eval_mse": ("masked_mse", "reconstruction"),
           # the context diagnostic on the evaluation datasets: a model near eval_gene_mean_mse learned
           # little beyond each gene's mean; eval_mse_no_context is the model without expression context
           "eval_mse_no_context": ("masked_mse_no_context", "reconstruction"),
           "eval_gene_mean_mse": ("gene_mean_mse", "reconstruction"),
           "final_val_loss": ("final_val_loss", "training"), "still_improving": ("still_improving", "training"),
           "checkpoint_step": ("checkpoint_step", "training"),
           "scib_total": ("total", "scib_metrics")}
TESTED = ("batch_score", "bio_score", "accuracy", "macro_f1")


def load_metrics(paths) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)


def summary_table(metrics: pd.DataFrame) -> pd.DataFrame:
    rows = []
    keys = ["gene_encoding", "expression_encoding"]
    for (gene, expr), part in metrics.groupby(keys, sort=True):
        row = {"gene_encoding": gene, "expression_encoding": expr, "seeds": part.seed.nunique(),
               "datasets": part[part.dataset != "*"].dataset.nunique()}
        for name, (metric, group) in SUMMARY.items():
            values = part[(part.metric == metric) & (part.group == group)]
            # seeds first averaged per dataset, then mean ± SD across datasets
            by_dataset = values.groupby("dataset").value
            per_dataset = by_dataset.mean()
            row[name] = per_dataset.mean() if per_dataset.notna().any() else np.nan
            row[f"{name}_sd"] = per_dataset.std(ddof=1) if per_dataset.notna().sum() > 1 else np.nan
            # training noise: SD across seeds within a dataset, averaged over datasets (NaN with one seed)
            row[f"{name}_seed_sd"] = by_dataset.std(ddof=1).mean()
        row["note"] = "; ".join(summary_notes(part))
        rows.append(row)
    return pd.DataFrame(rows)


def summary_notes(part: pd.DataFrame) -> list[str]:
    """Why summary values are missing or rest on fewer datasets: the notes of NaN rows."""
    wanted = pd.Series(False, index=part.index)
    for metric, group in SUMMARY.values():
        wanted |= (part.metric == metric) & (part.group == group)
    missing = part[wanted & part.value.isna() & part.note.fillna("").ne("")]
    return [f"{note} ({', '.join(sorted(rows.dataset.unique()))})" for note, rows in missing.groupby("note")]


def paired_tests(metrics: pd.DataFrame, reference: str = "soft") -> pd.DataFrame:
    """Paired Wilcoxon tests across datasets, all declared before the results: learned vs esm2 per
    expression encoding, esm2 vs esm2_permuted (protein knowledge, frozen geometry held fixed) and
    the ``reference`` expression encoding vs each other one, per gene encoding."""
    per = (metrics[metrics.metric.isin(TESTED) & metrics.group.isin(["study", "knn_k10"])]
           .groupby(["gene_encoding", "expression_encoding", "dataset", "metric"]).value.mean().unstack("dataset"))
    rows = []
    expressions = sorted(per.index.get_level_values("expression_encoding").unique())
    for metric in TESTED:
        for expr in expressions:
            rows.append(_test(per, metric, ("learned", expr), ("esm2", expr), "learned vs esm2"))
            rows.append(_test(per, metric, ("esm2", expr), ("esm2_permuted", expr), "esm2 vs esm2_permuted"))
        for gene in ("learned", "esm2"):
            for expr in expressions:
                if expr != reference:
                    rows.append(_test(per, metric, (gene, reference), (gene, expr),
                                      f"reference ({reference}) vs other expression encoding"))
    return with_q_values(pd.DataFrame([r for r in rows if r is not None], columns=TEST_COLUMNS))


TEST_COLUMNS = ["comparison", "metric", "a", "b", "datasets", "mean_a", "mean_b", "mean_difference", "statistic",
                "p_value", "min_attainable_p", "rank_biserial"]


def with_q_values(tests: pd.DataFrame) -> pd.DataFrame:
    """Benjamini-Hochberg q-values within each family of tests (one comparison on one metric)."""
    q = pd.Series(np.nan, index=tests.index)
    for _, family in tests.groupby(["comparison", "metric"]):
        tested = family.p_value.dropna()
        if len(tested):
            q[tested.index] = false_discovery_control(tested.to_numpy(), method="bh")
    return tests.assign(q_value=q)


def _test(per: pd.DataFrame, metric: str, a: tuple, b: tuple, comparison: str) -> dict | None:
    if (*a, metric) not in per.index or (*b, metric) not in per.index:
        return None
    pair = pd.concat([per.loc[(*a, metric)], per.loc[(*b, metric)]], axis=1).dropna()
    if pair.empty:  # a configuration without a model: nothing to test
        return None
    diff = pair.iloc[:, 0] - pair.iloc[:, 1]
    row = {"comparison": comparison, "metric": metric, "a": "-".join(a), "b": "-".join(b), "datasets": len(pair),
           "mean_a": pair.iloc[:, 0].mean(), "mean_b": pair.iloc[:, 1].mean(), "mean_difference": diff.mean(),
           "statistic": np.nan, "p_value": np.nan, "rank_biserial": np.nan}
    nonzero = diff[diff != 0]  # scipy drops zero differences (zero_method="wilcox")
    # the exact two-sided test's floor: every non-zero difference with the same sign
    row["min_attainable_p"] = min(1.0, 2.0 / 2 ** len(nonzero)) if len(nonzero) else np.nan
    if len(nonzero) >= 2:
        result = wilcoxon(pair.iloc[:, 0], pair.iloc[:, 1])
        ranks = nonzero.abs().rank()
        row.update(statistic=float(result.statistic), p_value=float(result.pvalue),
                   rank_biserial=float((ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum()) / ranks.sum()))
    return row


def write_tables(metric_paths, out_dir, reference_expression: str = "soft") -> dict:
    metrics = load_metrics(metric_paths)
    out_dir = Path(out_dir)
    tables = {"metrics.csv": metrics, "summary.csv": summary_table(metrics), "tests.csv": paired_tests(metrics, reference_expression)}
    for name, table in tables.items():
        with atomic_path(out_dir / name, suffix=".csv") as tmp:
            table.to_csv(tmp, index=False)
    return {name: len(table) for name, table in tables.items()}


def run(metrics: list[Path], out_dir: OutputFolder, reference_expression: str = "soft") -> dict:
    """metrics.csv, summary.csv and tests.csv in ``out_dir`` from per-(run, dataset) metric tables;
    ``reference_expression``: the expression encoding compared with each other one (declared in
    config, not picked from the results)."""
    counts = write_tables(metrics, out_dir, reference_expression)
    log.info("tables: %s", counts)
    return counts
