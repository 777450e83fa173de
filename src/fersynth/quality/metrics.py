"""Per-image quality scores (Zhu 2024 quality check), vectorised over batches of packed pixels.

`quality_scores` returns one row per image:

- ``q_sharpness``: variance of the 4-neighbour Laplacian (``cv2.Laplacian(img, cv2.CV_64F,
  ksize=1)``) over the interior pixels; the one-pixel border, where OpenCV would reflect the
  image, is left out.
- ``q_detail``: share of the spectral energy, DC removed, at radial frequencies above
  ``DETAIL_CUTOFF`` cycles per pixel. Only the few coefficients below the cutoff are computed
  (two small matrix products); the rest follows from Parseval.
- ``q_contrast``: RMS contrast, the standard deviation of the intensities divided by 255.
- ``q_texture``: GLCM homogeneity, sum P(i, j) / (1 + (i - j)^2), at distance 1, averaged over
  0 and 90 degrees, on intensities quantised to ``GLCM_LEVELS`` levels (``img // 16``); equal
  to ``skimage.feature.graycoprops(graycomatrix(img // 16, [1], [0, pi/2], 16), "homogeneity")
  .mean()``. High means smooth or flat, low means fine texture or noise.
- ``q_entropy``: Shannon entropy of the 256-bin intensity histogram, in bits (to ~1e-5).
- ``q_score``: mean of five per-metric scores in [0, 1], each squashed by a fixed reference
  scale (see `SCORE_REFS`), so an image's score does not depend on the rest of the batch.
- ``flags``: comma-separated subset of blank, blurry, low_contrast, low_entropy.

RGB images are scored on their luma (`to_gray`). Sharpness, detail and the flag thresholds
work at pixel scale: an image upscaled from a smaller one counts as blurry, whatever its size.
"""

from __future__ import annotations

import contextlib

import cv2
import numpy as np
import pandas as pd

from fersynth.data.manifest import to_gray
from fersynth.data.pixels import batches, is_lazy
from fersynth.errors import FersynthError

DETAIL_CUTOFF = 0.125  # cycles per pixel (a quarter of Nyquist)
GLCM_LEVELS = 16

# Flag thresholds, chosen by looking at the low tail of FER2013 (35,887 48x48 faces):
# - BLANK_STD is the dataset README's "near-constant" (pixel std < 5): 14 images.
# - BLURRY_SHARPNESS: the 15 non-blank images below it are visibly smeared or placeholders;
#   a Gaussian blur (sigma 1.0 / 1.5) of random FER2013 faces lands below it 23% / 96% of
#   the time (median sharpness of the originals: ~2000).
# - LOW_CONTRAST (std < 15 grey levels): 8 non-blank images, all very dark or washed out.
# - LOW_ENTROPY: the 43 non-blank images below it are almost all placeholder graphics ("image
#   not available" text, warning icons) or posterised cartoons, not photos of faces.
BLANK_STD = 5.0  # grey levels
BLURRY_SHARPNESS = 100.0  # Laplacian variance
LOW_CONTRAST = 0.06  # RMS contrast (std / 255)
LOW_ENTROPY = 4.5  # bits

# q_score = mean over the five metrics of m / (m + ref), with m = 1 - homogeneity for texture;
# a part is 0.5 when its metric equals its reference, and the references are FER2013 medians
# (rounded), so a typical FER2013 image scores about 0.5 and a blurred copy about 0.35.
SCORE_REFS = {
    "q_sharpness": 2000.0,
    "q_detail": 0.18,
    "q_contrast": 0.21,
    "q_texture": 0.31,
    "q_entropy": 7.3,
}

FLAG_NAMES = ("blank", "blurry", "low_contrast", "low_entropy")
COLUMNS = ("q_sharpness", "q_detail", "q_contrast", "q_texture", "q_entropy", "q_score", "flags")

_CHUNK_PIXELS = 1 << 18  # images per inner chunk ~ 256K pixels: work buffers stay in cache
_HOMOGENEITY = (1.0 / (1.0 + np.arange(256, dtype=np.float64) ** 2)).astype(np.float32)
_HOMOGENEITY[255] = 0.0
_LEVELS = np.arange(256, dtype=np.float64)


