"""The one inference path: `Predictor`, every consumer giving its probabilities, `fersynth predict`
and `fersynth export --onnx`."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from fersynth.checkpoint import load_checkpoint, save_checkpoint
from fersynth.cli.main import main
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


# --------------------------------------------------------------------------- fersynth predict
def scene(faces: list[np.ndarray], size=(240, 360)) -> np.ndarray:
    """Demo faces (144 px) pasted side by side on a plain grey frame, where Haar finds them."""
    f = np.full(size, 90, np.uint8)
    for k, face in enumerate(faces):
        f[40:184, 20 + 180 * k : 164 + 180 * k] = cv2.resize(face, (144, 144))
    return f


@pytest.fixture(scope="module")
def detectable(faces):
    from fersynth.faces.convert import haar_detector

    det = haar_detector(0.1)
    return [im for im in faces[0] if len(det(scene([im]))) == 1][:3]


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    vw.release()
    return path


def test_cli_predict_images_folders_globs_videos(run, detectable, tmp_path, capsys):
    from fersynth.faces.convert import DomainSpec, face_boxes, haar_detector

    a, b = detectable[:2]
    (tmp_path / "in" / "sub").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "in" / "one.png"), scene([a]))
    cv2.imwrite(str(tmp_path / "in" / "sub" / "two.png"), scene([a, b], (240, 400)))
    cv2.imwrite(str(tmp_path / "blank.jpg"), np.full((100, 100), 128, np.uint8))
    write_video(tmp_path / "clip.avi", [scene([a])] * 3 + [scene([b])] * 3)
    out = tmp_path / "o" / "pred.csv"
    code = main(["predict", str(run), str(tmp_path / "in"), str(tmp_path / "*.jpg"), str(tmp_path / "clip.avi"),
                 "--every", "2", "--all-faces", "--out", str(out), "--annotate", str(tmp_path / "ann")])
    assert code == 0, capsys.readouterr().err
    df = pd.read_csv(out)
    assert list(df.columns) == ["file", "frame", "time", "face", "x", "y", "w", "h",
                                *[f"p_{c}" for c in CLASSES[:7]], "label", "confidence"]
    names = df["file"].map(lambda s: Path(s).name)
    assert names.value_counts().to_dict() == {"two.png": 2, "clip.avi": 3, "one.png": 1, "blank.jpg": 1}
    vid = df[names == "clip.avi"]
    assert vid["frame"].tolist() == [0, 2, 4] and np.allclose(vid["time"], [0.0, 0.2, 0.4])
    blank = df[names == "blank.jpg"].iloc[0]
    assert blank["face"] == -1 and np.isnan(blank["p_happy"])
    # the scores are the Predictor's on the detected crop
    pred, img = Predictor.load(run), scene([a])
    (x, y, s, _), = face_boxes(img, DomainSpec(48, False, True, 0.2, 0.1), haar_detector(0.1))
    one = df[names == "one.png"].iloc[0]
    assert (one["x"], one["y"], one["w"]) == (x, y, s)
    p = pred.predict_proba(pred.pre.prepare_one(img[y : y + s, x : x + s]))[0]
    np.testing.assert_allclose(one[[f"p_{c}" for c in CLASSES[:7]]].to_numpy(float), p, atol=1e-6)
    assert one["label"] == CLASSES[int(p.argmax())]
    # annotated copies
    assert sorted(q.name for q in (tmp_path / "ann").iterdir()) == ["blank.png", "clip.avi", "one.png", "two.png"]
    cap = cv2.VideoCapture(str(tmp_path / "ann" / "clip.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    cap.release()
    # the same rows as Parquet and JSON lines; CSV on stdout without --out; largest face only by default
    for ext in ("parquet", "jsonl"):
        assert main(["predict", str(run), str(tmp_path / "in"), "-o", str(tmp_path / f"p.{ext}"), "--all-faces"]) == 0
    pq = pd.read_parquet(tmp_path / "p.parquet")
    jl = pd.read_json(tmp_path / "p.jsonl", lines=True)
    np.testing.assert_allclose(pq["p_happy"], df[names.isin(["one.png", "two.png"])]["p_happy"], atol=1e-6)
    np.testing.assert_allclose(jl["p_happy"], pq["p_happy"], atol=1e-6)
    capsys.readouterr()
    assert main(["predict", str(run), str(tmp_path / "in" / "sub")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("file,frame,time,face") and len(lines) == 2


def test_cli_predict_no_detect_scores_whole_crops(run, faces, tmp_path):
    px, _ = faces
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"c{i}.png"), px[i])
    assert main(["predict", str(run), str(tmp_path / "c*.png"), "--no-detect", "-o", str(tmp_path / "p.csv"),
                 "--batch-size", "3"]) == 0
    df = pd.read_csv(tmp_path / "p.csv")
    assert (df["face"] == 0).all() and (df["w"] == 48).all()
    np.testing.assert_allclose(df[[f"p_{c}" for c in CLASSES[:7]]].to_numpy(), Predictor.load(run).predict_proba(px[:4]),
                               atol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["{run}", "{tmp}/missing.png"], "missing.png: no such file, folder or pattern"),
    (["{run}", "{tmp}/bad.png", "-o", "{tmp}/o.csv"], "bad.png: "),
    (["{run}", "{tmp}/text.mp4", "-o", "{tmp}/o.csv"], "text.mp4: cannot open as a video"),
    (["{run}", "{tmp}/notes.txt"], "notes.txt: not an image or video"),
    (["{run}", "{tmp}/*.gif"], "matches no image or video"),
    (["{run}", "{tmp}/ok.png", "-o", "{tmp}/o.xlsx"], "output format 'xlsx'"),
    (["{run}", "{tmp}/ok.png", "--format", "parquet"], "Parquet cannot go to stdout"),
    (["{run}", "{tmp}/ok.png", "--every", "0"], "--every 0 must be >= 1"),
    (["{run}", "{tmp}/ok.png", "--batch-size", "0"], "--batch-size 0 must be >= 1"),
    (["{tmp}/nomodel", "{tmp}/ok.png"], "no checkpoint there"),
    (["{tmp}/m.onnx", "{tmp}/ok.png"], "m.onnx: not a loadable ONNX model"),
])
def test_cli_predict_bad_inputs_exit_2(run, tmp_path, capsys, args, message):
    cv2.imwrite(str(tmp_path / "ok.png"), np.zeros((48, 48), np.uint8))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "text.mp4").write_text("not a video")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "m.onnx").write_bytes(b"x")
    code = main(["predict"] + [a.format(run=run, tmp=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not list(tmp_path.glob("*o.csv*"))  # nothing half-written


# --------------------------------------------------------------------------- ONNX
def test_export_onnx_parity_and_onnx_everywhere(run, faces, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from fersynth.app.server import create_app
    from fersynth.verify.experts import load_expert

    px, _ = faces
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(run), "--onnx", str(onnx_path)]) == 0
    assert "max |p_onnx - p_torch|" in capsys.readouterr().out
    ort_pred, torch_pred = Predictor.load(onnx_path), Predictor.load(run)
    assert ort_pred.backend == "onnx" and ort_pred.classes == torch_pred.classes and ort_pred.pre == torch_pred.pre
    p = torch_pred.predict_proba(px)
    for bs in (len(px), 4, 1):  # the batch axis is dynamic
        np.testing.assert_allclose(ort_pred.predict_proba(px, batch_size=bs), p, atol=1e-4)
    # predict and the app (through load_expert) take the .onnx file
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"c{i}.png"), px[i])
    assert main(["predict", str(onnx_path), str(tmp_path / "c*.png"), "--no-detect", "-o", str(tmp_path / "p.csv")]) == 0
    np.testing.assert_allclose(pd.read_csv(tmp_path / "p.csv")[[f"p_{c}" for c in CLASSES[:7]]], p[:3], atol=1e-4)
    expert = load_expert(onnx_path)
    np.testing.assert_allclose(expert.predict_proba(px), p, atol=1e-4)
    from fastapi.testclient import TestClient

    from fersynth.app.live import load_playlists

    ok, buf = cv2.imencode(".png", px[0])
    r = TestClient(create_app(expert, load_playlists(), detect=False)).post("/api/frame", content=buf.tobytes())
    assert r.status_code == 200 and abs(sum(r.json()["probs"].values()) - 1) < 1e-3


def test_export_bad_inputs(run, tmp_path, capsys):
    assert main(["export", str(run), "--onnx", str(tmp_path / "m.txt")]) == 2
    assert "must be a .onnx file" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none"), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "no checkpoint there" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.onnx*"))
