"""`fersynth demo`: the main job end to end on procedural demo faces, offline, in minutes.

It writes an imbalanced demo dataset (a FER2013-like class skew, few "disgust" faces, a
balanced test split), then runs a small study on it: the baseline, an oversampling control
and the `own` diffusion generator with `append` and `balance`, two seeds each.
"""

from __future__ import annotations

import os
from pathlib import Path

from fersynth.experiment.config import ExperimentConfig, config_from_dict, dump_config

# Train counts per class, shaped like FER2013's (happy largest, disgust tiny).
DEMO_TRAIN = {"angry": 140, "disgust": 20, "fear": 140, "happy": 260, "sad": 170, "surprise": 110, "neutral": 180}
DEMO_TEST = 50


def demo_config(data: str | os.PathLike, steps: int = 700, seeds: tuple[int, ...] = (0, 1)) -> dict:
    """The demo study as a config dict (it is also written as config.yaml into the run)."""
    return {
        "name": "demo",
        "description": "fersynth demo on procedural faces: does the own diffusion model help the rare classes?",
        "budget_minutes": 10,
        "data": {"path": str(data), "val_fraction": 0.15, "quality": True},
        "train": {"preset": None, "set": {
            "model": "mini_xception", "img_size": 48, "epochs": 12, "batch_size": 64, "optimizer": "adamw",
            "lr": 3e-3, "weight_decay": 1e-4, "scheduler": "cosine", "label_smoothing": 0.1,
            "augment": {"hflip": True, "rotation": 8, "translate": 0.06}}},
        "generators": {"own": {
            "kind": "own",
            "train": {"size": 16, "channels": [16, 32], "attention": False, "epochs": 10_000,
                      "max_steps": steps, "batch_size": 64, "lr": 2e-3, "warmup_steps": 50},
            # append takes 100 per class; balance to rho 1.5 needs ~130 more disgust faces
            "per_class": {"angry": 100, "disgust": 170, "fear": 100, "happy": 100, "sad": 100, "surprise": 100,
                          "neutral": 100},
            "steps": 25, "cfg_scale": 4.0, "batch_size": 180}},
        # The baseline rarely predicts the rare class, so a strict vote would drop the very images the
        # study needs; keep what it gives at least 0.2 probability and relabel confident disagreements.
        "verify": {"experts": ["baseline"], "policy": {"mode": "mean", "threshold": 0.2, "relabel_threshold": 0.8}},
        "arms": [
            {"name": "baseline", "strategy": "real"},
            {"name": "oversample", "strategy": "oversample", "rho": 1.5},
            {"name": "own-append100", "strategy": "append", "generator": "own", "n": 100},
            {"name": "own-balance", "strategy": "balance", "generator": "own", "rho": 1.5},
        ],
        "seeds": list(seeds),
        "n_boot": 500,
    }


def prepare_demo(out: str | os.PathLike, steps: int = 700, seeds: tuple[int, ...] = (0, 1),
                 sets: list[str] | None = None) -> tuple[ExperimentConfig, Path]:
    """Write the demo faces (once) under `out/data` and return the validated demo config."""
    from fersynth.data.demo import write_demo_folder

    out = Path(out).resolve()
    data = out / "data"
    if not (data / "train").is_dir():
        write_demo_folder(data, DEMO_TRAIN, seed=0, test_per_class=DEMO_TEST)
    cfg = config_from_dict(demo_config(data, steps, seeds), base=out, sets=sets)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.yaml").write_text(dump_config(cfg))
    return cfg, out / "run"
