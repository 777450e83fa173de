"""Tests for fersynth.evaluate.metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import precision_recall_fscore_support

from fersynth.errors import FersynthError
from fersynth.evaluate.metrics import evaluate_predictions, fer_plus_metrics
from fersynth.evaluate.stats import class_counts, metrics_from_counts
from fersynth.labels import BASIC7, CLASSES


def one_hot_probs(pred, k=7, second=None):
    p = np.full((len(pred), k), 0.01)
    p[np.arange(len(pred)), pred] = 0.9
    if second is not None:
        p[np.arange(len(pred)), second] = 0.05
    return p / p.sum(axis=1, keepdims=True)


def noisy_model(n, k=7, strength=1.5, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += strength
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


def test_accuracy_and_mean_class_accuracy_differ_under_imbalance():
    # 8 angry, 2 disgust; the model always says angry.
    y = np.array([0] * 8 + [1] * 2)
    pred = np.zeros(10, dtype=int)
    second = np.array([1] * 10)
    r = evaluate_predictions(y, one_hot_probs(pred, second=second), BASIC7, n_boot=50)
    assert r["accuracy"] == pytest.approx(0.8)
    assert r["mean_class_accuracy"] == pytest.approx(0.5)
    assert r["top2_accuracy"] == pytest.approx(1.0)
    assert r["per_class"]["angry"]["precision"] == pytest.approx(0.8)
    assert r["per_class"]["disgust"]["recall"] == 0.0
    assert r["per_class"]["disgust"]["support"] == 2
    # Classes the data lacks still appear as rows with no recall.
    assert r["per_class"]["happy"]["support"] == 0
    assert r["per_class"]["happy"]["recall"] is None
    # Macro over present classes: F1(angry) = 2*.8*1/(1.8), F1(disgust) = 0.
    assert r["macro_f1"] == pytest.approx((2 * 0.8 / 1.8) / 2)
    assert r["weighted_recall"] == pytest.approx(r["accuracy"])


def test_per_class_and_averages_match_sklearn():
    y, p = noisy_model(600)
    r = evaluate_predictions(y, p, BASIC7, n_boot=50)
    pred = p.argmax(axis=1)
    labels = list(range(7))
    prec, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for i, c in enumerate(BASIC7):
        pc = r["per_class"][c]
        assert pc["precision"] == pytest.approx(prec[i])
        assert pc["recall"] == pytest.approx(rec[i])
        assert pc["f1"] == pytest.approx(f1[i])
        assert pc["support"] == sup[i]
    for avg in ("macro", "weighted"):
        ps, rs, fs, _ = precision_recall_fscore_support(
            y, pred, labels=labels, average=avg, zero_division=0
        )
        assert r[f"{avg}_precision"] == pytest.approx(ps)
        assert r[f"{avg}_recall"] == pytest.approx(rs)
        assert r[f"{avg}_f1"] == pytest.approx(fs)
    assert r["accuracy"] == pytest.approx(np.mean(pred == y))
    assert r["mean_class_accuracy"] == pytest.approx(np.mean(rec))


def test_confusion_matrix_counts_and_normalisation():
    y = np.array([0, 0, 0, 3, 3, 6])
    pred = np.array([0, 3, 0, 3, 6, 6])
    r = evaluate_predictions(y, one_hot_probs(pred), BASIC7, n_boot=20)
    cm = r["confusion_matrix"]
    assert cm["labels"] == list(BASIC7) and cm["columns"] == list(BASIC7)
    counts = np.array(cm["counts"])
    assert counts.sum() == 6
    assert counts[0, 0] == 2 and counts[0, 3] == 1 and counts[3, 6] == 1
    norm = np.array(cm["normalized"])
    for i, row in enumerate(counts):
        if row.sum():
            assert norm[i].sum() == pytest.approx(1.0)
        else:
            assert norm[i].sum() == 0.0
    assert norm[0, 0] == pytest.approx(2 / 3)


def test_model_class_order_is_mapped():
    y, p = noisy_model(300, seed=3)
    perm = [6, 3, 0, 1, 2, 5, 4]
    model_classes = [BASIC7[i] for i in perm]
    r_ref = evaluate_predictions(y, p, BASIC7, n_boot=50)
    r_perm = evaluate_predictions(y, p[:, perm], BASIC7, model_classes=model_classes, n_boot=50)
    for k in ("accuracy", "mean_class_accuracy", "macro_f1", "top2_accuracy"):
        assert r_perm[k] == pytest.approx(r_ref[k])
    assert r_perm["confusion_matrix"]["columns"] == model_classes
    assert [x["pred"] for x in r_perm["predictions"]] == [x["pred"] for x in r_ref["predictions"]]


def test_unseen_class_reported_and_excluded():
    y, p = noisy_model(200, seed=1)
    y8 = y.copy()
    y8[:15] = CLASSES.index("contempt")
    y8[15:20] = -1
    r = evaluate_predictions(y8, p, list(CLASSES), n_boot=50, model_classes=list(BASIC7))
    assert r["unseen_classes"] == {"contempt": 15}
    assert r["n_unlabelled"] == 5
    assert r["n"] == 180 and r["n_total"] == 200
    assert "contempt" in r["note"] and "excluded" in r["note"]
    assert "contempt" not in r["classes"]
    excluded = [x for x in r["predictions"] if x.get("excluded")]
    assert len(excluded) == 20 and len(r["predictions"]) == 200
    sub = evaluate_predictions(y[20:], p[20:], BASIC7, n_boot=50)
    assert r["accuracy"] == pytest.approx(sub["accuracy"])
    assert r["macro_f1"] == pytest.approx(sub["macro_f1"])


def test_model_class_missing_from_data_is_a_column():
    # An 8-class model on 7-class data: contempt is a predicted column, not a row.
    y = np.array([0, 3, 3, 6])
    pred = np.array([0, 3, 7, 6])
    r = evaluate_predictions(y, one_hot_probs(pred, k=8), BASIC7, model_classes=list(CLASSES))
    cm = r["confusion_matrix"]
    assert "contempt" in cm["columns"] and "contempt" not in cm["labels"]
    assert np.array(cm["counts"])[cm["labels"].index("happy"), cm["columns"].index("contempt")] == 1
    assert r["unseen_classes"] == {}
    assert r["accuracy"] == pytest.approx(0.75)


def test_bootstrap_ci_contains_estimate_and_narrows():
    widths = []
    for n in (200, 5000):
        y, p = noisy_model(n, seed=2)
        r = evaluate_predictions(y, p, BASIC7, n_boot=500, seed=0)
        for k in ("accuracy", "mean_class_accuracy", "macro_f1"):
            lo, hi = r["ci95"][k]
            assert lo <= r[k] <= hi
        widths.append(r["ci95"]["accuracy"][1] - r["ci95"]["accuracy"][0])
    assert widths[1] < widths[0] / 2


def test_bootstrap_seeded():
    y, p = noisy_model(300, seed=4)
    a = evaluate_predictions(y, p, BASIC7, n_boot=200, seed=7)
    b = evaluate_predictions(y, p, BASIC7, n_boot=200, seed=7)
    c = evaluate_predictions(y, p, BASIC7, n_boot=200, seed=8)
    assert a["ci95"] == b["ci95"]
    assert a["ci95"] != c["ci95"]


def test_vectorised_counts_match_point_estimate():
    y, p = noisy_model(400, seed=5)
    pred = p.argmax(axis=1)
    idx = np.tile(np.arange(len(y)), (3, 1))
    boot = metrics_from_counts(*class_counts(y, pred, idx))
    r = evaluate_predictions(y, p, BASIC7, n_boot=0)
    np.testing.assert_allclose(boot["accuracy"], r["accuracy"])
    np.testing.assert_allclose(boot["mean_class_accuracy"], r["mean_class_accuracy"])
    np.testing.assert_allclose(boot["macro_f1"], r["macro_f1"])


def test_output_is_json_and_has_schema():
    y, p = noisy_model(50, seed=6)
    ids = [f"img{i:03d}" for i in range(50)]
    r = evaluate_predictions(y, p, BASIC7, ids=ids, n_boot=20, include_probs=True)
    back = json.loads(json.dumps(r))
    for key in (
        "n",
        "accuracy",
        "mean_class_accuracy",
        "top2_accuracy",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "weighted_precision",
        "weighted_recall",
        "weighted_f1",
        "per_class",
        "confusion_matrix",
        "ci95",
        "predictions",
        "classes",
        "unseen_classes",
    ):
        assert key in back
    assert back["predictions"][0]["id"] == "img000"
    assert set(back["predictions"][0]) >= {"id", "label", "pred", "prob"}
    assert len(back["probs"]["values"]) == 50


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"probs": np.ones((3, 7))}, "shape"),
        ({"probs": np.ones((4, 6))}, "columns"),
        ({"y_true": np.array([0, 1, 9, 2])}, "outside"),
        ({"ids": ["a", "a", "b", "c"]}, "unique"),
        ({"y_true": np.array([-1, -1, -1, -1])}, "none of the"),
    ],
)
def test_bad_input_raises(kwargs, match):
    args = {"y_true": np.array([0, 1, 2, 3]), "probs": np.full((4, 7), 1 / 7)}
    args.update(kwargs)
    with pytest.raises(FersynthError, match=match):
        evaluate_predictions(args.pop("y_true"), args.pop("probs"), BASIC7, n_boot=10, **args)


def test_fer_plus_metrics():
    votes = np.array(
        [
            [0, 0, 0, 8, 2, 0, 0, 0],  # happy
            [0, 0, 0, 0, 5, 0, 5, 0],  # tie sad / neutral
            [0, 0, 0, 0, 0, 0, 0, 0],  # no votes
            [0, 0, 0, 0, 0, 0, 1, 9],  # contempt: unseen by a 7-class model
            [6, 0, 0, 0, 0, 4, 0, 0],  # angry
        ]
    )
    pred = np.array([3, 6, 0, 6, 5])
    r = fer_plus_metrics(votes, one_hot_probs(pred))
    assert r["n"] == 3 and r["n_no_votes"] == 1 and r["unseen_classes"] == {"contempt": 1}
    # majority labels: happy, sad (first of tie), angry -> correct, wrong, wrong
    assert r["majority_accuracy"] == pytest.approx(1 / 3)
    assert r["plausible_accuracy"] == pytest.approx(2 / 3)
    assert r["vote_agreement"] == pytest.approx((0.8 + 0.5 + 0.4) / 3)
