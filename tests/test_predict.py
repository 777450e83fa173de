"""The one inference path: `Predictor`, every consumer giving its probabilities, `fersynth predict`
and `fersynth export --onnx`."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fersynth.checkpoint import load_checkpoint, save_checkpoint
from fersynth.data.demo import make_demo_faces
from fersynth.data.manifest import Manifest
from fersynth.errors import FersynthError
from fersynth.labels import CLASSES
from fersynth.models import create_model
from fersynth.predictor import Predictor, Preprocessing, to_domain


def tiny_run(root: Path, equalize: str = "equalize", tta: bool = True, seed: int = 0) -> Path:
    """An untrained fernet_s checkpoint recording equalisation and TTA (parity needs no accuracy)."""
    torch.manual_seed(seed)
    model = create_model("fernet_s", num_classes=7, in_chans=1, img_size=48)
    meta = {"architecture": "fernet_s", "num_classes": 7, "classes": list(CLASSES[:7]), "in_chans": 1,
            "img_size": 48, "preprocessing": {"equalize": equalize, "normalize": "x/127.5-1", "tta": tta,
                                              "source_shape": [48, 48]}}
    save_checkpoint(model, meta, root / "best")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("pred") / "tiny")


@pytest.fixture(scope="module")
def faces():
    d = make_demo_faces(3, seed=7)
    return d.pixels, d.labels


# --------------------------------------------------------------------------- one path for all
def test_every_consumer_gives_the_predictors_probabilities(run, faces):
    from fastapi.testclient import TestClient

    from fersynth.app.live import LiveSession, load_playlists
    from fersynth.app.server import create_app
    from fersynth.evaluate.runner import predict_manifest
    from fersynth.generate.metrics import fer_accuracy, frechet_distance, synthetic_set_metrics
    from fersynth.generate.pseudolabel import teacher_probs
    from fersynth.verify.experts import load_expert

    px, labels = faces
    pred = Predictor.load(run)
    p = pred.predict_proba(px)
    assert p.shape == (len(px), 7) and np.allclose(p.sum(1), 1, atol=1e-5)
    # evaluate
    np.testing.assert_array_equal(predict_manifest(load_checkpoint(run), Manifest.from_arrays(px, labels)), p)
    # the verification expert
    expert = load_expert(run)
    np.testing.assert_array_equal(expert.predict_proba(px), p)
    # pseudo-labelling
    np.testing.assert_array_equal(teacher_probs(px, [run])[:, :7], p)
    # synthetic-set metrics: FER accuracy from these probabilities, Fréchet distance from its features
    real = make_demo_faces(2, seed=8)
    res = synthetic_set_metrics(Manifest.from_arrays(px, labels), Manifest.from_arrays(real.pixels, real.labels), run)
    assert res["fer_accuracy"] == fer_accuracy(p, labels, pred.classes)
    assert res["frechet_distance"] == frechet_distance(pred.features(px), pred.features(real.pixels))
    assert res["preprocessing"]["equalize"] == "equalize" and res["preprocessing"]["tta"]
    # the app, in-process and over HTTP: what it scores is its face crop of the frame
    live = LiveSession(expert, load_playlists(), detect=False)
    frame = cv2.resize(px[0], (120, 120))
    crop = live.face(frame)[1]
    want = {c: round(float(v), 4) for c, v in zip(pred.classes, pred.predict_proba(crop[None])[0])}
    assert live.step(frame).probs == want
    client = TestClient(create_app(expert, load_playlists(), detect=False))
    ok, buf = cv2.imencode(".png", frame)
    assert client.post("/api/frame", content=buf.tobytes()).json()["probs"] == want


def test_recorded_preprocessing_is_applied(run, faces):
    px, _ = faces
    pred = Predictor.load(run)
    raw = Predictor(pred.model, pred.classes, Preprocessing(48, 1, "none", True, (48, 48)))
    no_tta = Predictor(pred.model, pred.classes, Preprocessing(48, 1, "equalize", False, (48, 48)))
    p = pred.predict_proba(px)
    assert not np.allclose(raw.predict_proba(px), p, atol=1e-4)  # equalisation counts
    assert not np.allclose(no_tta.predict_proba(px), p, atol=1e-4)  # so does the mirror
    # an image outside the training domain (96x96 RGB) is brought into it first
    rgb = np.stack([cv2.cvtColor(cv2.resize(im, (96, 96)), cv2.COLOR_GRAY2RGB) for im in px[:4]])
    np.testing.assert_array_equal(pred.predict_proba(rgb), pred.predict_proba(to_domain(rgb, (48, 48))))
    # batching does not change the result beyond float noise
    np.testing.assert_allclose(pred.predict_proba(px, batch_size=5), p, atol=1e-6)


def test_checkpoint_without_preprocessing_falls_back_to_its_config():
    meta = {"img_size": 48, "in_chans": 1, "config": {"augment": {"equalize": "clahe"}, "tta": True}}
    assert Preprocessing.from_meta(meta) == Preprocessing(48, 1, "clahe", True, None)
    with pytest.raises(FersynthError, match="unknown equalize 'sharpen'"):
        Preprocessing.from_meta({"img_size": 48, "in_chans": 1, "preprocessing": {"equalize": "sharpen"}})


def test_predict_dataframe_from_paths_and_bad_inputs(run, faces, tmp_path):
    px, _ = faces
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"f{i}.png")
        cv2.imwrite(str(paths[-1]), cv2.resize(px[i], (64, 64)))
    pred = Predictor.load(run)
    df = pred.predict(paths)
    assert list(df.columns) == ["path"] + [f"p_{c}" for c in CLASSES[:7]] + ["label", "confidence"]
    want = pred.predict_proba(to_domain(np.stack([cv2.imread(str(p), 0) for p in paths]), (48, 48)))
    np.testing.assert_array_equal(df[[f"p_{c}" for c in CLASSES[:7]]].to_numpy(), want)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(FersynthError, match="bad.png"):
        pred.predict([tmp_path / "bad.png"])
    with pytest.raises(FersynthError, match="uint8"):
        pred.predict_proba(px.astype(np.float32))
    with pytest.raises(FersynthError, match="no checkpoint there"):
        Predictor.load(tmp_path / "nothing")
