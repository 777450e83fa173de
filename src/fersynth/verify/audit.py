"""Label-noise audit of real data: rank images by how strongly an expert ensemble doubts their
label, and score the ranking against reference labels when the data carries them.

One manifest holds both the label under audit and, optionally, the reference. By default the
label under audit is `orig_label` when the manifest has it (the FER+ ingest: `orig_label`
is the FER2013 label, `label` the FER+ majority) and the reference is then `label`;
otherwise the label under audit is `label` and there is no reference. Rows without a
reference label (FER+ has no majority) are ranked but left out of precision / recall, which
are computed over the rows that have one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fersynth.atomic import atomic_path
from fersynth.data.manifest import Manifest, exact_hashes
from fersynth.errors import FersynthError
from fersynth.labels import CLASSES
from fersynth.verify.experts import Expert
from fersynth.verify.run import (
    apply_label_map,
    check_class_sets,
    expert_names,
    expert_probabilities,
)

SCORES = ("prob", "margin")
DEFAULT_FRACTIONS = (0.01, 0.05, 0.1, 0.2)


def suspicion(probs: np.ndarray, given: np.ndarray, score: str = "prob") -> np.ndarray:
    """How doubtful each label is under (N, K) probabilities: "prob" = 1 - p(given);
    "margin" = best other class's probability - p(given), in [-1, 1]."""
    p = np.asarray(probs, dtype=np.float64)
    rows = np.arange(len(p))
    pg = p[rows, given]
    if score == "prob":
        return 1.0 - pg
    if score == "margin":
        other = p.copy()
        other[rows, given] = -np.inf
        return other.max(axis=1) - pg
    raise FersynthError(f"unknown suspicion score '{score}'", hint=f"use one of {', '.join(SCORES)}")


def pct_key(fraction: float) -> str:
    return f"{fraction * 100:g}pct".replace(".", "_")


