"""Statistics for comparing FER runs: vectorised bootstrap, McNemar, seed aggregates, Holm.

Labels and predictions are canonical class indices (see `fersynth.labels.CLASSES`). The
bootstrap resamples whole index arrays at once, shape (n_boot, N), and counts per-class
hits with one `bincount` per chunk, so 1000 resamples of a few thousand items take well
under a second.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from scipy import stats as sps

from fersynth.errors import FersynthError
from fersynth.labels import CLASSES

N_CLASSES = len(CLASSES)
BOOT_METRICS = ("accuracy", "mean_class_accuracy", "macro_f1")
_MAX_ELEMS = 4_000_000  # index elements per bootstrap chunk (bounds memory to ~tens of MB)


# --------------------------------------------------------------------------- bootstrap core


def bootstrap_indices(n: int, n_boot: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Yield seeded resample index arrays of shape (chunk, n) until `n_boot` rows are out."""
    if n <= 0:
        raise FersynthError("cannot bootstrap an empty set", hint="evaluate at least one item")
    rng = np.random.default_rng(seed)
    rows = max(1, _MAX_ELEMS // n)
    dtype = np.int32 if n < 2**31 else np.int64
    for start in range(0, n_boot, rows):
        m = min(rows, n_boot - start)
        yield rng.integers(0, n, size=(m, n), dtype=dtype)


def class_counts(
    y: np.ndarray, pred: np.ndarray, idx: np.ndarray | None = None, n_classes: int = N_CLASSES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (true positives, support, predicted count).

    With `idx` of shape (m, N) each row is one resample and the arrays have shape
    (m, n_classes); without it they are 1-D for the whole set.
    """
    if idx is None:
        correct = y == pred
        tp = np.bincount(y[correct], minlength=n_classes)
        return tp, np.bincount(y, minlength=n_classes), np.bincount(pred, minlength=n_classes)
    m = idx.shape[0]
    off = (np.arange(m, dtype=np.int64) * n_classes)[:, None]
    yt = y[idx] + off
    yp = pred[idx] + off
    size = m * n_classes
    support = np.bincount(yt.ravel(), minlength=size).reshape(m, n_classes)
    predc = np.bincount(yp.ravel(), minlength=size).reshape(m, n_classes)
    tp = np.bincount(yt[yt == yp], minlength=size).reshape(m, n_classes)
    return tp, support, predc


def metrics_from_counts(tp: np.ndarray, support: np.ndarray, predc: np.ndarray) -> dict:
    """Accuracy, mean class accuracy and macro F1 from per-class counts (last axis = class).

    Averages run over classes present in the (resampled) truth; precision uses
    zero_division=0 like sklearn's default.
    """
    tp = tp.astype(np.float64)
    present = support > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, tp / np.maximum(support, 1), np.nan)
        denom = support + predc
        f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    f1 = np.where(present, f1, np.nan)
    n_present = present.sum(axis=-1)
    n = support.sum(axis=-1)
    return {
        "accuracy": tp.sum(axis=-1) / np.maximum(n, 1),
        "mean_class_accuracy": np.nansum(recall, axis=-1) / np.maximum(n_present, 1),
        "macro_f1": np.nansum(f1, axis=-1) / np.maximum(n_present, 1),
        "recall": recall,
        "f1": f1,
    }


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> list[float | None]:
    """Percentile interval ignoring NaNs (resamples where a quantity was undefined)."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[~np.isnan(s)]
    if s.size == 0:
        return [None, None]
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(s, [a, 100 - a])
    return [float(lo), float(hi)]


def bootstrap_metrics(
    y: np.ndarray, pred: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Bootstrap distributions of accuracy, mean class accuracy and macro F1."""
    y, pred = _as_labels(y, "y_true"), _as_labels(pred, "pred")
    out: dict[str, list[np.ndarray]] = {k: [] for k in BOOT_METRICS}
    for idx in bootstrap_indices(len(y), n_boot, seed):
        m = metrics_from_counts(*class_counts(y, pred, idx))
        for k in BOOT_METRICS:
            out[k].append(m[k])
    return {k: np.concatenate(v) for k, v in out.items()}


def paired_bootstrap(
    y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> dict:
    """Paired bootstrap of B minus A for the summary metrics and per-class recall / F1.

    Returns {"point": {metric: delta}, "samples": {metric: (n_boot,) deltas},
    "class_point": {"recall"|"f1": (C,)}, "class_samples": {"recall"|"f1": (n_boot, C)}}.
    """
    y = _as_labels(y, "y_true")
    pred_a, pred_b = _as_labels(pred_a, "pred_a"), _as_labels(pred_b, "pred_b")
    if not len(y) == len(pred_a) == len(pred_b):
        raise FersynthError(
            f"paired arrays differ in length ({len(y)}, {len(pred_a)}, {len(pred_b)})",
            hint="pass labels and both predictions for the same items",
        )
    ma = metrics_from_counts(*class_counts(y, pred_a))
    mb = metrics_from_counts(*class_counts(y, pred_b))
    point = {k: float(mb[k] - ma[k]) for k in BOOT_METRICS}
    class_point = {k: mb[k] - ma[k] for k in ("recall", "f1")}
    samples: dict[str, list] = {k: [] for k in (*BOOT_METRICS, "recall", "f1")}
    for idx in bootstrap_indices(len(y), n_boot, seed):
        ra = metrics_from_counts(*class_counts(y, pred_a, idx))
        rb = metrics_from_counts(*class_counts(y, pred_b, idx))
        for k in samples:
            samples[k].append(rb[k] - ra[k])
    cat = {k: np.concatenate(v) for k, v in samples.items()}
    return {
        "point": point,
        "samples": {k: cat[k] for k in BOOT_METRICS},
        "class_point": class_point,
        "class_samples": {k: cat[k] for k in ("recall", "f1")},
    }


def bootstrap_p_value(delta: float, samples: np.ndarray) -> float:
    """Two-sided p for delta = 0, from the bootstrap distribution shifted to the null.

    p = (1 + #{|d* - d| >= |d|}) / (1 + B), so it is never exactly 0.
    """
    s = np.asarray(samples, dtype=np.float64)
    s = s[~np.isnan(s)]
    if s.size == 0:
        return 1.0
    hits = np.count_nonzero(np.abs(s - delta) >= abs(delta) - 1e-12)
    return float((1 + hits) / (1 + s.size))


def paired_bootstrap_delta(
    y_true, pred_a, pred_b, metric: str = "accuracy", n_boot: int = 1000, seed: int = 0
) -> dict:
    """Delta (B minus A) of `metric` on the same items, with a 95% percentile CI and p-value.

    `metric` is "accuracy", "mean_class_accuracy" or "macro_f1".
    """
    if metric not in BOOT_METRICS:
        raise FersynthError(
            f"unknown bootstrap metric '{metric}'", hint=f"use one of {BOOT_METRICS}"
        )
    res = paired_bootstrap(y_true, pred_a, pred_b, n_boot=n_boot, seed=seed)
    d, s = res["point"][metric], res["samples"][metric]
    return {
        "metric": metric,
        "delta": d,
        "ci95": percentile_ci(s),
        "p_value": bootstrap_p_value(d, s),
        "n": int(len(np.asarray(y_true))),
        "n_boot": int(n_boot),
    }


def unpaired_bootstrap_delta(
    y_a, pred_a, y_b, pred_b, n_boot: int = 1000, seed: int = 0
) -> dict[str, dict]:
    """Delta (B minus A) when the two runs were scored on different items: independent resamples."""
    sa = bootstrap_metrics(y_a, pred_a, n_boot, seed)
    sb = bootstrap_metrics(y_b, pred_b, n_boot, seed + 1)
    ma = metrics_from_counts(*class_counts(_as_labels(y_a, "y_a"), _as_labels(pred_a, "pred_a")))
    mb = metrics_from_counts(*class_counts(_as_labels(y_b, "y_b"), _as_labels(pred_b, "pred_b")))
    out = {}
    for k in BOOT_METRICS:
        d = float(mb[k] - ma[k])
        s = sb[k] - sa[k]
        out[k] = {"delta": d, "ci95": percentile_ci(s), "p_value": bootstrap_p_value(d, s)}
    return out


# --------------------------------------------------------------------------- McNemar


def mcnemar_from_counts(b: int, c: int) -> dict:
    """McNemar test from discordant counts: exact binomial when b + c < 25, else chi-square
    with continuity correction."""
    b, c = int(b), int(c)
    n = b + c
    if n == 0:
        return {
            "b": b,
            "c": c,
            "n_discordant": 0,
            "statistic": 0.0,
            "p_value": 1.0,
            "method": "exact",
        }
    if n < 25:
        p = sps.binomtest(b, n, 0.5, alternative="two-sided").pvalue
        return {
            "b": b,
            "c": c,
            "n_discordant": n,
            "statistic": float(min(b, c)),
            "p_value": float(min(1.0, p)),
            "method": "exact",
        }
    stat = (abs(b - c) - 1) ** 2 / n
    p = sps.chi2.sf(stat, df=1)
    return {
        "b": b,
        "c": c,
        "n_discordant": n,
        "statistic": float(stat),
        "p_value": float(p),
        "method": "chi2_cc",
    }


def mcnemar(correct_a, correct_b) -> dict:
    """McNemar test on paired correctness. b = A right and B wrong, c = A wrong and B right."""
    a = np.asarray(correct_a, dtype=bool)
    bb = np.asarray(correct_b, dtype=bool)
    if a.shape != bb.shape or a.ndim != 1:
        raise FersynthError(
            f"McNemar needs two 1-D arrays of the same length, got {a.shape} and {bb.shape}",
            hint="pair the predictions by id first",
        )
    res = mcnemar_from_counts(np.count_nonzero(a & ~bb), np.count_nonzero(~a & bb))
    res["n"] = int(a.size)
    return res


# --------------------------------------------------------------------------- across seeds


def mean_std(values: Sequence[float]) -> dict:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    v = _finite(values)
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": float(v.mean()), "std": std, "n": int(v.size)}


def t_interval(values: Sequence[float], confidence: float = 0.95) -> list[float | None]:
    """Student-t confidence interval [lo, hi] for the mean across seeds; [None, None] for n < 2."""
    v = _finite(values)
    if v.size < 2:
        return [None, None]
    mean = float(v.mean())
    se = float(v.std(ddof=1)) / math.sqrt(v.size)
    half = float(sps.t.ppf(0.5 + confidence / 2, df=v.size - 1)) * se
    return [mean - half, mean + half]


def welch_t(values_a: Sequence[float], values_b: Sequence[float]) -> dict:
    """Welch's t-test for B minus A across seeds; p is None when it is undefined."""
    a, b = _finite(values_a), _finite(values_b)
    out = {
        "delta": None,
        "statistic": None,
        "p_value": None,
        "df": None,
        "n_a": int(a.size),
        "n_b": int(b.size),
    }
    if a.size == 0 or b.size == 0:
        return out
    out["delta"] = float(b.mean() - a.mean())
    if a.size < 2 or b.size < 2:
        return out
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    if va + vb == 0:
        return out
    stat = (b.mean() - a.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    out.update(statistic=float(stat), df=float(df), p_value=float(2 * sps.t.sf(abs(stat), df)))
    return out


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values, in the input order (None entries pass through)."""
    items = [(i, float(p)) for i, p in enumerate(pvalues) if p is not None]
    out: list[float | None] = [None] * len(pvalues)
    m = len(items)
    running = 0.0
    for rank, (i, p) in enumerate(sorted(items, key=lambda t: t[1])):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


# --------------------------------------------------------------------------- helpers


def _as_labels(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise FersynthError(f"{name} must be 1-D, got shape {arr.shape}", hint="pass class indices")
    if arr.size and (not np.issubdtype(arr.dtype, np.integer)):
        if not np.all(np.mod(arr, 1) == 0):
            raise FersynthError(f"{name} holds non-integer labels", hint="pass class indices")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= N_CLASSES):
        raise FersynthError(
            f"{name} holds labels outside 0..{N_CLASSES - 1}",
            hint="drop unlabelled (-1) rows and map to canonical indices first",
        )
    return arr


def _finite(values) -> np.ndarray:
    v = np.asarray([np.nan if x is None else x for x in values], dtype=np.float64)
    return v[np.isfinite(v)]


def seed_averaged_paired_bootstrap(
    y_true, pred_a, pred_b, num_classes: int, n_boot: int = 1000, seed: int = 0
) -> dict:
    """Arm B minus arm A on one test set, each arm trained with several seeds.

    `pred_a` / `pred_b` are (S, N) predicted class indices, one row per seed, on the same N
    images. Every bootstrap resample draws N images with replacement; on it each metric is
    computed per seed and averaged over seeds, so the interval reflects test-set sampling of
    seed-averaged models (the spread across seeds is what `welch_t` tests). Returns point
    deltas, percentile 95% CIs and two-sided p-values for accuracy, mean class accuracy,
    macro F1 and per-class recall and F1.
    """
    y = _as_labels(y_true, "y_true")
    pa, pb = np.atleast_2d(np.asarray(pred_a)), np.atleast_2d(np.asarray(pred_b))
    if pa.shape[1] != len(y) or pb.shape[1] != len(y):
        raise FersynthError(
            f"predictions {pa.shape} / {pb.shape} do not fit {len(y)} labels",
            hint="pass (seeds, images) arrays on the same images",
        )
    k, n = int(num_classes), len(y)
    rng = np.random.default_rng(seed)
    w = np.ones((1, n))
    if n_boot:
        idx = rng.integers(0, n, size=(n_boot, n))
        w = np.vstack([w, np.stack([np.bincount(r, minlength=n) for r in idx]).astype(np.float64)])
    yh = np.eye(k)[y]
    support = w @ yh  # (B+1, K)
    present = support[0] > 0

    def arm(p):
        acc, rec, f1 = 0.0, 0.0, 0.0
        for row in p:
            tp = w @ (yh * (row == y)[:, None])
            predc = w @ np.eye(k)[np.clip(row, 0, k - 1)]
            acc = acc + tp.sum(1) / n
            rec = rec + np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
            f1 = f1 + np.divide(2 * tp, support + predc, out=np.zeros_like(tp), where=(support + predc) > 0)
        s = len(p)
        return acc / s, rec / s, f1 / s

    acc_a, rec_a, f1_a = arm(pa)
    acc_b, rec_b, f1_b = arm(pb)
    sup_ok = support > 0
    mca = lambda r: np.where(sup_ok[:, present], r[:, present], np.nan)  # noqa: E731
    d = {
        "accuracy": acc_b - acc_a,
        "mean_class_accuracy": np.nanmean(mca(rec_b), 1) - np.nanmean(mca(rec_a), 1),
        "macro_f1": f1_b[:, present].mean(1) - f1_a[:, present].mean(1),
    }

    def summary(v):
        point, samples = float(v[0]), v[1:]
        if not len(samples):
            return {"delta": point, "ci95": [None, None], "p_value": None}
        return {"delta": point, "ci95": percentile_ci(samples), "p_value": bootstrap_p_value(point, samples)}

    out = {m: summary(v) for m, v in d.items()}
    out["per_class"] = {}
    for c in np.flatnonzero(present):
        out["per_class"][CLASSES[c]] = {
            "recall": summary(rec_b[:, c] - rec_a[:, c]),
            "f1": summary(f1_b[:, c] - f1_a[:, c]),
            "support": int(support[0, c]),
        }
    out.update(n=int(n), seeds_a=int(len(pa)), seeds_b=int(len(pb)), n_boot=int(n_boot),
               method="paired image bootstrap of seed-averaged metrics")
    return out
