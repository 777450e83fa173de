"""Verification: policy decisions on constructed probabilities, the verify stage with fake
experts, fersynth checkpoints as experts, and the `fersynth verify` command's bad inputs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from fersynth.cli.main import main
from fersynth.data.demo import make_demo_faces
from fersynth.data.manifest import Manifest, pixel_hash
from fersynth.errors import FersynthError
from fersynth.evaluate.runner import predict_manifest
from fersynth.labels import CLASSES
from fersynth.models import create_model
from fersynth.train.checkpoint import load_checkpoint, save_checkpoint
from fersynth.verify import CheckpointExpert, Expert, VerifyPolicy, decide, load_expert, verify
from fersynth.verify.policy import later_duplicates, near_any

K = 7


def dist(c: int, p: float, k: int = K) -> np.ndarray:
    v = np.full(k, (1 - p) / (k - 1), dtype=np.float32)
    v[c] = p
    return v


class TableExpert(Expert):
    """Returns a fixed distribution per image, looked up by pixel digest."""

    def __init__(self, table: dict[str, np.ndarray], name: str, classes=CLASSES[:7]):
        super().__init__(classes, name=name)
        self.table = table

    def _predict_raw(self, batch):
        return np.stack([self.table[pixel_hash(im)] for im in batch])


# ---------------------------------------------------------------- policy on constructed probabilities


def constructed():
    """Two experts, six images, all intended as class 0 (angry)."""
    e1 = [dist(0, 0.8), dist(0, 0.8), dist(4, 0.9), dist(3, 0.45), dist(0, 0.4), dist(0, 0.9)]
    e2 = [dist(0, 0.7), dist(6, 0.6), dist(4, 0.8), dist(5, 0.5), dist(0, 0.45), dist(2, 0.95)]
    return np.stack([np.stack(e1), np.stack(e2)]), np.zeros(6, dtype=np.int64)


def test_vote_policy_decisions():
    per, y = constructed()
    d = decide(per, y, VerifyPolicy(mode="vote", threshold=0.5, relabel_threshold=0.7))
    assert d.verdict.tolist() == ["keep", "drop", "relabel", "drop", "drop", "drop"]
    assert d.reason.tolist() == ["experts_agree", "low_confidence", "confident_disagreement",
                                 "experts_disagree", "low_confidence", "experts_disagree"]
    assert d.n_agree.tolist() == [2, 1, 0, 0, 0, 1]
    assert d.label.tolist() == [0, 0, 4, 0, 0, 0]
    # One agreeing expert is enough with k=1.
    d1 = decide(per, y, VerifyPolicy(k=1))
    assert d1.verdict.tolist() == ["keep", "keep", "relabel", "drop", "drop", "keep"]
    # A stricter threshold drops the keep; without relabelling the confident disagreement drops.
    assert decide(per, y, VerifyPolicy(threshold=0.75)).verdict[0] == "drop"
    assert decide(per, y, VerifyPolicy(relabel=False)).verdict[2] == "drop"


def test_mean_policy_decisions():
    per, y = constructed()
    d = decide(per, y, VerifyPolicy(mode="mean", threshold=0.5))
    np.testing.assert_allclose(d.p_intended, per[:, :, 0].mean(0), rtol=1e-6)
    assert d.verdict.tolist() == ["keep", "drop", "relabel", "drop", "drop", "drop"]
    assert decide(per, y, VerifyPolicy(mode="mean", threshold=0.43)).verdict[4] == "drop"  # mean 0.425
    d = decide(per, y, VerifyPolicy(mode="mean", threshold=0.42))
    assert d.verdict.tolist() == ["keep", "keep", "relabel", "drop", "keep", "keep"]


def test_relabel_soft_label_is_ensemble_average():
    per, y = constructed()
    d = decide(per, y, VerifyPolicy())
    np.testing.assert_allclose(d.soft_label[2], per[:, 2].mean(0), rtol=1e-6)
    assert d.soft_label[2].sum() == pytest.approx(1.0, abs=1e-6)
    assert np.isnan(d.soft_label[[0, 1, 3, 4, 5]]).all()
    # Weighted ensembles average with their weights.
    dw = decide(per, y, VerifyPolicy(), weights=[3, 1])
    np.testing.assert_allclose(dw.soft_label[2], 0.75 * per[0, 2] + 0.25 * per[1, 2], rtol=1e-6)


def test_policy_validation():
    with pytest.raises(FersynthError, match="3 agreeing experts but only 2"):
        decide(*constructed(), VerifyPolicy(k=3))
    with pytest.raises(ValueError):
        VerifyPolicy(threshold=1.5)
    with pytest.raises(ValueError):
        VerifyPolicy(mode="mean", k=2)
    with pytest.raises(ValueError):
        VerifyPolicy(modes="vote")
    per, y = constructed()
    with pytest.raises(FersynthError, match="intended labels must lie in 0..6"):
        decide(per, np.full(6, 7), VerifyPolicy())


def test_quality_duplicates_and_test_twins_drop_whatever_the_experts_say():
    per = np.stack([np.stack([dist(0, 0.9)] * 5)] * 2)
    y = np.zeros(5, dtype=np.int64)
    hashes = np.array([0b1011 << 8, 0b1011 << 8, 1 << 40 | 0xF0F0, 0xABCDEF << 20, 0b1011 << 8], dtype=np.uint64)
    q = np.array([0.5, 0.5, 0.1, 0.5, 0.5])
    test_dup = np.array([False, False, False, True, False])
    d = decide(per, y, VerifyPolicy(min_q_score=0.2, radius=0), q_score=q, phashes=hashes, test_duplicate=test_dup)
    assert d.verdict.tolist() == ["keep", "drop", "drop", "drop", "drop"]
    assert d.reason.tolist() == ["experts_agree", "near_duplicate", "low_quality", "near_duplicate_of_test",
                                 "near_duplicate"]
    # Only accepted images knock out their twins: if the first is dropped, the second is kept.
    per2 = per.copy()
    per2[:, 0] = dist(0, 0.3)
    d2 = decide(per2, y, VerifyPolicy(radius=0), phashes=hashes)
    assert d2.verdict[:2].tolist() == ["drop", "keep"] and d2.verdict[4] == "drop"
    with pytest.raises(FersynthError, match="quality scores"):
        decide(per, y, VerifyPolicy(min_q_score=0.2))


def test_near_any_and_later_duplicates():
    q = np.array([0b111, 0b111 << 10, 0, 0xFF00], dtype=np.uint64)
    ref = np.array([0b101, 0], dtype=np.uint64)
    assert near_any(q, ref, 1).tolist() == [True, False, False, False]
    assert near_any(q, ref, 0).tolist() == [False, False, False, False]
    # The degenerate (blank) hash never matches by pHash, only by identical pixels.
    assert near_any(q, ref, 0, ["a", "b", "c", "d"], ["c"]).tolist() == [False, False, True, False]
    assert later_duplicates(np.array([5, 7, 5, 5], np.uint64), np.array([True, True, False, True]), 0).tolist() == [
        False, False, False, True]


# ---------------------------------------------------------------- the verify stage


@pytest.fixture(scope="module")
def synth():
    """28 demo faces as a synthetic manifest with intended labels and provenance columns."""
    d = make_demo_faces(4, seed=21, difficulty=0.3)
    n = len(d.pixels)
    return Manifest.from_arrays(
        d.pixels, d.labels, dataset="demo-synth", source="synthetic", intended_label=d.labels,
        generator="demo", seed=np.arange(n), parent_id=[None] * n, params=[json.dumps({"i": i}) for i in range(n)],
    )


def make_experts(m: Manifest, wrong: dict[int, int]):
    """Expert A is right about every image; B too except that it votes `wrong` rows elsewhere.
    Rows in `wrong` are relabelled when A also names that class."""
    y = m.df["intended_label"].to_numpy()
    ta, tb = {}, {}
    for i, (h, c) in enumerate(zip(m.df["pixel_hash"], y, strict=True)):
        ta[h] = dist(wrong.get(i, c), 0.85)
        tb[h] = dist(wrong.get(i, c), 0.8) if i in wrong else dist(c, 0.8)
    return [TableExpert(ta, "a"), TableExpert(tb, "b")]


def test_verify_columns_report_and_outputs(synth, tmp_path):
    wrong = {0: 6, 2: 3}  # two angry images the experts see as neutral / happy
    experts = make_experts(synth, wrong)
    test_twin = synth.select([9])  # a test image that equals synthetic row 9
    test_ref = Manifest(test_twin.df.assign(split="test"), test_twin.pixels)
    out, rep = verify(synth, experts, VerifyPolicy(radius=0), test_ref, out_dir=tmp_path / "v")
    v = out.df["verdict"].tolist()
    assert v[0] == "relabel" and v[2] == "relabel" and v[9] == "drop"
    assert out.df["verify_reason"][9] == "near_duplicate_of_test"
    assert v.count("keep") == len(synth) - 3
    assert out.df["label"][0] == 6 and out.df["label"][2] == 3 and out.df["label"][1] == 0
    assert out.df["intended_label"][0] == 0
    np.testing.assert_allclose(out.df["soft_label"][0], (dist(6, 0.85) + dist(6, 0.8)) / 2, atol=1e-5)
    assert out.df["soft_label"][1] is None
    assert set(out.df["expert_probs"][3]) == {"a", "b"}
    assert rep["counts"] == {"keep": 25, "relabel": 2, "drop": 1}
    assert rep["relabelled_to"] == {"angry": {"neutral": 1, "happy": 1}}
    assert rep["test_reference"] == {"rows": 1, "near_duplicates": 1}
    table = {r["class"]: r for r in rep["acceptance"]}
    assert table["angry"] == {"class": "angry", "intended": 4, "kept": 2, "relabelled": 2, "dropped": 0,
                              "accepted_share": 1.0, "after": 2}
    assert table["happy"]["after"] == 5 and table["neutral"]["after"] == 5
    assert table[CLASSES[9 // 4]]["dropped"] == 1
    assert table["total"]["intended"] == 28 and table["total"]["after"] == 27
    assert rep["expert_agreement"]["a"] == pytest.approx(26 / 28)
    # per intended class: the two misread images are both angry (4 images), every other class is read right
    assert rep["expert_agreement_per_class"]["a"]["angry"] == pytest.approx(2 / 4)
    assert rep["expert_agreement_per_class"]["a"]["happy"] == 1.0
    assert rep["ensemble_agreement_per_class"]["angry"] == pytest.approx(2 / 4)
    # What was written reads back.
    back = Manifest.load(tmp_path / "v")
    assert back.df["verdict"].tolist() == v
    np.testing.assert_allclose(back.df["soft_label"][0], out.df["soft_label"][0])
    assert back.df["expert_probs"][3]["a"] == pytest.approx(out.df["expert_probs"][3]["a"])
    assert json.loads((tmp_path / "v" / "report.json").read_text())["counts"] == rep["counts"]
    assert (tmp_path / "v" / "acceptance.csv").read_text().startswith("class,intended,kept,relabelled,dropped")
    assert (tmp_path / "v" / "grid.png").stat().st_size > 5000


def test_verify_drops_duplicates_within_the_set(synth):
    twin = synth.select([3, 3])
    pix = twin.pixels.copy()
    pix[1] = np.clip(pix[1].astype(int) + 2, 0, 255).astype(np.uint8)  # not identical, same pHash
    dup = Manifest.from_arrays(pix, twin.labels, source="synthetic", intended_label=twin.labels)
    m = Manifest.concat([synth, dup])
    y = m.df["intended_label"].to_numpy()
    table = {h: dist(c, 0.9) for h, c in zip(m.df["pixel_hash"], y, strict=True)}
    out, rep = verify(m, [TableExpert(table, "a")], VerifyPolicy(radius=2))
    assert out.df["verdict"].tolist()[-2:] == ["drop", "drop"]
    assert rep["reasons"]["near_duplicate"] >= 2 and out.df["verdict"][3] == "keep"
    out, _ = verify(m, [TableExpert(table, "a")], VerifyPolicy(dedup=False))
    assert (out.df["verdict"] == "keep").all()


def test_verify_bad_inputs(synth):
    experts = make_experts(synth, {})
    no_intended = Manifest(synth.df.drop(columns=["intended_label"]), synth.pixels)
    with pytest.raises(FersynthError, match="no intended labels"):
        verify(no_intended, experts)
    lab = synth.df["intended_label"].to_numpy().copy()
    lab[0] = 7  # contempt: neither expert has it
    m8 = Manifest(synth.df.assign(intended_label=lab), synth.pixels)
    with pytest.raises(FersynthError, match="expert 'a' has no output for class\\(es\\) contempt") as ei:
        verify(m8, experts)
    assert "--map contempt=" in ei.value.hint
    out, _ = verify(m8, experts, label_map={"contempt": "neutral"})
    assert out.df["intended_label"][0] == CLASSES.index("neutral")
    with pytest.raises(FersynthError, match="no experts"):
        verify(synth, [])


# ---------------------------------------------------------------- fersynth checkpoints as experts


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A fernet_s checkpoint (random weights) whose recipe equalises and uses flip TTA."""
    torch.manual_seed(0)
    model = create_model("fernet_s", num_classes=7, in_chans=1, img_size=48)
    meta = {"architecture": "fernet_s", "num_classes": 7, "classes": list(CLASSES[:7]), "in_chans": 1,
            "img_size": 48, "model_kwargs": {},
            "preprocessing": {"equalize": "equalize", "normalize": "x/127.5-1", "tta": True}}
    d = tmp_path_factory.mktemp("runs") / "tiny"
    save_checkpoint(model, meta, d / "best")
    return d


