"""What a study's trained arms make of its generated images: does synthetic training data teach the class, or the look?

    python benchmarks/bench_synthetic_transfer.py [--run runs/fer2013-cpu] [--generator own]

For every arm of a finished study (seed `--seed`'s checkpoint) and every intended class of the
generator's verified pool: the share of those images the arm's model calls that class, and the
share it calls each other class. Beside it, the same model's recall on the real in-domain test set
(from the study's own evaluation). A balance arm whose model names the generated faces of its added
class perfectly but the real ones seldom, and calls generated faces of *other* classes by the added
class, has learnt what generated faces look like rather than the expression: the synthetic rows are
the only ones of their look, and all of one class. Reads the run folder only (no training, no test
rows beyond the study's recorded metrics). Writes benchmarks/results/synthetic_transfer_<study>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from fersynth.data.manifest import Manifest
from fersynth.errors import FersynthError
from fersynth.evaluate.transfer import transfer_matrix
from fersynth.labels import CLASSES
from machine import machine

ROOT = Path(__file__).resolve().parents[1]


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "fer2013-cpu", help="a finished study's folder")
    ap.add_argument("--generator", default="own")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    load_start, t0 = os.getloadavg(), time.perf_counter()
    stages = a.run / "stages"
    pool_dir = stages / f"verify-{a.generator}" / "verified"
    if not (pool_dir / "meta.json").is_file():
        fail(f"{pool_dir}: no verified pool of generator '{a.generator}' (hint: run the study first)")
    pool = Manifest.load(pool_dir)
    y = pool.labels
    present = [c for c in range(len(CLASSES)) if (y == c).any()]
    arms = sorted(p.name[len("train-"):-len(f"-s{a.seed}")] for p in stages.glob(f"train-*-s{a.seed}")
                  if (p / "done.json").is_file())
    out: dict = {"benchmark": "synthetic_transfer", "run": str(a.run), "generator": a.generator, "seed": a.seed,
                 "pool_per_class": {CLASSES[c]: int((y == c).sum()) for c in present}, "arms": {}}
    for arm in arms:
        try:
            matrix = transfer_matrix(pool, stages / f"train-{arm}-s{a.seed}")
        except FersynthError as e:
            fail(f"{stages / f'train-{arm}-s{a.seed}'}: {e.message}")
        called = {c: {k: round(v, 3) for k, v in row.items()} for c, row in matrix.items()}
        m = stages / f"eval-{arm}-s{a.seed}-test" / "metrics.json"
        real = None
        if m.is_file():
            pc = json.loads(m.read_text()).get("per_class", {})
            real = {k: round(float(v["recall"]), 3) for k, v in pc.items() if isinstance(v, dict) and "recall" in v}
        out["arms"][arm] = {"generated_called": called,
                            "generated_accuracy": {k: v[k] for k, v in called.items()},
                            "real_test_recall": real}
        print(f"{arm:>16}: generated faces named as intended "
              + ", ".join(f"{k} {v[k]:.2f}" for k, v in called.items()))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["machine"] = machine(load_start)
    dest = a.out or ROOT / "benchmarks" / "results" / f"synthetic_transfer_{a.run.name}.json"
    from fersynth.atomic import write_json_atomic

    write_json_atomic(out, dest)
    print(f"-> {dest}")


if __name__ == "__main__":
    main()
