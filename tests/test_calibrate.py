"""Verifier calibration (fersynth.verify.calibrate): fair to rare classes, strict with wrong labels."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from fersynth.cli.main import main
from fersynth.data.demo import make_demo_faces
from fersynth.data.manifest import Manifest
from fersynth.errors import FersynthError
from fersynth.experiment.config import config_from_dict
from fersynth.labels import CLASSES
from fersynth.verify import Expert, VerifyPolicy, decide, verify
from fersynth.verify.calibrate import (
    CalibrationConfig,
    calibrate_and_check,
    fit_check_split,
    fit_thresholds,
    keep_rates,
)
from fersynth.verify.policy import keep_score

K = 7
DISGUST = CLASSES.index("disgust")
# FER2013-like class shares: disgust is rare.
SHARES = np.array([0.14, 0.015, 0.14, 0.25, 0.17, 0.11, 0.175])
POLICY = VerifyPolicy(mode="vote", k=1, threshold=0.3)


def imbalanced_experts(n: int, seed: int, n_experts: int = 2):
    """Labels drawn from a balanced set and per-expert probabilities of experts that learnt the
    imbalanced prior: p ∝ likelihood x prior, the likelihood favouring the true class."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), n // K)
    out = []
    for _ in range(n_experts):
        logit = rng.normal(0, 1.0, (len(y), K))
        logit[np.arange(len(y)), y] += 2.0
        logit += np.log(SHARES)  # the learnt prior
        p = np.exp(logit - logit.max(axis=1, keepdims=True))
        out.append(p / p.sum(axis=1, keepdims=True))
    return np.stack(out).astype(np.float32), y


def test_keep_score_is_the_policy():
    per, y = imbalanced_experts(700, seed=1, n_experts=3)
    for pol in (VerifyPolicy(mode="vote", threshold=0.4), VerifyPolicy(mode="vote", k=1, threshold=0.2),
                VerifyPolicy(mode="mean", threshold=0.35)):
        kept = decide(per, y, pol).verdict == "keep"
        assert ((keep_score(per, y, pol) >= pol.threshold) == kept).all()
    # A per-class threshold vector acts per intended class.
    thr = np.full(K, 0.99, np.float32)
    thr[3] = 0.0
    d = decide(per, y, VerifyPolicy(mode="mean"), thresholds=thr)
    assert set(y[d.verdict == "keep"]) == {3} and (d.verdict[y == 3] == "keep").all()


def test_fit_check_split_is_stratified_and_disjoint():
    y = np.array([0] * 10 + [1] * 3 + [2])
    fit = fit_check_split(y, 0.5, seed=0)
    assert fit[y == 0].sum() == 5 and 1 <= fit[y == 1].sum() <= 2
    assert (fit_check_split(y, 0.5, seed=0) == fit).all()
    assert not (fit_check_split(y, 0.5, seed=1) == fit).all()


@pytest.mark.parametrize("method", ["prior", "thresholds", "both"])
def test_calibration_keeps_the_rare_class_and_drops_shuffled_labels(method):
    per, y = imbalanced_experts(2800, seed=2)
    cal, rep = calibrate_and_check(per, y, POLICY, CalibrationConfig(method=method), names=["a", "b"])
    before, after = rep["uncalibrated"], rep["calibrated"]
    assert rep["fit_rows"] + rep["check_rows"] == len(y)
    # Before: the experts' learnt prior costs disgust nearly all its real images.
    assert before["real_keep_rate"]["disgust"] < 0.1 and before["real_keep_rate"]["happy"] > 0.9
    real, shuffled = after["real_keep_rate"], after["shuffled_keep_rate"]
    if method == "thresholds":
        # Per-class thresholds equalise the classes the experts do name, but cannot make an
        # expert name disgust: that takes the prior correction.
        others = [real[c] for c in CLASSES[:K] if c != "disgust"]
        assert max(others) - min(others) < 0.2 and 0.55 < np.mean(others) < 0.8
        assert real["disgust"] < 0.2
    else:
        assert real["disgust"] > 0.55 and real["min_class"] > 0.55, real
        t = rep["calibration"]["experts"]["a"]
        assert t["bias"]["disgust"] > t["bias"]["happy"] + 2  # the learnt prior is undone
    assert after["shuffled_keep_rate_changed"] <= 0.11 and shuffled["overall"] <= 0.21
    if method == "both":
        assert shuffled["overall"] < before["shuffled_keep_rate"]["overall"] / 1.5
    if method != "prior":
        assert set(rep["calibration"]["thresholds"]) == set(CLASSES[:K])


