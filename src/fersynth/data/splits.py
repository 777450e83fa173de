"""Validation carved from the training split: stratified by class, seeded, groups kept whole."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fersynth.data.manifest import Manifest
from fersynth.errors import FersynthError


def _group_ids(column) -> np.ndarray:
    """Group ids as int64, with missing ids (rows added after grouping) as -1."""
    return pd.to_numeric(column).fillna(-1).to_numpy(dtype=np.int64)


def _units(labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row -> unit index (a group, or a singleton row), and each unit's size and majority label."""
    n = len(labels)
    key = np.where(groups >= 0, groups, -1 - np.arange(n))  # -1 rows: one unit each
    _, unit = np.unique(key, return_inverse=True)
    size = np.bincount(unit)
    classes, code = np.unique(labels, return_inverse=True)
    counts = np.zeros((len(size), len(classes)), dtype=np.int64)
    np.add.at(counts, (unit, code), 1)
    return unit, size, classes[counts.argmax(axis=1)]  # majority label, ties to the smallest


def group_stratified_split(
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[int] | np.ndarray | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """Boolean mask, True for validation rows.

    Each class (a group counts under its majority label) sends about `val_fraction` of its
    images to validation, at least one group when it has two or more, and never all of
    them. Rows sharing a group id >= 0 land on the same side; -1 rows are independent.
    The same inputs and seed give the same mask.
    """
    if not 0.0 < float(val_fraction) < 1.0:
        raise FersynthError(
            f"validation fraction {val_fraction} is not between 0 and 1",
            hint="use e.g. 0.1 for 10% of the training images",
        )
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.full(len(labels), -1, np.int64) if groups is None else np.asarray(groups)
    if groups.shape != labels.shape:
        raise ValueError(f"{len(groups)} group ids for {len(labels)} labels")
    if not len(labels):
        raise FersynthError("cannot carve a validation split from an empty training split")
    unit, size, unit_label = _units(labels, groups.astype(np.int64))
    rng = np.random.default_rng(seed)
    in_val = np.zeros(len(size), dtype=bool)
    for cls in np.unique(unit_label):
        members = rng.permutation(np.flatnonzero(unit_label == cls))
        if len(members) < 2:
            continue
        sizes = size[members]
        target = max(int(round(val_fraction * sizes.sum())), 1)
        room = sizes.sum() - sizes.min()  # validation never takes a whole class
        taken = 0
        for m, s in zip(members, sizes, strict=True):
            if taken + s <= min(target, room):
                in_val[m] = True
                taken += s
        if taken == 0:
            in_val[members[np.argmin(sizes)]] = True
    mask = in_val[unit]
    if not mask.any():
        raise FersynthError(
            f"validation split would be empty ({len(labels)} training images in "
            f"{len(size)} groups, no class with two or more groups)",
            hint="use more training images, or a dataset that ships a validation split",
        )
    return mask


def carve_validation(
    manifest: Manifest,
    val_fraction: float = 0.1,
    seed: int = 0,
    group_col: str | None = "near_group",
) -> Manifest:
    """A copy of `manifest` with split = "val" on a stratified, group-aware share of train rows.

    Only real training rows are eligible; synthetic and pseudo-labelled rows stay in train.
    Groups come from `group_col` if the manifest has it, else from `dup_group`;
    `group_col=None` splits without groups. A group (or the parent of a
    derived training image, via `parent_id`) that holds an ineligible training row stays in
    train, so nothing in validation has a twin or a derivative in training.
    """
    df = manifest.df
    n_val = int((df["split"] == "val").sum())
    if n_val:
        raise FersynthError(
            f"manifest already has {n_val} validation rows",
            hint="use that split as it is, or set those rows back to train first",
        )
    col = None
    if group_col is not None:
        col = next((c for c in (group_col, "dup_group") if c in df.columns), None)
    groups = _group_ids(df[col]) if col else np.full(len(df), -1, np.int64)
    train = df["split"].eq("train").to_numpy()
    eligible = train & df["source"].eq("real").to_numpy()

    pinned = train & ~eligible
    blocked = np.isin(groups, groups[pinned & (groups >= 0)]) & (groups >= 0)
    if "parent_id" in df.columns:
        parents = df.loc[pinned, "parent_id"].dropna().astype(str)
        blocked |= df["id"].astype(str).isin(set(parents)).to_numpy()
        # A blocked parent's group is blocked too.
        blocked |= np.isin(groups, groups[blocked & (groups >= 0)]) & (groups >= 0)
    candidates = np.flatnonzero(eligible & ~blocked)
    if not len(candidates):
        raise FersynthError(
            "no training rows can go to validation (none are real, or all have a twin or "
            "a derived image in training)",
            hint="check the manifest's split and source columns",
        )
    mask = group_stratified_split(
        df["label"].to_numpy()[candidates], groups[candidates], val_fraction, seed
    )
    out = df.copy()
    out.loc[candidates[mask], "split"] = "val"
    meta = dict(manifest.meta)
    meta["validation"] = {
        "val_fraction": float(val_fraction),
        "seed": int(seed),
        "group_col": col,
        "rows": int(mask.sum()),
    }
    return Manifest(out, manifest.pixels, manifest.root, meta)


def ensure_validation(manifest: Manifest, val_fraction: float = 0.1, seed: int = 0) -> Manifest:
    """The one place that decides the validation split of the data contract.

    Rows already marked `val` are used as they are. Otherwise `carve_validation` moves a
    seeded, stratified, duplicate-aware share of the real, labelled training rows to `val`
    (duplicate groups are computed among them where the manifest has no group column); every
    other column and row stays as it was. `fersynth run` carves once in its data stage with `split_seed`,
    so compose and training find validation there and never carve again.
    """
    df = manifest.df
    if df["split"].eq("val").any():
        return manifest
    labelled = (df["label"] >= 0).to_numpy()
    real_train = df["split"].eq("train").to_numpy() & df["source"].eq("real").to_numpy() & labelled
    if real_train.sum() < 2:
        raise FersynthError("no labelled real training rows to carve validation from",
                            hint="check the manifest's split, source and label columns")
    # Candidates are the real, labelled training rows alone: synthetic rows neither join validation
    # nor move it (every arm of a study, whatever it adds, keeps the same validation images); rows
    # derived from a validation image are dropped by the trainer and by compose instead.
    sub = manifest.select(real_train)
    if "near_group" not in df.columns and "dup_group" not in df.columns:
        from fersynth.data.duplicates import add_duplicate_columns

        sub = add_duplicate_columns(sub)
    carved = carve_validation(sub, val_fraction, seed)
    split = df["split"].to_numpy().copy()
    split[np.flatnonzero(real_train)[carved.df["split"].to_numpy() == "val"]] = "val"
    return Manifest(df.assign(split=split), manifest.pixels, manifest.root, carved.meta)
