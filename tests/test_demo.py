"""Procedural demo faces: determinism, shapes, label noise, learnability, folder writer."""

from __future__ import annotations

import functools

import cv2
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fersynth.data import demo
from fersynth.data.demo import DemoFaces, make_demo_faces, write_demo_folder
from fersynth.errors import FersynthError
from fersynth.labels import CLASSES

_HOG = cv2.HOGDescriptor((48, 48), (16, 16), (8, 8), (8, 8), 9)


def _hog(pixels: np.ndarray) -> np.ndarray:
    return np.stack([_HOG.compute(p).ravel() for p in pixels])


@functools.cache
def _faces(per_class: int, seed: int, difficulty: float) -> DemoFaces:
    return make_demo_faces(per_class, seed=seed, difficulty=difficulty)


def _holdout_accuracy(
    difficulty: float, per_class: int, features=_hog, model=None, shuffle=False
) -> float:
    train = _faces(per_class, 0, difficulty)
    test = _faces(30, 1, difficulty)
    labels = np.random.default_rng(0).permutation(train.labels) if shuffle else train.labels
    clf = model or make_pipeline(StandardScaler(), RidgeClassifier(alpha=300.0))
    clf.fit(features(train.pixels), labels)
    return float((clf.predict(features(test.pixels)) == test.labels).mean())


def test_same_seed_same_bytes_other_seed_differs():
    a = make_demo_faces(3, seed=7)
    b = make_demo_faces(3, seed=7)
    c = make_demo_faces(3, seed=8)
    assert a.pixels.tobytes() == b.pixels.tobytes()
    assert np.array_equal(a.labels, b.labels)
    assert a.attrs.equals(b.attrs)
    assert not np.array_equal(a.pixels, c.pixels)


def test_more_images_per_class_keep_the_earlier_ones():
    small = make_demo_faces(2, seed=3, label_noise=0.5)
    big = make_demo_faces(5, seed=3, label_noise=0.5)
    for c in range(7):
        s, b = small.true_labels == c, big.true_labels == c
        assert np.array_equal(small.pixels[s], big.pixels[b][:2])
        assert np.array_equal(small.labels[s], big.labels[b][:2])


def test_shapes_dtypes_and_counts():
    faces = make_demo_faces(5, seed=0, size=64, num_classes=8)
    assert isinstance(faces, DemoFaces)
    assert faces.pixels.shape == (40, 64, 64) and faces.pixels.dtype == np.uint8
    assert faces.labels.dtype == np.int64 and faces.true_labels.dtype == np.int64
    assert np.bincount(faces.labels, minlength=8).tolist() == [5] * 8
    assert faces.classes == CLASSES
    assert len(faces) == len(faces.attrs) == 40
    for col in (
        "skin",
        "face_w",
        "eye_spacing",
        "hair_style",
        "light_angle",
        "light_strength",
        "rotation",
        "scale",
        "blur",
        "occlusion",
        "noise_sigma",
        "noisy",
    ):
        assert col in faces.attrs.columns
    assert (faces.attrs["expression"] == [CLASSES[i] for i in faces.true_labels]).all()
    assert faces.pixels.std() > 20  # not blank