def test_no_calibration_changes_nothing():
    per, y = imbalanced_experts(700, seed=3)
    cal, rep = calibrate_and_check(per, y, POLICY, CalibrationConfig())
    assert cal is None and "calibrated" not in rep
    fit = fit_check_split(y, 0.5, 0)
    assert rep["uncalibrated"] == keep_rates(per[:, ~fit], y[~fit], POLICY)


def test_max_threshold_binds_only_small_classes_when_asked():
    # class 0: 40 rows scored 0.9 (a 0.75-keep threshold of 0.9); class 1: 4 rows scored 0.9
    scores = np.r_[np.full(40, 0.9), np.full(4, 0.9), np.linspace(0.1, 0.2, 10)]
    labels = np.r_[np.zeros(40), np.ones(4), np.full(10, 2)].astype(np.int64)
    capped = fit_thresholds(scores, labels, 4, CalibrationConfig(target_keep=0.75, max_threshold=0.3), 0.3)
    assert np.allclose(capped[:2], 0.3) and capped[3] == pytest.approx(0.3)  # class 3 has no rows: the default
    some = fit_thresholds(scores, labels, 4, CalibrationConfig(target_keep=0.75, max_threshold=0.3,
                                                               max_threshold_below_rows=10), 0.3)
    assert some[0] == pytest.approx(0.9)  # 40 rows: its own quantile, above the cap
    assert some[1] == pytest.approx(0.3)  # 4 rows: capped
    assert some[2] == pytest.approx(np.sort(scores[labels == 2])[::-1][7])  # below the cap: fitted either way
    assert capped[2] == some[2]
    with pytest.raises(ValueError):
        CalibrationConfig(max_threshold_below_rows=0)


def test_calibration_config_validation():
    for bad in ({"method": "platt"}, {"target_keep": 1.5}, {"fit_fraction": 0}, {"min_threshold": 0.8,
                                                                                  "max_threshold": 0.5}):
        with pytest.raises(ValueError):
            CalibrationConfig(**bad)
    base = {"name": "x", "data": {"path": "d"}, "arms": [{"name": "b", "strategy": "real"}]}
    for bad, msg in (({"method": "platt"}, "verify.calibration.method"),
                     ({"target_keep": 2}, "verify.calibration.target_keep"),
                     ({"fit_frac": 0.5}, "verify.calibration.fit_frac")):
        with pytest.raises(FersynthError, match=msg):
            config_from_dict(dict(base, verify={"calibration": bad}))
    cfg = config_from_dict(dict(base, verify={"calibration": {"method": "both", "target_keep": 0.8}}))
    assert cfg.verify.calibration.target_keep == 0.8


# ---------------------------------------------------------------- a trained imbalanced expert


class LDAExpert(Expert):
    """A classifier trained on demo faces in code: equalised 16x16 pixels, PCA, linear
    discriminant analysis. LDA learns the class prior of its training rows, so trained on
    imbalanced faces it seldom names the rare class: the experts' failure to calibrate."""

    def __init__(self, pixels, labels, name="lda"):
        from sklearn.decomposition import PCA
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
        from sklearn.pipeline import make_pipeline

        super().__init__(CLASSES[:K], name=name)
        self.clf = make_pipeline(PCA(60, random_state=0), LinearDiscriminantAnalysis())
        self.clf.fit(self.features(pixels), labels)

    @staticmethod
    def features(px):
        return np.stack([cv2.resize(cv2.equalizeHist(p), (16, 16), interpolation=cv2.INTER_AREA)
                         for p in px]).reshape(len(px), -1) / 255.0

    def _predict_raw(self, batch):
        return self.clf.predict_proba(self.features(batch))


@pytest.fixture(scope="module")
def imbalanced_run(tmp_path_factory):
    """An LDA expert trained on easy demo faces with 6 disgust faces against 120 of each other class,
    a real manifest (those training rows plus 40 validation faces per class) and a synthetic one
    (40 disgust faces, 6 of each other class), both written as manifests."""
    counts = {c: (6 if c == "disgust" else 120) for c in CLASSES[:K]}
    tr = make_demo_faces(counts, seed=5, difficulty=0.1)
    va = make_demo_faces(40, seed=6, difficulty=0.1)
    base = tmp_path_factory.mktemp("cal")
    expert = LDAExpert(tr.pixels, tr.labels)
    Manifest.concat([Manifest.from_arrays(tr.pixels, tr.labels, split="train", dataset="demo"),
                     Manifest.from_arrays(va.pixels, va.labels, split="val", dataset="demo")]).save(base / "real")
    sy = make_demo_faces({c: (40 if c == "disgust" else 6) for c in CLASSES[:K]}, seed=7, difficulty=0.1)
    Manifest.from_arrays(sy.pixels, sy.labels, source="synthetic", intended_label=sy.labels,
                         dataset="demo-synth").save(base / "synth")
    return base, expert


