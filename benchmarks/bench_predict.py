"""Inference speed of the one inference path: `fersynth predict`, ONNX Runtime, video, the app.

    flock /tmp/fersynth-bench.lock python benchmarks/bench_predict.py [--model RUN] [--data ../shared/data/fer2013]

Without --model, trains a small FER2013 checkpoint first (preset cpu-fast, a few epochs; cached in
runs/bench-predict/model). Then, with timings as ratios against a reference measured in the
same run:

1. `fersynth predict MODEL <3,589 PrivateTest crops> --no-detect` (the command itself, in a
   subprocess, and the same pipeline in-process) against a bare PyTorch forward of the same
   model on pre-decoded tensors (same batch size, same mirror TTA); goal ratio >= 0.8;
2. the exported ONNX file through ONNX Runtime against PyTorch: speed ratio and the largest
   probability difference (goal <= 1e-4);
3. frames per second of `predict` on a 640 x 480 video with Haar face detection;
4. the app's per-frame latency through its HTTP API (`fersynth app`, frames as the page sends
   them: 480 x 360 JPEG), p50 and p95 (goal p95 <= 100 ms).

Writes benchmarks/results/predict.json with the CPU flags that matter and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from fersynth.labels import CLASSES
from fersynth.predictor import Predictor
from machine import cpu_flags

ROOT = Path(__file__).resolve().parents[1]


def private_test_files(data: Path) -> list[Path]:
    files = sorted((data / "test").rglob("PrivateTest_*.jpg"))
    if not files:
        raise SystemExit(f"no PrivateTest_*.jpg under {data / 'test'}")
    return files


def ensure_model(data: Path, run: Path, epochs: int) -> Path:
    if (run / "best.safetensors").is_file() and (run / "train_summary.json").is_file():
        return run
    from fersynth.data.ingest import load_any
    from fersynth.train import resolve_config
    from fersynth.train.loop import train

    m, _ = load_any(data, progress=True)
    cfg = resolve_config("cpu-fast", overrides={"epochs": epochs, "max_minutes": None})
    train(m.where(split="train"), cfg, run, resume=True)
    return run


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bare_forward(model: torch.nn.Module, x: torch.Tensor, batch: int, tta: bool) -> np.ndarray:
    """The reference: model forward (and its mirror) on ready float tensors, nothing else."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            b = x[i : i + batch]
            p = model(b).float().softmax(1)
            if tta:
                p = (p + model(b.flip(-1)).float().softmax(1)) / 2
            out.append(p)
    return torch.cat(out).numpy()


def video_640x480(path: Path, faces: np.ndarray, n: int) -> Path:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (640, 480))
    rng = np.random.default_rng(0)
    for i in range(n):
        f = np.full((480, 640), 110, np.uint8)
        x, y = 200 + int(rng.integers(-40, 40)), 120 + int(rng.integers(-30, 30))
        f[y : y + 200, x : x + 200] = cv2.resize(faces[i % len(faces)], (200, 200))
        vw.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    vw.release()
    return path