def ranking_metrics(scores: np.ndarray, positive: np.ndarray, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> dict:
    """Precision / recall of the top fraction of `scores` (highest first; ties by row order),
    average precision and ROC AUC, with `positive` marking truly mislabelled rows."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    n, n_pos = len(y), int(y.sum())
    out: dict = {"n": n, "mislabelled": n_pos, "base_rate": n_pos / n if n else None}
    if not n:
        return out
    order = np.argsort(-s, kind="stable")
    hits = np.cumsum(y[order])
    for f in fractions:
        k = max(1, int(round(f * n)))
        out[f"k_at_{pct_key(f)}"] = k
        out[f"precision_at_{pct_key(f)}"] = float(hits[k - 1] / k)
        out[f"recall_at_{pct_key(f)}"] = float(hits[k - 1] / n_pos) if n_pos else None
    if 0 < n_pos < n:
        ranks = np.arange(1, n + 1)
        out["average_precision"] = float((hits[y[order]] / ranks[y[order]]).mean())
        r = rankdata(s)
        out["roc_auc"] = float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos)))
    return out


def resolve_columns(df: pd.DataFrame, label_column: str | None, reference_column: str | None) -> tuple[str, str | None]:
    """The label column under audit and the reference column (None: no reference)."""
    if label_column is None:
        label_column = "orig_label" if "orig_label" in df.columns else "label"
    if reference_column is None:
        reference_column = "label" if label_column == "orig_label" else None
    elif reference_column.lower() == "none":
        reference_column = None
    for col in (label_column, reference_column):
        if col is not None and col not in df.columns:
            raise FersynthError(
                f"the data has no column '{col}'",
                hint=f"columns: {', '.join(map(str, df.columns))}",
            )
    if reference_column == label_column:
        raise FersynthError(f"the reference column '{reference_column}' is the label under audit",
                            hint="pass a different --reference-column, or none")
    return label_column, reference_column


def audit(
    manifest: Manifest,
    experts: Sequence[Expert],
    *,
    label_column: str | None = None,
    reference_column: str | None = None,
    split: str = "train",
    score: str = "prob",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    label_map: Mapping[str, str] | None = None,
    weights: Sequence[float] | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> tuple[pd.DataFrame, dict]:
    """Rank `split` rows (train, val, test or all) by suspicion that their label is wrong.

    Returns the ranking (most suspicious first) and a JSON-able report; with a reference,
    the report has precision / recall at each top fraction for the ensemble and for each
    expert alone. With `out_dir`, writes audit.json and ranking.csv there.
    """
    if score not in SCORES:
        raise FersynthError(f"unknown suspicion score '{score}'", hint=f"use one of {', '.join(SCORES)}")
    if split not in ("train", "val", "test", "all"):
        raise FersynthError(f"split '{split}' is not train, val, test or all")
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise FersynthError(f"top fraction {bad[0]} is outside (0, 1]", hint="e.g. --top 0.05 for 5%")
    label_col, ref_col = resolve_columns(manifest.df, label_column, reference_column)
    m = manifest if split == "all" else manifest.where(split=split)
    given_all = pd.to_numeric(m.df[label_col], errors="coerce").fillna(-1).to_numpy(np.int64)
    m = m.select(given_all >= 0)
    if not len(m):
        raise FersynthError(f"no labelled '{split}' rows to audit (column '{label_col}')",
                            hint="choose --split / --label-column that exist")
    given = apply_label_map(pd.to_numeric(m.df[label_col]).to_numpy(np.int64), label_map)
    k = check_class_sets(experts, given, what="labels under audit")
    names = expert_names(experts)
    per = expert_probabilities(experts, m.pixels, k, progress=progress)
    w = np.ones(len(experts)) if weights is None else np.asarray(weights, dtype=np.float64)
    mean = np.tensordot(w / w.sum(), per, axes=1)
    susp = suspicion(mean, given, score)
    pred = mean.argmax(1)

    rank = pd.DataFrame({
        "id": m.df["id"].to_numpy(), "path": m.df["path"].to_numpy(), "subset": m.df["subset"].to_numpy(),
        "label": [CLASSES[c] for c in given], "suspicion": susp.round(6),
        "predicted": [CLASSES[c] for c in pred], "p_label": mean[np.arange(len(m)), given].round(5),
        "p_predicted": mean.max(1).round(5),
    })
    for j, n in enumerate(names):
        rank[f"p_label_{n}"] = per[j, np.arange(len(m)), given].round(5)
    report: dict = {
        "rows": len(m), "split": split, "label_column": label_col, "reference_column": ref_col,
        "experts": names, "score": score,
        "expert_agreement_with_label": {n: float((per[j].argmax(1) == given).mean()) for j, n in enumerate(names)},
        "ensemble_agreement_with_label": float((pred == given).mean()),
    }
    if ref_col is not None:
        ref = apply_label_map(pd.to_numeric(m.df[ref_col], errors="coerce").fillna(-1).to_numpy(np.int64), label_map)
        has = ref >= 0
        mis = given != ref
        rank["reference"] = [CLASSES[c] if c >= 0 else "" for c in ref]
        rank["mislabelled"] = pd.array(np.where(has, mis, pd.NA), dtype="boolean")
        report["evaluated_rows"] = int(has.sum())
        report["no_reference"] = int((~has).sum())
        report["ensemble"] = ranking_metrics(susp[has], mis[has], fractions)
        report["per_expert"] = {
            n: ranking_metrics(suspicion(per[j], given, score)[has], mis[has], fractions) for j, n in enumerate(names)
        }
        report["expert_agreement_with_reference"] = {
            n: float((per[j].argmax(1)[has] == ref[has]).mean()) for j, n in enumerate(names)
        }
        for key, val in report["ensemble"].items():  # headline figures at the top level
            if key.startswith(("precision_at_", "recall_at_")) or key in ("base_rate", "average_precision", "roc_auc"):
                report[key] = val
    rank = rank.iloc[np.argsort(-susp, kind="stable")].reset_index(drop=True)
    rank.insert(0, "rank", np.arange(1, len(rank) + 1))
    if out_dir is not None:
        write_outputs(rank, report, out_dir)
    return rank, report


def write_outputs(rank: pd.DataFrame, report: dict, out_dir: str | os.PathLike) -> Path:
    from fersynth.atomic import write_json_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(report, out / "audit.json")
    with atomic_path(out / "ranking.csv") as tmp:
        rank.to_csv(tmp, index=False)
    return out


def agreeing_rows(manifest: Manifest, reference: Manifest) -> tuple[Manifest, dict]:
    """`manifest` with its labelled training rows kept only where `reference` (a labelled set of the
    same images, matched by decoded pixels: the FER+ folder for FER2013) gives the same class.
    Training rows the reference lacks or leaves without a majority are dropped as well; validation
    and test rows are kept as they are. Returns the rows and a report (rows per class before and
    after). The audit's cheapest use: a generator learns expressions from the agreed labels only."""
    ref_label = dict(zip(exact_hashes(reference), reference.labels.tolist(), strict=True))
    train = manifest.df["split"].to_numpy() == "train"
    labelled = train & (manifest.labels >= 0)
    ref = np.array([ref_label.get(h, -2) for h in exact_hashes(manifest)], dtype=np.int64)
    keep = ~labelled | (ref == manifest.labels)
    if not (keep & labelled).any():
        raise FersynthError("no training row's label agrees with the reference labels",
                            hint="the reference must label the same images (matched by their pixels)")
    k = max(int(manifest.labels.max()) + 1, 1)
    before = np.bincount(manifest.labels[labelled], minlength=k)
    after = np.bincount(manifest.labels[labelled & keep], minlength=k)
    report = {"train_rows": int(labelled.sum()), "agreeing": int((labelled & keep).sum()),
              "per_class": {CLASSES[c]: {"before": int(before[c]), "after": int(after[c])} for c in range(k)}}
    return manifest.select(keep), report
