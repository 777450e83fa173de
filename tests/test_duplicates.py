"""Exact / near-duplicate grouping and the leakage report."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from fersynth.data import duplicates as dup
from fersynth.data.manifest import Manifest, pixel_hashes
from fersynth.errors import FersynthError

FER2013 = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013"


def textures(n: int, seed: int = 0, size: int = 48) -> np.ndarray:
    """Random grayscale textures, unrelated to each other, with detail across the hash's band."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size), np.uint8)
    for i in range(n):
        coarse = rng.normal(size=(12, 12)).astype(np.float32)
        img = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
        img = (img - img.min()) / (np.ptp(img) + 1e-6)
        out[i] = np.clip(30 + 190 * img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    return out


def perturbed(img: np.ndarray, seed: int = 1) -> np.ndarray:
    """Brightness shift plus pixel noise: a near duplicate that is not an exact one."""
    rng = np.random.default_rng(seed)
    noisy = img.astype(np.float32) + 12 + rng.normal(0, 3, img.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def hamming(a, b) -> int:
    return int(np.bitwise_count(np.uint64(a) ^ np.uint64(b)))


def brute_force_groups(hashes: np.ndarray, radius: int) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    valid = hashes != dup.DEGENERATE_HASH
    d = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    adj = (d <= radius) & valid[:, None] & valid[None, :]
    _, comp = connected_components(coo_matrix(adj), directed=False)
    return dup._relabel(comp)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist())) and (
        ((a == -1) == (b == -1)).all()
    )


def test_exact_group_ids():
    ids = dup.exact_group_ids(["a", "b", "a", "c", "b", "a"])
    assert ids.dtype == np.int64
    assert ids.tolist() == [0, 1, 0, -1, 1, 0]
    assert dup.exact_group_ids([]).tolist() == []


def test_phash_basic_properties():
    imgs = textures(6)
    h = dup.phash(imgs)
    assert h.dtype == np.uint64 and h.shape == (6,)
    assert (dup.phash(imgs[::-1]) == h[::-1]).all()  # per image, independent of the batch
    assert (np.bitwise_count(h) == 31).all()  # balanced: half the 63 AC bits
    assert dup.phash(imgs[0])[0] == h[0]  # a single (H, W) image
    rgb = np.repeat(imgs[..., None], 3, axis=-1)
    assert (dup.phash(rgb) == h).all()
    big = np.stack([cv2.resize(im, (96, 96), interpolation=cv2.INTER_CUBIC) for im in imgs])
    assert all(hamming(a, b) <= 4 for a, b in zip(dup.phash(big), h, strict=True))


def test_phash_blank_images_are_degenerate():
    rng = np.random.default_rng(0)
    blank = np.full((4, 48, 48), 128, np.uint8)
    blank[1] = 0
    blank[2] = np.clip(128 + rng.normal(0, 1, (48, 48)), 0, 255).astype(np.uint8)
    blank[3, 20:22, 20:22] = 140  # a speck on a constant background
    assert (dup.phash(blank) == dup.DEGENERATE_HASH).all()
    assert (dup.near_group_ids(dup.phash(blank), 4) == -1).all()


def test_near_copies_are_close_and_unrelated_images_far():
    imgs = textures(20)
    h = dup.phash(imgs)
    h_pert = dup.phash(np.stack([perturbed(im, i) for i, im in enumerate(imgs)]))
    assert max(hamming(a, b) for a, b in zip(h, h_pert, strict=True)) <= 4
    unrelated = [hamming(h[i], h[j]) for i in range(20) for j in range(i + 1, 20)]
    assert min(unrelated) > 8


def test_add_duplicate_columns():
    base = textures(5, seed=3)
    pixels = np.stack(
        [
            base[0],
            base[0],
            perturbed(base[0]),
            base[1],
            base[2],
            perturbed(base[3]),
            base[3],
            base[4],
        ]
    )
    m = Manifest.from_arrays(pixels, [0, 0, 1, 2, 3, 4, 4, 5])
    out = dup.add_duplicate_columns(m, radius=4)
    assert out is not m and "dup_group" not in m.df.columns
    assert out.df["dup_group"].tolist() == [0, 0, -1, -1, -1, -1, -1, -1]
    near = out.df["near_group"].tolist()
    assert near[0] == near[1] == near[2] >= 0
    assert near[5] == near[6] >= 0 and near[5] != near[0]
    assert near[3] == near[4] == near[7] == -1
    # Without a pixel_hash column the hashes are computed from the pixels.
    again = dup.add_duplicate_columns(Manifest(m.df.drop(columns="pixel_hash"), m.pixels))
    assert again.df["dup_group"].tolist() == out.df["dup_group"].tolist()


