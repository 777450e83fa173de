"""The Ray backend on one node: study wall time, scheduling overhead, generation through Ray Data.

    flock /tmp/fersynth-bench.lock python benchmarks/bench_ray.py [--generator-steps 700] [--gen-seconds 40]

1. The demo study (`fersynth demo`'s config, 2 seeds) from nothing with the local backend (one
   process, torch on every core) and with `--backend ray` on a local instance of 2 one-CPU,
   one-thread workers: wall time of each (Ray start-up included) and their ratio, and whether
   results.csv is the same (timings aside; thread counts differ, so CPU rounding may not).
2. Scheduling overhead of the Ray run, from its `ray.json` (submitted / started / finished /
   returned per task): per task, the time in the task outside the stage code (Runner set-up,
   the cache-hit replay of upstream stages) plus the return to the driver, divided by the stages
   run; the time from submission to start apart (queueing for a CPU, worker start-up). Then the
   same command again, where every task only replays cache hits: its Ray phase (Ray start-up
   included) per task on the 2 workers. And the round trip of an empty task.
3. Generation throughput of the demo's own generator (its trained weights from step 1, the
   demo's 25 sampling steps): `run_generation` in this process against `run_generation_ray`
   with 2 one-thread actors (actor start-up and shipping the model included), on the same plan
   sized to take about --gen-seconds plainly; images/s ratio (goal >= 0.9) and whether the
   files are byte-identical.

Writes benchmarks/results/ray.json with the CPU flags and the load average (benchmarks/machine.py).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import machine

ROOT = Path(__file__).resolve().parents[1]


def fersynth_run(config: Path, out: Path, *extra: str) -> float:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "fersynth.cli.main", "run", str(config), "--out", str(out), "-q",
                        *extra], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"fersynth run {' '.join(extra)} failed:\n{p.stderr[-3000:]}")
    return seconds


def results_without_timings(path: Path) -> str:
    rows = list(csv.reader(io.StringIO(path.read_text(), newline="")))
    drop = rows[0].index("train_seconds")
    return "\n".join(",".join(c for i, c in enumerate(r) if i != drop) for r in rows)


def overhead(run: Path) -> dict:
    """Per task of a Ray run: time in the task outside the stage code plus the return to the driver
    (what a stage pays for being a task once it has a CPU), and the time from submission to start
    (queueing for a free CPU, a fresh worker's start-up and imports)."""
    rec = json.loads((run / "ray.json").read_text())
    tasks = [t for t in rec["tasks"] if "started" in t]
    per_kind: dict[str, list] = {}
    outside, stages, waits = 0.0, 0, []
    for t in tasks:
        spent = sum(v or 0 for v in t["stage_seconds"].values())
        o = (t["finished"] - t["started"] - spent) + (t["returned"] - t["finished"])
        outside += o
        stages += max(1, len(t["ran"]))
        waits.append(t["started"] - t["submitted"])
        per_kind.setdefault(t["kind"], []).append(o)
    return {"tasks": len(tasks), "stages_run": stages,
            "in_task_overhead_per_stage_s": round(outside / max(1, stages), 3),
            "in_task_overhead_median_s_by_kind": {k: round(statistics.median(v), 3) for k, v in sorted(per_kind.items())},
            "submit_to_start_median_s": round(statistics.median(waits), 3) if waits else None,
            "submit_to_start_max_s": round(max(waits), 3) if waits else None,
            "ray_phase_seconds": rec["seconds"]}


def noop_roundtrip(n: int = 30) -> float:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        f = ray.remote(num_cpus=1)(lambda: None)
        ray.get(f.remote())  # a worker up
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            ray.get(f.remote())
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    finally:
        ray.shutdown()


def generation(weights: Path, work: Path, target_s: float) -> dict:
    import ray
    import torch

    from fersynth.faces.convert import DomainSpec
    from fersynth.generate.base import run_generation
    from fersynth.generate.own import OwnGenerator, plan_sample
    from fersynth.generate.ray_data import RUNS, run_generation_ray

    torch.set_num_threads(os.cpu_count() or 1)
    gen = OwnGenerator(weights, steps=25, cfg_scale=4.0)
    dom = DomainSpec(size=48, gray=True)
    kw = {"domain": dom, "dataset": "synthetic-own", "settings": {}, "shard_size": 64, "batch_size": 64,
          "progress": False}

    def plan(per_class):
        items = []
        for c in range(7):
            for it in plan_sample([c], per_class, 1000 + 7919 * c, "sample", {"cfg_scale": 4.0, "steps": 25}):
                it.index = len(items)
                items.append(it)
        return items

    shutil.rmtree(work, ignore_errors=True)
    probe = plan(10)  # 70 images to size the plan
    t0 = time.perf_counter()
    run_generation(gen, probe, work / "probe", **kw)
    rate = len(probe) / (time.perf_counter() - t0)
    items = plan(max(10, round(rate * target_s / 7)))
    kw["shard_size"] = -(-len(items) // 8)  # 8 equal shards: 4 for each actor, no lone tail
    t0 = time.perf_counter()
    run_generation(gen, items, work / "plain", **kw)
    plain_s = time.perf_counter() - t0
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        run_generation_ray(gen, items, work / "ray", concurrency=2, num_cpus=1, threads=1, **kw)
        ray_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
    same = True
    for p in sorted((work / "plain").rglob("*")):
        rel = p.relative_to(work / "plain")
        if p.is_file() and p.name != "summary.json":
            a = p.read_bytes().replace(str(work / "plain").encode(), b"ROOT")
            b = (work / "ray" / rel).read_bytes().replace(str(work / "ray").encode(), b"ROOT")
            same &= a == b
    n = len(items)
    return {"images": n, "shards": 8, "shard_size": kw["shard_size"], "batch_size": 64, "plain_threads": torch.get_num_threads(),
            "plain_seconds": round(plain_s, 2), "plain_images_per_s": round(n / plain_s, 2),
            "ray_data_actors": 2, "ray_data_threads_per_actor": 1, "ray_data_seconds": round(ray_s, 2),
            "ray_data_images_per_s": round(n / ray_s, 2), "ratio_ray_over_plain": round(plain_s / ray_s, 3),
            "actors_that_wrote": RUNS[-1]["actors"], "files_byte_identical": bool(same)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/fersynth-bench-ray"))
    ap.add_argument("--generator-steps", type=int, default=700, help="the demo's own-generator training steps")
    ap.add_argument("--gen-seconds", type=float, default=40.0, help="plain generation time to size the plan")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ray.json")
    ap.add_argument("--skip-study", action="store_true", help="only the generation part (needs a previous --work)")
    args = ap.parse_args()
    load = os.getloadavg()
    from fersynth.experiment.demo import prepare_demo

    work = args.work
    result: dict = {"generator_steps": args.generator_steps}
    if not args.skip_study:
        shutil.rmtree(work, ignore_errors=True)
        cfg, _ = prepare_demo(work, args.generator_steps)
        config = work / "demo.yaml"
        local_s = fersynth_run(config, work / "local")
        print(f"local backend: {local_s:.1f} s", flush=True)
        ray_s = fersynth_run(config, work / "ray", "--backend", "ray", "--num-cpus", "2",
                             "--resources", "*.num_cpus=1", "--resources", "*.threads=1")
        print(f"ray backend:   {ray_s:.1f} s", flush=True)
        ov = overhead(work / "ray")
        # the same command again: every task only replays cache hits, so its whole cost is overhead
        rerun_s = fersynth_run(config, work / "ray", "--backend", "ray", "--num-cpus", "2",
                               "--resources", "*.num_cpus=1", "--resources", "*.threads=1")
        hits = overhead(work / "ray")
        ov["all_hits_rerun"] = {"wall_seconds": round(rerun_s, 1), "ray_phase_seconds": hits["ray_phase_seconds"],
                                "tasks": hits["tasks"],
                                "seconds_per_task_on_2_workers": round(2 * hits["ray_phase_seconds"] / hits["tasks"], 3)}
        rt = noop_roundtrip()
        result["study"] = {
            "config": "fersynth demo (4 arms x 2 seeds, own generator, verification by the baseline)",
            "local_seconds": round(local_s, 1), "ray_seconds": round(ray_s, 1),
            "ratio_ray_over_local": round(ray_s / local_s, 3),
            "ray_setup": "local instance, --num-cpus 2, every task 1 CPU and 1 torch thread; Ray Data actors 1 CPU",
            "local_setup": "one process, torch's default threads (all cores)",
            "results_csv_identical_timings_aside": results_without_timings(work / "local" / "results.csv")
            == results_without_timings(work / "ray" / "results.csv"),
            "stages_left_to_the_final_local_pass": len(json.loads((work / "ray" / "state.json").read_text())["ran"])}
        result["scheduling"] = {**ov, "empty_task_roundtrip_ms": round(rt * 1000, 2)}
        print(json.dumps(result, indent=2), flush=True)
    result["generation"] = generation(work / "local" / "stages" / "gen-own-model" / "weights", work / "gen",
                                      args.gen_seconds)
    result["machine"] = machine(load, note="2 cores; run alone on the idle machine")
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
