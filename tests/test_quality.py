"""Quality metrics against per-image OpenCV / scikit-image / numpy references, and enhancers."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from fersynth.errors import FersynthError
from fersynth.quality import (
    BLANK_STD,
    DETAIL_CUTOFF,
    ENHANCERS,
    FLAG_NAMES,
    enhance,
    enhance_low_quality,
    quality_scores,
    super_resolve,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fer2013"


def _faces(n: int, size: int = 48, seed: int = 0) -> np.ndarray:
    """Smooth random blobs plus edges and a little noise: face-like enough for the metrics."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    out = []
    for _ in range(n):
        img = np.full((size, size), rng.uniform(60, 180))
        for _ in range(6):
            cy, cx, r = rng.uniform(0.2, 0.8, 2).tolist() + [rng.uniform(0.05, 0.25)]
            img += rng.uniform(-70, 70) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img[int(size * 0.6) : int(size * 0.65), size // 3 : 2 * size // 3] -= 60  # a "mouth"
        img += rng.normal(0, 6, img.shape)
        out.append(np.clip(img, 0, 255))
    return np.rint(np.stack(out)).astype(np.uint8)


def _blur(pixels: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(p, (0, 0), sigma) for p in pixels])


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return _faces(12)


def test_columns_and_ranges(faces):
    df = quality_scores(faces)
    assert list(df.columns) == [
        "q_sharpness",
        "q_detail",
        "q_contrast",
        "q_texture",
        "q_entropy",
        "q_score",
        "flags",
    ]
    assert len(df) == len(faces)
    assert df["q_score"].between(0, 1).all()
    assert df["q_detail"].between(0, 1).all()
    assert df["q_texture"].between(0, 1).all()
    assert df["flags"].map(lambda f: f == "" or set(f.split(",")) <= set(FLAG_NAMES)).all()


def test_blur_lowers_sharpness_detail_and_score(faces):
    sharp, blurred = quality_scores(faces), quality_scores(_blur(faces, 1.5))
    for col in ("q_sharpness", "q_detail", "q_score"):
        assert (sharp[col] > blurred[col]).all(), col
    assert (blurred["q_texture"] > sharp["q_texture"]).all()  # smoother -> more homogeneous
    assert blurred["flags"].str.contains("blurry").all()
    assert not sharp["flags"].str.contains("blurry").any()


def test_constant_image_is_blank_with_zero_entropy():
    pixels = np.stack([np.full((32, 40), 128, np.uint8), np.full((32, 40), 7, np.uint8)])
    df = quality_scores(pixels)
    assert np.allclose(df["q_entropy"], 0.0, atol=1e-5)
    assert np.allclose(df[["q_sharpness", "q_detail", "q_contrast"]], 0.0)
    assert np.allclose(df["q_texture"], 1.0)
    assert df["flags"].map(lambda f: "blank" in f.split(",")).all()
    assert (df["q_score"] < 0.05).all()


def test_blank_threshold_is_pixel_std():
    rng = np.random.default_rng(3)
    base = np.full((2, 48, 48), 100, np.float64)
    base[0] += rng.choice([-1, 1], (48, 48)) * (BLANK_STD - 1)  # std just under the threshold
    base[1] += rng.choice([-1, 1], (48, 48)) * (BLANK_STD + 1)
    flags = quality_scores(base.astype(np.uint8))["flags"].str.split(",")
    assert "blank" in flags[0] and "blank" not in flags[1]


def test_uniform_noise_has_about_8_bits():
    noise = np.random.default_rng(1).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    df = quality_scores(noise)
    assert np.allclose(df["q_entropy"], 8.0, atol=0.1)
    assert (df["flags"] == "").all()