def test_trained_imbalanced_expert_keeps_the_rare_class_after_calibration(imbalanced_run):
    b, expert = imbalanced_run
    synth, real = Manifest.load(b / "synth"), Manifest.load(b / "real")
    ex = [expert]
    pol = VerifyPolicy(mode="vote", k=1, threshold=0.3, dedup=False)
    out0, rep0 = verify(synth, ex, pol, real=real)
    out1, rep1 = verify(synth, ex, pol, real=real, calibration=CalibrationConfig(method="both"))
    before = rep1["real_check"]["uncalibrated"]
    after = rep1["real_check"]["calibrated"]
    assert rep0["real_check"]["uncalibrated"] == before  # the same check rows either way
    assert before["real_keep_rate"]["disgust"] <= 0.2, before
    assert after["real_keep_rate"]["disgust"] >= 0.5, after
    assert after["real_keep_rate"]["min_class"] >= 0.5, after
    assert after["shuffled_keep_rate"]["overall"] <= 0.15, after
    # The synthetic disgust faces the uncalibrated verifier dropped are kept now.
    acc0 = {r["class"]: r for r in rep0["acceptance"]}
    acc1 = {r["class"]: r for r in rep1["acceptance"]}
    assert acc1["disgust"]["kept"] >= 2 * acc0["disgust"]["kept"] + 4
    assert out1.meta["verify"]["calibration"]["thresholds"]["disgust"] > 0


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A fernet_s checkpoint with random weights: the CLI's expert (the figures are not checked)."""
    import torch

    from fersynth.models import create_model
    from fersynth.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("fernet_s", num_classes=K, in_chans=1, img_size=48)
    meta = {"architecture": "fernet_s", "num_classes": K, "classes": list(CLASSES[:K]), "in_chans": 1,
            "img_size": 48, "preprocessing": {"equalize": "none", "tta": False}}
    d = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(model, meta, d / "best")
    return d


def test_verify_cli_real_check_and_calibration(imbalanced_run, ckpt, tmp_path, capsys):
    b, _ = imbalanced_run
    code = main(["verify", str(b / "synth"), "-e", str(ckpt), "-o", str(tmp_path / "o"), "--k", "1",
                 "--threshold", "0.3", "--real", str(b / "real"), "--calibrate", "both", "--target-keep", "0.75",
                 "--max-threshold", "0.3", "--max-threshold-below-rows", "50"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "keep rate on" in out and "shuffled, calibrated" in out
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    rc = rep["real_check"]
    assert rc["method"] == "both" and rc["config"]["target_keep"] == 0.75
    assert rc["config"]["max_threshold"] == 0.3 and rc["config"]["max_threshold_below_rows"] == 50
    assert rc["fit_rows"] + rc["check_rows"] == 40 * K
    assert set(rc["calibration"]) == {"experts", "thresholds"}


def test_verify_cli_bad_calibration_values(imbalanced_run, ckpt, tmp_path, capsys):
    b, _ = imbalanced_run
    base = ["verify", str(b / "synth"), "-e", str(ckpt)]
    cases = [
        (["--calibrate", "platt", "--real", str(b / "real")], "calibration: method"),
        (["--calibrate", "both", "--real", str(b / "real"), "--target-keep", "1.5"], "calibration: target_keep"),
        (["--calibrate", "both", "--real", str(b / "real"), "--fit-fraction", "0"], "calibration: fit_fraction"),
        (["--calibrate", "both", "--real", str(b / "real"), "--max-threshold-below-rows", "0"],
         "calibration: max_threshold_below_rows"),
        (["--calibrate", "both"], "needs real validation images"),
        (["--calibrate", "both", "--real", str(tmp_path / "nowhere")], "nowhere"),
    ]
    for i, (extra, msg) in enumerate(cases):
        o = tmp_path / f"o{i}"
        code = main([*base, "-o", str(o), *extra])
        err = capsys.readouterr().err
        assert code == 2, extra
        assert msg in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) <= 2
        assert not o.exists()


def test_a_class_without_fit_rows_stays_uncalibrated():
    per, y = imbalanced_experts(700, seed=4)
    keep = (y != DISGUST) | (np.arange(len(y)) == np.flatnonzero(y == DISGUST)[0])  # one disgust row: check part
    cal, rep = calibrate_and_check(per[:, keep], y[keep], POLICY, CalibrationConfig(method="both"))
    assert rep["uncalibrated_classes"] == ["disgust"]
    assert (cal.bias[:, DISGUST] == 0).all() and cal.thresholds[DISGUST] == POLICY.threshold
    assert rep["calibrated"]["rows_per_class"]["disgust"] == 1
