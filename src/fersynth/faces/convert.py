"""Convert generated images to a target dataset's image domain: face crop, grayscale, size.

Face detection uses OpenCV's bundled Haar cascade; an image in which no face is found is
dropped (the caller counts it). Without detection the whole image is centre-cropped to a
square. Output is packed uint8, (N, S, S) grayscale or (N, S, S, 3) RGB.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from fersynth.errors import FersynthError

# A detector maps one uint8 grayscale image to face boxes (x, y, w, h).
Detector = Callable[[np.ndarray], list[tuple[int, int, int, int]]]


@dataclass(frozen=True)
class DomainSpec:
    """Target image domain: square `size`, grayscale or RGB, optional face detection and crop."""

    size: int = 48
    gray: bool = True
    detect_face: bool = False
    margin: float = 0.2  # extra border around a detected face box, as a fraction of its side
    min_face: float = 0.2  # smallest face side searched for, as a fraction of the image side

    def __post_init__(self):
        if self.size < 8:
            raise FersynthError(f"target image size {self.size} is too small", hint="use a size >= 8")
        if not 0 <= self.margin <= 1:
            raise FersynthError(f"face margin {self.margin} out of range", hint="use 0..1")

    def to_dict(self) -> dict:
        return {"size": self.size, "gray": self.gray, "detect_face": self.detect_face,
                "margin": self.margin, "min_face": self.min_face}


@functools.lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    c = cv2.CascadeClassifier(path)
    if c.empty():
        raise FersynthError(f"could not load OpenCV's face cascade {path}", hint="reinstall opencv-python-headless")
    return c


def haar_detector(min_face: float = 0.2) -> Detector:
    def detect(gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        side = max(8, int(min(gray.shape) * min_face))
        boxes = _cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=4, minSize=(side, side))
        return [tuple(int(v) for v in b) for b in boxes] if len(boxes) else []

    return detect


def _gray1(img: np.ndarray) -> np.ndarray:
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def _square_box(box, shape, margin: float) -> tuple[int, int, int, int]:
    x, y, w, h = box
    side = int(round(max(w, h) * (1 + margin)))
    cx, cy = x + w / 2, y + h / 2
    side = min(side, shape[0], shape[1])
    x0 = int(round(min(max(cx - side / 2, 0), shape[1] - side)))
    y0 = int(round(min(max(cy - side / 2, 0), shape[0] - side)))
    return x0, y0, side, side


def face_box(img: np.ndarray, spec: DomainSpec, detector: Detector | None = None
             ) -> tuple[int, int, int, int] | None:
    """The square crop (x, y, side, side) `convert_image` takes from `img`: around the largest
    detected face with `spec.margin`, or the centre square without detection; None if no face."""
    boxes = face_boxes(img, spec, detector, largest_only=True)
    return boxes[0] if boxes else None


def face_boxes(img: np.ndarray, spec: DomainSpec, detector: Detector | None = None,
               largest_only: bool = False) -> list[tuple[int, int, int, int]]:
    """Square crops (x, y, side, side) around every detected face (largest first), or the
    centre square without detection."""
    h, w = img.shape[:2]
    if not spec.detect_face:
        side = min(h, w)
        return [((w - side) // 2, (h - side) // 2, side, side)]
    boxes = sorted((detector or haar_detector(spec.min_face))(_gray1(img)), key=lambda b: -b[2] * b[3])
    return [_square_box(b, (h, w), spec.margin) for b in boxes[: 1 if largest_only else None]]


def convert_image(img: np.ndarray, spec: DomainSpec, detector: Detector | None = None) -> np.ndarray | None:
    """One uint8 (H, W) or (H, W, 3) image -> the target domain, or None when no face is found."""
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 (H,W) or (H,W,3) image, got {img.dtype} {img.shape}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    box = face_box(img, spec, detector)
    return None if box is None else crop_to_domain(img, box, spec)


def crop_to_domain(img: np.ndarray, box: tuple[int, int, int, int], spec: DomainSpec) -> np.ndarray:
    """The square `box` (x, y, side, side) of `img`, in `spec`'s colour mode and size."""
    x0, y0, side, _ = box
    crop = img[y0 : y0 + side, x0 : x0 + side]
    if spec.gray:
        crop = _gray1(crop)
    elif crop.ndim == 2:
        crop = np.repeat(crop[..., None], 3, axis=2)
    interp = cv2.INTER_AREA if side > spec.size else cv2.INTER_LINEAR
    out = cv2.resize(np.ascontiguousarray(crop), (spec.size, spec.size), interpolation=interp)
    return np.ascontiguousarray(out, dtype=np.uint8)


def convert_batch(images: np.ndarray, spec: DomainSpec, detector: Detector | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Convert a batch; returns (kept images, boolean keep mask over the input)."""
    if spec.detect_face and detector is None:
        detector = haar_detector(spec.min_face)
    out, keep = [], np.zeros(len(images), dtype=bool)
    for i, img in enumerate(images):
        c = convert_image(np.asarray(img), spec, detector)
        if c is not None:
            keep[i] = True
            out.append(c)
    shape = (spec.size, spec.size) if spec.gray else (spec.size, spec.size, 3)
    return (np.stack(out) if out else np.zeros((0, *shape), np.uint8)), keep
