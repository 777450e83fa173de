"""`fersynth eval` and `fersynth compare` on checkpoints trained here, and their bad inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from fersynth.cli.main import main
from fersynth.data.demo import make_demo_faces
from fersynth.data.manifest import Manifest
from fersynth.errors import FersynthError
from fersynth.evaluate.runner import evaluate_checkpoint
from fersynth.train import resolve_config
from fersynth.train.checkpoint import load_checkpoint
from fersynth.train.loop import train

CFG = {"model": "fernet_s", "batch_size": 32, "epochs": 1, "optimizer": "sgd", "lr": 0.02, "num_threads": 2}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = make_demo_faces(12, seed=11)
    t = make_demo_faces(6, seed=12)
    m = Manifest.concat([Manifest.from_arrays(d.pixels, d.labels, split="train", subset="train", dataset="demo"),
                         Manifest.from_arrays(t.pixels, t.labels, split="test", subset="PrivateTest", dataset="demo")])
    path = tmp_path_factory.mktemp("data") / "man"
    m.save(path)
    return path


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    m = Manifest.load(data_dir)
    for seed in (0, 1):
        train(m, resolve_config(None, dict(CFG, seed=seed)), base / f"s{seed}", progress=False)
    return base


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_cli_writes_metrics_and_figures(capsys, runs, data_dir, tmp_path):
    code, out, err = run(capsys, "eval", runs / "s0", "--data", data_dir, "--subset", "PrivateTest",
                         "--out", tmp_path / "e", "--bootstrap", 200)
    assert code == 0, err
    res = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert res["n"] == 42
    lo, hi = res["ci95"]["accuracy"]
    assert lo <= res["accuracy"] <= hi
    assert (tmp_path / "e" / "confusion.png").stat().st_size > 1000
    preds = (tmp_path / "e" / "predictions.csv").read_text().splitlines()
    assert len(preds) == 43 and preds[0].startswith("id,path,subset,label,pred,p_angry")
    # the figures are the predictions' own: recomputed from predictions.csv
    import pandas as pd

    p = pd.read_csv(tmp_path / "e" / "predictions.csv")
    assert (p["subset"] == "PrivateTest").all()
    assert res["accuracy"] == pytest.approx((p["pred"] == p["label"]).mean())
    recall = [(g["pred"] == c).mean() for c, g in p.groupby("label")]
    assert res["mean_class_accuracy"] == pytest.approx(np.mean(recall))
    probs = p[[c for c in p.columns if c.startswith("p_")]].to_numpy()
    assert (np.array([c[2:] for c in p.columns if c.startswith("p_")])[probs.argmax(1)] == p["pred"]).all()
    code, out, _ = run(capsys, "eval", runs / "s0", "--data", data_dir, "--subset", "PrivateTest", "--json",
                       "--bootstrap", 0)
    assert json.loads(out)["accuracy"] == res["accuracy"]  # the same figure printed as written


def test_compare_cli(capsys, runs, data_dir, tmp_path):
    for s in ("s0", "s1"):
        assert run(capsys, "eval", runs / s, "--data", data_dir, "--out", tmp_path / s, "--bootstrap", 100)[0] == 0
    code, out, err = run(capsys, "compare", tmp_path / "s0" / "metrics.json", tmp_path / "s1" / "metrics.json", "--json")
    assert code == 0, err
    cmp = json.loads(out)
    assert cmp["names"] == ["s0", "s1"] and "mcnemar" in json.dumps(cmp)
    # the deltas and McNemar's counts are those of the two runs' predictions
    import pandas as pd

    a, b = (pd.read_csv(tmp_path / s / "predictions.csv").set_index("id") for s in ("s0", "s1"))
    b = b.loc[a.index]
    ra, rb = ((x["pred"] == x["label"]) for x in (a, b))
    pair = next(v for v in _dicts(cmp) if "mcnemar" in v)
    assert pair["metrics"]["accuracy"]["delta"] == pytest.approx(rb.mean() - ra.mean())  # s1 - s0
    assert (pair["mcnemar"]["b"], pair["mcnemar"]["c"]) == (int((ra & ~rb).sum()), int((~ra & rb).sum()))


def _dicts(obj):
    """Every dict in a nested JSON object."""
    if isinstance(obj, dict):
        yield obj
        obj = list(obj.values())
    if isinstance(obj, list):
        for v in obj:
            yield from _dicts(v)


def test_class_count_mismatch_needs_mapping(runs, data_dir):
    m = Manifest.load(data_dir)
    lab = m.labels.copy()
    idx = np.flatnonzero(m.df["split"].to_numpy() == "test")[:3]
    lab[idx] = 7  # contempt: the 7-class model never saw it
    m8 = Manifest(m.df.assign(label=lab), m.pixels, m.root, dict(m.meta, num_classes=8))
    with pytest.raises(FersynthError, match="class-count mismatch: the data has contempt"):
        evaluate_checkpoint(runs / "s0", m8, n_boot=0)
    res = evaluate_checkpoint(runs / "s0", m8, n_boot=0, report_unseen=True)
    assert res["unseen_classes"] == {"contempt": 3} and res["n"] == 39
    res = evaluate_checkpoint(runs / "s0", m8, n_boot=0, label_map={"contempt": "neutral"})
    assert res["n"] == 42


def test_corrupted_and_foreign_checkpoints(runs, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(runs / "s0", bad)
    st = bad / "best.safetensors"
    st.write_bytes(st.read_bytes()[:100])
    with pytest.raises(FersynthError, match="corrupted checkpoint"):
        load_checkpoint(bad)
    other = tmp_path / "other"
    shutil.copytree(runs / "s0", other)
    meta = json.loads((other / "best.json").read_text())
    meta["architecture"] = "resemotenet"
    (other / "best.json").write_text(json.dumps(meta))
    with pytest.raises(FersynthError, match="do not fit architecture 'resemotenet'"):
        load_checkpoint(other)
    (other / "best.json").unlink()
    with pytest.raises(FersynthError, match="metadata best.json is missing"):
        load_checkpoint(other)


def test_evaluation_through_mmap_matches_in_memory(runs, data_dir):
    """Evaluation reads the memory-mapped manifest in batches; its predictions equal those on the
    same manifest held in memory."""
    from fersynth.data.pixels import Rows
    from fersynth.evaluate.runner import predict_manifest, select_rows

    mapped = Manifest.load(data_dir)
    in_mem = Manifest.load(data_dir, mmap=False)
    assert isinstance(mapped.pixels, np.memmap) and not isinstance(in_mem.pixels, np.memmap)
    rows_mm, rows_mem = select_rows(mapped, "test", None), select_rows(in_mem, "test", None)
    assert isinstance(rows_mm.pixels, Rows)
    ck = load_checkpoint(runs / "s0")
    a, b = predict_manifest(ck, rows_mm, batch_size=7), predict_manifest(ck, rows_mem)
    assert a.shape == (len(rows_mem), 7) and np.allclose(a, b, atol=1e-6)
    assert evaluate_checkpoint(runs / "s0", mapped, n_boot=50)["accuracy"] == evaluate_checkpoint(
        runs / "s0", in_mem, n_boot=50)["accuracy"]
