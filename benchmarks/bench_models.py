"""CPU cost of every registered FER model: parameters, GFLOPs/image and training throughput.

For each model, at its default size and at 48x48: one SGD step (forward, cross-entropy,
backward, update) on a random batch is timed after warm-up. A dense matmul measured in the same
run, right before each model, is the reference: `vs_matmul` is the model's training GFLOP/s
(3 x forward FLOPs per image) over the matmul's, so figures from a busy machine stay comparable.
`epochs_20min` = 20 minutes of pure training steps over FER2013's 25,838 training images
(28,709 less a 10% validation split); data loading and evaluation come on top.

    python benchmarks/bench_models.py                       # all models
    python benchmarks/bench_models.py --models 'fernet*' mini_xception --steps 5
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn as nn

from fersynth.models import count_params, create_model, get_model_entry, list_models, model_flops

FER2013_TRAIN = 25_838
RESULTS = Path(__file__).parent / "results" / "models_cpu.json"


def matmul_gflops(n: int = 512, seconds: float = 0.3) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, (time.perf_counter() - t) / 4)
    return 2 * n**3 / best / 1e9


def time_training(model: nn.Module, x: torch.Tensor, y: torch.Tensor, warmup: int, steps: int):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return min(times), sorted(times)[len(times) // 2]


def bench_one(name: str, img_size: int, args) -> dict:
    entry = get_model_entry(name)
    in_chans = entry.default_in_chans
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_chans=in_chans, img_size=img_size)
    flops = model_flops(model, img_size, in_chans)
    row = {
        "model": name,
        "img_size": img_size,
        "in_chans": in_chans,
        "params": count_params(model),
        "gflops": flops / 1e9,
        "train_img_s": None,
    }
    step_gflop = 3 * flops * args.batch_size / 1e9
    if step_gflop > args.max_step_gflop:
        row["skipped"] = f"training step {step_gflop:.0f} GFLOP > --max-step-gflop"
        return row
    x = torch.randn(args.batch_size, in_chans, img_size, img_size)
    y = torch.randint(0, 7, (args.batch_size,))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    ref = matmul_gflops()
    best, median = time_training(model, x, y, args.warmup, args.steps)
    img_s = args.batch_size / best
    row.update(
        train_img_s=img_s,
        train_img_s_median=args.batch_size / median,
        matmul_gflops=ref,
        vs_matmul=3 * flops * img_s / 1e9 / ref,
        epochs_20min=1200 * img_s / FER2013_TRAIN,
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["*"], help="names or wildcards")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    ap.add_argument(
        "--max-step-gflop",
        type=float,
        default=500.0,
        help="report params/FLOPs only (no timing) where one training step exceeds this",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    load_start = os.getloadavg()[0]
    names = [n for n in list_models() if any(fnmatch.fnmatch(n, p) for p in args.models)]
    rows = []
    header = (
        f"{'model':14s} {'size':>4s} {'params':>8s} {'GFLOPs':>7s} {'img/s':>7s} "
        f"{'vs_mm':>6s} {'ep/20min':>8s}"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
        f"load average {load_start:.1f} on {os.cpu_count()} CPUs"
    )
    print(header)
    for name in names:
        sizes = sorted({get_model_entry(name).default_img_size, 48})
        for size in sizes:
            r = bench_one(name, size, args)
            rows.append(r)
            timed = r["train_img_s"] is not None
            print(
                f"{name:14s} {size:4d} {r['params'] / 1e6:7.2f}M {r['gflops']:7.3f} "
                + (
                    f"{r['train_img_s']:7.0f} {r['vs_matmul']:6.2f} {r['epochs_20min']:8.1f}"
                    if timed
                    else f"{'-':>7s} {'-':>6s} {'-':>8s}  ({r['skipped']})"
                ),
                flush=True,
            )
    out = {
        "benchmark": "models_cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "processor": platform.processor(),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "channels_last": args.channels_last,
        "optimizer": "SGD momentum 0.9",
        "fer2013_train_images": FER2013_TRAIN,
        "notes": "gflops: forward FLOPs per image (multiply-add = 2); train FLOPs taken as "
        "3x forward; train_img_s from the fastest timed step; vs_matmul: model training "
        "GFLOP/s over a 512x512 fp32 matmul measured just before it",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
