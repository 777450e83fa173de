"""Synthetic-set metrics: FER accuracy of generated images by a classifier (SynFER's "FER Acc."),
diversity (mean pairwise feature distance), Fréchet distance to the real set in a trained FER
model's feature space, and a sample grid PNG per class."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np

from fersynth.data.manifest import Manifest
from fersynth.labels import CLASSES


def fer_accuracy(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """Overall and per-class accuracy of `probs` (over `classes`) against canonical `labels`."""
    pred = np.array([CLASSES.index(classes[j]) for j in probs.argmax(1)])
    per = {CLASSES[c]: float((pred[labels == c] == c).mean()) for c in np.unique(labels)}
    return {"accuracy": float((pred == labels).mean()), "mean_class_accuracy": float(np.mean(list(per.values()))),
            "per_class": per}


def diversity(feats: np.ndarray, max_n: int = 1000, seed: int = 0) -> float:
    """Mean pairwise Euclidean distance (on at most `max_n` seeded samples)."""
    if len(feats) < 2:
        return 0.0
    if len(feats) > max_n:
        feats = feats[np.random.default_rng(seed).choice(len(feats), max_n, replace=False)]
    sq = (feats**2).sum(1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * feats @ feats.T, 0))
    n = len(feats)
    return float(d.sum() / (n * (n - 1)))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (the FID formula)."""
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small sets give singular covariances; the result stays usable
        covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        eps = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def sample_grids(m: Manifest, out_dir: str | os.PathLike, per_class: int = 16, cols: int = 8, scale: int = 2,
                 seed: int = 0) -> list[Path]:
    """One PNG per class (`grid_<class>.png`) of up to `per_class` seeded samples."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for c in np.unique(m.labels):
        idx = np.flatnonzero(m.labels == c)
        idx = np.sort(rng.choice(idx, min(per_class, len(idx)), replace=False))
        imgs = m.pixels[idx]
        imgs = imgs if imgs.ndim == 4 else np.repeat(imgs[..., None], 3, -1)
        n, h, w = len(imgs), imgs.shape[1], imgs.shape[2]
        cc = min(cols, n)
        rows = -(-n // cc)
        grid = np.full((rows * (h + 2), cc * (w + 2), 3), 255, np.uint8)
        for k, img in enumerate(imgs):
            r, q = divmod(k, cc)
            grid[r * (h + 2) + 1 : r * (h + 2) + 1 + h, q * (w + 2) + 1 : q * (w + 2) + 1 + w] = img
        grid = cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        name = CLASSES[c] if c >= 0 else "unlabelled"
        p = out / f"grid_{name}.png"
        cv2.imwrite(str(p), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        paths.append(p)
    return paths


def class_grid(m: Manifest, path: str | os.PathLike, per_class: int = 10, scale: int = 2, seed: int = 0,
               classes: list[int] | None = None) -> Path:
    """One PNG with a row per class of up to `per_class` seeded samples (blank where a class has fewer)."""
    rng = np.random.default_rng(seed)
    labs = np.unique(m.labels) if classes is None else np.asarray(classes)
    h, w = m.pixels.shape[1], m.pixels.shape[2]
    grid = np.full((len(labs) * (h + 2), per_class * (w + 2), 3), 255, np.uint8)
    for r, c in enumerate(labs):
        idx = np.flatnonzero(m.labels == c)
        idx = np.sort(rng.choice(idx, min(per_class, len(idx)), replace=False))
        for q, img in enumerate(m.pixels[idx]):
            img = img if img.ndim == 3 else np.repeat(img[..., None], 3, -1)
            grid[r * (h + 2) + 1 : r * (h + 2) + 1 + h, q * (w + 2) + 1 : q * (w + 2) + 1 + w] = img
    grid = cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(p), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {p}")
    return p


def synthetic_set_metrics(synthetic: Manifest, real: Manifest, classifier: str | os.PathLike,
                          out_dir: str | os.PathLike | None = None) -> dict:
    """FER accuracy by `classifier` (a fersynth checkpoint), diversity and Fréchet distance in its feature space.

    Both go through the classifier's `Predictor`, so its recorded equalisation and TTA apply
    (earlier versions judged raw pixels without them)."""
    from fersynth.predictor import Predictor

    pr = Predictor.load(classifier, device="auto")
    probs = pr.predict_proba(synthetic.pixels)
    res = {"classifier": str(classifier), "images": len(synthetic), "real_images": len(real),
           "preprocessing": pr.pre.to_dict()}
    res["fer_accuracy"] = fer_accuracy(probs, synthetic.labels, pr.classes)
    fs, fr = pr.features(synthetic.pixels), pr.features(real.pixels)
    res["diversity"] = diversity(fs)
    res["diversity_real"] = diversity(fr)
    res["diversity_per_class"] = {CLASSES[c]: diversity(fs[synthetic.labels == c]) for c in np.unique(synthetic.labels)}
    res["frechet_distance"] = frechet_distance(fs, fr)
    if out_dir is not None:
        res["grids"] = [str(p) for p in sample_grids(synthetic, out_dir)]
    return res
