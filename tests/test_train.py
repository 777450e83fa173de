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


@pytest.mark.parametrize("amp", ["no", pytest.param("bf16", marks=pytest.mark.skipif(
    not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 / AMX): training would be fp32"))])
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
    want = amp  # the bf16 case runs only where the CPU computes bf16
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
    with pytest.raises(FersynthError, match="training config: optimizer"):
        resolve_config(None, overrides={"optimizer": "lamb"})
    with pytest.raises(FersynthError, match="unknown preset 'sultanov'"):
        resolve_config("sultanov")


def test_resume_refuses_other_config(demo_train, tmp_path):
    train(demo_train, resolve_config(None, dict(FAST, epochs=1)), tmp_path / "r", progress=False)
    with pytest.raises(FersynthError, match="another config"):
        train(demo_train, resolve_config(None, dict(FAST, epochs=2, lr=0.01)), tmp_path / "r", progress=False)


def test_budget_progress_follows_time_or_steps_whichever_is_further():
    from fersynth.train.loop import Budget

    b = Budget(100.0, total_steps=1000, t_start=0.0)
    b.spent = lambda: 30.0
    assert b.progress(100) == pytest.approx(0.3)  # a slow start: time leads
    assert b.progress(600) == pytest.approx(0.6)  # a fast machine: steps lead
    b.val_seconds = 20.0  # the time of the last validation is kept for the final one
    assert b.progress(100) == pytest.approx(30 / 80)
    b.spent = lambda: 95.0
    assert b.progress(100) == 1.0


def test_time_budget_holds_after_a_slow_first_epoch(demo_train, tmp_path, monkeypatch):
    """A busy machine during the first epoch (injected: each of its batches sleeps) must cost only
    that time: the run still uses its budget and ends annealed (the old re-planning stopped early)."""
    import time

    from fersynth.train import loop

    # The budget is sized from this machine's pace (a warm-up epoch, which also pays torch's first-call
    # costs), so that several epochs fit after the slow start however loaded the machine is.
    warm = train(demo_train, resolve_config(None, dict(FAST, epochs=1)), tmp_path / "warm", progress=False)
    slow_s = 3.0
    budget_s = slow_s + max(5.0, 6 * warm["history"][0]["seconds"])
    cfg = resolve_config(None, dict(FAST, epochs=1000, max_minutes=budget_s / 60, patience=None))
    steps_per_epoch = int(len(demo_train) * (1 - cfg.val_fraction)) // cfg.batch_size

    class SlowStart(loop.BatchAugment):
        calls = 0

        def __call__(self, x, gen):
            SlowStart.calls += 1
            if SlowStart.calls <= steps_per_epoch:
                time.sleep(slow_s / steps_per_epoch)
            return super().__call__(x, gen)

    monkeypatch.setattr(loop, "BatchAugment", SlowStart)
    s = train(demo_train, cfg, tmp_path / "r", progress=False)
    h = s["history"]
    assert s["stopped"] == "time_budget" and SlowStart.calls > 2 * steps_per_epoch
    assert h[0]["seconds"] >= slow_s  # the slow start happened
    assert s["train_seconds"] >= 0.9 * budget_s, s["train_seconds"]  # ... and cost only its own time
    assert s["train_seconds"] <= 2 * budget_s  # (a loose guard; the end is checked by progress below)
    # the last epoch ends at its budget: mid-epoch (1.0), or a moment before it at the epoch's end (then the
    # budget runs out while its checkpoint is written, and no further epoch starts)
    assert h[-1]["budget_progress"] >= 0.99
    assert h[-1]["lr"] <= 0.01 * cfg.lr  # annealed: onecycle's floor, not a cut-off schedule
    assert max(e["lr"] for e in h) >= 0.5 * cfg.lr  # and it went through its peak on the way


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


def test_training_through_mmap_matches_in_memory(demo_train, tmp_path):
    """A saved manifest is read back memory-mapped and trained on batch by batch (equalisation per
    batch included): the weights and the history equal those of training on the in-memory copy."""
    from fersynth.data.pixels import Rows

    demo_train.save(tmp_path / "man")
    mapped = Manifest.load(tmp_path / "man")
    assert isinstance(mapped.pixels, np.memmap)
    assert isinstance(split_train_val(mapped, 0.2, 0)[0].pixels, Rows)  # carving copies no pixels
    cfg = resolve_config(None, dict(FAST, epochs=2, augment=dict(FAST["augment"], equalize="clahe")))
    mem = train(demo_train, cfg, tmp_path / "mem", progress=False)
    mm = train(mapped, cfg, tmp_path / "mm", progress=False)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in mem["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in mm["history"]]
    a = load_checkpoint(tmp_path / "mem").model.state_dict()
    b = load_checkpoint(tmp_path / "mm").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
