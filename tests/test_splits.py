"""Group-aware, stratified validation carving."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fersynth.data.manifest import Manifest
from fersynth.data.splits import carve_validation, group_stratified_split
from fersynth.errors import FersynthError

CLASS_SIZES = [300, 40, 200, 500, 250, 150, 5]


def grouped_labels(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced labels; about a third of the images sit in groups of 2-6 of one class."""
    rng = np.random.default_rng(seed)
    labels, groups, next_group = [], [], 0
    for cls, n in enumerate(CLASS_SIZES):
        left = n
        while left:
            size = min(left, int(rng.integers(2, 7)) if rng.random() < 0.15 else 1)
            labels += [cls] * size
            groups += [next_group] * size if size > 1 else [-1]
            next_group += size > 1
            left -= size
    order = rng.permutation(len(labels))
    return np.array(labels)[order], np.array(groups)[order]


def test_split_is_stratified_and_keeps_groups_whole():
    labels, groups = grouped_labels()
    assert (groups >= 0).sum() > 200
    val = group_stratified_split(labels, groups, val_fraction=0.2, seed=0)
    assert val.dtype == bool and val.shape == labels.shape
    for g in np.unique(groups[groups >= 0]):
        assert len(set(val[groups == g])) == 1
    for cls, n in enumerate(CLASS_SIZES):
        share = val[labels == cls].mean()
        if n >= 100:
            assert abs(share - 0.2) < 0.02, (cls, share)
        assert 0 < val[labels == cls].sum() < n
    assert abs(val.mean() - 0.2) < 0.01


def test_split_is_deterministic_and_seeded():
    labels, groups = grouped_labels()
    a = group_stratified_split(labels, groups, 0.1, seed=3)
    assert (a == group_stratified_split(labels, groups, 0.1, seed=3)).all()
    b = group_stratified_split(labels, groups, 0.1, seed=4)
    assert (a != b).any()
    assert a.sum() == pytest.approx(b.sum(), abs=10)


def test_tiny_classes():
    labels = np.array([0, 0, 1, 2, 2, 2, 2, 2, 2])
    groups = np.array([-1, -1, -1, 5, 5, 5, 9, 9, 9])
    val = group_stratified_split(labels, groups, val_fraction=0.1, seed=0)
    assert val[:2].sum() == 1  # two singletons: one each side
    assert not val[2]  # a class of one image stays in train
    assert val[3:].sum() == 3 and val[3] == val[4] == val[5]  # one of the two groups
    assert group_stratified_split(labels, None, 0.1).sum() >= 2


@pytest.mark.parametrize(
    "labels, groups",
    [
        ([0, 1, 2, 3], None),  # every class has a single image
        ([0, 0, 0, 1], [7, 7, 7, -1]),  # every class has a single group
    ],
)
def test_empty_validation_is_an_error(labels, groups):
    with pytest.raises(FersynthError, match="empty"):
        group_stratified_split(labels, groups, 0.5)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_fraction_out_of_range(fraction):
    with pytest.raises(FersynthError, match=f"validation fraction {fraction} is not between 0 and 1"):
        group_stratified_split([0, 0, 1, 1], None, fraction)


def make_manifest(with_groups: str | None = "near_group") -> Manifest:
    labels, groups = grouped_labels(seed=1)
    n = len(labels)
    df = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "path": [f"img{i}.png" for i in range(n)],
            "label": labels,
            "split": "train",
            "subset": "Training",
            "dataset": "toy",
            "source": "real",
        }
    )
    if with_groups:
        df[with_groups] = groups
    synth = pd.DataFrame(
        {
            "id": [f"s{i}" for i in range(200)],
            "path": [f"syn{i}.png" for i in range(200)],
            "label": np.arange(200) % 7,
            "split": "train",
            "subset": "generated",
            "dataset": "toy",
            "source": "synthetic",
        }
    )
    test = df.iloc[:50].assign(split="test", subset="PrivateTest", id=lambda d: "t" + d["id"])
    full = pd.concat([df, synth, test], ignore_index=True)
    return Manifest(full, np.zeros((len(full), 4, 4), np.uint8))


def test_carve_validation_only_takes_real_training_rows():
    m = make_manifest()
    out = carve_validation(m, val_fraction=0.1, seed=0)
    assert set(m.df["split"]) == {"train", "test"}  # the input is untouched
    d = out.df
    val = d["split"] == "val"
    assert val.sum() > 0
    assert (d.loc[val, "source"] == "real").all()
    assert (d.loc[d["source"] == "synthetic", "split"] == "train").all()
    assert (d["split"] == "test").sum() == 50
    real_train = (m.df["split"] == "train") & (m.df["source"] == "real")
    assert val.sum() == pytest.approx(0.1 * real_train.sum(), abs=5)
    groups = d.loc[d["split"] != "test", ["near_group", "split"]]
    assert groups[groups["near_group"] >= 0].groupby("near_group")["split"].nunique().max() == 1
    assert out.meta["validation"]["group_col"] == "near_group"
    assert out.meta["validation"]["rows"] == val.sum()
    assert out.pixels is m.pixels


def test_carve_validation_falls_back_to_dup_group_then_none():
    out = carve_validation(make_manifest("dup_group"), 0.1, seed=0)
    assert out.meta["validation"]["group_col"] == "dup_group"
    d = out.df[out.df["dup_group"] >= 0]
    assert d[d["split"] != "test"].groupby("dup_group")["split"].nunique().max() == 1
    assert carve_validation(make_manifest(None), 0.1).meta["validation"]["group_col"] is None


def test_carve_validation_keeps_twins_and_parents_of_training_rows_in_train():
    m = make_manifest()
    df = m.df.copy()
    real = np.flatnonzero(df["source"].eq("real") & df["split"].eq("train"))
    twin_group = int(df["near_group"].max()) + 1
    df.loc[real[:100], "near_group"] = np.arange(twin_group, twin_group + 100)
    synth = np.flatnonzero(df["source"].eq("synthetic"))
    df.loc[synth[:100], "near_group"] = np.arange(twin_group, twin_group + 100)  # synthetic twins
    df["parent_id"] = None
    df.loc[synth[100:], "parent_id"] = df.loc[real[100:200], "id"].to_numpy()
    out = carve_validation(Manifest(df, m.pixels), val_fraction=0.3, seed=0)
    assert (out.df.loc[real[:200], "split"] == "train").all()
    assert (out.df.loc[real[200:], "split"] == "val").sum() > 0.25 * len(real[200:])


def test_carve_validation_errors():
    m = make_manifest()
    with pytest.raises(FersynthError, match="already has"):
        carve_validation(carve_validation(m, 0.1), 0.1)
    only_synth = m.select(m.df["source"] != "real")
    with pytest.raises(FersynthError, match="no training rows"):
        carve_validation(only_synth, 0.1)
