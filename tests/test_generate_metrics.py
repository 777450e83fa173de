"""Pseudo-labelling with a teacher / ensemble, and the synthetic-set metrics."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from fersynth.cli.main import main
from fersynth.data.demo import make_demo_faces
from fersynth.data.manifest import Manifest
from fersynth.errors import FersynthError
from fersynth.generate.metrics import (
    diversity,
    fer_accuracy,
    frechet_distance,
    sample_grids,
    synthetic_set_metrics,
)
from fersynth.generate.pseudolabel import load_unlabelled, pseudolabel, teacher_probs
from fersynth.labels import CLASSES


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from fersynth.models import create_model
    from fersynth.train.checkpoint import save_checkpoint

    torch.manual_seed(1)
    model = create_model("fernet_s", num_classes=7, in_chans=1, img_size=48)
    path = tmp_path_factory.mktemp("teacher") / "best"
    save_checkpoint(model, {"architecture": "fernet_s", "num_classes": 7, "classes": list(CLASSES[:7]),
                            "in_chans": 1, "img_size": 48}, path)
    return path.with_suffix(".safetensors")


@pytest.fixture
def folder(tmp_path):
    d = make_demo_faces(2, seed=0)
    root = tmp_path / "faces"
    for i, img in enumerate(d.pixels):
        (root / f"part{i % 2}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / f"part{i % 2}" / f"{i}.png"), img)
    (root / "notes.txt").write_text("not an image")
    return root


def test_pseudolabel_threshold_topk_and_ensemble(folder, teacher):
    m, bad = load_unlabelled(folder)
    assert len(m) == 14 and not bad and (m.labels == -1).all()
    probs = teacher_probs(m.pixels, [teacher])
    assert probs.shape == (14, 8) and np.allclose(probs.sum(1), 1, atol=1e-5) and (probs[:, 7] == 0).all()
    assert np.allclose(teacher_probs(m.pixels, [teacher, teacher]), probs)
    everything, rep = pseudolabel(m, [teacher], threshold=0.0)
    assert len(everything) == 14 and rep["kept"] == 14
    assert everything.labels.tolist() == probs.argmax(1).tolist() and (everything.df["source"] == "pseudo").all()
    cut = float(np.median(probs.max(1)))
    confident, _ = pseudolabel(m, [teacher], threshold=cut)
    assert len(confident) == int((probs.max(1) >= cut).sum()) and (confident.df["pseudo_confidence"] >= cut).all()
    top, rep = pseudolabel(m, [teacher], threshold=0.0, top_k=1)
    assert len(top) == len(set(probs.argmax(1))) and all(v == 1 for v in rep["per_class"].values())
    for _, row in top.df.iterrows():
        same = probs.argmax(1) == row["label"]
        assert row["pseudo_confidence"] == pytest.approx(probs.max(1)[same].max())
    with pytest.raises(FersynthError, match="threshold"):
        pseudolabel(m, [teacher], threshold=1.5)


def test_pseudolabel_cli(folder, teacher, tmp_path, capsys):
    assert main(["generate", "pseudolabel", str(folder), "--teacher", str(teacher), "--out", str(tmp_path / "pl"),
                 "--threshold", "0"]) == 0
    assert len(Manifest.load(tmp_path / "pl")) == 14
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    rc = main(["generate", "pseudolabel", str(tmp_path / "empty"), "--teacher", str(teacher), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no images in this folder" in err and len(err.splitlines()) == 1


def test_metric_functions():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 4))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(a, a + 3) == pytest.approx(36, rel=0.05)
    assert diversity(np.ones((5, 3))) == 0 and diversity(np.array([[0.0, 0], [3, 4]])) == pytest.approx(5)
    probs = np.eye(7)[[0, 1, 1, 3]]
    r = fer_accuracy(probs, np.array([0, 1, 2, 3]), list(CLASSES[:7]))
    assert r["accuracy"] == 0.75 and r["per_class"] == {"angry": 1.0, "disgust": 1.0, "fear": 0.0, "happy": 1.0}


def test_synthetic_set_metrics_and_grids(teacher, tmp_path):
    d = make_demo_faces(4, seed=0)
    syn = Manifest.from_arrays(d.pixels, d.labels, source="synthetic")
    r = make_demo_faces(4, seed=1)
    real = Manifest.from_arrays(r.pixels, r.labels)
    res = synthetic_set_metrics(syn, real, teacher, tmp_path / "m")
    assert set(res["fer_accuracy"]["per_class"]) == set(CLASSES[:7])
    from fersynth.predictor import Predictor

    pred = Predictor.load(teacher).predict_proba(syn.pixels).argmax(1)  # the judge's own verdicts
    assert res["fer_accuracy"]["accuracy"] == pytest.approx((pred == syn.labels).mean())
    assert res["fer_accuracy"]["per_class"]["happy"] == pytest.approx((pred[syn.labels == 3] == 3).mean())
    assert res["frechet_distance"] > 0 and res["diversity"] > 0
    assert sorted(p.split("/")[-1] for p in res["grids"]) == sorted(f"grid_{c}.png" for c in CLASSES[:7])
    grid = cv2.imread(res["grids"][0])
    assert grid.shape == (1 * 50 * 2, 4 * 50 * 2, 3)  # one row of 4, cells of 48 + 2, scaled x2
    assert len(sample_grids(syn.select(syn.labels == 3), tmp_path / "one")) == 1


def test_metrics_cli(teacher, tmp_path, capsys):
    import json

    from fersynth.data.demo import write_demo_folder

    real = write_demo_folder(tmp_path / "real", 2, seed=0, test_per_class=1)
    d = make_demo_faces(2, seed=5)
    Manifest.from_arrays(d.pixels, d.labels, source="synthetic").save(tmp_path / "syn")
    capsys.readouterr()
    assert main(["generate", "metrics", str(tmp_path / "syn"), "--real", str(real), "--classifier", str(teacher),
                 "--out", str(tmp_path / "m"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["images"] == 14 and res["real_images"] == 14 and (tmp_path / "m" / "grid_happy.png").is_file()
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["frechet_distance"] == res["frechet_distance"]
