"""Keep rates of the FER2013 study's verifier on real validation images, before and after calibration.

    flock /tmp/fersynth-bench.lock python benchmarks/bench_verify_calibration.py [--config configs/fer2013-cpu.yaml]

1. The study's data stage and baseline: `--config` reduced to its baseline arm and first seed, run
   in `--run` (default runs/<config name>, the study's own folder), so the checkpoint is the one the
   study verifies with (preset cpu-fast as the config sets it: 3 epochs, fp32) and is cached there.
2. The experts and policy of the config's `verify` section.
3. The study's carved validation rows (never a test row), scored once by every expert.
4. For each calibration method (none, prior, thresholds, both) and `--seeds` divisions of
   validation into a fit part and a check part: calibrate on the fit part, and measure on the
   check part the policy's keep rate on the real images per class (`real_keep_rate`) and on
   the same images with shuffled labels (`shuffled_keep_rate`).

Targets (issue 11): every class's real keep rate >= 0.6, shuffled overall <= 0.2. `before` and
`after` in the JSON are the first seed's figures without calibration and with `--method`
(default: the config's own calibration method); every method and seed is listed under `methods`.
Writes benchmarks/results/verify_calibration_fer2013.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from fersynth.experiment.config import load_config
from fersynth.experiment.runner import Runner
from fersynth.labels import CLASSES
from fersynth.verify.calibrate import METHODS, calibrate_and_check
from fersynth.verify.experts import load_expert
from fersynth.verify.run import check_class_sets, expert_names, expert_probabilities
from machine import machine

ROOT = Path(__file__).resolve().parents[1]
REAL_TARGET, SHUFFLED_TARGET = 0.6, 0.2


def summarise(runs: list[dict], part: str) -> dict:
    """Per class mean and min over seeds of the real and shuffled keep rates."""
    out = {}
    for key in ("real_keep_rate", "shuffled_keep_rate"):
        names = [c for c in runs[0][part][key] if c in CLASSES or c == "overall"]
        vals = {c: [r[part][key][c] for r in runs] for c in names}
        out[key] = {c: {"mean": round(float(np.mean(v)), 4), "min": round(float(np.min(v)), 4)} for c, v in vals.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "fer2013-cpu.yaml")
    ap.add_argument("--run", type=Path, default=None, help="study folder (default runs/<config name>)")
    ap.add_argument("--method", default=None, choices=METHODS[1:],
                    help="the method reported as `after` (default: the config's verify.calibration.method)")
    ap.add_argument("--target-keep", type=float, default=None, help="default: the config's verify.calibration.target_keep")
    ap.add_argument("--seeds", type=int, default=3, help="fit / check divisions of validation")
    ap.add_argument("--set", action="append", default=[], dest="sets",
                    help="override a config key (as `fersynth run --set`), e.g. 'train.set={}' for the full "
                         "cpu-fast recipe as the baseline expert")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "verify_calibration_fer2013.json")
    ap.add_argument("--note", default="", help="what else ran on the machine, recorded with the results")
    a = ap.parse_args()
    load_start, t0 = os.getloadavg(), time.perf_counter()

    cfg = load_config(a.config, sets=[*a.sets, "arms=[{name: baseline, strategy: real}]", "seeds=[0]",
                                      "generators={}", "test_sets=[]"])
    full = load_config(a.config, sets=a.sets)
    runner = Runner(cfg, a.run or ROOT / "runs" / full.name, progress=True)
    runner.run()
    base_dir = runner.state.trains[(cfg.baseline_arm, 0)]
    base_summary = json.loads((base_dir / "train_summary.json").read_text())

    specs = [str(base_dir) if e == "baseline" else e for e in full.verify.experts]
    experts = [load_expert(s) for s in specs]
    names = expert_names(experts)
    policy = full.verify.policy  # typed at load (a VerifyPolicy)
    after_method = a.method or (full.verify.calibration.method if full.verify.calibration.enabled else "both")
    val = runner.real.where(split="val")
    y = val.df["label"].to_numpy(dtype=np.int64)
    k = check_class_sets(experts, y, "real validation labels")
    t1 = time.perf_counter()
    per = expert_probabilities(experts, val.pixels, k, progress=True)
    score_s = time.perf_counter() - t1
    print(f"validation: {len(y)} images, scored by {', '.join(names)} in {score_s:.1f} s")

    target_keep = a.target_keep if a.target_keep is not None else full.verify.calibration.target_keep
    methods: dict = {}
    for method in METHODS:
        runs = []
        for seed in range(a.seeds):
            c = full.verify.calibration.model_copy(update={"method": method, "target_keep": target_keep, "seed": seed})
            _, rep = calibrate_and_check(per, y, policy, c, names=names)
            runs.append(rep)
        part = "calibrated" if method != "none" else "uncalibrated"
        methods[method] = {"per_seed": [{"seed": s, "fit_rows": r["fit_rows"], "check_rows": r["check_rows"],
                                         **{kk: r[part][kk] for kk in ("real_keep_rate", "shuffled_keep_rate",
                                                                       "shuffled_unchanged",
                                                                       "shuffled_keep_rate_changed")},
                                         "calibration": r.get("calibration")} for s, r in enumerate(runs)],
                           "over_seeds": summarise(runs, part)}
        s0 = methods[method]["per_seed"][0]
        print(f"{method:>10}: real keep min class {s0['real_keep_rate']['min_class']:.3f}, "
              f"mean class {s0['real_keep_rate']['mean_class']:.3f}; shuffled {s0['shuffled_keep_rate']['overall']:.3f}")

    def block(method):
        s0 = methods[method]["per_seed"][0]
        ok_real = s0["real_keep_rate"]["min_class"] >= REAL_TARGET
        ok_sh = s0["shuffled_keep_rate"]["overall"] <= SHUFFLED_TARGET
        return {"method": method, "real_keep_rate": s0["real_keep_rate"],
                "shuffled_keep_rate": s0["shuffled_keep_rate"], "shuffled_unchanged": s0["shuffled_unchanged"],
                "shuffled_keep_rate_changed": s0["shuffled_keep_rate_changed"],
                "meets_targets": {"real_every_class_ge_0.6": ok_real, "shuffled_overall_le_0.2": ok_sh}}

    expert_val_acc = {n: round(float((per[i].argmax(1) == y).mean()), 4) for i, n in enumerate(names)}
    expert_val_recall = {n: {CLASSES[c]: round(float((per[i][y == c].argmax(1) == c).mean()), 4)
                             for c in range(k) if (y == c).any()} for i, n in enumerate(names)}
    result = {
        "benchmark": "verify_calibration_fer2013",
        "config": str(a.config.relative_to(ROOT) if a.config.is_relative_to(ROOT) else a.config),
        "config_overrides": a.sets,
        "experts": dict(zip(names, specs, strict=True)),
        "policy": policy.model_dump(),
        "baseline": {"train_seconds": round(base_summary["train_seconds"], 1),
                     "best_val_accuracy": base_summary.get("best_val_accuracy"),
                     "recipe": cfg.train.model_dump()},
        "validation_rows": int(len(y)),
        "validation_per_class": {CLASSES[c]: int((y == c).sum()) for c in range(k) if (y == c).any()},
        "expert_val_accuracy": expert_val_acc,
        "expert_val_recall": expert_val_recall,
        "target_keep": target_keep,
        "calibration": full.verify.calibration.model_dump(),
        "targets": {"real_keep_rate_every_class": REAL_TARGET, "shuffled_keep_rate_overall": SHUFFLED_TARGET},
        "before": block("none"),
        "after": block(after_method),
        "methods": methods,
        "seconds": {"total": round(time.perf_counter() - t0, 1), "expert_scoring": round(score_s, 1)},
        "machine": machine(load_start, a.note),
    }
    from fersynth.atomic import write_json_atomic

    write_json_atomic(result, a.out)
    print(json.dumps({"before": result["before"], "after": result["after"]}, indent=1))
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
