"""Training presets named after the recipe they reproduce (torchvision-references style)."""

from __future__ import annotations

import difflib

from fersynth.errors import FersynthError

PRESETS: dict[str, dict] = {
    # Sultanov et al. 2025: VGG-19, Adam 1e-4, batch 8, 25 epochs, 48x48, rotation +-15,
    # flip, zoom, random crop, Gaussian blur, histogram equalisation.
    "sultanov2025": {
        "model": "vgg19", "img_size": 48, "in_chans": 1, "epochs": 25, "batch_size": 8,
        "optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0, "scheduler": "none", "loss": "ce",
        "augment": {"hflip": True, "rotation": 15, "scale": (0.9, 1.1), "translate": 0.1,
                    "blur_p": 0.2, "equalize": "equalize"},
    },
    # Zhu 2024: Swin-T, AdamW 5e-4, wd 0.05, cosine + warm-up, label smoothing 0.1, batch 32,
    # flip, rotation 5 deg (their 256->224 crops become a small scale/translate jitter here).
    "zhu2024": {
        "model": "swin_t", "img_size": 224, "in_chans": 3, "epochs": 30, "batch_size": 32,
        "optimizer": "adamw", "lr": 5e-4, "weight_decay": 0.05, "scheduler": "cosine",
        "warmup_epochs": 2, "label_smoothing": 0.1,
        "augment": {"hflip": True, "rotation": 5, "scale": (1.0, 1.14), "translate": 0.06},
    },
    # Roy et al. 2024: ResEmoteNet, SGD 1e-3 momentum 0.9, wd 1e-4, batch 16, 80 epochs,
    # early stopping patience 15, 64x64 grayscale.
    "roy2024": {
        "model": "resemotenet", "img_size": 64, "in_chans": 1, "epochs": 80, "batch_size": 16,
        "optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4,
        "scheduler": "none", "patience": 15,
        "augment": {"hflip": True, "rotation": 10, "scale": (1.0, 1.0), "translate": 0.0},
    },
    # The best FER2013 model we can train in 20 minutes on 2 CPU cores (see README). bf16 autocast
    # (native on AVX512-BF16 / AMX cores, fp32 elsewhere) fits 42 epochs of ~25 s in the budget.
    "cpu-fast": {
        "model": "fernet_s", "img_size": 48, "in_chans": 1, "epochs": 42, "batch_size": 64, "amp": "bf16",
        "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
        "scheduler": "onecycle", "label_smoothing": 0.1, "tta": True, "max_minutes": 19.0,
        "augment": {"hflip": True, "rotation": 10, "scale": (0.9, 1.1), "translate": 0.1, "erase_p": 0.25},
    },
}


def get_preset(name: str) -> dict:
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=2)
        raise FersynthError(f"unknown preset '{name}'", hint=f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name], preset=name)
