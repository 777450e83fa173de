"""Dataset profile: class counts and shares per subset, imbalance, quality and duplicate summaries."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fersynth.data.manifest import Manifest
from fersynth.labels import CLASSES


def class_counts(df: pd.DataFrame, num_classes: int) -> dict[str, dict[str, int]]:
    names = list(CLASSES[:num_classes])
    out: dict[str, dict[str, int]] = {}
    for subset, g in df.groupby("subset", sort=True):
        vc = g["label"].value_counts()
        row = {names[i]: int(vc.get(i, 0)) for i in range(num_classes)}
        if (g["label"] < 0).any():
            row["unlabelled"] = int((g["label"] < 0).sum())
        out[str(subset)] = row
    return out


def imbalance_ratio(counts: dict[str, int]) -> float | None:
    """max/min over the classes present (unlabelled ignored); None when fewer than two classes."""
    vals = [v for k, v in counts.items() if k != "unlabelled" and v > 0]
    return float(max(vals) / min(vals)) if len(vals) >= 2 else None


def quality_summary(df: pd.DataFrame) -> dict:
    if "q_score" not in df.columns:
        return {}
    flags = df["flags"].fillna("")
    names = sorted({f for s in flags for f in s.split(",") if f})
    return {
        "q_score": _describe(df["q_score"]),
        "q_sharpness": _describe(df["q_sharpness"]),
        "q_contrast": _describe(df["q_contrast"]),
        "q_entropy": _describe(df["q_entropy"]),
        "flags": {n: int(flags.str.split(",").map(lambda fs, n=n: n in fs).sum()) for n in names},
    }


def _describe(s: pd.Series) -> dict:
    q = np.percentile(s.to_numpy(dtype=float), [5, 50, 95])
    return {"mean": float(s.mean()), "p5": float(q[0]), "median": float(q[1]), "p95": float(q[2])}


def profile(manifest: Manifest, quality: bool = True, duplicates: bool = True, radius: int = 4) -> tuple[Manifest, dict]:
    """Add quality and duplicate columns (where asked) and summarise the manifest."""
    from fersynth.data.duplicates import add_duplicate_columns, leakage_report
    from fersynth.quality import quality_scores

    m = manifest
    if quality and "q_score" not in m.df.columns:
        scores = quality_scores(m.pixels)
        m = Manifest(pd.concat([m.df, scores.reset_index(drop=True)], axis=1), m.pixels, m.root, m.meta)
    if duplicates and "near_group" not in m.df.columns:
        m = add_duplicate_columns(m, radius=radius)
    counts = class_counts(m.df, m.num_classes)
    out = {
        "dataset": str(m.df["dataset"].iloc[0]) if len(m) else "",
        "rows": len(m),
        "image_shape": list(m.image_shape),
        "counts": counts,
        "shares": {s: {k: v / max(1, sum(c.values())) for k, v in c.items()} for s, c in counts.items()},
        "imbalance_ratio": {s: imbalance_ratio(c) for s, c in counts.items()},
    }
    if quality:
        out["quality"] = quality_summary(m.df)
    if duplicates:
        out["duplicates"] = leakage_report(m.df)["summary"]
    return m, out
