"""The command line: outputs for people and programs, and one clear line + exit 2 on bad input."""

from __future__ import annotations

import json

import pytest

from conftest import SHARED_DATA, face, write_img
from fersynth.cli.main import main


def run(capsys, *args):
    code = main(list(map(str, args)))
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_json_and_plot(capsys, fer_folder, tmp_path):
    code, out, err = run(capsys, "data", "inspect", fer_folder, "--json", "--plot", tmp_path / "c.png")
    assert code == 0, err
    prof = json.loads(out)
    assert prof["counts"]["Training"]["happy"] == 3 and prof["counts"]["PrivateTest"]["sad"] == 1
    assert prof["imbalance_ratio"]["Training"] == 1.0
    assert "exact" in prof["duplicates"] and "q_score" in prof["quality"]
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_inspect_table(capsys, fer_folder):
    code, out, _ = run(capsys, "data", "inspect", fer_folder)
    assert code == 0 and "Training" in out and "imbalance" in out


def test_leakage_json_finds_cross_split_twin(capsys, fer_folder):
    src = fer_folder / "train" / "happy" / "Training_00.jpg"
    (fer_folder / "test" / "happy" / "PrivateTest_twin.jpg").write_bytes(src.read_bytes())
    code, out, err = run(capsys, "data", "leakage", fer_folder, "--json")
    assert code == 0, err
    rep = json.loads(out)
    groups = rep["exact_groups"]
    assert len(groups) == 1
    assert {g["subset"] for g in groups[0]} == {"Training", "PrivateTest"}
    assert {g["label"] for g in groups[0]} == {"happy"}
    assert rep["summary"]["exact"]["test_images_with_train_twin"] == 1
    assert "near_groups" in rep


def test_ingest_then_quality_in_place(capsys, fer_folder, tmp_path):
    man = tmp_path / "m"
    assert run(capsys, "data", "ingest", fer_folder, "--out", man)[0] == 0
    code, out, err = run(capsys, "data", "quality", man)
    assert code == 0, err
    from fersynth.data.manifest import Manifest

    m = Manifest.load(man)
    assert {"q_sharpness", "q_detail", "q_contrast", "q_texture", "q_entropy", "q_score", "flags"} <= set(m.df.columns)


def test_demo_then_ingest(capsys, tmp_path):
    code, _, err = run(capsys, "data", "demo", tmp_path / "d", "--per-class", 3, "--test-per-class", 1)
    assert code == 0, err
    code, out, _ = run(capsys, "data", "inspect", tmp_path / "d", "--json", "--no-quality", "--no-duplicates")
    prof = json.loads(out)
    assert prof["counts"]["train"]["fear"] == 3 and prof["counts"]["test"]["fear"] == 1


@pytest.mark.parametrize(
    "args, needle",
    [
        (("data", "inspect", "{tmp}/missing"), "no such file or directory"),
        (("data", "ingest", "{bad}", "--out", "{tmp}/o"), "Training_00.jpg: corrupt or truncated"),
        (("data", "ingest", "{fer}", "--out", "{tmp}/o", "--format", "rafd"), "unknown dataset format 'rafd'"),
        (("data", "quality", "{fer}"), "is a dataset, not a manifest"),
        (("data", "ingest", "{tmp}/empty", "--out", "{tmp}/o"), "empty: no images in it"),
        (("data", "ingest", "{fer}", "--out", "{tmp}/o", "--photos", "crop"), "unknown photo policy 'crop'"),
        (("data", "ingest", "{bigphoto}", "--out", "{tmp}/o", "--photos", "refuse"), "Training_big.png: is 64x64 but"),
        (("data", "demo", "{tmp}/d", "--per-class", "0"), "--per-class must be >= 1"),
        (("models", "list", "*"), None),
        (("train", "--data", "{fer}", "--out", "{tmp}/r", "--model", "vgg_19"), "unknown model 'vgg_19'"),
        (("train", "--data", "{fer}", "--out", "{tmp}/r", "--preset", "roy2024", "--epochs", "3"), "conflicts with preset 'roy2024'"),
        (("eval", "{tmp}/nockpt", "--data", "{fer}"), "no checkpoint there"),
        (("compare", "{tmp}/none.json"), "cannot read"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, tmp_path, fer_folder, args, needle):
    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(fer_folder, bad)
    p = bad / "train" / "happy" / "Training_00.jpg"
    p.write_bytes(p.read_bytes()[:200])
    (tmp_path / "empty").mkdir()
    bigphoto = tmp_path / "bigphoto"
    shutil.copytree(fer_folder, bigphoto)
    write_img(bigphoto / "train" / "happy" / "Training_big.png", face(5, size=64))
    args = [a.format(tmp=tmp_path, fer=fer_folder, bad=bad, bigphoto=bigphoto) for a in args]
    code, out, err = run(capsys, *args)
    if needle is None:
        assert code == 0
        return
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.shared
def test_shared_inspect_counts(capsys):
    code, out, err = run(capsys, "data", "inspect", SHARED_DATA / "fer2013", "--json", "--no-quality", "--no-duplicates")
    assert code == 0, err
    c = json.loads(out)["counts"]
    assert c["Training"]["disgust"] == 436 and c["Training"]["happy"] == 7215
    assert sum(c["PrivateTest"].values()) == 3589 and sum(c["PublicTest"].values()) == 3589


# --------------------------------------------------------------------------- usage errors and help
@pytest.mark.parametrize("argv, needle", [
    ([], "fersynth: Missing command."),  # bare `fersynth`
    (["data"], "fersynth data: Missing command."),
    (["trian"], "No such command 'trian'"),  # misspelt command
    (["data", "inspect", "X", "--jsn"], "No such option: --jsn"),  # unknown option
    (["run"], "Missing argument"),  # missing argument
    (["train"], "Missing option '--data'"),  # missing required option
    (["train", "--data"], "'--data' requires an argument"),  # option without its value
    (["data", "demo", "out", "--per-class", "many"], "Invalid value for '--per-class'"),
])
def test_usage_errors_are_one_line_exit_2(capsys, argv, needle):
    import typer

    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (typer.__version__, err)
    assert len(err.strip().splitlines()) == 1 and needle in err and "--help" in err, err
    assert "Traceback" not in err and out == ""


def test_usage_error_through_the_console_script():
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "fersynth.cli.main", "trian"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Did you mean 'train'" in p.stderr


def _commands(cmd, path=()):
    """Every command and group of the CLI as an argv prefix."""
    yield list(path)
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_help_shows_flags_as_flags(capsys):
    import typer.main

    from fersynth.cli.main import app

    paths = list(_commands(typer.main.get_command(app)))
    assert ["run"] in paths and ["data", "inspect"] in paths
    for path in paths:
        assert main([*path, "--help"]) == 0
        out = capsys.readouterr().out
        assert "--help" in out and "<bool>" not in out, (path, out)
    main(["run", "--help"])
    assert any(line.split()[1:3] == ["--quiet", "-q"] and "No progress bars" in line
               for line in capsys.readouterr().out.splitlines())

def test_ingest_counts_photos_and_streams_into_out(capsys, fer_folder, tmp_path):
    write_img(fer_folder / "train" / "sad" / "Training_wall.png", face(3, size=300))  # a faceless photo
    code, out, err = run(capsys, "data", "ingest", fer_folder, "--out", tmp_path / "m")
    assert code == 0, err
    assert "photos: 0 face-cropped to the dataset's size, 1 without a face dropped" in out
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    assert meta["notes"]["photos"] == {"converted": 0, "no_face": 1} and meta["rows"] == 10
