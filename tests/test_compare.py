"""Tests for fersynth.evaluate.compare and fersynth.evaluate.plots."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as sps

from fersynth.errors import FersynthError
from fersynth.evaluate import (
    compare_runs,
    evaluate_predictions,
    format_compare_table,
    plot_class_distribution,
    plot_confusion,
    plot_per_class_deltas,
    significant,
)
from fersynth.labels import BASIC7

N = 400


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 7, N), [f"img{i:04d}" for i in range(N)]


def run(y, ids, acc, seed, arm=None, run_seed=None, order=None, n_boot=200):
    rng = np.random.default_rng(seed)
    pred = (y + rng.integers(1, 7, len(y))) % 7
    hit = rng.random(len(y)) < acc
    pred[hit] = y[hit]
    probs = np.full((len(y), 7), 0.02)
    probs[np.arange(len(y)), pred] = 0.88
    order = np.arange(len(y)) if order is None else order
    r = evaluate_predictions(
        y[order], probs[order], BASIC7, ids=[ids[i] for i in order], n_boot=n_boot
    )
    if arm is not None:
        r["arm"] = arm
    if run_seed is not None:
        r["seed"] = run_seed
    return r, pred


def test_compare_pairs_by_id_and_computes_deltas():
    y, ids = make_data()
    ra, pa = run(y, ids, 0.5, seed=1)
    # Same items, shuffled order: pairing must go by id, not position.
    rb, pb = run(y, ids, 0.7, seed=2, order=np.random.default_rng(9).permutation(N))
    cmp = compare_runs([ra, rb], names=["real", "aug"], n_boot=300)
    c = cmp["comparisons"]["aug"]
    assert c["paired"] and c["n_paired"] == N and c["note"] is None
    acc_a, acc_b = np.mean(pa == y), np.mean(pb == y)
    assert c["metrics"]["accuracy"]["delta"] == pytest.approx(acc_b - acc_a)
    assert c["metrics"]["accuracy"]["method"] == "paired bootstrap"
    lo, hi = c["metrics"]["accuracy"]["ci95"]
    assert lo < acc_b - acc_a < hi
    b = int(np.sum((pa == y) & (pb != y)))
    cc = int(np.sum((pa != y) & (pb == y)))
    assert (c["mcnemar"]["b"], c["mcnemar"]["c"]) == (b, cc)
    assert c["metrics"]["top2_accuracy"]["delta"] == pytest.approx(
        rb["top2_accuracy"] - ra["top2_accuracy"]
    )
    for k in ("recall", "f1"):
        d = c["per_class"]["happy"][k]["delta"]
        assert d == pytest.approx(rb["per_class"]["happy"][k] - ra["per_class"]["happy"][k])
    assert cmp["metrics"]["accuracy"]["values"] == {"real": ra["accuracy"], "aug": rb["accuracy"]}
    assert cmp["arms"] is None
    json.dumps(cmp)
    text = format_compare_table(cmp)
    assert "aug" in text and "McNemar" in text and "happy" in text


def test_compare_refuses_runs_without_common_ids():
    y, ids = make_data()
    ra, _ = run(y, ids, 0.5, seed=1)
    rb, _ = run(y, [f"other{i}" for i in range(N)], 0.6, seed=2)
    with pytest.raises(FersynthError, match="share no prediction ids"):
        compare_runs([ra, rb], n_boot=50)


def test_compare_refuses_label_conflicts():
    y, ids = make_data()
    ra, _ = run(y, ids, 0.5, seed=1)
    rb, _ = run((y + 1) % 7, ids, 0.6, seed=2)
    with pytest.raises(FersynthError, match="disagree on the label"):
        compare_runs([ra, rb], n_boot=50)


def test_compare_partial_overlap_is_stated():
    y, ids = make_data()
    ra, _ = run(y, ids, 0.5, seed=1)
    rb, _ = run(y, ids, 0.6, seed=2, order=np.arange(100, N))
    c = compare_runs([ra, rb], n_boot=50)["comparisons"]["run1"]
    assert c["n_paired"] == N - 100 and "paired on" in c["note"]


def test_compare_without_predictions_is_unpaired():
    y, ids = make_data()
    ra, _ = run(y, ids, 0.5, seed=1)
    rb, _ = run(y, ids, 0.7, seed=2)
    ra.pop("predictions"), rb.pop("predictions")
    c = compare_runs([ra, rb], n_boot=50)["comparisons"]["run1"]
    acc = c["metrics"]["accuracy"]
    assert not c["paired"] and c["mcnemar"] is None
    assert acc["method"].startswith("unpaired")
    assert acc["delta"] == pytest.approx(rb["accuracy"] - ra["accuracy"])
    assert acc["ci95"][0] < acc["delta"] < acc["ci95"][1]


def test_compare_aggregates_seeds_per_arm():
    y, ids = make_data()
    results = []
    for arm, acc in (("real", 0.5), ("real+syn", 0.65)):
        for s in range(3):
            results.append(run(y, ids, acc, seed=10 * s + len(arm), arm=arm, run_seed=s)[0])
    cmp = compare_runs(results, n_boot=50)
    assert cmp["names"][0] == "real/seed0"
    arms = cmp["arms"]
    assert set(arms) == {"real", "real+syn"}
    accs = {a: [r["accuracy"] for r in results if r["arm"] == a] for a in arms}
    m = arms["real+syn"]["metrics"]["accuracy"]
    assert m["mean"] == pytest.approx(np.mean(accs["real+syn"]))
    assert m["std"] == pytest.approx(np.std(accs["real+syn"], ddof=1))
    assert m["n"] == 3 and m["t_ci95"][0] < m["mean"] < m["t_ci95"][1]
    comp = cmp["arm_comparisons"]
    assert comp["baseline_arm"] == "real"
    w = comp["arms"]["real+syn"]["metrics"]["accuracy"]
    assert w["delta"] == pytest.approx(np.mean(accs["real+syn"]) - np.mean(accs["real"]))
    ref = sps.ttest_ind(accs["real+syn"], accs["real"], equal_var=False)
    assert w["welch"]["p_value"] == pytest.approx(ref.pvalue)
    # the study report's engine: a seed-averaged paired image bootstrap beside Welch's t
    assert w["method"] == "seed-averaged paired bootstrap" and w["ci95"][0] < w["delta"] < w["ci95"][1]
    assert comp["arms"]["real+syn"]["per_class"] and significant(w) == (w["p_value"] < 0.05
                                                                      and w["welch"]["p_value"] < 0.05)
    pooled = comp["arms"]["real+syn"]["pooled_mcnemar"]
    assert pooled["seeds"] == [0, 1, 2] and pooled["n"] == 3 * N
    assert pooled["c"] > pooled["b"]
    text = format_compare_table(cmp)
    assert "Across seeds" in text and "real+syn" in text
    json.dumps(cmp)


def test_compare_validates_arguments():
    y, ids = make_data()
    ra, _ = run(y, ids, 0.5, seed=1, n_boot=10)
    with pytest.raises(FersynthError, match="no results to compare"):
        compare_runs([])
    with pytest.raises(FersynthError, match="names must be unique"):
        compare_runs([ra, ra], names=["a", "a"])
    with pytest.raises(FersynthError, match="baseline index 5 out of range"):
        compare_runs([ra, ra], baseline=5)


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_plots_write_pngs(tmp_path):
    y, ids = make_data()
    ra, _ = run(y, ids, 0.5, seed=1, n_boot=10)
    out = plot_confusion(ra["confusion_matrix"], path=tmp_path / "figs" / "cm.png", title="t")
    _check_png(out)
    out = plot_confusion(
        np.eye(3) * 5, ["a", "b", "c"], tmp_path / "cm_counts.png", normalized=False
    )
    _check_png(out)
    counts = {"train": {"angry": 40, "happy": 90}, "test": {"angry": 10, "happy": 20, "fear": 3}}
    _check_png(plot_class_distribution(counts, tmp_path / "dist.png"))
    deltas = {"angry": (0.02, -0.01, 0.05), "happy": (-0.01, None, None), "fear": (0.05, 0.0, 0.1)}
    _check_png(plot_per_class_deltas(deltas, tmp_path / "deltas.png"))
    with pytest.raises(FersynthError, match="shape"):
        plot_confusion(np.ones((2, 3)), ["a", "b", "c"], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
