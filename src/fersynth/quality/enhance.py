"""Image enhancement for low-quality images: histogram equalisation, CLAHE, unsharp masking,
non-local-means denoising and model super-resolution (SwinIR / Real-ESRGAN via spandrel).

Every enhancer takes uint8 (N, H, W) grayscale or (N, H, W, 3) RGB pixels and returns the same
kind; all but `super_resolve` keep the shape. Contrast enhancers work on the luma (YCrCb Y) of
RGB images, so colours keep their hue.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from fersynth.data.manifest import to_gray
from fersynth.data.pixels import batches
from fersynth.errors import FersynthError

SR_HINT = "pass --sr-weights PATH (a SwinIR or Real-ESRGAN .pth / .safetensors file)"


def _check(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise FersynthError(f"enhancement needs uint8 pixels, got {pixels.dtype}")
    if not (pixels.ndim == 3 or (pixels.ndim == 4 and pixels.shape[-1] == 3)):
        raise FersynthError(f"expected (N, H, W) or (N, H, W, 3) pixels, got shape {pixels.shape}")
    return pixels


def _per_image(pixels: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    out = np.empty_like(pixels)
    for i, img in enumerate(pixels):
        out[i] = fn(img)
    return out


def _on_luma(pixels: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply a single-channel uint8 operation to gray images, or to the Y channel of RGB ones."""
    pixels = _check(pixels)
    if pixels.ndim == 3:
        return _per_image(pixels, fn)

    def rgb(img):
        ycc = cv2.cvtColor(img, cv2.COLOR_RGB2YCrCb)
        ycc[..., 0] = fn(np.ascontiguousarray(ycc[..., 0]))
        return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)

    return _per_image(pixels, rgb)


def equalize_hist(pixels: np.ndarray) -> np.ndarray:
    """Global histogram equalisation (cv2.equalizeHist) of each image's luma."""
    return _on_luma(pixels, cv2.equalizeHist)


