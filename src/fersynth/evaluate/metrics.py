"""Classification metrics for FER test sets, as one JSON-serialisable dict per evaluation.

Labels are canonical indices (`fersynth.labels.CLASSES`); model scores come in the model's
own class order and are mapped explicitly. Rows the metrics cannot score (unlabelled, or
a true class the model has no output for) are counted and reported, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from fersynth.errors import FersynthError
from fersynth.evaluate.stats import BOOT_METRICS, bootstrap_metrics, percentile_ci
from fersynth.labels import CLASSES, UNLABELLED, canonical_name

SUMMARY_METRICS = (
    "accuracy",
    "mean_class_accuracy",
    "top2_accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "weighted_precision",
    "weighted_recall",
    "weighted_f1",
)


def _canonical_list(names: Sequence[str], what: str) -> list[int]:
    idx = [CLASSES.index(canonical_name(str(n))) for n in names]
    if len(set(idx)) != len(idx):
        raise FersynthError(f"{what} repeats a class: {list(names)}", hint="list each class once")
    return idx


def _py(x):
    """numpy scalar -> plain Python, for JSON."""
    if isinstance(x, np.generic):
        return x.item()
    return x


def evaluate_predictions(
    y_true,
    probs,
    class_names: Sequence[str],
    ids: Sequence | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    model_classes: Sequence[str] | None = None,
    include_probs: bool = False,
) -> dict:
    """Score one model on one labelled set.

    y_true: (N,) canonical indices (-1 = unlabelled). probs: (N, K) scores in the order of
    `model_classes` (canonical names; default `class_names`). `class_names` are the classes
    the evaluation set is meant to cover: they appear as confusion-matrix rows even when the
    data lacks them. Rows whose true class the model has no output for go to
    `unseen_classes` and are left out of every metric; the result says so in `note`.

    Macro and weighted averages, and `mean_class_accuracy`, run over the true classes present
    in the scored rows; predictions into other classes still count as errors.
    """
    model_classes = list(class_names if model_classes is None else model_classes)
    model_idx = np.asarray(_canonical_list(model_classes, "model_classes"), dtype=np.int64)
    data_idx = _canonical_list(class_names, "class_names")

    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1:
        raise FersynthError(f"y_true must be 1-D, got shape {y.shape}", hint="pass class indices")
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise FersynthError(
            f"probs shape {p.shape} does not fit {y.shape[0]} labels",
            hint="pass an (N, K) score array with one row per label",
        )
    if p.shape[1] != len(model_classes):
        raise FersynthError(
            f"probs has {p.shape[1]} columns but model_classes names {len(model_classes)}",
            hint="pass model_classes in the model's output order",
        )
    if not np.all(np.isfinite(p)):
        bad = int(np.flatnonzero(~np.isfinite(p).all(axis=1))[0])
        raise FersynthError(f"probs row {bad} holds NaN or inf", hint="check the model outputs")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise FersynthError("y_true holds non-integer labels", hint="pass class indices")
    y = y.astype(np.int64)
    if y.size and (y.min() < UNLABELLED or y.max() >= len(CLASSES)):
        raise FersynthError(
            f"y_true holds labels outside -1..{len(CLASSES) - 1}",
            hint="map dataset labels to canonical indices (fersynth.labels)",
        )
    n_total = int(y.size)
    if ids is None:
        id_list = list(range(n_total))
        ids_given = False
    else:
        id_list = [_py(i) for i in ids]
        ids_given = True
        if len(id_list) != n_total:
            raise FersynthError(
                f"{len(id_list)} ids for {n_total} rows", hint="pass one id per row"
            )
        if len(set(id_list)) != n_total:
            raise FersynthError("ids are not unique", hint="use the manifest's id column")

    # Predictions in canonical indices; top-2 from the model's own columns.
    order = np.argsort(-p, axis=1, kind="stable")
    pred = model_idx[order[:, 0]]
    conf = p[np.arange(n_total), order[:, 0]] if n_total else np.zeros(0)
    top2 = model_idx[order[:, : min(2, p.shape[1])]]

    labelled = y != UNLABELLED
    seen = np.isin(y, model_idx)
    keep = labelled & seen
    unseen_counts = {
        CLASSES[c]: int(np.count_nonzero(y == c))
        for c in range(len(CLASSES))
        if c not in set(model_idx.tolist()) and np.any(y == c)
    }
    n_unlabelled = int(np.count_nonzero(~labelled))
    n = int(np.count_nonzero(keep))
    if n == 0:
        raise FersynthError(
            f"none of the {n_total} rows can be scored "
            f"({n_unlabelled} unlabelled, unseen classes {unseen_counts or 'none'})",
            hint="evaluate on labelled data whose classes the model predicts",
        )

    yk, pk = y[keep], pred[keep]
    present = sorted(set(yk.tolist()))
    rows = sorted(set(present) | ({c for c in data_idx} & set(model_idx.tolist())))
    cols = model_idx.tolist()

    prec, rec, f1, sup = precision_recall_fscore_support(yk, pk, labels=rows, zero_division=0)
    pmask = np.isin(rows, present)
    w = sup[pmask] / sup[pmask].sum()

    def _avg(a, weights=None):
        return float(np.average(a[pmask], weights=weights))

    per_class = {
        CLASSES[c]: {
            "precision": float(prec[i]),
            "recall": float(rec[i]) if sup[i] > 0 else None,
            "f1": float(f1[i]) if sup[i] > 0 else None,
            "support": int(sup[i]),
        }
        for i, c in enumerate(rows)
    }

    all_labels = sorted(set(rows) | set(cols))
    cm_full = confusion_matrix(yk, pk, labels=all_labels)
    ri = [all_labels.index(c) for c in rows]
    ci = [all_labels.index(c) for c in cols]
    cm = cm_full[np.ix_(ri, ci)]
    row_sum = cm.sum(axis=1, keepdims=True)
    cm_norm = np.divide(cm, row_sum, out=np.zeros(cm.shape, dtype=float), where=row_sum > 0)

    boot = bootstrap_metrics(yk, pk, n_boot=n_boot, seed=seed) if n_boot > 0 else None
    accuracy = float(np.mean(yk == pk))
    macro_recall = _avg(rec)

    predictions = []
    for i in range(n_total):
        row = {
            "id": id_list[i],
            "label": int(y[i]),
            "pred": int(pred[i]),
            "prob": round(float(conf[i]), 5),
        }
        if not labelled[i]:
            row["excluded"] = "unlabelled"
        elif not seen[i]:
            row["excluded"] = "unseen_class"
        predictions.append(row)

    notes = []
    if unseen_counts:
        listed = ", ".join(f"{k}: {v}" for k, v in unseen_counts.items())
        notes.append(
            f"{sum(unseen_counts.values())} rows of classes the model does not "
            f"predict ({listed}) are excluded from all metrics"
        )
    if n_unlabelled:
        notes.append(f"{n_unlabelled} unlabelled rows are excluded from all metrics")

    result = {
        "n": n,
        "n_total": n_total,
        "n_unlabelled": n_unlabelled,
        "unseen_classes": unseen_counts,
        "note": "; ".join(notes) if notes else None,
        "classes": [CLASSES[c] for c in rows],
        "model_classes": [CLASSES[c] for c in cols],
        "accuracy": accuracy,
        "mean_class_accuracy": macro_recall,
        "top2_accuracy": float(np.mean(np.any(top2[keep] == yk[:, None], axis=1))),
        "macro_precision": _avg(prec),
        "macro_recall": macro_recall,
        "macro_f1": _avg(f1),
        "weighted_precision": _avg(prec, w),
        "weighted_recall": _avg(rec, w),
        "weighted_f1": _avg(f1, w),
        "per_class": per_class,
        "confusion_matrix": {
            "labels": [CLASSES[c] for c in rows],
            "columns": [CLASSES[c] for c in cols],
            "counts": cm.astype(int).tolist(),
            "normalized": cm_norm.tolist(),
        },
        "ci95": {k: percentile_ci(boot[k]) for k in BOOT_METRICS} if boot else {},
        "n_boot": int(n_boot),
        "bootstrap_seed": int(seed),
        "ids_given": ids_given,
        "predictions": predictions,
    }
    if include_probs:
        result["probs"] = {"columns": result["model_classes"], "values": np.round(p, 5).tolist()}
    return result


def fer_plus_metrics(soft_votes, probs, model_classes: Sequence[str] | None = None) -> dict:
    """Accuracy against FER+ crowd votes.

    soft_votes: (N, V) vote counts in canonical order (V = 7 or 8). probs: (N, K) scores
    in `model_classes` order (default: the first K canonical classes).
    `majority_accuracy`: prediction equals the arg-max vote (ties: lowest index);
    `plausible_accuracy`: prediction is among the classes with the maximal vote count;
    `vote_agreement`: mean share of annotators who chose the predicted class.
    Rows with no votes, or whose majority class the model cannot predict, are counted
    and left out.
    """
    v = np.asarray(soft_votes, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if v.ndim != 2 or p.ndim != 2 or v.shape[0] != p.shape[0]:
        raise FersynthError(
            f"soft_votes {v.shape} and probs {p.shape} do not match",
            hint="pass (N, V) vote counts and (N, K) scores for the same rows",
        )
    if v.shape[1] > len(CLASSES):
        raise FersynthError(
            f"soft_votes has {v.shape[1]} columns",
            hint="keep the 7 or 8 emotion columns in canonical order (drop unknown / NF)",
        )
    if model_classes is None:
        model_classes = list(CLASSES[: p.shape[1]])
    model_idx = np.asarray(_canonical_list(model_classes, "model_classes"), dtype=np.int64)
    if len(model_idx) != p.shape[1]:
        raise FersynthError(
            "model_classes does not match probs columns", hint="pass the model's output order"
        )
    if np.any(v < 0):
        raise FersynthError("soft_votes holds negative counts", hint="pass vote counts")
    total = v.sum(axis=1)
    has_votes = total > 0
    majority = np.argmax(v, axis=1)
    pred = model_idx[np.argmax(p, axis=1)]
    seen = np.isin(majority, model_idx)
    keep = has_votes & seen
    unseen = {
        CLASSES[c]: int(np.count_nonzero(has_votes & (majority == c)))
        for c in sorted(set(majority[has_votes & ~seen].tolist()))
    }
    n = int(np.count_nonzero(keep))
    out = {
        "n": n,
        "n_total": int(v.shape[0]),
        "n_no_votes": int(np.count_nonzero(~has_votes)),
        "unseen_classes": unseen,
        "majority_accuracy": None,
        "plausible_accuracy": None,
        "vote_agreement": None,
    }
    if n == 0:
        return out
    vk, pk = v[keep], pred[keep]
    maxv = vk.max(axis=1)
    in_range = pk < vk.shape[1]
    votes_for_pred = np.where(in_range, vk[np.arange(n), np.minimum(pk, vk.shape[1] - 1)], 0.0)
    out["majority_accuracy"] = float(np.mean(pk == majority[keep]))
    out["plausible_accuracy"] = float(np.mean(votes_for_pred == maxv))
    out["vote_agreement"] = float(np.mean(votes_for_pred / total[keep]))
    return out