def _reference(img: np.ndarray) -> list[float]:
    from skimage.feature import graycomatrix, graycoprops

    lap = cv2.Laplacian(img, cv2.CV_64F, ksize=1)[1:-1, 1:-1].var()
    power = np.abs(np.fft.fft2(img.astype(np.float64))) ** 2
    power[0, 0] = 0
    fy = np.fft.fftfreq(img.shape[0])[:, None]
    fx = np.fft.fftfreq(img.shape[1])[None, :]
    detail = power[np.hypot(fy, fx) > DETAIL_CUTOFF].sum() / power.sum()
    glcm = graycomatrix(img // 16, [1], [0, np.pi / 2], levels=16, symmetric=True, normed=True)
    homogeneity = graycoprops(glcm, "homogeneity").mean()
    counts = np.bincount(img.ravel(), minlength=256)
    p = counts[counts > 0] / img.size
    return [lap, detail, img.std() / 255, homogeneity, -(p * np.log2(p)).sum()]


@pytest.mark.parametrize("shape", [(48, 48), (37, 52)])
def test_metrics_match_per_image_references(shape):
    rng = np.random.default_rng(7)
    pixels = np.concatenate(
        [
            _faces(3, 64)[:, : shape[0], : shape[1]],
            rng.integers(0, 256, (2, *shape), dtype=np.uint8),
            _blur(rng.integers(0, 256, (2, *shape), dtype=np.uint8), 2.0),
        ]
    )
    got = quality_scores(pixels).iloc[:, :5].to_numpy()
    ref = np.array([_reference(img) for img in pixels])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_batch_size_does_not_change_results(faces):
    mixed = np.concatenate([faces, _blur(faces, 1.0), np.zeros((1, 48, 48), np.uint8)])
    full = quality_scores(mixed)
    for bs in (1, 5, 4096):
        got = quality_scores(mixed, batch_size=bs)
        pd.testing.assert_frame_equal(got, full, check_exact=False, rtol=1e-5, atol=1e-6)


def test_rgb_is_scored_on_luma(faces):
    rgb = np.stack([faces, np.roll(faces, 3, axis=2), 255 - faces], axis=-1)
    from fersynth.data.manifest import to_gray

    pd.testing.assert_frame_equal(quality_scores(rgb), quality_scores(to_gray(rgb)))


def test_large_rgb_images_work():
    big = np.repeat(_faces(3, 100)[..., None], 3, axis=-1)
    df = quality_scores(big, batch_size=2)
    assert len(df) == 3 and df["q_score"].between(0, 1).all()


def test_bad_input_is_a_fersynth_error():
    with pytest.raises(FersynthError, match="uint8"):
        quality_scores(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(FersynthError, match="shape"):
        quality_scores(np.zeros((8, 8), np.uint8))
    assert len(quality_scores(np.zeros((0, 8, 8), np.uint8))) == 0


# ---- enhancement ----------------------------------------------------------------------


def _rms(pixels: np.ndarray) -> np.ndarray:
    return pixels.reshape(len(pixels), -1).std(1)


@pytest.fixture(scope="module")
def dull(faces) -> np.ndarray:
    """Low-contrast faces (grey levels squeezed into 100..140)."""
    return (100 + faces.astype(np.float64)[:4] * 40 / 255).round().astype(np.uint8)


@pytest.mark.parametrize("rgb", [False, True])
@pytest.mark.parametrize("method", ["equalize_hist", "clahe", "unsharp_mask", "denoise"])
def test_enhancers_keep_shape_and_dtype(dull, method, rgb):
    pixels = np.stack([dull, dull, dull], -1) if rgb else dull
    out = enhance(pixels, method)
    assert out.shape == pixels.shape and out.dtype == np.uint8
    assert not np.array_equal(out, pixels)


def test_contrast_enhancers_raise_rms_contrast(dull):
    for method in ("equalize_hist", "clahe"):
        assert (_rms(enhance(dull, method)) > 1.5 * _rms(dull)).all(), method


def test_rgb_equalisation_keeps_gray_pixels_gray(dull):
    out = enhance(np.stack([dull] * 3, -1), "equalize_hist")
    assert np.abs(out.astype(int) - out[..., :1]).max() <= 1


def test_unsharp_mask_raises_sharpness(faces):
    blurred = _blur(faces[:4], 1.0)
    before = quality_scores(blurred)["q_sharpness"]
    after = quality_scores(enhance(blurred, "unsharp_mask", amount=1.5))["q_sharpness"]
    assert (after > 2 * before).all()


def test_denoise_lowers_noise():
    clean = np.full((2, 40, 40), 120, np.uint8)
    noisy = np.clip(120 + np.random.default_rng(2).normal(0, 10, clean.shape), 0, 255)
    noisy = noisy.astype(np.uint8)
    out = enhance(noisy, "denoise", strength=15)
    assert (_rms(out) < 0.5 * _rms(noisy)).all()


def test_unknown_method_and_option_suggest_names(dull):
    with pytest.raises(FersynthError) as err:
        enhance(dull, "clahee")
    assert err.value.hint and "clahe" in err.value.hint
    with pytest.raises(FersynthError, match="no option"):
        enhance(dull, "clahe", strength=3)
    assert set(ENHANCERS) == {"equalize_hist", "clahe", "unsharp_mask", "denoise", "super_resolve"}


def test_enhance_low_quality_touches_only_low_scores(faces):
    pixels = np.concatenate([faces[:3], _blur(faces[3:6], 2.0)])
    scores = quality_scores(pixels)
    threshold = float(scores["q_score"].iloc[:3].min())
    out, mask = enhance_low_quality(pixels, scores, threshold, "unsharp_mask")
    assert mask.tolist() == [False] * 3 + [True] * 3
    assert np.array_equal(out[:3], pixels[:3])
    assert not np.array_equal(out[3:], pixels[3:])
    with pytest.raises(FersynthError, match="score rows"):
        enhance_low_quality(pixels[:2], scores, threshold, "clahe")


# ---- super-resolution -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_esrgan(tmp_path_factory) -> Path:
    pytest.importorskip("spandrel")
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    model = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2)
    path = tmp_path_factory.mktemp("sr") / "tiny_esrgan_x2.safetensors"
    save_file(model.state_dict(), str(path))
    return path


@pytest.mark.parametrize("rgb", [False, True])
def test_super_resolve_scales_images(tiny_esrgan, rgb):
    pixels = _faces(3, 12)
    if rgb:
        pixels = np.stack([pixels, pixels // 2, 255 - pixels], -1)
    out = super_resolve(pixels, tiny_esrgan, batch_size=2)
    assert out.shape == (3, 24, 24) + pixels.shape[3:] and out.dtype == np.uint8
    back = super_resolve(pixels, tiny_esrgan, out_size=(12, 12))
    assert back.shape == pixels.shape


def test_super_resolve_through_enhance_low_quality(tiny_esrgan):
    pixels = _faces(4, 16)
    scores = pd.DataFrame({"q_score": [0.1, 0.9, 0.1, 0.9]})
    out, mask = enhance_low_quality(pixels, scores, 0.5, "super_resolve", weights_path=tiny_esrgan)
    assert out.shape == pixels.shape and mask.tolist() == [True, False, True, False]
    assert np.array_equal(out[~mask], pixels[~mask])


def test_super_resolve_needs_weights(tmp_path):
    pixels = _faces(1, 12)
    with pytest.raises(FersynthError) as err:
        super_resolve(pixels, None)
    assert "weights" in err.value.message and "--sr-weights" in err.value.hint
    with pytest.raises(FersynthError, match="not found"):
        super_resolve(pixels, tmp_path / "missing.pth")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model")
    pytest.importorskip("spandrel")
    with pytest.raises(FersynthError, match="junk"):
        super_resolve(pixels, junk)


def test_super_resolve_without_spandrel(tmp_path, monkeypatch):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "spandrel", None)
    with pytest.raises(FersynthError) as err:
        super_resolve(_faces(1, 12), weights)
    assert "fersynth[sr]" in err.value.hint


# ---- real data ------------------------------------------------------------------------


@pytest.mark.shared
@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/fer2013")
def test_fer2013_blank_flag_finds_the_14_near_constant_images():
    from PIL import Image

    files = sorted(SHARED.glob("*/*/*.jpg"))
    pixels = np.stack([np.asarray(Image.open(f).convert("L")) for f in files])
    df = quality_scores(pixels)
    blank = df["flags"].str.split(",").map(lambda f: "blank" in f).to_numpy()
    assert blank.sum() == 14
    assert np.array_equal(blank, pixels.reshape(len(pixels), -1).std(1) < BLANK_STD)
