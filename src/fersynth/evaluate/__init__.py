"""Evaluation: metrics with bootstrap CIs, significance tests, run comparison and figures."""

from fersynth.evaluate.compare import compare_arms, compare_runs, format_compare_table, significant
from fersynth.evaluate.metrics import evaluate_predictions, fer_plus_metrics
from fersynth.evaluate.plots import plot_class_distribution, plot_confusion, plot_per_class_deltas
from fersynth.evaluate.stats import (
    holm,
    mcnemar,
    mean_std,
    paired_bootstrap_delta,
    t_interval,
    welch_t,
)

__all__ = [
    "compare_arms",
    "compare_runs",
    "evaluate_predictions",
    "fer_plus_metrics",
    "format_compare_table",
    "holm",
    "mcnemar",
    "mean_std",
    "paired_bootstrap_delta",
    "plot_class_distribution",
    "plot_confusion",
    "plot_per_class_deltas",
    "significant",
    "t_interval",
    "welch_t",
]
