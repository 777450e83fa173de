"""One `fersynth run` per run folder: a second is refused naming the holder; a dead holder's lock is taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fersynth.cli.main import main
from fersynth.errors import FersynthError
from fersynth.experiment.lock import LOCK_FILE, RunLock

HOLD = """import sys
from fersynth.experiment.lock import RunLock
with RunLock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path):
    """Another process that holds the lock on tmp_path/run until its stdin closes."""
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "held"
    yield run, p
    if p.poll() is None:
        p.kill()
    p.wait(timeout=30)


def _config(tmp_path: Path) -> Path:
    """A config whose data is missing: a run that gets past the lock stops at once with 'nothing can run'."""
    cfg = {"name": "locked", "data": {"path": str(tmp_path / "no-data")}, "train": {"preset": "cpu-fast"},
           "arms": [{"name": "baseline", "strategy": "real"}], "seeds": [0]}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_a_second_run_is_refused_with_the_holder_named(holder, tmp_path, capsys):
    run, p = holder
    rc = main(["run", str(_config(tmp_path)), "--out", str(run), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"{run}: in use by another fersynth run (pid {p.pid} on {socket.gethostname()}, started " in err
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == p.pid  # the holder's lock is untouched
    assert not (run / "run.log").exists()  # the refused run wrote nothing
    p.stdin.close()  # the holder finishes and lets go
    p.wait(timeout=30)
    assert not (run / LOCK_FILE).exists()
    rc = main(["run", str(_config(tmp_path)), "--out", str(run), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "nothing can run" in err and "in use" not in err
    assert not (run / LOCK_FILE).exists()  # released on the way out of a failed run too


def test_a_lock_left_by_a_killed_run_is_taken_over(holder):
    run, p = holder
    with pytest.raises(FersynthError, match=f"pid {p.pid}"):
        RunLock(run).acquire()
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == p.pid  # the file outlives its holder
    with RunLock(run) as lock:
        assert lock.previous["pid"] == p.pid
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(FersynthError, match=f"pid {os.getpid()}"):
            RunLock(run).acquire()  # a second holder in the same process is refused too
    assert not (run / LOCK_FILE).exists()