def app_latency(model: Path, frames: list[bytes], warmup: int = 5) -> dict:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([sys.executable, "-m", "fersynth.cli.main", "app", str(model), "--port", str(port),
                                 "--prefs", str(Path(tmp) / "prefs.sqlite")], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(600):
                try:
                    urllib.request.urlopen(url + "/api/info", timeout=2).read()
                    break
                except OSError:
                    time.sleep(0.2)
            lat, faces = [], 0
            for i, jpg in enumerate(frames):
                req = urllib.request.Request(f"{url}/api/frame?session=bench", data=jpg, method="POST",
                                             headers={"Content-Type": "image/jpeg"})
                t0 = time.perf_counter()
                r = json.loads(urllib.request.urlopen(req, timeout=30).read())
                dt = time.perf_counter() - t0
                if i >= warmup:
                    lat.append(dt * 1000)
                    faces += r["box"] is not None
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {"frames": len(lat), "frames_with_face": faces, "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p95_ms": round(float(np.percentile(lat, 95)), 1), "mean_ms": round(float(np.mean(lat)), 1),
            "goal_p95_ms": 100, "meets_goal": bool(np.percentile(lat, 95) <= 100)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "fer2013")
    ap.add_argument("--model", type=Path, default=None, help="a fersynth run directory (default: train one)")
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "bench-predict" / "model")
    ap.add_argument("--epochs", type=int, default=3, help="cpu-fast epochs when training the model")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--video-frames", type=int, default=150)
    ap.add_argument("--app-frames", type=int, default=105)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict.json")
    a = ap.parse_args()
    load_start = os.getloadavg()
    model_dir = a.model or ensure_model(a.data, a.run, a.epochs)
    files = private_test_files(a.data)
    threads = torch.get_num_threads()
    res: dict = {"machine": {"platform": platform.platform(), **cpu_flags(), "cores": os.cpu_count(), "torch_threads": threads,
                             "torch": torch.__version__},
                 "model": str(model_dir), "images": len(files), "batch_size": a.batch_size,
                 "load_average_start": [round(v, 2) for v in load_start]}
    pred = Predictor.load(model_dir, device="cpu")
    res["preprocessing"] = pred.pre.to_dict()
    summary = Path(model_dir) / "train_summary.json"
    if summary.is_file():
        res["model_training"] = {k: v for k, v in json.loads(summary.read_text()).items()
                                 if k in ("epochs_run", "best_epoch", "best_val_accuracy", "train_seconds", "best")}
    else:  # a checkpoint of an unfinished run: what its JSON says
        meta = json.loads((Path(model_dir) / "best.json").read_text())
        res["model_training"] = {"architecture": meta["architecture"], "precision": meta.get("precision"),
                                 "epoch": meta.get("epoch"), "val_metrics": meta.get("val_metrics")}
    print(f"model {model_dir}: {pred.pre}; {len(files)} PrivateTest crops; {threads} torch threads")

    # 1. predict against a bare forward on pre-decoded tensors
    pixels = np.stack([cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files])
    x = pred.pre.tensor(pixels)
    bare_s, bare_p = timed(lambda: bare_forward(pred.model, x, a.batch_size, pred.pre.tta), repeat=3)
    from fersynth.predict import predict_files

    inproc_s, df = timed(lambda: predict_files(pred, [str(f) for f in files], detect=False,
                                               batch_size=a.batch_size), repeat=3)
    probs = df[[f"p_{c}" for c in pred.classes]].to_numpy()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "fersynth.cli.main", "predict", str(model_dir),
               str(a.data / "test" / "*" / "PrivateTest_*.jpg"),
               "--no-detect", "--batch-size", str(a.batch_size), "--device", "cpu", "--no-progress",
               "-o", str(Path(tmp) / "p.csv")]
        cli_s, _ = timed(lambda: subprocess.run(cmd, check=True, capture_output=True), repeat=1)
        import pandas as pd

        cli_rows = len(pd.read_csv(Path(tmp) / "p.csv"))
    truth = np.array([CLASSES.index(f.parent.name) for f in files])
    res["predict"] = {
        "bare_forward_s": round(bare_s, 3), "bare_images_per_s": round(len(files) / bare_s, 1),
        "predict_in_process_s": round(inproc_s, 3), "predict_in_process_images_per_s": round(len(files) / inproc_s, 1),
        "ratio_in_process": round(bare_s / inproc_s, 3),
        "cli_wall_s": round(cli_s, 3), "cli_rows": cli_rows,
        "note_cli": "`fersynth predict` in a fresh process (glob test/*/PrivateTest_*.jpg), Python and torch "
                    "start-up, model load, decoding and the CSV included",
        "ratio_cli": round(bare_s / cli_s, 3),
        "goal_ratio": 0.8, "max_abs_prob_diff_vs_bare": float(np.abs(probs - bare_p).max()),
        "accuracy": round(float((np.array([CLASSES.index(c) for c in df["label"]]) == truth).mean()), 4),
    }
    print("predict:", res["predict"])

    # 2. ONNX Runtime against PyTorch
    from fersynth.export import export_onnx

    onnx_path = a.run.parent / "model.onnx"
    rep = export_onnx(model_dir, onnx_path)
    ort = Predictor.load(onnx_path, device="cpu")
    torch_s, p_torch = timed(lambda: pred.predict_proba(pixels, a.batch_size), repeat=3)
    ort_s, p_ort = timed(lambda: ort.predict_proba(pixels, a.batch_size), repeat=3)
    res["onnx"] = {"torch_s": round(torch_s, 3), "onnxruntime_s": round(ort_s, 3),
                   "speed_ratio_ort_over_torch": round(torch_s / ort_s, 3),
                   "max_abs_prob_diff": float(np.abs(p_torch - p_ort).max()), "goal_max_abs_diff": 1e-4,
                   "same_labels": float((p_torch.argmax(1) == p_ort.argmax(1)).mean()),
                   "export_parity_demo_faces": rep["max_abs_diff"]}
    print("onnx:", res["onnx"])

    # 3. 640 x 480 video with detection
    with tempfile.TemporaryDirectory() as tmp:
        video = video_640x480(Path(tmp) / "v.avi", pixels[:: max(1, len(pixels) // 50)], a.video_frames)
        vid_s, vdf = timed(lambda: predict_files(pred, [str(video)], detect=True, batch_size=a.batch_size))
    res["video_640x480"] = {"frames": a.video_frames, "seconds": round(vid_s, 3),
                            "frames_per_s": round(a.video_frames / vid_s, 1),
                            "frames_with_face": int((vdf["face"] >= 0).sum())}
    print("video:", res["video_640x480"])

    # 4. the app over HTTP, frames as the page sends them
    jpgs = []
    for i in range(a.app_frames):
        f = np.full((360, 480), 110, np.uint8)
        f[80:230, 165:315] = cv2.resize(pixels[(i * 37) % len(pixels)], (150, 150))
        jpgs.append(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
    res["app_http"] = app_latency(model_dir, jpgs)
    print("app:", res["app_http"])

    res["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    res["note"] = ("timings are best-of-3 ratios within this run where stated; the load averages at start and "
                   "end tell whether other jobs ran beside it")
    from fersynth.atomic import write_json_atomic

    write_json_atomic(res, a.out)
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
