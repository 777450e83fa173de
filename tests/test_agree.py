"""Training a generator on agreed labels only (issue 11): the training rows whose label a second
labelled set of the same images (FER+ for FER2013) agrees with. Matched by pixels; validation and
test rows are never touched; the option reaches `generator train` and a study's cache key."""

from __future__ import annotations

import json
import shutil

import pytest

from fersynth.cli.main import main
from fersynth.data.demo import make_demo_faces, write_demo_folder
from fersynth.data.manifest import Manifest
from fersynth.errors import FersynthError
from fersynth.generate.registry import generation_spec
from fersynth.verify.audit import agreeing_rows


def test_agreeing_rows_keeps_agreed_training_rows_only():
    d = make_demo_faces(4, seed=5, size=16)
    train = Manifest.from_arrays(d.pixels, d.labels, split="train", dataset="demo")
    held = make_demo_faces(1, seed=6, size=16)
    val = Manifest.from_arrays(held.pixels, held.labels, split="val", dataset="demo")
    m = Manifest.concat([train, val])
    ref_labels = d.labels.copy()
    ref_labels[:3] = (ref_labels[:3] + 1) % 7  # the reference disagrees on three training rows
    ref_labels[5] = -1  # and has no majority for one
    ref = Manifest.from_arrays(d.pixels[::-1].copy(), ref_labels[::-1].copy(), dataset="ref")  # order does not matter
    out, rep = agreeing_rows(m, ref)
    assert rep["train_rows"] == 28 and rep["agreeing"] == 24
    kept = out.where(split="train")
    assert len(kept) == 24 and len(out.where(split="val")) == 7  # validation untouched
    assert sum(v["before"] for v in rep["per_class"].values()) == 28
    with pytest.raises(FersynthError, match="no training row's label agrees"):
        agreeing_rows(m, Manifest.from_arrays(held.pixels, held.labels, dataset="other"))


def test_generator_train_agree_with_and_study_key(tmp_path, capsys):
    data = write_demo_folder(tmp_path / "demo", 2, seed=0, test_per_class=1)
    ref = tmp_path / "ref"
    shutil.copytree(data, ref)
    moved = sorted((ref / "train" / "happy").iterdir())[0]
    moved.rename(ref / "train" / "sad" / moved.name)  # the reference relabels one happy face as sad
    w = tmp_path / "w"
    capsys.readouterr()
    assert main(["generator", "train", "--data", str(data), "--out", str(w), "--img-size", "16", "--channels", "8,16",
                 "--no-attention", "--max-steps", "1", "--agree-with", str(ref), "-q"]) == 0
    out = capsys.readouterr().out
    assert "13 of 14 labelled training rows" in out
    assert json.loads((w / "fersynth_own.json").read_text())["train_images"] == 13
    # a study's generator section: the option changes what is trained, so it is part of the cache key
    plain = generation_spec("own", {"train": {"size": 16}})
    agreed = generation_spec("own", {"train": {"size": 16}, "agree_with": str(ref)})
    assert plain.train_identity() != agreed.train_identity()
    assert "agree_with" not in plain.train_identity()  # earlier studies' keys unchanged
    from fersynth.experiment.runner import generator_model_key

    key = generator_model_key(agreed, "data-key")
    assert "files" not in generator_model_key(plain, "data-key")
    moved = sorted((ref / "train" / "sad").iterdir())[0]
    moved.rename(ref / "train" / "fear" / moved.name)  # the reference's labels change under the same path
    assert generator_model_key(agreed, "data-key") != key  # so the study trains the generator again
    capsys.readouterr()
    rc = main(["generator", "train", "--data", str(data), "--out", str(tmp_path / "x"), "--agree-with",
               str(tmp_path / "nowhere"), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "nowhere" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()
