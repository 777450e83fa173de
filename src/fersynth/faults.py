"""Fault injection for the tests: named points where a process can be made to die like `kill -9`.

A process started with `FERSYNTH_KILL_AT=POINT[:N]` sends itself SIGKILL the N-th time (default
the first) it reaches `kill_point(POINT)`. Without the variable a point does nothing, so results
do not depend on it. With `FERSYNTH_KILL_ONCE=MARKER` as well, the kill happens once across
processes: the process about to die creates the file MARKER first, and a process that finds it
there lives on (a Ray task retried in a fresh worker is not killed again). The points, in the
order a study meets them:

    own-train-step   after an optimiser step of the own generator's training
    generate-batch   after a batch of generated images and its rows are on disk, mid-shard
    train-epoch      after a FER training epoch's state is saved
    eval-outputs     between an evaluation's metrics.json and its predictions.csv
    report-csv       in the middle of writing results.csv (its temporary file half-written)
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "FERSYNTH_KILL_AT"
ONCE_ENV = "FERSYNTH_KILL_ONCE"
POINTS = ("own-train-step", "generate-batch", "train-epoch", "eval-outputs", "report-csv")
_hits: Counter = Counter()


def kill_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _hits[name] += 1
    if _hits[name] == int(nth or 1):
        marker = os.environ.get(ONCE_ENV)
        if marker:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                return
        os.kill(os.getpid(), signal.SIGKILL)