def test_checkpoint_expert_uses_the_checkpoint_preprocessing(run_dir, synth):
    e = load_expert(run_dir)
    assert isinstance(e, CheckpointExpert) and e.name == "tiny"
    assert e.equalize == "equalize" and e.tta
    p = e.predict_proba(synth.pixels, batch_size=5)
    ref = predict_manifest(load_checkpoint(run_dir), synth)
    np.testing.assert_allclose(p, ref, rtol=1e-5, atol=1e-6)
    # Without equalisation the numbers differ, so the recipe is really applied.
    raw = CheckpointExpert(run_dir)
    raw.predictor.pre = dataclasses.replace(raw.predictor.pre, equalize="none")
    assert not np.allclose(raw.predict_proba(synth.pixels), p, atol=1e-4)
    for spec in (run_dir / "best.safetensors", run_dir / "best.json"):
        e2 = load_expert(spec)
        assert isinstance(e2, CheckpointExpert) and e2.name == "tiny/best"
        np.testing.assert_allclose(e2.predict_proba(synth.pixels[:4]), p[:4], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- CLI


def test_verify_cli(run_dir, synth, tmp_path, capsys):
    synth.save(tmp_path / "synth")
    code = main(["verify", str(tmp_path / "synth"), "--experts", str(run_dir), "--experts", str(run_dir),
                 "--out", str(tmp_path / "out"), "--policy", "mean", "--threshold", "0.1", "--radius", "0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["experts"] == ["tiny", "tiny#2"] and rep["policy"]["mode"] == "mean"
    assert sum(rep["counts"].values()) == len(synth)
    assert "angry" in out and (tmp_path / "out" / "grid.png").is_file()
    assert Manifest.load(tmp_path / "out").df["verdict"].isin(["keep", "relabel", "drop"]).all()


def test_verify_cli_bad_input(run_dir, synth, tmp_path, capsys):
    Manifest(synth.df.drop(columns=["intended_label"]), synth.pixels).save(tmp_path / "plain")
    lab = synth.df["intended_label"].to_numpy().copy()
    lab[:3] = 7
    Manifest(synth.df.assign(intended_label=lab), synth.pixels).save(tmp_path / "c8")
    synth.save(tmp_path / "ok")
    cases = [
        (["verify", tmp_path / "plain", "-e", run_dir, "-o", tmp_path / "o1"], "no intended labels"),
        (["verify", tmp_path / "c8", "-e", run_dir, "-o", tmp_path / "o2"], "no output for class(es) contempt"),
        (["verify", tmp_path / "ok", "-e", run_dir, "-o", tmp_path / "o3", "--threshold", "2"], "policy: threshold"),
        (["verify", tmp_path / "ok", "-e", run_dir, "-o", tmp_path / "o4", "--k", "2"], "2 agreeing experts but only 1"),
        (["verify", tmp_path / "ok", "-e", tmp_path / "nope.onnx", "-o", tmp_path / "o5"], "expert model not found"),
    ]
    for argv, msg in cases:
        code = main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert code == 2, argv
        assert msg in err and "Traceback" not in err
        assert len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    code = main(["verify", str(tmp_path / "c8"), "-e", str(run_dir), "-o", str(tmp_path / "o6"),
                 "--map", "contempt=neutral", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["rows"] == len(synth)
