"""Atomic writers: a failure leaves what was there before, and no temporary files."""

from __future__ import annotations

import numpy as np
import pytest

from fersynth.atomic import atomic_dir, atomic_open, digest
from fersynth.data.manifest import Manifest


def test_atomic_dir_replaces_on_success_and_keeps_the_old_on_error(tmp_path):
    out = tmp_path / "d"
    with atomic_dir(out) as t:
        (t / "a.txt").write_text("one")
    assert (out / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError), atomic_dir(out) as t:
        (t / "a.txt").write_text("two")
        raise RuntimeError("killed midway")
    assert (out / "a.txt").read_text() == "one"
    with atomic_dir(out) as t:
        (t / "b.txt").write_text("three")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]  # replaced whole, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary or .old folder left


def test_manifest_save_failure_keeps_previous(tmp_path, monkeypatch):
    m = Manifest.from_arrays(np.zeros((4, 8, 8), np.uint8), np.array([0, 1, 2, 3]))
    m.save(tmp_path / "m")

    from fersynth.data.pixels import PixelWriter

    real_append = PixelWriter.append

    def boom(self, block):  # the disk fills up after the first block of pixels
        if self.rows:
            raise OSError("disk full")
        real_append(self, block)

    monkeypatch.setattr(PixelWriter, "append", boom)
    with pytest.raises(OSError, match="disk full"):
        Manifest.from_arrays(np.ones((2000, 8, 8), np.uint8), np.arange(2000) % 7).save(tmp_path / "m")
    assert len(Manifest.load(tmp_path / "m")) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_atomic_open_and_digest(tmp_path):
    with pytest.raises(ValueError), atomic_open(tmp_path / "f.json") as f:
        f.write("{")
        raise ValueError
    assert not list(tmp_path.iterdir())
    assert digest({"a": 1, "b": [2]}) == digest({"b": [2], "a": 1}) != digest({"a": 2, "b": [2]})


def test_atomic_files_get_an_ordinary_mode(tmp_path):
    import os

    with atomic_open(tmp_path / "f.txt") as f:
        f.write("x")
    (tmp_path / "plain.txt").write_text("x")
    assert os.stat(tmp_path / "f.txt").st_mode == os.stat(tmp_path / "plain.txt").st_mode


def test_sweep_removes_only_what_killed_writers_leave(tmp_path):
    from fersynth.atomic import sweep_temporaries

    (tmp_path / "stage" / ".weights.old").mkdir(parents=True)  # a folder swap cut short
    (tmp_path / "stage" / ".results.csv.k3j2.tmp").write_text("half")
    (tmp_path / ".manifest.a1b2.tmp").mkdir()
    keep = [tmp_path / "stage" / ".own.resume.pt", tmp_path / "stage" / "shard-00001.rows.jsonl",
            tmp_path / "results.csv", tmp_path / "notes.tmp"]
    for p in keep:
        p.write_text("x")
    removed = sweep_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".manifest.a1b2.tmp", ".results.csv.k3j2.tmp", ".weights.old"]
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(keep)
