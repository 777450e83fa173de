"""A full disk or a read-only output folder: every command that writes says so in one line, exit 2,
and leaves no temporary file behind. A full disk is simulated by making `fersynth.atomic`'s
temporary files fail with ENOSPC; the read-only folder is real (chmod, or as root a read-only tmpfs)."""

from __future__ import annotations

import errno
import os
import subprocess
import types
from pathlib import Path

import pytest
import yaml

from fersynth import atomic
from fersynth.atomic import is_temporary
from fersynth.cli.main import main
from fersynth.data.demo import write_demo_folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("inputs")
    faces = write_demo_folder(root / "faces", per_class=6, seed=0, test_per_class=2)
    assert main(["train", "--data", str(faces), "--out", str(root / "ck"), "--epochs", "1",
                 "--set", "num_threads=1"]) == 0
    assert main(["eval", str(root / "ck"), "--data", str(faces), "--out", str(root / "ev")]) == 0
    (root / "ev2").mkdir()
    (root / "ev2" / "metrics.json").write_bytes((root / "ev" / "metrics.json").read_bytes())
    from fersynth.data.formats import IngestOptions
    from fersynth.data.ingest import load_any

    m, _ = load_any(faces, None, IngestOptions())
    m.df["intended_label"] = m.df["label"]  # stands for generated images: verify needs what each was made for
    m.save(root / "syn")
    cfg = {"name": "w", "data": {"path": str(faces), "quality": False}, "train": {"preset": None, "set": {"epochs": 1}},
           "arms": [{"name": "baseline", "strategy": "real"}], "seeds": [0]}
    (root / "study.yaml").write_text(yaml.safe_dump(cfg))
    return {"faces": str(faces), "ck": str(root / "ck"), "metrics": str(root / "ev" / "metrics.json"),
            "metrics2": str(root / "ev2" / "metrics.json"), "syn": str(root / "syn"),
            "study": str(root / "study.yaml"), "test_faces": str(faces / "test")}


# Every command that writes, with OUT where it writes.
COMMANDS = {
    "data demo": ["data", "demo", "OUT", "--per-class", "1"],
    "data ingest": ["data", "ingest", "{faces}", "-o", "OUT"],
    "data quality": ["data", "quality", "{faces}", "-o", "OUT"],
    "data enhance": ["data", "enhance", "{faces}", "-o", "OUT", "--method", "clahe"],
    "data inspect --plot": ["data", "inspect", "{faces}", "--plot", "OUT/classes.png"],
    "data audit": ["data", "audit", "{faces}", "-e", "{ck}", "-o", "OUT"],
    "train": ["train", "--data", "{faces}", "--out", "OUT", "--epochs", "1"],
    "eval": ["eval", "{ck}", "--data", "{faces}", "--out", "OUT"],
    "compare": ["compare", "{metrics}", "{metrics2}", "--out", "OUT/compare.json"],
    "compose": ["compose", "oversample", "--real", "{faces}", "--rho", "2", "-o", "OUT"],
    "verify": ["verify", "{syn}", "-e", "{ck}", "-o", "OUT"],
    "generator train": ["generator", "train", "--data", "{faces}", "--out", "OUT", "--max-steps", "1"],
    "generate pseudolabel": ["generate", "pseudolabel", "{test_faces}", "-t", "{ck}", "--threshold", "0", "-o", "OUT"],
    "run": ["run", "{study}", "--out", "OUT", "-q"],
    "demo": ["demo", "--out", "OUT", "-q"],
}


def _argv(name: str, inputs: dict, out: Path) -> list[str]:
    return [a.format(**inputs).replace("OUT", str(out)) for a in COMMANDS[name]]


def _one_line(capsys, why: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot write" in err and why in err, err
    return err


@pytest.mark.parametrize("name", COMMANDS)
def test_full_disk(name, inputs, tmp_path, monkeypatch, capsys):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), k.get("dir"))

    monkeypatch.setattr(atomic, "tempfile", types.SimpleNamespace(mkstemp=full, mkdtemp=full))
    out = tmp_path / "out"
    assert main(_argv(name, inputs, out)) == 2
    err = _one_line(capsys, "no space left on the device")
    assert str(tmp_path) in err  # names the folder it could not write in
    assert not [p for p in tmp_path.rglob("*") if is_temporary(p)]


@pytest.fixture(scope="module")
def read_only(tmp_path_factory):
    """A folder nobody may write in: chmod for a user; for root (who ignores modes) a read-only tmpfs."""
    d = tmp_path_factory.mktemp("ro") / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], capture_output=True)
    if p.returncode != 0:
        pytest.skip("running as root, which writes into read-only folders, and a read-only tmpfs can't be mounted here")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


@pytest.mark.parametrize("name", COMMANDS)
def test_read_only_folder(name, inputs, read_only, capsys):
    assert main(_argv(name, inputs, read_only / "out")) == 2
    err = _one_line(capsys, "read-only file system" if os.geteuid() == 0 else "permission denied")
    assert str(read_only) in err
    assert list(read_only.iterdir()) == []