def clahe(pixels: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation on a tile_grid x tile_grid grid."""
    if clip_limit <= 0 or tile_grid < 1:
        raise FersynthError(
            f"clahe needs clip_limit > 0 and tile_grid >= 1, got {clip_limit} and {tile_grid}"
        )
    op = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(int(tile_grid), int(tile_grid)))
    return _on_luma(pixels, op.apply)


def unsharp_mask(pixels: np.ndarray, amount: float = 1.0, sigma: float = 1.0) -> np.ndarray:
    """img + amount * (img - gaussian_blur(img, sigma)), rounded and clipped to uint8."""
    pixels = _check(pixels)
    if sigma <= 0:
        raise FersynthError(f"unsharp_mask needs sigma > 0, got {sigma}")

    def one(img):
        blurred = cv2.GaussianBlur(img, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT)
        sharp = cv2.addWeighted(img, 1.0 + amount, blurred, -float(amount), 0.0, dtype=cv2.CV_32F)
        return np.clip(np.rint(sharp), 0, 255).astype(np.uint8)

    return _per_image(pixels, one)


def denoise(pixels: np.ndarray, strength: float = 5) -> np.ndarray:
    """Non-local-means denoising (cv2.fastNlMeansDenoising / ...Colored); strength is h."""
    pixels = _check(pixels)
    if strength <= 0:
        raise FersynthError(f"denoise needs strength > 0, got {strength}")
    h = float(strength)
    if pixels.ndim == 3:
        return _per_image(pixels, lambda img: cv2.fastNlMeansDenoising(img, None, h, 7, 21))

    def rgb(img):  # OpenCV's colour variant expects BGR
        bgr = cv2.fastNlMeansDenoisingColored(img[..., ::-1].copy(), None, h, h, 7, 21)
        return bgr[..., ::-1]

    return _per_image(pixels, rgb)


def _import_spandrel():
    try:
        import spandrel
    except ImportError as e:
        raise FersynthError(
            "super-resolution needs the spandrel package", hint="pip install 'fersynth[sr]'"
        ) from e
    return spandrel


@lru_cache(maxsize=2)
def _load_sr_model(path: str, mtime_ns: int, device: str):
    spandrel = _import_spandrel()
    try:
        # spandrel reads .pth with a restricted unpickler and .safetensors natively
        model = spandrel.ModelLoader(device=device).load_from_file(path)
    except spandrel.UnsupportedModelError as e:
        raise FersynthError(
            f"{path}: not an architecture spandrel knows", hint="use a SwinIR or Real-ESRGAN model"
        ) from e
    except Exception as e:  # corrupt or truncated files fail deep inside torch / safetensors
        raise FersynthError(
            f"{path}: cannot load super-resolution weights ({e})", hint=SR_HINT
        ) from e
    if not isinstance(model, spandrel.ImageModelDescriptor):
        raise FersynthError(
            f"{path}: {model.architecture.name} is not an image-to-image model", hint=SR_HINT
        )
    return model.eval()


def super_resolve(
    pixels: np.ndarray,
    weights_path: str | os.PathLike | None,
    device: str = "cpu",
    out_size: int | tuple[int, int] | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """Upscale with a SwinIR / Real-ESRGAN (any spandrel) model: (N, s*H, s*W[, 3]) uint8.

    Gray images go through the model as three equal channels and come back as luma. With
    `out_size` ((height, width) or one int for both) the result is resized to that size
    (area interpolation when shrinking, bicubic when growing).
    """
    pixels = _check(pixels)
    if weights_path is None:
        raise FersynthError(
            "super-resolution needs a local weights file (SwinIR / Real-ESRGAN checkpoint)",
            hint=SR_HINT,
        )
    path = Path(weights_path)
    if not path.is_file():
        raise FersynthError(f"{path}: super-resolution weights file not found", hint=SR_HINT)
    if batch_size < 1:
        raise FersynthError(f"batch_size must be positive, got {batch_size}")
    _import_spandrel()
    import torch

    model = _load_sr_model(str(path.resolve()), path.stat().st_mtime_ns, str(device))
    gray = pixels.ndim == 3
    n, h, w = pixels.shape[:3]
    if out_size is None:
        size = (h * model.scale, w * model.scale)
    else:
        size = (out_size, out_size) if isinstance(out_size, int) else tuple(map(int, out_size))
    out = np.empty((n, *size) + (() if gray else (3,)), np.uint8)
    with torch.inference_mode():
        for s, block in batches(pixels, batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(block))
            x = batch.unsqueeze(1) if gray else batch.permute(0, 3, 1, 2)
            x = x.to(device=model.device, dtype=torch.float32) / 255.0
            if model.input_channels == 3 and x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            elif model.input_channels == 1 and x.shape[1] == 3:
                x = (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
            y = model(x).clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1)
            y = y.cpu().numpy()
            if gray:
                y = to_gray(y) if y.shape[-1] == 3 else y[..., 0]
            elif y.shape[-1] == 1:
                y = np.repeat(y, 3, axis=-1)
            out[s : s + len(y)] = _resize(y, size)  # per batch: 4x outputs add up fast
    return out


def _resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    th, tw = size
    h, w = pixels.shape[1:3]
    if (th, tw) == (h, w):
        return pixels
    interp = cv2.INTER_AREA if th * tw < h * w else cv2.INTER_CUBIC
    out = np.empty((len(pixels), th, tw) + pixels.shape[3:], np.uint8)
    for i, img in enumerate(pixels):
        out[i] = cv2.resize(img, (tw, th), interpolation=interp)
    return out


ENHANCERS: dict[str, Callable[..., np.ndarray]] = {
    "equalize_hist": equalize_hist,
    "clahe": clahe,
    "unsharp_mask": unsharp_mask,
    "denoise": denoise,
    "super_resolve": super_resolve,
}


def enhance(pixels: np.ndarray, method: str, **kw) -> np.ndarray:
    """Run the enhancer named `method` (a key of ENHANCERS) with its keyword options."""
    fn = ENHANCERS.get(method)
    if fn is None:
        close = difflib.get_close_matches(str(method), ENHANCERS, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}?" if close else None
        known = ", ".join(ENHANCERS)
        raise FersynthError(f"unknown enhancement method '{method}' (known: {known})", hint=hint)
    params = inspect.signature(fn).parameters
    unknown = sorted(set(kw) - set(list(params)[1:]))
    if unknown:
        options = ", ".join(list(params)[1:])
        raise FersynthError(
            f"{method} has no option {', '.join(unknown)}", hint=f"its options are: {options}"
        )
    return fn(_check(pixels), **kw)


def enhance_low_quality(
    pixels: np.ndarray, scores_df: pd.DataFrame, threshold: float, method: str, **kw
) -> tuple[np.ndarray, np.ndarray]:
    """Enhance the images whose q_score is below `threshold`; returns (new pixels, mask).

    Rows of `scores_df` (from `quality_scores`) line up with images by position. The result
    keeps the input's shape: super-resolved images are resized back unless `out_size` is given.
    """
    pixels = _check(pixels)
    if "q_score" not in scores_df.columns:
        raise FersynthError(
            "scores have no q_score column", hint="compute them with quality_scores"
        )
    if len(scores_df) != len(pixels):
        raise FersynthError(f"{len(scores_df)} score rows for {len(pixels)} images")
    mask = scores_df["q_score"].to_numpy(dtype=np.float64) < threshold
    out = pixels.copy()
    if mask.any():
        if method == "super_resolve":
            kw.setdefault("out_size", pixels.shape[1:3])
        enhanced = enhance(pixels[mask], method, **kw)
        if enhanced.shape[1:] != pixels.shape[1:]:
            raise FersynthError(
                f"{method} returned images of shape {enhanced.shape[1:]}, not {pixels.shape[1:]}",
                hint="give out_size equal to the input image size",
            )
        out[mask] = enhanced
    return out, mask
