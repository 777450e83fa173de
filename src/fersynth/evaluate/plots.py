"""Figures for evaluation reports: confusion heat map, class distribution, per-class deltas.

Uses matplotlib's object API on the Agg canvas (no pyplot state) and writes each PNG to a
temporary name before renaming it into place (`fersynth.atomic`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fersynth.atomic import atomic_open
from fersynth.errors import FersynthError
from fersynth.labels import CLASSES


def save_figure(fig: Figure, path) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_confusion(
    cm,
    labels: Sequence[str] | None = None,
    path=None,
    normalized: bool = True,
    title: str | None = None,
) -> Path:
    """Annotated confusion heat map (rows = true, columns = predicted).

    `cm` is either the `confusion_matrix` dict of `evaluate_predictions` (its labels and
    columns are used) or a square array with `labels` naming both rows and columns.
    """
    if path is None:
        raise FersynthError("plot_confusion needs an output path", hint="pass path=...png")
    if isinstance(cm, Mapping):
        rows, cols = list(cm["labels"]), list(cm["columns"])
        counts = np.asarray(cm["counts"], dtype=float)
    else:
        counts = np.asarray(cm, dtype=float)
        if labels is None:
            labels = [str(i) for i in range(max(counts.shape))]
        rows = cols = list(labels)
    if counts.ndim != 2 or counts.shape != (len(rows), len(cols)):
        raise FersynthError(
            f"confusion matrix shape {counts.shape} does not fit {len(rows)}x{len(cols)} labels",
            hint="pass one label per row / column",
        )
    if normalized:
        s = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, s, out=np.zeros_like(counts), where=s > 0)
        vmax, fmt = 1.0, "{:.2f}"
    else:
        values = counts
        vmax, fmt = max(float(counts.max()), 1.0), "{:.0f}"

    size = max(4.0, 0.7 * max(len(rows), len(cols)) + 2)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.add_subplot()
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = values[i, j]
            ax.text(
                j,
                i,
                fmt.format(v),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if v > 0.5 * vmax else "black",
            )
    ax.set_title(
        title or ("Confusion matrix (row-normalised)" if normalized else "Confusion matrix")
    )
    return save_figure(fig, path)


def _class_order(names) -> list[str]:
    known = [c for c in CLASSES if c in names]
    return known + sorted(n for n in names if n not in CLASSES)


def plot_class_distribution(
    counts: Mapping[str, Mapping[str, int]], path, title: str | None = None
) -> Path:
    """Grouped bar chart: one group per class, one bar per subset (e.g. train / test)."""
    if not counts:
        raise FersynthError("no class counts to plot", hint="pass {subset: {class: n}}")
    subsets = list(counts)
    classes = _class_order({c for d in counts.values() for c in d})
    x = np.arange(len(classes))
    width = 0.8 / len(subsets)
    fig = Figure(figsize=(max(6.0, 0.9 * len(classes) + 2), 4.5))
    ax = fig.add_subplot()
    for k, sub in enumerate(subsets):
        h = [counts[sub].get(c, 0) for c in classes]
        bars = ax.bar(x - 0.4 + width * (k + 0.5), h, width, label=str(sub))
        ax.bar_label(bars, fontsize=7, padding=1)
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_ylabel("images")
    ax.legend()
    ax.set_title(title or "Class distribution")
    return save_figure(fig, path)


def plot_per_class_deltas(
    deltas: Mapping[str, Sequence], path, title: str | None = None, xlabel: str | None = None
) -> Path:
    """Horizontal bars of per-class deltas with 95% CI whiskers: {class: (delta, lo, hi)}.

    lo / hi may be None when no interval is known.
    """
    if not deltas:
        raise FersynthError("no per-class deltas to plot", hint="pass {class: (delta, lo, hi)}")
    classes = _class_order(set(deltas))[::-1]
    d = np.array([float(deltas[c][0]) for c in classes])
    lo = np.array([_or_nan(deltas[c], 1) for c in classes])
    hi = np.array([_or_nan(deltas[c], 2) for c in classes])
    err = np.vstack([np.where(np.isnan(lo), 0, d - lo), np.where(np.isnan(hi), 0, hi - d)])
    fig = Figure(figsize=(6.0, max(3.0, 0.45 * len(classes) + 1.2)))
    ax = fig.add_subplot()
    colors = ["tab:green" if v >= 0 else "tab:red" for v in d]
    ax.barh(np.arange(len(classes)), d, color=colors, xerr=np.maximum(err, 0), capsize=3)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(np.arange(len(classes)), classes)
    ax.set_xlabel(xlabel or "delta vs baseline (95% CI)")
    ax.set_title(title or "Per-class change")
    return save_figure(fig, path)


def _or_nan(t: Sequence, i: int) -> float:
    return float(t[i]) if len(t) > i and t[i] is not None else float("nan")
