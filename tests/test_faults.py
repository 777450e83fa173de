"""Kill -9 anywhere: a small demo study is SIGKILLed (a real subprocess, `fersynth.faults`) at five
points (generator training, generation, a training, an evaluation, the report), rerun after each
kill, and must end with the uninterrupted run's results.csv and no temporary files left."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fersynth.atomic import is_temporary
from fersynth.data.demo import write_demo_folder
from fersynth.experiment.demo import demo_config
from fersynth.faults import ENV, POINTS

# (kill point, n-th hit, the stage the rerun must find unfinished and resume; None for the report)
KILLS = [
    ("own-train-step", 5, "gen-own-model"),
    ("generate-batch", 2, "gen-own-images"),
    ("train-epoch", 1, "train-own-append100-s0"),
    ("eval-outputs", 1, "eval-own-append100-s0-test"),
    ("report-csv", 1, None),
]
TIMEOUT = 300  # seconds for one `fersynth run`; the whole test takes ~2-4 min on 2 cores


def small_demo(root: Path) -> Path:
    """The demo study (its arms, verification and generator), shrunk to run in well under a minute."""
    counts = {"angry": 14, "disgust": 4, "fear": 14, "happy": 26, "sad": 17, "surprise": 11, "neutral": 18}
    data = write_demo_folder(root / "data", counts, seed=0, test_per_class=6, size=24)
    cfg = demo_config(data, steps=12, seeds=(0,))
    cfg["train"]["set"].update(img_size=24, epochs=2, batch_size=32, num_threads=1)
    g = cfg["generators"]["own"]
    g["train"].update(max_steps=12, batch_size=32, num_threads=1)
    g.update(per_class=dict.fromkeys(g["per_class"], 4) | {"disgust": 10}, steps=3, batch_size=8)
    cfg["arms"][2]["n"] = 3
    cfg["n_boot"] = 50
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def fersynth_run(config: Path, out: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if kill_at:
        env[ENV] = kill_at
    return subprocess.run([sys.executable, "-m", "fersynth.cli.main", "run", str(config), "--out", str(out), "-q"],
                          env=env, capture_output=True, text=True, timeout=TIMEOUT)


def results_without_timings(path: Path) -> str:
    """results.csv with its one timing column (train_seconds) left out; every other byte kept."""
    rows = list(csv.reader(io.StringIO(path.read_text(), newline="")))
    drop = rows[0].index("train_seconds")
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\n").writerows([c for i, c in enumerate(r) if i != drop] for r in rows)
    return buf.getvalue()


@pytest.mark.slow
def test_sigkill_at_five_points_then_rerun_gives_the_uninterrupted_results(tmp_path):
    assert [k[0] for k in KILLS] == list(POINTS)  # every point the study code offers is exercised
    config = small_demo(tmp_path)
    ref = fersynth_run(config, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]

    out = tmp_path / "killed"
    for point, nth, stage in KILLS:
        p = fersynth_run(config, out, f"{point}:{nth}")
        assert p.returncode == -signal.SIGKILL, f"{point}: not killed (rc {p.returncode}): {p.stderr[-1500:]}"
        assert not (out / "results.csv").exists() or point == "report-csv"
        log_before = (out / "run.log").read_text()
        if stage:  # killed mid-stage: the stage is there, unfinished
            assert (out / "stages" / stage).is_dir() and not (out / "stages" / stage / "done.json").exists()
        else:  # killed while writing results.csv: its half-written temporary file is there
            assert any(is_temporary(f) and f.name.startswith(".results.csv.") for f in out.iterdir())
        assert (out / "run.lock").exists()  # the dead run's lock file, to be taken over
    final = fersynth_run(config, out)
    assert final.returncode == 0, final.stderr[-2000:]
    log = (out / "run.log").read_text()
    new = log[len(log_before):]  # what the last rerun logged
    assert "took over the lock of a run that is gone" in new
    assert "removed 1 temporary file(s) left by an interrupted run" in new
    for _, _, stage in KILLS[:-1]:
        assert f"resume      {stage} " in log, stage

    assert results_without_timings(out / "results.csv") == results_without_timings(tmp_path / "ref" / "results.csv")
    # every training's epochs (losses, validation figures; not their times) ...
    trains = sorted(p.relative_to(out) for p in out.glob("stages/train-*/train_summary.json"))
    assert len(trains) == 4
    for rel in trains:
        a, b = (json.loads((root / rel).read_text())["history"] for root in (out, tmp_path / "ref"))
        assert [{k: v for k, v in e.items() if k != "seconds"} for e in a] == \
               [{k: v for k, v in e.items() if k != "seconds"} for e in b], rel
    # ... and every evaluation's per-image probabilities, which a small change of weights would move
    evals = sorted(p.relative_to(out) for p in out.glob("stages/eval-*/predictions.csv"))
    assert len(evals) == 4
    for rel in evals:
        assert (out / rel).read_bytes() == (tmp_path / "ref" / rel).read_bytes(), rel
    debris = [p for p in out.rglob("*") if is_temporary(p) or p.name.endswith(".rows.jsonl")
              or p.name.endswith(".resume.pt")]
    assert not debris
    assert not (out / "run.lock").exists()
