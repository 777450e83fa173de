"""The own generator's training and sampling levers (issue 11): class-balanced batches, bf16
autocast, v-prediction, min-SNR weighting, per-class guidance, the named preset; each changes
what it should, defaults keep the old recipe, resume still equals an uninterrupted run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fersynth.cli.main import main
from fersynth.data.demo import make_demo_faces
from fersynth.data.manifest import Manifest
from fersynth.errors import FersynthError
from fersynth.generate.own import (
    LATER_DEFAULTS,
    OWN_PRESETS,
    OwnConfig,
    OwnGenerator,
    epoch_order,
    own_config,
    plan_sample,
    resume_path,
    snr_weights,
    train_own,
)
from fersynth.train.loop import cpu_has_native_bf16

TINY = dict(size=16, channels=(8, 16), attention=False, epochs=1, batch_size=16, warmup_steps=1, num_threads=2)


@pytest.fixture(scope="module")
def real():
    d = make_demo_faces({"angry": 6, "disgust": 2, "happy": 10, "neutral": 6}, seed=3, difficulty=0.3)
    return Manifest.from_arrays(d.pixels, d.labels, split="train", dataset="demo")


def weights_of(path):
    return load_file(path / "unet" / "diffusion_pytorch_model.safetensors")


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_defaults_keep_the_old_recipe():
    cfg = OwnConfig()
    assert {k: getattr(cfg, k) for k in LATER_DEFAULTS} == LATER_DEFAULTS
    assert not set(LATER_DEFAULTS) & set(cfg.identity())  # old caches and resume states stay valid
    assert OwnConfig(class_balance=0.5).identity()["class_balance"] == 0.5


def test_class_balanced_epoch_order():
    y = torch.tensor([0] * 90 + [1] * 10)
    gen = torch.Generator().manual_seed(0)
    assert sorted(epoch_order(y, 0.0, gen).tolist()) == list(range(100))  # a plain permutation
    draws = torch.cat([epoch_order(y, 1.0, gen) for _ in range(50)])
    share = float((y[draws] == 1).float().mean())
    assert 0.45 < share < 0.55, share  # balanced: the rare class half the time, not a tenth
    half = torch.cat([epoch_order(y, 0.5, gen) for _ in range(50)])
    assert 0.2 < float((y[half] == 1).float().mean()) < 0.3  # sqrt weights: 10*3/(10*3+90*1) = 0.25


def test_min_snr_weights():
    from diffusers import DDPMScheduler

    ab = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod
    w = snr_weights(ab, 5.0)
    snr = ab / (1 - ab)
    assert torch.isfinite(w).all() and (w <= 1 + 1e-6).all()
    assert torch.allclose(w[snr <= 5], torch.ones_like(w[snr <= 5]))  # noisy steps keep weight 1
    assert w[0] < 0.01  # almost clean steps count little
    wv = snr_weights(ab, 5.0, "v_prediction")
    assert (wv < w).all() and torch.allclose(wv, torch.minimum(snr, torch.tensor(5.0)) / (snr + 1), atol=1e-6)


@pytest.fixture(scope="module")
def base(real, tmp_path_factory):
    """The plain recipe, 2 epochs: what each lever is compared with."""
    out = tmp_path_factory.mktemp("own") / "base"
    return out, train_own(real, OwnConfig(**dict(TINY, epochs=2)), out, progress=False)


@pytest.mark.parametrize("lever", [{"class_balance": 1.0}, {"prediction": "v_prediction"}, {"snr_gamma": 1.0}])
def test_each_lever_changes_the_training(real, base, tmp_path, lever):
    base_dir, base = base
    info = train_own(real, OwnConfig(**dict(TINY, epochs=2, **lever)), tmp_path / "lever", progress=False)
    assert not same(weights_of(base_dir), weights_of(tmp_path / "lever"))
    assert info["config"] | lever == info["config"] and info["steps"] == base["steps"]
    sched = json.loads((tmp_path / "lever" / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == lever.get("prediction", "epsilon")


def test_bf16_autocast(real, tmp_path):
    info = train_own(real, OwnConfig(**dict(TINY, amp="bf16")), tmp_path / "bf16", progress=False)
    if cpu_has_native_bf16():
        assert info["precision"] == "bf16" and info["precision_note"] is None
        train_own(real, OwnConfig(**TINY), tmp_path / "fp32", progress=False)
        assert not same(weights_of(tmp_path / "bf16"), weights_of(tmp_path / "fp32"))
    else:
        assert info["precision"] == "no" and "no native bf16" in info["precision_note"]
    assert train_own(real, OwnConfig(**TINY), tmp_path / "auto", progress=False)["precision"] == "no"


def test_resume_with_the_levers_equals_uninterrupted(real, tmp_path):
    cfg = OwnConfig(**dict(TINY, epochs=3, class_balance=0.5, prediction="v_prediction", snr_gamma=5.0,
                           amp="bf16"))  # 2 steps per epoch: step 3 stops inside epoch 2
    full = train_own(real, cfg, tmp_path / "full", progress=False)
    assert train_own(real, cfg, tmp_path / "part", progress=False, stop_after_steps=3) is None
    assert resume_path(tmp_path / "part").is_file()
    resumed = train_own(real, cfg, tmp_path / "part", progress=False, checkpoint_seconds=0)
    assert resumed["steps"] == full["steps"] == 6
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
    assert same(weights_of(tmp_path / "full"), weights_of(tmp_path / "part"))


@pytest.fixture(scope="module")
def vweights(real, tmp_path_factory):
    out = tmp_path_factory.mktemp("own") / "v"
    train_own(real, OwnConfig(**dict(TINY, prediction="v_prediction", snr_gamma=5.0)), out, progress=False)
    return out


def test_per_class_guidance_scale(vweights):
    items = plan_sample([0, 3], 2, seed=5)
    plain = OwnGenerator(vweights, steps=3, cfg_scale=2.0).generate(items)
    per = OwnGenerator(vweights, steps=3, cfg_scale=2.0, class_cfg={3: 6.0}).generate(items)
    labels = np.array([it.label for it in items])
    assert np.array_equal(plain[labels == 0], per[labels == 0])  # classes without their own scale: as before
    assert not np.array_equal(plain[labels == 3], per[labels == 3])
    with pytest.raises(FersynthError, match="class 9 is outside"):
        OwnGenerator(vweights, steps=3, class_cfg={9: 2.0})


def test_v_prediction_model_samples_and_guides(vweights, tmp_path):
    from fersynth.models import create_model
    from fersynth.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("fernet_s", num_classes=7, in_chans=1, img_size=48)
    save_checkpoint(model, {"architecture": "fernet_s", "num_classes": 7,
                            "classes": ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"],
                            "in_chans": 1, "img_size": 48}, tmp_path / "clf" / "best")
    g = OwnGenerator(vweights, steps=3, classifier=tmp_path / "clf", guidance=0.5, guidance_start=0.0)
    assert g.prediction == "v_prediction"
    items = plan_sample([1], 2, seed=1, mode="guided")
    guided = g.generate(items)
    plain = g.generate(plan_sample([1], 2, seed=1))
    assert guided.shape == plain.shape == (2, 16, 16) and not np.array_equal(guided, plain)


def test_preset_and_overrides():
    cfg = own_config({}, "fer2013-cpu")
    p = OWN_PRESETS["fer2013-cpu"]
    assert cfg.class_balance == p["class_balance"] and cfg.prediction == "v_prediction" and cfg.amp == "bf16"
    cfg = own_config({"preset": "fer2013-cpu", "max_minutes": 10, "seed": 3})
    assert cfg.max_minutes == 10 and cfg.seed == 3 and cfg.snr_gamma == p["snr_gamma"]
    with pytest.raises(FersynthError, match="unknown generator preset 'fer2013-cp'") as e:
        own_config({}, "fer2013-cp")
    assert "fer2013-cpu" in e.value.hint
    for bad, key in (({"class_balance": 2}, "class_balance"), ({"prediction": "x0"}, "prediction"),
                     ({"amp": "fp8"}, "amp"), ({"snr_gamma": 0}, "snr_gamma")):
        with pytest.raises(FersynthError, match=f"generators.own.train: {key}"):
            own_config(bad, where="generators.own.train")


def test_cli_preset_levers_and_bad_values(tmp_path, capsys):
    from fersynth.data.demo import write_demo_folder

    data = write_demo_folder(tmp_path / "demo", 2, seed=0, test_per_class=1)
    w = tmp_path / "w"
    assert main(["generator", "train", "--data", str(data), "--out", str(w), "--preset", "fer2013-cpu",
                 "--img-size", "16", "--channels", "8,16", "--no-attention", "--epochs", "1", "--max-minutes", "5",
                 "--class-balance", "1", "-q"]) == 0
    meta = json.loads((w / "fersynth_own.json").read_text())["config"]
    assert meta["class_balance"] == 1.0 and meta["prediction"] == "v_prediction" and meta["snr_gamma"] == 5.0
    assert meta["size"] == 16 and meta["max_minutes"] == 5
    assert main(["generate", "own", "--weights", str(w), "--out", str(tmp_path / "g"), "--per-class", "1",
                 "--class", "happy,sad", "--class-cfg", "sad=4", "--steps", "2", "-q"]) == 0
    m = Manifest.load(tmp_path / "g" / "manifest")
    scales = {int(lab): json.loads(p)["cfg_scale"] for lab, p in zip(m.labels, m.df["params"], strict=True)}
    assert scales == {3: 2.0, 4: 4.0}
    capsys.readouterr()
    train = ["generator", "train", "--data", str(data), "--img-size", "16", "--channels", "8,16", "--epochs", "1",
             "-q"]
    cases = [
        ([*train, "--out", str(tmp_path / "b1"), "--class-balance", "2"], "class_balance"),
        ([*train, "--out", str(tmp_path / "b2"), "--prediction", "x0"], "prediction"),
        ([*train, "--out", str(tmp_path / "b3"), "--preset", "fer2013"], "unknown generator preset"),
        ([*train, "--out", str(tmp_path / "b4"), "--snr-gamma", "-1"], "snr_gamma"),
        (["generate", "own", "--weights", str(w), "--out", str(tmp_path / "b5"), "--class-cfg", "disgust"],
         "--class-cfg 'disgust'"),
        (["generate", "own", "--weights", str(w), "--out", str(tmp_path / "b6"), "--class-cfg", "grumpy=2"],
         "cfg_scale_per_class: unknown class 'grumpy'"),
    ]
    for argv, msg in cases:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, argv
        assert msg in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) <= 2
    for i in range(1, 7):
        assert not (tmp_path / f"b{i}").exists()