def test_near_groups_contain_exact_blank_twins():
    pixels = np.concatenate([np.zeros((2, 48, 48), np.uint8), np.full((1, 48, 48), 255, np.uint8)])
    out = dup.add_duplicate_columns(Manifest.from_arrays(pixels, [0, 1, 2]))
    assert out.df["dup_group"].tolist() == [0, 0, -1]
    assert out.df["near_group"].tolist() == [0, 0, -1]  # the white blank is not joined


def _planted_hashes(n: int = 1500, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h = rng.integers(1, 2**63, size=n, dtype=np.uint64)

    def flip(x):
        bits = rng.choice(64, size=rng.integers(1, 8), replace=False).astype(np.uint64)
        return x ^ np.bitwise_or.reduce(np.uint64(1) << bits)

    for i in range(0, n // 2, 3):  # pairs and chains of three, steps of 1..7 bits
        h[i + 1] = flip(h[i])
        if i % 2:
            h[i + 2] = flip(h[i + 1])
    h[n - 5 :] = h[0]  # identical hashes
    h[10:14] = dup.DEGENERATE_HASH
    return h


@pytest.mark.parametrize("radius", [0, 2, 4, 6])
def test_near_group_ids_match_brute_force(radius):
    h = _planted_hashes()
    got = dup.near_group_ids(h, radius)
    want = brute_force_groups(h, radius)
    assert got.dtype == np.int64
    assert (got >= 0).sum() > 0
    assert same_partition(got, want)


def test_huge_buckets_are_compared_blockwise(monkeypatch):
    rng = np.random.default_rng(1)
    h = rng.integers(1, 2**63, size=600, dtype=np.uint64)
    h[:400] &= ~np.uint64(0xFFFF)  # 400 hashes share their low 16 bits
    h[1] = h[0] ^ np.uint64(1 << 40)
    want = dup.near_group_ids(h, 3)
    monkeypatch.setattr(dup, "_BIG_BUCKET", 50)
    monkeypatch.setattr(dup, "_BLOCK", 64)
    got = dup.near_group_ids(h, 3)
    assert same_partition(got, want)
    assert same_partition(got, brute_force_groups(h, 3))
    assert got[0] == got[1] >= 0


@pytest.mark.parametrize("radius", [-1, 17])
def test_radius_out_of_range(radius):
    with pytest.raises(FersynthError, match=f"radius {radius} is outside 0..16"):
        dup.near_group_ids(np.zeros(3, np.uint64), radius)


def _leak_df() -> pd.DataFrame:
    rows = [
        # path, subset, split, label, dup_group, near_group
        ("t0", "Training", "train", 0, 0, 0),  # exact: Training + PrivateTest
        ("p0", "PrivateTest", "test", 0, 0, 0),
        ("t1", "Training", "train", 1, 1, 1),  # exact within Training, conflicting labels
        ("t2", "Training", "train", 2, 1, 1),
        ("t3", "Training", "train", 3, 2, 2),  # exact within Training, same label: not listed
        ("t4", "Training", "train", 3, 2, 2),
        ("u0", "PublicTest", "test", 4, 3, 3),  # exact PublicTest + PrivateTest: no train
        ("u1", "PrivateTest", "test", 4, 3, 3),
        ("t5", "Training", "train", 5, -1, 4),  # near only: Training + PublicTest
        ("u2", "PublicTest", "test", 5, -1, 4),
        ("u3", "PrivateTest", "test", 6, -1, 4),
        ("t6", "Training", "train", 6, -1, -1),
        ("v0", "PublicTest", "test", 6, -1, -1),
    ]
    cols = ["path", "subset", "split", "label", "dup_group", "near_group"]
    return pd.DataFrame(rows, columns=cols)


def test_leakage_report_counts():
    rep = dup.leakage_report(_leak_df())
    json.dumps(rep)
    ex, near = rep["summary"]["exact"], rep["summary"]["near"]
    assert ex == {
        "groups": 4,
        "files": 8,
        "groups_multi_subset": 2,
        "groups_train_test": 1,
        "test_images_with_train_twin": 1,
        "test_images_with_train_twin_by_subset": {"PrivateTest": 1},
        "groups_conflicting_labels": 1,
    }
    assert near == {
        "groups": 5,
        "files": 11,
        "groups_multi_subset": 3,
        "groups_train_test": 2,
        "test_images_with_train_twin": 3,
        "test_images_with_train_twin_by_subset": {"PrivateTest": 2, "PublicTest": 1},
        "groups_conflicting_labels": 2,
        "test_images_with_train_near_twin_beyond_exact": 2,
    }
    listed = [sorted(m["path"] for m in g) for g in rep["exact_groups"]]
    assert listed == [["p0", "t0"], ["u0", "u1"], ["t1", "t2"]]  # train/test first
    assert rep["exact_groups"][0][0] == {
        "path": "t0",
        "subset": "Training",
        "split": "train",
        "label": 0,
    }
    # Near groups that are one exact group are already reported above.
    assert [sorted(m["path"] for m in g) for g in rep["near_groups"]] == [["t5", "u2", "u3"]]


def test_leakage_report_near_group_merging_two_exact_groups_is_listed():
    df = _leak_df()
    df.loc[df["path"].isin(["u0", "u1"]), "near_group"] = 0  # joins exact groups 0 and 3
    rep = dup.leakage_report(df)
    near_listed = [sorted(m["path"] for m in g) for g in rep["near_groups"]]
    assert ["p0", "t0", "u0", "u1"] in near_listed
    assert rep["summary"]["near"]["test_images_with_train_twin"] == 5


def test_leakage_report_max_groups_and_missing_columns():
    rep = dup.leakage_report(_leak_df(), max_groups=1)
    assert len(rep["exact_groups"]) == 1 and rep["summary"]["exact"]["groups"] == 4
    # Rows appended after grouping (missing ids) count as ungrouped.
    extra = pd.DataFrame([{"path": "s0", "subset": "gen", "split": "train", "label": 1}])
    padded = dup.leakage_report(pd.concat([_leak_df(), extra], ignore_index=True))
    assert padded["summary"] == dup.leakage_report(_leak_df())["summary"]
    with pytest.raises(FersynthError, match="dup_group"):
        dup.leakage_report(_leak_df().drop(columns="dup_group"))


@pytest.mark.shared
@pytest.mark.skipif(not FER2013.is_dir(), reason="needs ../shared/data/fer2013")
def test_fer2013_duplicate_figures():
    files = sorted(FER2013.glob("*/*/*.jpg"))
    pixels = np.stack([cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files])
    assert pixels.shape == (35887, 48, 48)
    df = pd.DataFrame(
        {
            "path": [str(f.relative_to(FER2013)) for f in files],
            "subset": [f.name.split("_")[0] for f in files],
            "split": [f.parts[-3] for f in files],
            "label": pd.factorize(pd.Series([f.parent.name for f in files]))[0],
            "dup_group": dup.exact_group_ids(pixel_hashes(pixels)),
        }
    )
    h = dup.phash(pixels)
    # The README's 14 blank / near-constant images (pixel std < 5) and no others.
    blank = pixels.reshape(len(pixels), -1).std(axis=1) < 5
    assert ((h == dup.DEGENERATE_HASH) == blank).all() and blank.sum() == 14
    df["near_group"] = dup.merge_groups(df["dup_group"].to_numpy(), dup.near_group_ids(h, 4))
    rep = dup.leakage_report(df)
    ex = rep["summary"]["exact"]
    assert (ex["groups"], ex["files"]) == (1516, 3369)
    assert ex["groups_multi_subset"] == 557
    assert ex["groups_train_test"] == 531
    assert ex["test_images_with_train_twin"] == 568
    assert ex["test_images_with_train_twin_by_subset"]["PrivateTest"] == 288
    assert ex["groups_conflicting_labels"] == 57
    near = rep["summary"]["near"]
    assert near["files"] > ex["files"] and near["test_images_with_train_twin"] > 568


def test_near_groups_do_not_depend_on_the_pair_budget(monkeypatch):
    """Candidate pairs are formed a group of buckets at a time; the groups are the same."""
    import fersynth.data.duplicates as dup

    rng = np.random.default_rng(5)
    h = rng.integers(0, 2**63, 6000, dtype=np.uint64)
    h[1::3] = h[0::3] ^ np.uint64(0b1011)  # 3 bits away: near twins
    h[2::3] = rng.integers(0, 2**63, 2000, dtype=np.uint64) & np.uint64(0xFFFF)  # crowded buckets
    whole = dup.near_group_ids(h, 4)
    monkeypatch.setattr(dup, "PAIR_BUDGET", 50)
    assert np.array_equal(dup.near_group_ids(h, 4), whole)
    assert (whole[0::3] == whole[1::3]).all() and (whole[0::3] >= 0).all()
