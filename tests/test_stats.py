"""Tests for fersynth.evaluate.stats."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from fersynth.errors import FersynthError
from fersynth.evaluate.stats import (
    holm,
    mcnemar,
    mean_std,
    paired_bootstrap_delta,
    t_interval,
    welch_t,
)


def discordant(b, c, both=20, neither=5):
    a = [True] * b + [False] * c + [True] * both + [False] * neither
    bb = [False] * b + [True] * c + [True] * both + [False] * neither
    return np.array(a), np.array(bb)


def test_mcnemar_exact_matches_binomtest():
    r = mcnemar(*discordant(10, 2))
    assert (r["b"], r["c"], r["method"]) == (10, 2, "exact")
    assert r["p_value"] == pytest.approx(sps.binomtest(2, 12, 0.5).pvalue)
    assert r["p_value"] == pytest.approx(0.03857421875)


def test_mcnemar_chi2_with_continuity_correction():
    r = mcnemar(*discordant(30, 10))
    assert r["method"] == "chi2_cc"
    assert r["statistic"] == pytest.approx(19**2 / 40)
    assert r["p_value"] == pytest.approx(sps.chi2.sf(19**2 / 40, 1))


def test_mcnemar_no_discordance_and_bad_shapes():
    assert mcnemar(*discordant(0, 0))["p_value"] == 1.0
    with pytest.raises(FersynthError, match="McNemar needs two 1-D arrays of the same length"):
        mcnemar([True, False], [True])


def _preds(n, acc, rng, y):
    pred = (y + rng.integers(1, 7, n)) % 7
    hit = rng.random(n) < acc
    pred[hit] = y[hit]
    return pred


def test_paired_bootstrap_detects_real_difference():
    rng = np.random.default_rng(0)
    n = 2000
    y = rng.integers(0, 7, n)
    a = _preds(n, 0.60, rng, y)
    b = a.copy()
    fix = np.flatnonzero(a != y)[:200]  # B fixes 200 of A's errors: +10 points
    b[fix] = y[fix]
    r = paired_bootstrap_delta(y, a, b, n_boot=500, seed=1)
    assert r["delta"] == pytest.approx(0.1)
    assert r["ci95"][0] > 0.05
    assert r["p_value"] < 0.01
    r_mca = paired_bootstrap_delta(y, a, b, metric="mean_class_accuracy", n_boot=500, seed=1)
    assert r_mca["ci95"][0] > 0 and r_mca["p_value"] < 0.01


def test_paired_bootstrap_null():
    rng = np.random.default_rng(1)
    n = 2000
    y = rng.integers(0, 7, n)
    a = _preds(n, 0.6, rng, y)
    same = paired_bootstrap_delta(y, a, a, n_boot=200, seed=0)
    assert same["delta"] == 0 and same["ci95"] == [0.0, 0.0] and same["p_value"] == 1.0
    # B swaps 100 correct items for 100 wrong ones: same accuracy, different items.
    b = a.copy()
    right, wrong = np.flatnonzero(a == y)[:100], np.flatnonzero(a != y)[:100]
    b[right] = (y[right] + 1) % 7
    b[wrong] = y[wrong]
    r = paired_bootstrap_delta(y, a, b, n_boot=500, seed=0)
    assert r["delta"] == pytest.approx(0.0)
    assert r["ci95"][0] < 0 < r["ci95"][1]
    assert r["p_value"] > 0.5


def test_paired_bootstrap_seeded_and_validated():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 7, 300)
    a, b = _preds(300, 0.5, rng, y), _preds(300, 0.6, rng, y)
    r1 = paired_bootstrap_delta(y, a, b, metric="macro_f1", n_boot=200, seed=3)
    r2 = paired_bootstrap_delta(y, a, b, metric="macro_f1", n_boot=200, seed=3)
    assert r1 == r2
    with pytest.raises(FersynthError, match="metric"):
        paired_bootstrap_delta(y, a, b, metric="auc")
    with pytest.raises(FersynthError, match="length"):
        paired_bootstrap_delta(y, a[:-1], b)


def test_mean_std_and_t_interval():
    assert mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert mean_std([0.7]) == {"mean": 0.7, "std": 0.0, "n": 1}
    vals = [0.61, 0.64, 0.62, 0.66]
    lo, hi = t_interval(vals)
    ref = sps.t.interval(0.95, len(vals) - 1, loc=np.mean(vals), scale=sps.sem(vals))
    assert (lo, hi) == pytest.approx(ref)
    assert t_interval([0.5]) == [None, None]


def test_welch_matches_scipy():
    a, b = [0.60, 0.62, 0.61, 0.63], [0.65, 0.66, 0.70]
    r = welch_t(a, b)
    ref = sps.ttest_ind(b, a, equal_var=False)
    assert r["delta"] == pytest.approx(np.mean(b) - np.mean(a))
    assert r["statistic"] == pytest.approx(ref.statistic)
    assert r["p_value"] == pytest.approx(ref.pvalue)
    assert welch_t([0.5], [0.6])["p_value"] is None


def test_holm():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.2, None, 0.9]) == [pytest.approx(0.4), None, pytest.approx(0.9)]
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([]) == []


def test_seed_averaged_bootstrap_point_is_the_seed_mean_and_detects_a_class_gain():
    from fersynth.evaluate.stats import seed_averaged_paired_bootstrap

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    # arm A: 60% correct everywhere; arm B: the same, but class 2 is always right
    pa = np.stack([np.where(rng.random(600) < 0.6, y, (y + 1) % 3) for _ in range(3)])
    pb = pa.copy()
    pb[:, y == 2] = 2
    r = seed_averaged_paired_bootstrap(y, pa, pb, 3, n_boot=300, seed=1)
    acc_a = np.mean([(p == y).mean() for p in pa])
    acc_b = np.mean([(p == y).mean() for p in pb])
    assert r["accuracy"]["delta"] == pytest.approx(acc_b - acc_a)
    rec = lambda p, c: (p[y == c] == c).mean()  # noqa: E731
    want = np.mean([rec(b, 2) - rec(a, 2) for a, b in zip(pa, pb)])
    assert r["per_class"]["fear"]["recall"]["delta"] == pytest.approx(want)
    assert r["per_class"]["fear"]["recall"]["p_value"] < 0.01
    assert r["per_class"]["angry"]["recall"]["delta"] == 0 and r["per_class"]["angry"]["recall"]["p_value"] == 1.0
    lo, hi = r["mean_class_accuracy"]["ci95"]
    assert lo < r["mean_class_accuracy"]["delta"] < hi and lo > 0


def test_seed_averaged_bootstrap_null_and_shape_check():
    from fersynth.evaluate.stats import seed_averaged_paired_bootstrap

    rng = np.random.default_rng(2)
    y = rng.integers(0, 7, 400)
    pa = rng.integers(0, 7, (2, 400))
    pb = rng.integers(0, 7, (2, 400))
    r = seed_averaged_paired_bootstrap(y, pa, pb, 7, n_boot=300, seed=0)
    assert r["mean_class_accuracy"]["p_value"] > 0.05
    with pytest.raises(FersynthError, match=r"predictions \(2, 10\) / \(2, 400\) do not fit 400 labels"):
        seed_averaged_paired_bootstrap(y, pa[:, :10], pb, 7)
