"""Pseudo-labelling (SyntFER): a teacher checkpoint, or an ensemble averaging its members'
probabilities, labels an unlabelled face folder; confident predictions are kept, optionally
only the top K per class so the result is balanced."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fersynth.data.manifest import Manifest
from fersynth.errors import FersynthError
from fersynth.labels import CLASSES


def load_unlabelled(folder: str | os.PathLike, size: int = 48, mode: str = "gray") -> tuple[Manifest, list]:
    """Every image under `folder` (recursively) as label -1 rows; returns (manifest, unreadable files)."""
    from fersynth.data.decode import decode_files, is_image_name

    root = Path(folder)
    if not root.is_dir():
        raise FersynthError(f"{root}: no folder there", hint="pass a folder of face images")
    files = sorted(str(p) for p in root.rglob("*") if p.is_file() and is_image_name(p.name))
    if not files:
        raise FersynthError(f"{root}: no images in this folder", hint="expected .jpg / .png / ... files")
    images, errors = decode_files(files, size=size, mode=mode)
    ok = [i for i, im in enumerate(images) if im is not None]
    if not ok:
        raise FersynthError(f"{root}: none of its {len(files)} images could be read ({errors[0][1]})")
    pixels = np.stack([images[i] for i in ok])
    rel = [os.path.relpath(files[i], root) for i in ok]
    m = Manifest.from_arrays(pixels, [-1] * len(ok), paths=rel, split="train", subset="unlabelled",
                             dataset=root.name, source="pseudo", root=str(root.resolve()))
    return m, [(files[i], why) for i, why in errors]


def teacher_probs(pixels: np.ndarray, teachers: list[str | os.PathLike], batch_size: int = 256) -> np.ndarray:
    """Mean canonical-class probabilities (N, 8) over the teacher checkpoints."""
    from fersynth.predictor import Predictor

    if not teachers:
        raise FersynthError("no teacher given", hint="pass --teacher CHECKPOINT (repeatable for an ensemble)")
    total = np.zeros((len(pixels), len(CLASSES)), np.float64)
    for t in teachers:
        pr = Predictor.load(t, device="auto")
        p = pr.predict_proba(pixels, batch_size=batch_size)
        for j, name in enumerate(pr.classes):
            total[:, CLASSES.index(name)] += p[:, j]
    return (total / len(teachers)).astype(np.float32)


def pseudolabel(manifest: Manifest, teachers: list[str | os.PathLike], threshold: float = 0.8,
                top_k: int | None = None) -> tuple[Manifest, dict]:
    """Rows whose ensemble confidence reaches `threshold` (best `top_k` per class), labelled."""
    if not 0 <= threshold <= 1:
        raise FersynthError(f"--threshold must lie in [0, 1], got {threshold}")
    probs = teacher_probs(manifest.pixels, teachers)
    label, conf = probs.argmax(1), probs.max(1)
    keep = conf >= threshold
    if top_k is not None:
        if top_k < 1:
            raise FersynthError(f"--top-k must be >= 1, got {top_k}")
        sel = np.zeros_like(keep)
        for c in np.unique(label[keep]):
            idx = np.flatnonzero(keep & (label == c))
            sel[idx[np.argsort(-conf[idx], kind="stable")[:top_k]]] = True
        keep = sel
    idx = np.flatnonzero(keep)
    out = manifest.select(idx)
    out.df["label"] = label[idx].astype(np.int64)
    out.df["source"] = "pseudo"
    out.df["pseudo_confidence"] = conf[idx]
    out.df["soft_label"] = [row.tolist() for row in probs[idx]]
    out.meta.update(pseudolabel={"teachers": [str(t) for t in teachers], "threshold": threshold, "top_k": top_k})
    counts = {CLASSES[c]: int((label[idx] == c).sum()) for c in np.unique(label[idx])}
    report = {"images": len(manifest), "kept": int(len(idx)), "per_class": counts,
              "mean_confidence": float(conf.mean()) if len(conf) else 0.0}
    return out, report