def test_counts_by_class_name():
    faces = make_demo_faces({"happy": 3, "sad": 1}, seed=0)
    assert np.bincount(faces.labels, minlength=7).tolist() == [0, 0, 0, 3, 1, 0, 0]
    with pytest.raises(FersynthError, match="contempt"):
        make_demo_faces({"contempt": 2})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"difficulty": 1.5}, "difficulty 1.5 out of range"),
        ({"label_noise": 1.0}, "label_noise 1.0 out of range"),
        ({"label_noise": -0.1}, "label_noise -0.1 out of range"),
        ({"size": 8}, "demo face size 8 too small"),
        ({"num_classes": 9}, "unsupported class count 9"),
        ({"seed": -1}, "demo seed -1 is negative"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(FersynthError, match=message):
        make_demo_faces(1, **kwargs)


def test_label_noise_flips_about_the_requested_fraction():
    faces = make_demo_faces(100, seed=2, label_noise=0.3, difficulty=0.0)
    noisy = faces.attrs["noisy"].to_numpy()
    assert 0.24 < noisy.mean() < 0.36
    assert np.array_equal(faces.labels != faces.true_labels, noisy)
    assert faces.labels.min() >= 0 and faces.labels.max() < 7
    # Flips go to every other class, not to one favourite.
    assert len(np.unique(faces.labels[noisy & (faces.true_labels == 0)])) >= 4
    clean = make_demo_faces(20, seed=2)
    assert np.array_equal(clean.labels, clean.true_labels) and not clean.attrs["noisy"].any()


def test_difficulty_scales_the_nuisances():
    easy = make_demo_faces(20, seed=0, difficulty=0.0).attrs
    hard = make_demo_faces(20, seed=0, difficulty=1.0).attrs
    assert (easy["blur"] == 0).all() and (easy["occlusion"] == "none").all()
    assert (easy["rotation"] == 0).all() and (easy["noise_sigma"] == 0).all()
    assert (hard["blur"] > 0).mean() > 0.2 and (hard["occlusion"] != "none").mean() > 0.2
    assert hard["rotation"].abs().max() > 5
    assert set(hard["occlusion"]) - {"none"} == {"glasses", "sunglasses", "hand", "bar"}


def test_expressions_are_learnable_from_geometry():
    assert _holdout_accuracy(0.5, per_class=150) > 0.6  # chance is 1/7
    assert _holdout_accuracy(0.0, per_class=40) > 0.9
    assert _holdout_accuracy(0.5, per_class=150, shuffle=True) < 0.3  # the probe itself is fair


def test_expression_is_not_given_away_by_brightness():
    def stats(p):
        p = p.reshape(len(p), -1).astype(np.float32)
        return np.stack([p.mean(1), p.std(1), np.percentile(p, 10, axis=1)], axis=1)

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    assert _holdout_accuracy(0.5, per_class=150, features=stats, model=model) < 0.3


def _read_tree(root):
    return {
        p.relative_to(root).as_posix(): cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        for p in sorted(root.rglob("*.png"))
    }


def test_write_demo_folder_layout(tmp_path):
    out = write_demo_folder(tmp_path / "demo", per_class=4, seed=5)
    assert out == tmp_path / "demo"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temp dir left behind
    files = _read_tree(out)
    for name in CLASSES[:7]:
        assert len([f for f in files if f.startswith(f"train/{name}/")]) == 4
        assert len([f for f in files if f.startswith(f"test/{name}/")]) == 1
    assert all(f.split("/")[2].startswith(f.split("/")[0] + "_") for f in files)
    # The train split is exactly make_demo_faces with the same seed, stored losslessly.
    faces = make_demo_faces(4, seed=5)
    for i, (img, lab) in enumerate(zip(faces.pixels, faces.labels, strict=True)):
        assert np.array_equal(files[f"train/{CLASSES[lab]}/train_{i}.png"], img)
    train = {v.tobytes() for k, v in files.items() if k.startswith("train/")}
    assert not any(v.tobytes() in train for k, v in files.items() if k.startswith("test/"))


def test_write_demo_folder_counts_by_class(tmp_path):
    out = write_demo_folder(
        tmp_path / "d", {"angry": 8, "happy": 2}, splits=("train", "val"), num_classes=8
    )
    files = _read_tree(out)
    assert len([f for f in files if f.startswith("train/angry/")]) == 8
    assert len([f for f in files if f.startswith("val/angry/")]) == 2
    assert len([f for f in files if f.startswith("val/happy/")]) == 1
    assert (out / "train" / "contempt").is_dir()


def test_write_demo_folder_refuses_non_empty_and_accepts_empty(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    write_demo_folder(out, per_class=1)  # an existing empty folder is fine
    before = _read_tree(out)
    with pytest.raises(FersynthError, match="not empty"):
        write_demo_folder(out, per_class=2, seed=1)
    after = _read_tree(out)
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_write_demo_folder_leaves_nothing_on_failure(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = cv2.imencode

    def flaky(ext, img):
        calls["n"] += 1
        return (False, None) if calls["n"] > 5 else real(ext, img)

    monkeypatch.setattr(demo.cv2, "imencode", flaky)
    with pytest.raises(FersynthError):
        write_demo_folder(tmp_path / "demo", per_class=2)
    assert list(tmp_path.iterdir()) == []


def test_write_demo_folder_rejects_unknown_options(tmp_path):
    with pytest.raises(TypeError):
        write_demo_folder(tmp_path / "demo", per_class=1, colour=True)
    with pytest.raises(FersynthError, match="difficulty"):
        write_demo_folder(tmp_path / "demo", per_class=1, difficulty=2.0)
    assert list(tmp_path.iterdir()) == []
