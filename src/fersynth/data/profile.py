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


def study_data(path, format: str | None = None, size: int | None = None, test_subsets: list[str] | None = None,
               quality: bool = True, val_fraction: float = 0.1, split_seed: int = 0,
               progress: bool = True) -> tuple[Manifest, dict]:
    """The real data of a study, as every later stage reads it: ingested, profiled (duplicate
    columns, quality), training rows tied to a test image by an exact or near-duplicate group
    left out, and validation carved once (`splits.ensure_validation`). Returns it with its profile."""
    from fersynth.data.duplicates import leakage_report
    from fersynth.data.formats import IngestOptions
    from fersynth.data.ingest import load_any
    from fersynth.data.splits import ensure_validation
    from fersynth.errors import FersynthError

    m, _ = load_any(path, format, IngestOptions(size=size), progress=progress)
    if not (m.df["split"] == "train").any():
        raise FersynthError(f"{path}: no training rows", hint="the data needs a train split")
    if not (m.df["split"] == "test").any():
        raise FersynthError(f"{path}: no test rows", hint="the data needs a test split to evaluate on")
    if test_subsets:
        known = set(m.df.loc[m.df["split"] == "test", "subset"])
        bad = [s for s in test_subsets if s not in known]
        if bad:
            raise FersynthError(f"data.test_subsets: '{bad[0]}' is not a test subset",
                                hint=f"test subsets: {', '.join(sorted(map(str, known)))}")
    m, prof = profile(m, quality=quality, duplicates=True)
    prof["leakage"] = leakage_report(m.df)["summary"]
    df = m.df
    test_groups = set(df.loc[df["split"] == "test", "near_group"]) - {-1}
    tied = (df["split"] == "train") & df["near_group"].isin(test_groups) & (df["near_group"] >= 0)
    prof["train_rows_tied_to_test"] = int(tied.sum())
    m = ensure_validation(m.select(~tied.to_numpy()), val_fraction, split_seed)
    prof["split_rows"] = {s: int(n) for s, n in m.df["split"].value_counts().items()}
    prof["split_counts"] = class_counts(m.df.assign(subset=m.df["split"]), m.num_classes)
    return m, prof
