"""Training loop: learns demo faces, resumes exactly, selects on validation, refuses bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fersynth.data.demo import make_demo_faces
from fersynth.data.manifest import Manifest
from fersynth.errors import FersynthError
from fersynth.predictor import Predictor
from fersynth.train import resolve_config
from fersynth.train.checkpoint import load_checkpoint
from fersynth.train.loop import cpu_has_native_bf16, split_train_val, train

FAST = {"model": "fernet_s", "batch_size": 32, "lr": 0.03, "optimizer": "sgd", "scheduler": "onecycle",
        "num_threads": 2, "augment": {"rotation": 5, "translate": 0.05, "scale": (0.95, 1.05)}}


def demo_manifest(per_class: int, seed: int, split: str = "train", difficulty: float = 0.5) -> Manifest:
    d = make_demo_faces(per_class, seed=seed, difficulty=difficulty)
    return Manifest.from_arrays(d.pixels, d.labels, split=split, dataset="demo")


@pytest.fixture(scope="module")
def demo_train():
    return demo_manifest(30, seed=1)


def test_learns_demo_faces_above_chance(tmp_path):
    # Easier faces than the default so that a few CPU seconds of training suffice.
    cfg = resolve_config(None, dict(FAST, epochs=8, optimizer="adamw", lr=3e-3))
    summary = train(demo_manifest(80, seed=1, difficulty=0.3), cfg, tmp_path / "run", progress=False)
    ck = load_checkpoint(tmp_path / "run")
    test = demo_manifest(20, seed=99, difficulty=0.3)
    probs = Predictor.from_checkpoint(ck).predict_proba(test.pixels)
    acc = float((probs.argmax(1) == test.labels).mean())
    assert acc > 0.45, f"held-out accuracy {acc:.3f} (chance 0.14)"
    assert summary["best_epoch"] >= 1 and (tmp_path / "run" / "best.json").is_file()
    meta = json.loads((tmp_path / "run" / "best.json").read_text())
    assert meta["architecture"] == "fernet_s" and meta["classes"][:2] == ["angry", "disgust"]
    assert meta["config"]["epochs"] == 8


@pytest.mark.parametrize("amp", ["no", "bf16"])
def test_resume_matches_uninterrupted(demo_train, tmp_path, amp):
    cfg = resolve_config(None, dict(FAST, epochs=3, amp=amp))
    full = train(demo_train, cfg, tmp_path / "full", progress=False)
    part = train(demo_train, cfg, tmp_path / "part", progress=False, stop_after_epochs=2)
    assert part["stopped"] == "interrupted" and part["epochs_run"] == 2
    resumed = train(demo_train, cfg, tmp_path / "part", progress=False)
    assert resumed["epochs_run"] == 3
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in full["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in resumed["history"]]
    a = load_checkpoint(tmp_path / "full").model.state_dict()
    b = load_checkpoint(tmp_path / "part").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    want = "bf16" if amp == "bf16" and cpu_has_native_bf16() else "no"
    assert full["precision"] == want
    assert json.loads((tmp_path / "full" / "best.json").read_text())["precision"] == want


def test_amp_modes(monkeypatch, demo_train, tmp_path):
    from fersynth.train import loop

    assert resolve_config(None, {"amp": True}).amp == "auto"  # configs from before the modes
    assert resolve_config(None, {"amp": False}).amp == "no"
    with pytest.raises(FersynthError, match="amp"):
        resolve_config(None, {"amp": "fp8"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loop.resolve_precision("auto") == ("no", None)  # CPU default stays fp32
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: False)
    prec, note = loop.resolve_precision("bf16")
    assert prec == "no" and "no native bf16" in note
    s = train(demo_train, resolve_config(None, dict(FAST, epochs=1, amp="bf16")), tmp_path / "r", progress=False)
    assert s["precision"] == "no"


def test_validation_is_carved_from_train_keeping_duplicates_together():
    d = make_demo_faces(20, seed=3)
    pix = np.concatenate([d.pixels, d.pixels[:10]])  # 10 exact twins
    lab = np.concatenate([d.labels, d.labels[:10]])
    m = Manifest.from_arrays(pix, lab, split=["train"] * len(pix))
    tr, va, info = split_train_val(m, 0.2, seed=0)
    assert info["val"] == len(va) > 0 and info["train"] + info["val"] == len(m)
    assert not set(tr.df["pixel_hash"]) & set(va.df["pixel_hash"])
    assert set(np.unique(va.labels)) == set(range(7))


def test_rows_derived_from_validation_are_dropped():
    m = demo_manifest(10, seed=4)
    _, va, _ = split_train_val(m, 0.3, seed=0)
    child = Manifest.from_arrays(255 - va.pixels[:3], va.labels[:3], source="synthetic",
                                 parent_id=list(va.df["id"][:3]))
    tr2, va2, info = split_train_val(Manifest.concat([m, child]), 0.3, seed=0)
    assert info["dropped_derived_from_val"] == 3
    assert not (tr2.df["source"] == "synthetic").any()
    assert set(va2.df["id"]) == set(va.df["id"])


def test_test_rows_never_train(tmp_path):
    m = Manifest.concat([demo_manifest(8, seed=5), demo_manifest(8, seed=6, split="test")])
    tr, va, _ = split_train_val(m, 0.25, seed=0)
    test_ids = set(m.df.loc[m.df.split == "test", "id"])
    assert not test_ids & (set(tr.df["id"]) | set(va.df["id"]))


def test_empty_validation_is_an_error():
    m = demo_manifest(1, seed=7)
    with pytest.raises(FersynthError, match="validation"):
        split_train_val(m, 0.1, seed=0)


def test_preset_conflict_and_overrides():
    cfg = resolve_config("sultanov2025", {"epochs": 25})  # agreeing flag is fine
    assert cfg.model == "vgg19" and cfg.batch_size == 8 and cfg.optimizer == "adam"
    with pytest.raises(FersynthError, match="--lr 0.01 conflicts with preset 'sultanov2025'"):
        resolve_config("sultanov2025", {"lr": 0.01})
    assert resolve_config("sultanov2025", overrides={"lr": 0.01, "augment.rotation": 5}).augment.rotation == 5
    with pytest.raises(FersynthError, match="config key 'optimizer'"):
        resolve_config(None, overrides={"optimizer": "lamb"})
    with pytest.raises(FersynthError, match="unknown preset 'sultanov'"):
        resolve_config("sultanov")


def test_resume_refuses_other_config(demo_train, tmp_path):
    train(demo_train, resolve_config(None, dict(FAST, epochs=1)), tmp_path / "r", progress=False)
    with pytest.raises(FersynthError, match="another config"):
        train(demo_train, resolve_config(None, dict(FAST, epochs=2, lr=0.01)), tmp_path / "r", progress=False)


def test_time_budget_replans_the_schedule():
    from fersynth.train.loop import _replan

    plan = {"epochs": 10}
    assert _replan(plan, done=1, elapsed=60, budget=1200) == 10  # 10 x 60 s fits: unchanged
    assert _replan(plan, done=2, elapsed=400, budget=1200) == 6  # 200 s/epoch: 2 done + 4 more fit
    assert _replan(plan, done=3, elapsed=500, budget=1200) == 6  # never grows back
    assert _replan(plan, done=6, elapsed=1300, budget=1200) == 6  # over budget: stop where we are


def test_batch_augment_is_seeded_and_erases():
    from fersynth.train.augment import BatchAugment
    from fersynth.train.config import AugmentConfig

    x = torch.ones(64, 1, 48, 48)
    aug = BatchAugment(AugmentConfig(hflip=False, rotation=0, scale=(1.0, 1.0), translate=0.0, erase_p=0.5))
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape
    erased = (a == 0).flatten(1).any(1)
    assert 16 <= int(erased.sum()) <= 48
    frac = (a[erased] == 0).flatten(1).float().mean(1)
    assert float(frac.min()) >= 0.01 and float(frac.max()) <= 0.16 + 1e-6
    full = BatchAugment(AugmentConfig(rotation=15, blur_p=0.5, erase_p=0.2))(torch.randn(8, 3, 64, 64), torch.Generator().manual_seed(1))
    assert full.shape == (8, 3, 64, 64) and torch.isfinite(full).all()


def test_class_weights_inverse_and_softened():
    from fersynth.train.loop import _class_weights

    y = np.array([0] * 100 + [1] * 25 + [2] * 4)
    w1 = _class_weights(y, 4).numpy()
    # scikit-learn's "balanced": n / (classes present * count); an absent class gets 0
    assert np.allclose(w1[:3], [129 / (3 * 100), 129 / (3 * 25), 129 / (3 * 4)]) and w1[3] == 0
    w5 = _class_weights(y, 4, power=0.5).numpy()
    assert np.allclose(w5[1] / w5[0], 2.0) and np.allclose(w5[2] / w5[0], 5.0)  # sqrt of the 4x and 25x ratios
    counts = np.bincount(y, minlength=4)
    assert np.isclose((counts * w5).sum(), len(y)) and np.isclose((counts * w1).sum(), len(y))
