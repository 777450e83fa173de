"""How memory and time of `data ingest`, `data inspect` and training grow with the dataset.

For each size (default 20k, 80k, 320k images) the script writes an ImageFolder dataset of
112x112 RGB JPEGs outside the repository (derived from 350 demo faces with cheap per-image
variation: the top of one face over the bottom of another, rotation, scale, shift, colour tint,
brightness, mirror), then runs each stage in its own
subprocess, so that the peak RSS measured is that stage's:

- ingest: `fersynth data ingest DATA --out MANIFEST` (decoder workers reported apart);
- inspect: `fersynth data inspect MANIFEST --json` (quality scores, exact and near duplicates);
- train: 200 steps of `fernet_s` at batch 64 with the `cpu-fast` recipe's input (48x48 gray,
  augmentation, bf16 where the CPU has it), reading the memory-mapped Manifest as
  `fersynth.train.loop.train` does: validation carved (duplicate groups computed), the
  `PixelDataset` / shuffled `DataLoader` over the lazily selected train rows. Checkpoints and
  validation passes are left out, so 200 steps are the same work at every size.

Goal: peak RSS grows by less than 2x from the smallest to the largest size, and time per image
(ingest, inspect; per step for train) stays within 1.3x. The dataset and manifest are deleted
after each size. Results: benchmarks/results/scale.json, with the CPU flags and load.

    flock /tmp/fersynth-bench.lock python benchmarks/bench_scale.py [--sizes 20000 80000 320000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "scale.json"
SIDE = 112
BASE_FACES_PER_CLASS = 50  # 350 demo faces, varied per image


# ---- the dataset ---------------------------------------------------------------------


def _base_faces():
    from fersynth.data.demo import make_demo_faces

    return make_demo_faces(BASE_FACES_PER_CLASS, seed=0, size=SIDE)


def _write_range(args) -> int:
    """Images start..stop-1: the upper part of one base face over the lower part of another (so
    that images are not near-duplicates of each other), tinted, brightened, mirrored and warped."""
    import cv2

    root, start, stop = args
    faces = _base_faces()
    names = faces.classes
    n_base = len(faces.pixels)
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        a, b = rng.integers(0, n_base, 2)
        cut = int(rng.integers(40, 70))
        img = np.concatenate([faces.pixels[a][:cut], faces.pixels[b][cut:]]).astype(np.float32)
        rot = cv2.getRotationMatrix2D((SIDE / 2, SIDE / 2), rng.uniform(-8, 8), rng.uniform(0.92, 1.08))
        rot[:, 2] += rng.uniform(-4, 4, 2)
        img = cv2.warpAffine(img, rot, (SIDE, SIDE), borderMode=cv2.BORDER_REFLECT)
        tint = rng.uniform(0.8, 1.2, 3) * rng.uniform(0.85, 1.15)
        rgb = np.clip(img[..., None] * tint + rng.uniform(-12, 12), 0, 255).astype(np.uint8)
        if rng.random() < 0.5:
            rgb = rgb[:, ::-1]
        split = "test" if i % 10 == 0 else "train"
        d = Path(root) / split / names[faces.labels[b]]  # the lower face (mouth) gives the label
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])
        (d / f"{i:07d}.jpg").write_bytes(buf.tobytes())
    return stop - start


def make_dataset(root: Path, n: int, workers: int) -> float:
    t = time.perf_counter()
    faces = _base_faces()
    for split in ("train", "test"):
        for name in faces.classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
    step = 5000
    jobs = [(str(root), s, min(n, s + step)) for s in range(0, n, step)]
    with Pool(workers) as pool:
        done = sum(pool.map(_write_range, jobs))
    assert done == n
    return time.perf_counter() - t


# ---- one stage, in its own process ---------------------------------------------------


def _stage_train(manifest: Path, steps: int, batch: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from fersynth.data.manifest import Manifest
    from fersynth.models import create_model
    from fersynth.predictor import equalize_pixels, to_model_input
    from fersynth.train import resolve_config
    from fersynth.train.augment import BatchAugment
    from fersynth.train.loop import (
        PixelDataset,
        _collate,
        resolve_precision,
        seed_everything,
        split_train_val,
    )

    cfg = resolve_config("cpu-fast", {"batch_size": batch})
    torch.set_num_threads(os.cpu_count() or 1)
    seed_everything(cfg.seed)
    m = Manifest.load(manifest)
    t0 = time.perf_counter()
    train_m, _, info = split_train_val(m, cfg.val_fraction, cfg.seed)
    setup = time.perf_counter() - t0
    ds = PixelDataset(equalize_pixels(train_m.pixels, cfg.augment.equalize), train_m.labels)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, collate_fn=_collate,
                        generator=torch.Generator().manual_seed(cfg.seed))
    model = create_model(cfg.model, num_classes=m.num_classes, in_chans=cfg.in_chans, img_size=cfg.img_size)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    augment = BatchAugment(cfg.augment)
    aug_gen = torch.Generator().manual_seed(cfg.seed)
    precision, _ = resolve_precision(cfg.amp)
    model.train()
    done = 0
    t1 = time.perf_counter()
    while done < steps:
        for b in loader:
            x = augment(to_model_input(b["x"], cfg.img_size, cfg.in_chans), aug_gen)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = torch.nn.functional.cross_entropy(model(x).float(), b["y"], label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    return {"carve_seconds": setup, "step_seconds": (time.perf_counter() - t1) / steps, "train_rows": info["train"],
            "precision": precision}


def run_stage(stage: str, data: Path, manifest: Path, steps: int, batch: int) -> dict:
    from fersynth.cli.main import main

    t = time.perf_counter()
    extra: dict = {}
    if stage == "ingest":
        rc = main(["data", "ingest", str(data), "--out", str(manifest)])
    elif stage == "inspect":
        rc = main(["data", "inspect", str(manifest), "--json"])
    else:
        rc, extra = 0, _stage_train(manifest, steps, batch)
    seconds = time.perf_counter() - t
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"rc": rc, "seconds": seconds, "peak_rss_mb": own, "workers_peak_rss_mb": kids, **extra}


def _stage_subprocess(stage: str, data: Path, manifest: Path, args) -> dict:
    out = manifest.parent / f"{stage}.json"
    cmd = [sys.executable, __file__, "--stage", stage, "--data", str(data), "--manifest", str(manifest),
           "--steps", str(args.steps), "--batch", str(args.batch), "--stage-out", str(out)]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"stage {stage} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    res = json.loads(out.read_text())
    if res["rc"] != 0:
        raise SystemExit(f"stage {stage} exited {res['rc']}: {proc.stderr[-2000:]}")
    return res


# ---- the machine ---------------------------------------------------------------------


def machine() -> dict:
    try:
        flags = set(subprocess.run(["lscpu"], capture_output=True, text=True).stdout.split())
        model = next((ln.split(":", 1)[1].strip() for ln in
                      subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                      if ln.startswith("Model name")), platform.processor())
    except OSError:
        flags, model = set(), platform.processor()
    return {"cpu": model, "cores": os.cpu_count(), "avx2": "avx2" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "amx": any(f.startswith("amx") for f in flags),
            "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version()}


def summarise(rows: list[dict]) -> dict:
    out = {}
    sizes = sorted({r["images"] for r in rows})
    if len(sizes) < 2:
        return out
    lo, hi = sizes[0], sizes[-1]
    for stage in ("ingest", "inspect", "train"):
        a = next((r for r in rows if r["images"] == lo and r["stage"] == stage), None)
        b = next((r for r in rows if r["images"] == hi and r["stage"] == stage), None)
        if a is None or b is None:
            continue
        if stage == "train":
            t_ratio = b["step_seconds"] / a["step_seconds"]
        else:
            t_ratio = (b["seconds"] / hi) / (a["seconds"] / lo)
        out[stage] = {"from": lo, "to": hi, "peak_rss_ratio": round(b["peak_rss_mb"] / a["peak_rss_mb"], 3),
                      "time_per_unit_ratio": round(t_ratio, 3),
                      "goal_met": b["peak_rss_mb"] / a["peak_rss_mb"] < 2 and t_ratio <= 1.3}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20000, 80000, 320000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/fersynth-scale"), help="Scratch folder (deleted per size).")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Processes writing the images.")
    ap.add_argument("--out", type=Path, default=RESULT)
    ap.add_argument("--stage", choices=["ingest", "inspect", "train"], help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--stage-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:  # a child: run one stage and report
        res = run_stage(args.stage, args.data, args.manifest, args.steps, args.batch)
        args.stage_out.write_text(json.dumps(res))
        return

    from fersynth.atomic import write_json_atomic

    result = {"machine": machine(), "load_start": list(os.getloadavg()),
              "note": "load_start / load_end: 1-, 5- and 15-minute load averages; the benchmark's own processes raise them", "rows": [], "data": []}
    for n in args.sizes:
        work = args.work / f"n{n}"
        shutil.rmtree(work, ignore_errors=True)
        data, manifest = work / "data", work / "manifest"
        try:
            secs = make_dataset(data, n, args.workers)
            du = sum(f.stat().st_size for f in data.rglob("*.jpg"))
            result["data"].append({"images": n, "make_seconds": round(secs, 1), "jpeg_mb": round(du / 2**20, 1)})
            print(f"{n} images written in {secs:.0f} s ({du / 2**20:.0f} MB)", flush=True)
            for stage in ("ingest", "inspect", "train"):
                la = os.getloadavg()[0]
                r = _stage_subprocess(stage, data, manifest, args)
                row = {"images": n, "stage": stage, "seconds": round(r["seconds"], 2),
                       "peak_rss_mb": round(r["peak_rss_mb"], 1), "load_1min_before": la}
                row |= {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                        if k not in ("rc", "seconds", "peak_rss_mb")}
                if stage == "ingest":
                    row["pixels_mb"] = round((manifest / "pixels.npy").stat().st_size / 2**20, 1)
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
                result["load_end"] = list(os.getloadavg())
                result["summary"] = summarise(result["rows"])
                write_json_atomic(result, args.out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
