"""The `own` diffusion generator and the shared writer: every mode, provenance, determinism,
resume after a kill, work split, domain conversion, bad input; and (slow) that its samples
are recognised as their intended class by a FER model trained on real demo faces."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from fersynth.cli.main import main
from fersynth.data.demo import make_demo_faces
from fersynth.data.manifest import Manifest
from fersynth.errors import FersynthError
from fersynth.faces.convert import DomainSpec, convert_batch, convert_image
from fersynth.generate import create_generator, list_generators, merge_shards, run_generation
from fersynth.generate.own import (
    OwnConfig,
    OwnGenerator,
    plan_edit,
    plan_expand,
    plan_sample,
    source_rows,
    train_own,
)
from fersynth.labels import CLASSES

# The recognisability check: training steps and classifier-free guidance scale of the own model.
STEPS, CFG = 800, 4.0
TINY = dict(size=16, channels=(8, 16), attention=False, epochs=1, batch_size=16, warmup_steps=1, num_threads=2)


def demo_manifest(per_class, seed, split="train", difficulty=0.3, size=48):
    d = make_demo_faces(per_class, seed=seed, difficulty=difficulty, size=size)
    return Manifest.from_arrays(d.pixels, d.labels, split=split, dataset="demo")


@pytest.fixture(scope="module")
def real():
    train = demo_manifest(3, seed=1)
    test = demo_manifest(1, seed=2, split="test")
    return Manifest.concat([train, test])


@pytest.fixture(scope="module")
def weights(real, tmp_path_factory):
    out = tmp_path_factory.mktemp("own") / "weights"
    info = train_own(real, OwnConfig(**TINY), out, progress=False)
    assert info["train_images"] == 21  # the 7 test rows were not learnt from
    return out


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory):
    from fersynth.models import create_model
    from fersynth.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("fernet_s", num_classes=7, in_chans=1, img_size=48)
    path = tmp_path_factory.mktemp("clf") / "best"
    save_checkpoint(model, {"architecture": "fernet_s", "num_classes": 7, "classes": list(CLASSES[:7]),
                            "in_chans": 1, "img_size": 48}, path)
    return path.with_suffix(".safetensors")


def gen(weights, **kw):
    return OwnGenerator(weights, steps=2, **kw)


def test_registry_lists_own_and_suggests():
    assert "own" in list_generators() and list_generators("o*") == ["own"]
    with pytest.raises(FersynthError, match="did you mean own"):
        create_generator("onw", weights="x")


def test_weights_folder_layout(weights):
    assert (weights / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (weights / "unet" / "config.json").is_file() and (weights / "scheduler" / "scheduler_config.json").is_file()
    info = json.loads((weights / "fersynth_own.json").read_text())
    assert info["num_classes"] == 7 and info["null_class"] == 7 and info["model_id"].startswith("own-")
    unet_cfg = json.loads((weights / "unet" / "config.json").read_text())
    assert unet_cfg["num_class_embeds"] == 8 and unet_cfg["class_embed_type"] is None


def test_sample_counts_provenance_and_seed(weights, tmp_path):
    g = gen(weights)
    items = plan_sample([0, 3, 5], 2, seed=7, params={"cfg_scale": 2.0})
    s = run_generation(g, items, tmp_path / "a", domain=DomainSpec(size=48), shard_size=4, batch_size=3, progress=False)
    assert s["written"] == 6 and s["requested"] == 6 and s["dropped_no_face"] == 0
    m = Manifest.load(tmp_path / "a" / "manifest")
    assert m.pixels.shape == (6, 48, 48) and m.labels.tolist() == [0, 0, 3, 3, 5, 5]
    df = m.df
    assert (df["source"] == "synthetic").all() and (df["split"] == "train").all()
    assert (df["generator"] == "own").all() and (df["model"] == g.model_id).all()
    assert (df["intended_label"] == df["label"]).all() and df["parent_id"].isna().all()
    assert df["prompt"].iloc[2] == "class=happy" and df["seed"].nunique() == 6
    assert json.loads(df["params"].iloc[0]) == {"cfg_scale": 2.0}
    for p in df["path"]:
        assert (tmp_path / "a" / p).is_file()
    # Same seed: same images, whatever the batch size; another seed: other images.
    run_generation(gen(weights), items, tmp_path / "b", domain=DomainSpec(size=48), shard_size=6, batch_size=6,
                   progress=False)
    m2 = Manifest.load(tmp_path / "b" / "manifest")
    assert np.abs(m.pixels.astype(int) - m2.pixels).max() <= 1  # whole images; batch size may move an LSB
    run_generation(gen(weights), plan_sample([0, 3, 5], 2, seed=8, params={"cfg_scale": 2.0}), tmp_path / "c", domain=DomainSpec(size=48),
                   progress=False)
    m3 = Manifest.load(tmp_path / "c" / "manifest")
    assert np.abs(m.pixels.astype(int) - m3.pixels).mean() > 5


def test_expand_keeps_label_and_parent(weights, real, tmp_path):
    src = source_rows(real, 7, per_class=1, seed=0)
    assert (src.df["split"] == "train").all() and len(src) == 7
    items = plan_expand(src, 2, seed=0, params={"strength": 0.5})
    run_generation(gen(weights, source=src), items, tmp_path / "e", progress=False)
    m = Manifest.load(tmp_path / "e" / "manifest")
    assert len(m) == 14 and m.pixels.shape[1:] == (16, 16)
    assert m.df["parent_id"].tolist() == [i for i in src.df["id"] for _ in range(2)]
    assert m.labels.tolist() == [c for c in src.labels for _ in range(2)]
    assert (m.df["mode"] == "expand").all() and json.loads(m.df["params"].iloc[1]) == {"strength": 0.5, "variant": 1}
    # The two variants of one parent differ (own seeds), and stay close to the parent at low strength.
    assert not np.array_equal(m.pixels[0], m.pixels[1])


def test_edit_targets_and_identity(weights, real, tmp_path):
    src = source_rows(real, 7, per_class=1, seed=0)
    items = plan_edit(src, [3], seed=0, params={"strength": 0.6}, num_classes=7)
    assert len(items) == 6  # the happy source is not edited into happy
    run_generation(gen(weights, source=src), items, tmp_path / "ed", domain=DomainSpec(size=32), progress=False)
    m = Manifest.load(tmp_path / "ed" / "manifest")
    assert (m.labels == 3).all() and (m.df["intended_label"] == 3).all()
    parents = src.df.set_index("id")
    for pid, params in zip(m.df["parent_id"], m.df["params"], strict=True):
        assert json.loads(params)["source_label"] == parents.loc[pid, "label"] != 3
    assert m.df["prompt"].iloc[0].startswith("edit angry -> happy")


def test_guided_uses_classifier(weights, classifier_ckpt, tmp_path):
    items = plan_sample([2, 4], 2, seed=3, mode="guided")
    plain = gen(weights).generate(plan_sample([2, 4], 2, seed=3))
    guided = gen(weights, classifier=classifier_ckpt, guidance=0.5, guidance_start=0.0).generate(items)
    assert guided.shape == plain.shape and np.abs(guided.astype(int) - plain).mean() > 1
    again = gen(weights, classifier=classifier_ckpt, guidance=0.5, guidance_start=0.0).generate(items)
    assert np.array_equal(guided, again)
    with pytest.raises(FersynthError, match="needs a FER classifier"):
        gen(weights).generate(items)


class Killed(Exception):
    pass


class DiesAfter:
    """Wraps a generator and raises on its n-th batch, like a kill mid-shard."""

    def __init__(self, inner, n):
        self.inner, self.n, self.calls = inner, n, 0
        self.name, self.model_id = inner.name, inner.model_id

    def generate(self, items):
        self.calls += 1
        if self.calls == self.n:
            raise Killed
        return self.inner.generate(items)


def test_resume_after_kill_no_duplicates(weights, tmp_path):
    items = plan_sample(list(range(7)), 2, seed=1)  # 14 items, shards of 6: 6 + 6 + 2
    out = tmp_path / "run"
    dying = DiesAfter(gen(weights), 5)  # batches of 2: shard 0 takes 3, shard 1 dies in its 2nd
    with pytest.raises(Killed):
        run_generation(dying, items, out, shard_size=6, batch_size=2, progress=False)
    assert (out / "shards" / "shard-00000" / "manifest.parquet").is_file()
    assert (out / "shards" / "shard-00001.rows.jsonl").is_file()  # partial: not merged
    assert not (out / "manifest").exists()
    with pytest.raises(FersynthError, match="unfinished"):
        merge_shards(out)
    kept = sorted(p.name for p in (out / "images").rglob("*.png"))
    assert len(kept) == 6 + 2  # finished shard + the first batch of the partial one
    counting = DiesAfter(gen(weights), 0)
    s = run_generation(counting, items, out, shard_size=6, batch_size=2, progress=False)
    assert s["generated_now"] == 14 - 8 and counting.calls == 3
    m = Manifest.load(out / "manifest")
    assert len(m) == 14 and m.df["gen_index"].tolist() == list(range(14)) and m.df["id"].is_unique
    run_generation(gen(weights), items, tmp_path / "clean", shard_size=6, batch_size=2, progress=False)
    assert np.abs(Manifest.load(tmp_path / "clean" / "manifest").pixels.astype(int) - m.pixels).max() <= 1
    # A different plan into the same folder is refused rather than mixed in.
    with pytest.raises(FersynthError, match="other settings"):
        run_generation(gen(weights), plan_sample([0], 3, seed=1), out, shard_size=6, progress=False)


def test_training_resumes_mid_epoch_to_the_same_weights(real, tmp_path):
    from safetensors.torch import load_file

    from fersynth.generate.own import resume_path

    cfg = OwnConfig(**dict(TINY, epochs=3))  # 2 steps per epoch: step 3 stops inside epoch 2
    full = train_own(real, cfg, tmp_path / "full", progress=False)
    assert train_own(real, cfg, tmp_path / "part", progress=False, stop_after_steps=3) is None
    assert resume_path(tmp_path / "part").is_file() and not (tmp_path / "part").exists()
    with pytest.raises(FersynthError, match="another config or data"):
        train_own(real, OwnConfig(**dict(TINY, epochs=3, lr=0.01)), tmp_path / "part", progress=False)
    state = resume_path(tmp_path / "part").read_bytes()
    resume_path(tmp_path / "bad").write_bytes(state[: len(state) // 2])
    with pytest.raises(FersynthError, match="unreadable training state"):
        train_own(real, cfg, tmp_path / "bad", progress=False)
    # checkpoint_seconds=0 also rewrites the state before every step on the way
    resumed = train_own(real, cfg, tmp_path / "part", progress=False, checkpoint_seconds=0)
    assert not resume_path(tmp_path / "part").exists()
    assert resumed["steps"] == full["steps"] == 6
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
    a = load_file(tmp_path / "full" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "part" / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_work_split_across_processes(weights, tmp_path):
    items = plan_sample(list(range(7)), 1, seed=4)
    out = tmp_path / "split"
    s1 = run_generation(gen(weights), items, out, shard_size=2, rank=1, world_size=2, progress=False)
    assert s1["manifest"] is None and s1["generated_now"] == 3  # shards 1 and 3 (2 + 1 items)
    s0 = run_generation(gen(weights), items, out, shard_size=2, rank=0, world_size=2, progress=False)
    assert s0["generated_now"] == 4 and s0["written"] == 7
    assert Manifest.load(out / "manifest").labels.tolist() == list(range(7))


def test_domain_conversion_and_face_drop(weights, tmp_path):
    rgb = np.zeros((2, 40, 60, 3), np.uint8)
    rgb[..., 0] = 200
    out, keep = convert_batch(rgb, DomainSpec(size=24))
    assert out.shape == (2, 24, 24) and keep.all() and out[0, 0, 0] == round(0.299 * 200)
    assert convert_batch(rgb, DomainSpec(size=24, gray=False))[0].shape == (2, 24, 24, 3)
    img = np.zeros((100, 100), np.uint8)
    img[40:60, 10:30] = 255
    crop = convert_image(img, DomainSpec(size=20, detect_face=True, margin=0.0), detector=lambda g: [(10, 40, 20, 20)])
    assert crop.shape == (20, 20) and crop.min() == 255
    assert convert_image(img, DomainSpec(size=20, detect_face=True)) is None  # Haar finds no face here
    # Every other image has "no face": those are counted and dropped.
    items = plan_sample([0, 1], 2, seed=0)
    flip = iter([[(0, 0, 16, 16)], [], [(0, 0, 16, 16)], []])
    s = run_generation(gen(weights), items, tmp_path / "d", domain=DomainSpec(size=12, detect_face=True),
                       detector=lambda g: next(flip), batch_size=4, progress=False)
    assert s["written"] == 2 and s["dropped_no_face"] == 2
    m = Manifest.load(tmp_path / "d" / "manifest")
    assert m.df["gen_index"].tolist() == [0, 2] and m.pixels.shape == (2, 12, 12)
    with pytest.raises(FersynthError, match="every generated image was dropped"):
        run_generation(gen(weights), items, tmp_path / "none", domain=DomainSpec(size=12, detect_face=True),
                       detector=lambda g: [], progress=False)


def test_bad_input_is_one_line_exit_2(weights, tmp_path, capsys):
    def run(*args):
        capsys.readouterr()
        rc = main(["generate", "own", "--out", str(tmp_path / "o"), "--steps", "2", "-q", *args])
        err = capsys.readouterr().err.strip()
        return rc, err

    rc, err = run("--weights", str(tmp_path / "missing"))
    assert rc == 2 and "no weights folder" in err and len(err.splitlines()) == 1
    broken = tmp_path / "broken"
    shutil.copytree(weights, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    rc, err = run("--weights", str(broken))
    assert rc == 2 and "incomplete weights folder" in err
    rc, err = run("--weights", str(weights), "--scheduler", "eulerr")
    assert rc == 2 and "unknown scheduler 'eulerr'" in err
    rc, err = run("--weights", str(weights), "--gen-size", "15")
    assert rc == 2 and "cannot make 15x15" in err
    rc, err = run("--weights", str(weights), "--mode", "guided")
    assert rc == 2 and "--classifier" in err
    rc, err = run("--weights", str(weights), "--mode", "expand")
    assert rc == 2 and "--data" in err
    if not torch.cuda.is_available():
        rc, err = run("--weights", str(weights), "--device", "cuda")
        assert rc == 2 and "no CUDA GPU" in err


def test_cli_train_and_sample(tmp_path, capsys):
    from fersynth.data.demo import write_demo_folder

    data = write_demo_folder(tmp_path / "demo", 2, seed=0, test_per_class=1)
    w = tmp_path / "w"
    assert main(["generator", "train", "--data", str(data), "--out", str(w), "--img-size", "16",
                 "--channels", "8,16", "--no-attention", "--epochs", "1", "-q"]) == 0
    assert main(["generate", "own", "--weights", str(w), "--out", str(tmp_path / "g"), "--per-class", "1",
                 "--class", "happy,sad", "--steps", "2", "--domain-size", "24", "-q"]) == 0
    m = Manifest.load(tmp_path / "g" / "manifest")
    assert m.labels.tolist() == [3, 4] and m.pixels.shape == (2, 24, 24)
    assert main(["generate", "own", "--weights", str(w), "--out", str(tmp_path / "x"), "--mode", "edit",
                 "--data", str(data), "--target", "surprise", "--sources-per-class", "1", "--steps", "2", "-q"]) == 0
    e = Manifest.load(tmp_path / "x" / "manifest")
    assert len(e) == 6 and (e.labels == 5).all() and e.df["parent_id"].notna().all()
    capsys.readouterr()
    assert main(["generators", "list"]) == 0 and "own" in capsys.readouterr().out


@pytest.mark.slow
def test_samples_are_recognised_as_their_class(tmp_path):
    """A briefly trained `own` model makes faces that a classifier trained on real demo faces
    assigns to the intended class well above chance (1/7). The judge is a pixel logistic
    regression: on these easy 16x16 faces it scores ~0.7 on held-out real images, and it costs
    seconds where a CNN would cost minutes."""
    from sklearn.linear_model import LogisticRegression

    d = make_demo_faces(60, seed=1, difficulty=0.0, size=16)
    real = Manifest.from_arrays(d.pixels, d.labels, dataset="demo")
    judge = LogisticRegression(max_iter=300).fit(d.pixels.reshape(len(d), -1) / 255.0, d.labels)
    held = make_demo_faces(10, seed=99, difficulty=0.0, size=16)
    assert judge.score(held.pixels.reshape(len(held), -1) / 255.0, held.labels) > 0.5
    cfg = OwnConfig(size=16, channels=(16, 32), attention=False, epochs=1000, max_steps=STEPS, batch_size=32,
                    lr=2e-3, warmup_steps=20, num_threads=2)
    train_own(real, cfg, tmp_path / "own", progress=False)
    g = OwnGenerator(tmp_path / "own", steps=20, cfg_scale=CFG)
    run_generation(g, plan_sample(list(range(7)), 10, seed=0), tmp_path / "gen", batch_size=70, progress=False)
    m = Manifest.load(tmp_path / "gen" / "manifest")
    acc = judge.score(m.pixels.reshape(len(m), -1) / 255.0, m.labels)
    assert acc > 0.35, f"own samples recognised as their class {acc:.2f} of the time (chance 0.14)"
