"""Shared fixtures: tiny datasets in every supported format, written in code."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_DATA = Path(os.environ.get("FERSYNTH_SHARED", SHARED)) / "data"
SHARED_MODELS = Path(os.environ.get("FERSYNTH_SHARED", SHARED)) / "models"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "shared" in item.keywords and not SHARED_DATA.is_dir():
            item.add_marker(pytest.mark.skip(reason="../shared/data is absent"))


def face(seed: int, size: int = 48, rgb: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (size, size, 3) if rgb else (size, size), dtype=np.uint8)
    return img


def write_img(path: Path, arr: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


@pytest.fixture
def fer_folder(tmp_path) -> Path:
    """FER2013 image-folder layout: 2 classes x (3 Training, 1 PublicTest, 1 PrivateTest)."""
    root = tmp_path / "fer2013"
    k = 0
    for cls in ("happy", "sad"):
        for i in range(3):
            write_img(root / "train" / cls / f"Training_{k}{i}.jpg", face(k * 10 + i))
        write_img(root / "test" / cls / f"PublicTest_{k}.jpg", face(100 + k))
        write_img(root / "test" / cls / f"PrivateTest_{k}.jpg", face(200 + k))
        k += 1
    return root


def fer_csv_text(rows) -> str:
    lines = ["emotion,pixels,Usage"]
    for emo, pix, usage in rows:
        lines.append(f"{emo},{pix},{usage}")
    return "\n".join(lines) + "\n"


def pix_str(seed: int, n: int = 2304) -> str:
    return " ".join(map(str, np.random.default_rng(seed).integers(0, 256, n)))


@pytest.fixture
def fer_csv(tmp_path) -> Path:
    p = tmp_path / "fer2013.csv"
    p.write_text(fer_csv_text([(3, pix_str(1), "Training"), (0, pix_str(2), "Training"), (6, pix_str(3), "PublicTest"),
                               (1, pix_str(4), "PrivateTest")]))
    return p