def quality_scores(pixels: np.ndarray, batch_size: int = 4096) -> pd.DataFrame:
    """Quality metrics, combined score and flags for uint8 (N, H, W) or (N, H, W, 3) pixels.

    At most `batch_size` images are converted and scored at once (fewer for large images, so
    the work buffers stay near 256K pixels); results do not depend on it beyond float32
    rounding (~1e-7).
    """
    if not is_lazy(pixels):  # a memory map or lazy row selection is read block by block below
        pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise FersynthError(
            f"quality scores need uint8 pixels, got {pixels.dtype}",
            hint="pass the packed pixel array of a manifest",
        )
    if not (pixels.ndim == 3 or (pixels.ndim == 4 and pixels.shape[-1] in (1, 3))):
        raise FersynthError(f"expected (N, H, W) or (N, H, W, 3) pixels, got shape {pixels.shape}")
    if batch_size < 1:
        raise FersynthError(f"batch_size must be positive, got {batch_size}")
    n, h, w = pixels.shape[:3]
    if n and (h < 3 or w < 3):
        raise FersynthError(f"images must be at least 3x3 pixels, got {h}x{w}")
    out = np.zeros((n, 5), dtype=np.float64)
    if n:
        scorer = _Scorer(h, w, min(batch_size, max(1, _CHUNK_PIXELS // (h * w)), n))
        with _single_threaded_blas():
            for s, block in batches(pixels, scorer.chunk):
                part = np.ascontiguousarray(to_gray(block))
                out[s : s + len(part)] = scorer(part)
    df = pd.DataFrame(out, columns=list(COLUMNS[:5]))
    df["q_score"] = combined_score(df)
    df["flags"] = quality_flags(df)
    return df


def _single_threaded_blas():
    """The matrix products here are many and small: BLAS threads only add spin-waiting."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def combined_score(df: pd.DataFrame) -> np.ndarray:
    """Mean of the squashed per-metric scores, in [0, 1]."""
    parts = []
    for col, ref in SCORE_REFS.items():
        m = df[col].to_numpy(dtype=np.float64)
        if col == "q_texture":
            m = 1.0 - m
        m = np.maximum(m, 0.0)
        parts.append(m / (m + ref))
    return np.mean(parts, axis=0)


def quality_flags(df: pd.DataFrame) -> list[str]:
    """Comma-separated flag names per row ('' when none)."""
    blank = df["q_contrast"].to_numpy() * 255.0 < BLANK_STD
    masks = {
        "blank": blank,
        "blurry": df["q_sharpness"].to_numpy() < BLURRY_SHARPNESS,
        "low_contrast": df["q_contrast"].to_numpy() < LOW_CONTRAST,
        "low_entropy": df["q_entropy"].to_numpy() < LOW_ENTROPY,
    }
    code = np.zeros(len(df), dtype=np.int64)
    for bit, name in enumerate(FLAG_NAMES):
        code |= masks[name].astype(np.int64) << bit
    table = [",".join(f for b, f in enumerate(FLAG_NAMES) if c >> b & 1) for c in range(16)]
    return [table[c] for c in code]


class _Scorer:
    """Work buffers and Fourier bases for one image size; call on contiguous uint8 (B, H, W)."""

    def __init__(self, h: int, w: int, chunk: int):
        self.h, self.w, self.chunk = h, w, chunk
        rows = chunk * h
        # (image index mod 256) * 256 per pixel: index + value is a joint uint16 histogram bin
        self.offset = np.repeat((np.arange(chunk) % 256 * 256).astype(np.uint16), h * w)
        self.offset = self.offset.reshape(rows, w)
        self.joint = np.empty((rows, w), np.uint16)
        self.f32 = np.empty((rows, w), np.float32)
        self.lap = np.empty((rows, w), np.float32)
        self.quant = np.empty((rows, w), np.uint8)
        self.diff_h = np.empty((rows, w - 1), np.uint8)
        self.diff_v = np.empty((rows, w), np.uint8)
        self.homog_h = np.empty((rows, w - 1), np.float32)
        self.homog_v = np.empty((rows, w), np.float32)
        self._fourier_bases()

    def _fourier_bases(self):
        h, w = self.h, self.w
        ky_max, kx_max = int(DETAIL_CUTOFF * h), int(DETAIL_CUTOFF * w)
        kx = np.arange(kx_max + 1)
        ky = np.arange(-ky_max, ky_max + 1)
        ang_x = 2 * np.pi * np.outer(np.arange(w), kx) / w
        ang_y = 2 * np.pi * np.outer(ky, np.arange(h)) / h
        self.basis_x = np.concatenate([np.cos(ang_x), np.sin(ang_x)], 1).astype(np.float32)
        self.basis_y = np.concatenate([np.cos(ang_y), np.sin(ang_y)], 0).astype(np.float32)
        radius2 = (ky[:, None] / h) ** 2 + (kx[None, :] / w) ** 2
        # a column kx > 0 stands for its conjugate twin (-ky, -kx) too; DC is left out
        weight = np.where(kx[None, :] > 0, 2.0, 1.0) * (radius2 <= DETAIL_CUTOFF**2)
        weight[ky == 0, 0] = 0.0
        self.low_weight = weight.astype(np.float32).ravel()
        self.nkx, self.nky = len(kx), len(ky)
        self.rowdft = np.empty((self.chunk * h, 2 * len(kx)), np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        b, h, w = x.shape
        rows, npx = b * h, h * w
        tall = x.reshape(rows, w)

        hist = self._histograms(tall, b)
        hist64 = hist.astype(np.float64)
        mean = hist64 @ _LEVELS / npx
        var = np.maximum(hist64 @ _LEVELS**2 / npx - mean**2, 0.0)
        log_hist = cv2.log(cv2.max(hist, 1.0))  # cv2.log: SIMD, ~1e-7 relative error
        entropy = np.log2(npx) - np.einsum("ij,ij->i", hist, log_hist) / (npx * np.log(2.0))
        entropy = np.maximum(entropy, 0.0)

        f32 = self.f32[:rows]
        np.subtract(tall, np.float32(128.0), out=f32)  # centred: smaller float32 rounding below
        sharpness = self._laplacian_var(f32, b)
        detail = self._detail(f32, b, npx**2 * var)
        texture = self._homogeneity(tall, b)
        return np.stack([sharpness, detail, np.sqrt(var) / 255.0, texture, entropy], 1)

    def _histograms(self, tall: np.ndarray, b: int) -> np.ndarray:
        """(b, 256) intensity counts, 256 images per cv2.calcHist call."""
        rows = b * self.h
        joint = self.joint[:rows]
        np.add(self.offset[:rows], tall, out=joint)
        out = np.empty((b, 256), np.float32)
        for s in range(0, b, 256):
            e = min(b, s + 256)
            bins = (e - s) * 256
            hist = cv2.calcHist([joint[s * self.h : e * self.h]], [0], None, [bins], [0, bins])
            out[s:e] = hist.reshape(e - s, 256)
        return out

    def _laplacian_var(self, f32: np.ndarray, b: int) -> np.ndarray:
        h, w = self.h, self.w
        lap = self.lap[: b * h]
        cv2.Laplacian(f32, cv2.CV_32F, dst=lap, ksize=1)
        lap3 = lap.reshape(b, h, w)
        lap3[:, 0] = 0  # image borders (and the rows that straddle two images) are left out
        lap3[:, -1] = 0
        lap3[:, :, 0] = 0
        lap3[:, :, -1] = 0
        flat = lap.reshape(b, h * w)
        n_in = (h - 2) * (w - 2)
        lmean = _row_sums(flat) / n_in
        return np.einsum("ij,ij->i", flat, flat).astype(np.float64) / n_in - lmean**2

    def _detail(self, f32: np.ndarray, b: int, ac_energy: np.ndarray) -> np.ndarray:
        rowdft = self.rowdft[: b * self.h]
        np.matmul(f32, self.basis_x, out=rowdft)
        z = np.matmul(self.basis_y, rowdft.reshape(b, self.h, -1))
        ny, nx = self.nky, self.nkx
        re = z[:, :ny, :nx] - z[:, ny:, nx:]
        im = z[:, ny:, :nx] + z[:, :ny, nx:]
        re *= re
        im *= im
        re += im
        low = (re.reshape(b, -1) @ self.low_weight).astype(np.float64)
        share = 1.0 - low / np.where(ac_energy > 0, ac_energy, 1.0)
        return np.where(ac_energy > 0, np.clip(share, 0.0, 1.0), 0.0)

    def _homogeneity(self, tall: np.ndarray, b: int) -> np.ndarray:
        h, w = self.h, self.w
        rows = b * h
        quant = self.quant[:rows]
        np.right_shift(tall, 8 - int(np.log2(GLCM_LEVELS)), out=quant)
        diff_h, diff_v = self.diff_h[:rows], self.diff_v[:rows]
        cv2.absdiff(quant[:, 1:], quant[:, :-1], dst=diff_h)
        cv2.absdiff(quant[1:], quant[:-1], dst=diff_v[:-1])
        diff_v.reshape(b, h, w)[:, -1] = 255  # no vertical pair: weight 0 in the table
        homog_h, homog_v = self.homog_h[:rows], self.homog_v[:rows]
        cv2.LUT(diff_h, _HOMOGENEITY, dst=homog_h)
        cv2.LUT(diff_v, _HOMOGENEITY, dst=homog_v)
        sum_h = _row_sums(homog_h.reshape(b, -1))
        sum_v = _row_sums(homog_v.reshape(b, -1))
        return 0.5 * (sum_h / (h * (w - 1)) + sum_v / ((h - 1) * w))


def _row_sums(a: np.ndarray) -> np.ndarray:
    return cv2.reduce(a, 1, cv2.REDUCE_SUM, dtype=cv2.CV_64F)[:, 0]
