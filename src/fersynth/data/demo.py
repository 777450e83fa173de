"""Procedural demo faces: seeded synthetic grayscale expression images for tests and the demo.

Expression drives the geometry (brows, eyes, mouth, folds); identity, lighting, pose, blur,
occlusion and pixel noise are nuisances whose spread grows with `difficulty`. Each class draws
from its own seeded stream, so asking for more images per class keeps the earlier ones.
"""

from __future__ import annotations

import functools
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from fersynth.atomic import atomic_dir
from fersynth.errors import FersynthError
from fersynth.labels import CLASSES, canonical_name, class_names

OCCLUSIONS = ("none", "glasses", "sunglasses", "hand", "bar")
HAIR_STYLES = ("bald", "short", "long", "bangs")

# Expression targets at full intensity, as offsets from neutral in units of the face's
# half-width (sizes are multipliers). Keys not listed stay at their neutral value.
# fmt: off
_NEUTRAL = {
    "brow_raise": 0.0, "brow_inner": 0.0, "brow_in": 0.0, "brow_arch": 0.0,
    "brow_asym": 0.0, "eye_open": 1.0, "mouth_w": 1.0, "lift": 0.0, "lift_asym": 0.0,
    "widen_asym": 0.0, "open": 0.0, "upper": 0.5, "round": 0.0, "teeth": 0.0,
    "cheek": 0.0, "wrinkle": 0.0, "forehead": 0.0, "glabella": 0.0, "dimple": 0.0,
    "apple": 0.0,
}
_TARGETS: dict[str, dict[str, float]] = {
    "angry": {"brow_raise": -0.07, "brow_inner": -0.16, "brow_in": 0.07, "eye_open": 0.85,
              "mouth_w": 0.8, "lift": -0.04, "glabella": 1.0},
    "disgust": {"brow_raise": -0.05, "brow_inner": -0.07, "brow_in": 0.04, "brow_asym": 0.04,
                "eye_open": 0.65, "lift": -0.03, "lift_asym": 0.07, "open": 0.08, "upper": 1.0,
                "round": 0.2, "teeth": 1.0, "cheek": 0.7, "wrinkle": 1.0},
    "fear": {"brow_raise": 0.12, "brow_inner": 0.10, "brow_in": 0.06, "brow_arch": -0.03,
             "eye_open": 1.5, "mouth_w": 1.3, "lift": -0.08, "open": 0.13, "upper": 0.3,
             "round": 0.1, "teeth": 0.5, "forehead": 0.6},
    "happy": {"brow_raise": 0.02, "eye_open": 0.7, "mouth_w": 1.25, "lift": 0.26,
              "open": 0.13, "upper": 0.05, "round": 0.3, "teeth": 0.8, "cheek": 1.0,
              "apple": 1.0},
    "sad": {"brow_inner": 0.15, "brow_in": 0.03, "brow_arch": -0.03, "eye_open": 0.8,
            "mouth_w": 0.9, "lift": -0.13},
    "surprise": {"brow_raise": 0.22, "brow_arch": 0.06, "eye_open": 1.6, "mouth_w": 0.55,
                 "open": 0.30, "upper": 0.3, "round": 1.0, "forehead": 1.0},
    "neutral": {},
    "contempt": {"brow_asym": 0.03, "eye_open": 0.95, "lift_asym": 0.13, "widen_asym": 0.10,
                 "dimple": 1.0},
}
# fmt: on
_KEYS = tuple(_NEUTRAL)
_T = np.linspace(0.0, 2.0 * math.pi, 48, endpoint=False)
_COS, _SIN = np.cos(_T), np.sin(_T)
_TB = np.linspace(0.0, 1.0, 9)[:, None]
_CUBIC = np.hstack([(1 - _TB) ** 3, 3 * (1 - _TB) ** 2 * _TB, 3 * (1 - _TB) * _TB**2, _TB**3])
_QUAD = np.hstack([(1 - _TB) ** 2, 2 * (1 - _TB) * _TB, _TB**2])[::2]
_SHIFT = 4
_FIX = 1 << _SHIFT
_AA = cv2.LINE_AA


@dataclass
class DemoFaces:
    """Demo images with their (possibly noisy) labels, true labels and generation attributes."""

    pixels: np.ndarray  # uint8 (N, size, size)
    labels: np.ndarray  # int64 (N,), after label noise
    true_labels: np.ndarray  # int64 (N,), the expression that was drawn
    attrs: pd.DataFrame  # one row per image: identity, lighting, pose, blur, occlusion, noisy
    classes: tuple[str, ...] = CLASSES[:7]

    def __len__(self) -> int:
        return len(self.labels)


class _Pen:
    """Draws in normalised face coordinates through the pose transform, anti-aliased."""

    def __init__(self, img: np.ndarray, angle: float, scale: float, tx: float, ty: float):
        self.img = img
        side = img.shape[0]
        rad = math.radians(angle)
        self.unit = scale * side
        self.c = math.cos(rad) * self.unit * _FIX
        self.s = math.sin(rad) * self.unit * _FIX
        self.ox = (0.5 + tx) * side * _FIX
        self.oy = (0.5 + ty) * side * _FIX
        self.angle = angle
        self.m = np.array([[self.c, self.s], [-self.s, self.c]])
        self.o = np.array([self.ox - 0.5 * (self.c - self.s), self.oy - 0.5 * (self.s + self.c)])

    def _pt(self, x: float, y: float) -> tuple[int, int]:
        x -= 0.5
        y -= 0.5
        return (round(self.c * x - self.s * y + self.ox), round(self.s * x + self.c * y + self.oy))

    def _pts(self, xy: np.ndarray) -> np.ndarray:
        out = xy @ self.m
        out += self.o
        return np.rint(out, out=out).astype(np.int32)

    def width(self, w: float) -> int:
        return max(1, round(w * self.unit))

    def ellipse(self, x, y, ax, ay, color, w=-1.0, angle=0.0, start=0, end=360):
        axes = (max(1, round(ax * self.unit * _FIX)), max(1, round(ay * self.unit * _FIX)))
        thick = -1 if w < 0 else self.width(w)
        rot = self.angle + angle
        cv2.ellipse(self.img, self._pt(x, y), axes, rot, start, end, int(color), thick, _AA, _SHIFT)

    def fill(self, xy: np.ndarray, color) -> None:
        cv2.fillPoly(self.img, [self._pts(xy)], int(color), _AA, _SHIFT)

    def line(self, xy: np.ndarray, color, w: float, closed: bool = False) -> None:
        cv2.polylines(self.img, [self._pts(xy)], closed, int(color), self.width(w), _AA, _SHIFT)


def _curve(x0, y0, x1, y1, mid_y, roundness=0.0) -> np.ndarray:
    """Cubic from (x0, y0) to (x1, y1) passing through mid_y halfway; roundness 1 = vertical ends."""
    k = (1.0 - roundness) / 3.0
    cy = (8.0 * mid_y - y0 - y1) / 6.0
    ctrl = np.array([[x0, y0], [x0 + k * (x1 - x0), cy], [x1 - k * (x1 - x0), cy], [x1, y1]])
    return _CUBIC @ ctrl


def _quad3(p0, p1, p2) -> np.ndarray:
    """Quadratic through three points (p1 reached at the middle)."""
    c = (2.0 * p1[0] - 0.5 * (p0[0] + p2[0]), 2.0 * p1[1] - 0.5 * (p0[1] + p2[1]))
    return _QUAD @ np.array([p0, c, p2])


def _shade(v: float, f: float) -> int:
    return int(min(255.0, max(0.0, v * f)))


def _draw_occluder(pen: _Pen, occ, U, N, eyes, eye_y, cx, mouth_y, a, b, skin) -> None:
    if occ in ("glasses", "sunglasses"):
        frame = U(0, 70)
        for ex, ew in eyes:
            if occ == "sunglasses":
                pen.ellipse(ex, eye_y + 0.02 * a, ew * 1.5, ew * 1.1, frame)
            else:
                pen.ellipse(ex, eye_y, ew * 1.55, ew * 1.15, frame, w=0.05 * a)
        (x0, w0), (x1, w1) = eyes
        pen.line(np.array([[x0 + w0 * 1.5, eye_y], [x1 - w1 * 1.5, eye_y]]), frame, 0.05 * a)
    elif occ == "hand":
        hx = cx + U(-0.5, 0.5) * a
        hy = mouth_y + U(-0.3, 0.3) * b
        ang = U(-70, 70) - 90
        tone = _shade(skin, U(0.72, 0.88) if U(0, 1) < 0.5 else U(1.12, 1.3))
        edge = _shade(tone, 0.7)
        ca, sa = math.cos(math.radians(ang)), math.sin(math.radians(ang))
        for j in range(4):
            off = (j - 1.5) * 0.16 * a
            px, py = hx + ca * 0.5 * a - sa * off, hy + sa * 0.5 * a + ca * off
            pen.ellipse(px, py, 0.3 * a, 0.08 * a, tone, angle=ang)
            pen.ellipse(px, py, 0.3 * a, 0.08 * a, edge, w=0.02 * a, angle=ang)
        pen.ellipse(hx, hy, 0.42 * a, 0.34 * a, tone, angle=ang)
        pen.ellipse(hx, hy, 0.42 * a, 0.34 * a, edge, w=0.02 * a, angle=ang, start=90, end=270)
    elif occ == "bar":
        by = U(0.25, 0.9)
        ang = math.radians(N(20.0))
        h = U(0.06, 0.14)
        dx, dy = math.cos(ang), math.sin(ang)
        x0, x1 = U(-0.1, 0.4), U(0.6, 1.1)
        pts = np.array([[x0, by + (x0 - 0.5) * dy / dx], [x1, by + (x1 - 0.5) * dy / dx]])
        pen.fill(np.concatenate([pts - [0, h / 2], pts[::-1] + [0, h / 2]]), U(0, 255))


@functools.cache
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    v = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    return v[None, :], v[:, None]


def _finish(img, size, light_angle, light, exposure, blur, noise, rng) -> np.ndarray:
    """Downsample, light, blur and add sensor noise."""
    out = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    la = math.radians(light_angle)
    gx, gy = _grid(size)
    ramp = (gx * math.cos(la) + gy * math.sin(la)) * light
    out *= exposure * (1.0 + ramp)
    if blur > 0:
        out = cv2.GaussianBlur(out, (0, 0), blur)
    if noise > 0:
        out += rng.standard_normal((size, size), dtype=np.float32) * noise
    np.clip(out, 0, 255, out=out)
    return np.rint(out).astype(np.uint8)


def _render(cls_name: str, rng: np.random.Generator, size: int, ss: int, difficulty: float):
    """Draw one face; returns the uint8 image and its attributes."""
    d = difficulty
    u = iter(rng.random(96).tolist())
    g = iter(rng.standard_normal(40).tolist())

    def U(lo, hi):
        return lo + (hi - lo) * next(u)

    def N(sd):
        return sd * next(g)

    # Identity.
    a = U(0.28, 0.34)
    b = a * U(1.22, 1.40)
    cx, cy = 0.5, 0.54 + N(0.01)
    jaw = U(0.72, 0.95)
    skin = U(70, 215)
    bg = U(10, 245)
    if abs(bg - skin) < 25:
        bg = (bg + 60) % 255
    hair = U(10, 110) if next(u) < 0.8 else U(120, 230)
    hr = next(u)
    hair_style = "bald" if hr < 0.08 else "short" if hr < 0.5 else "long" if hr < 0.8 else "bangs"
    clothes = U(10, 240)
    eye_y = cy - b * U(0.05, 0.14)
    eye_dx = a * U(0.40, 0.50)
    eye_w = a * U(0.17, 0.21)
    eye_h = eye_w * U(0.42, 0.55)
    brow_gap = a * U(0.14, 0.22)
    brow_t = a * U(0.09, 0.15)
    brow_c = _shade(min(skin, hair + 40), U(0.3, 0.55))
    nose_y = cy + b * U(0.20, 0.28)
    nose_w = a * U(0.13, 0.19)
    mouth_y = cy + b * U(0.50, 0.58)
    mouth_w = a * U(0.32, 0.42)
    lip_t = a * U(0.045, 0.075)
    lip_c = _shade(skin, U(0.5, 0.7))

    # Expression: intensity-scaled target plus a personal resting-face jitter.
    intensity = U(1.0 - 0.8 * d, 1.0)
    target = _TARGETS[cls_name]
    jit = 0.01 + 0.03 * d
    e = {}
    for k in _KEYS:
        base = _NEUTRAL[k]
        e[k] = base + intensity * (target.get(k, base) - base)
    for k in ("brow_raise", "brow_inner", "lift"):
        e[k] += N(jit)
    e["eye_open"] *= 1.0 + N(jit * 2)
    e["mouth_w"] *= 1.0 + N(jit * 2)
    variant = next(u)
    if cls_name == "happy" and variant < 0.4:  # closed-mouth smile
        e["open"] = e["teeth"] = 0.0
    elif cls_name == "angry" and variant < 0.3:  # bared teeth
        e["open"], e["teeth"], e["upper"] = 0.07 * intensity, 1.0, 0.5
    side = 1.0 if next(u) < 0.5 else -1.0

    # Nuisances.
    rotation = N(12.0 * d)
    yaw = max(-1.0, min(1.0, N(0.5 * d)))
    scale = 1.0 + N(0.07 * d)
    tx, ty = N(0.04 * d), N(0.04 * d)
    light_angle = U(0.0, 360.0)
    light = U(0.0, 0.9 * d)
    exposure = math.exp(N(0.25 * d))
    blur = U(0.3, 0.4 + 1.2 * d) if next(u) < 0.5 * d else 0.0
    noise = U(0.0, 14.0 * d)
    occ = "none"
    if next(u) < 0.5 * d:
        r = next(u)
        occ = "glasses" if r < 0.35 else "sunglasses" if r < 0.5 else "hand" if r < 0.8 else "bar"

    S = size * ss
    img = np.full((S, S), int(bg), np.uint8)
    pen = _Pen(img, rotation, scale, tx, ty)

    # Shoulders, neck, hair behind the head, ears, face.
    pen.ellipse(0.5, cy + b + 0.28, 0.5, 0.25, clothes)
    neck_y = cy + 0.4 * b
    neck = [
        [cx - 0.5 * a, neck_y],
        [cx + 0.5 * a, neck_y],
        [cx + 0.55 * a, 1.2],
        [cx - 0.55 * a, 1.2],
    ]
    pen.fill(np.array(neck), _shade(skin, 0.8))
    if hair_style == "long":
        pen.ellipse(cx, cy - 0.05 * b, a * U(1.15, 1.35), b * U(1.05, 1.25), hair)
    for sgn in (-1, 1):
        pen.ellipse(cx + sgn * a * 0.97, eye_y + 0.08 * b, 0.13 * a, 0.22 * a, _shade(skin, 0.9))
    narrow = 1.0 - (1.0 - jaw) * np.clip(_SIN, 0.0, None) ** 2
    pen.fill(np.stack([cx + a * _COS * narrow, cy + b * _SIN], axis=1), skin)
    top = cy - b
    hair_y = top
    if hair_style != "bald":
        hair_y = cy - b * (U(0.45, 0.62) if hair_style != "bangs" else U(0.25, 0.38))
        pen.ellipse(cx, hair_y, a * 1.05, hair_y - top + 0.03, hair, start=180, end=360)

    fx = cx + yaw * 0.12 * a
    nx = cx + yaw * 0.25 * a

    # Cheek highlights (happy) under the folds.
    if e["apple"] > 0.05:
        for sgn in (-1, 1):
            pen.ellipse(
                fx + sgn * eye_dx * 1.05,
                eye_y + 0.45 * b - 0.1 * a * e["apple"],
                0.24 * a,
                0.14 * a,
                _shade(skin, 1.0 + 0.12 * e["apple"]),
            )

    # Eyes.
    open_h = eye_h * max(0.25, e["eye_open"])
    sclera = _shade(skin + 45, 1.0)
    iris = _shade(skin, U(0.15, 0.35))
    eyes = []
    for sgn in (-1, 1):
        far = max(0.0, sgn * yaw)
        ew = eye_w * (1.0 - 0.3 * far)
        ex = fx + sgn * eye_dx * (1.0 - 0.15 * far)
        eh = open_h * (1.0 - (0.12 * intensity if sgn == side and cls_name == "disgust" else 0))
        eyes.append((ex, ew))
        pen.ellipse(ex, eye_y, ew, eh, sclera)
        r = min(eh * 0.95, ew * 0.52)
        pen.ellipse(ex + yaw * ew * 0.25, eye_y + 0.1 * eh, r, r, iris)
        pen.ellipse(ex, eye_y, ew, eh, _shade(skin, 0.35), w=0.045 * a, start=190, end=350)
        if e["cheek"] > 0.3:  # raised lower lid
            pen.ellipse(
                ex,
                eye_y + eh * 1.2,
                ew * 0.9,
                eh * 0.5,
                _shade(skin, 0.75),
                w=0.03 * a,
                start=200,
                end=340,
            )

    # Brows.
    brow_y0 = eye_y - eye_h - brow_gap
    brows = []
    for i, sgn in enumerate((-1, 1)):
        ex, ew = eyes[i]
        asym = e["brow_asym"] * (sgn * side)
        base = brow_y0 - e["brow_raise"] * a - asym * a
        inner = (ex - sgn * (ew * 0.9 + e["brow_in"] * a), base - e["brow_inner"] * a)
        mid = (
            ex + sgn * 0.15 * ew,
            base - (0.05 + e["brow_arch"]) * a - 0.35 * e["brow_inner"] * a,
        )
        outer = (ex + sgn * ew * 1.35, base + 0.04 * a + 0.3 * e["brow_inner"] * a)
        brows.append(inner)
        edge = _quad3(inner, mid, outer)
        low = edge[::-1] + [0.0, brow_t]
        low[0, 1] -= 0.6 * brow_t  # taper towards the outer end
        pen.fill(np.concatenate([edge, low]), brow_c)

    # Folds and wrinkles.
    fold_c = _shade(skin, 1.0 - 0.3 * min(1.0, max(e["forehead"], e["glabella"])))
    if e["forehead"] > 0.2:
        span = eye_dx * (1.3 if cls_name == "surprise" else 0.7)
        top_brow = min(p[1] for p in brows)
        for j in range(2):
            y = top_brow - (0.16 + 0.13 * j) * a
            if y < hair_y + 0.05 * a:
                break
            pen.line(_curve(fx - span, y + 0.03 * a, fx + span, y + 0.03 * a, y), fold_c, 0.03 * a)
    if e["glabella"] > 0.2:
        for sgn in (-1, 1):
            x = fx + sgn * 0.07 * a
            y = (brows[0][1] + brows[1][1]) / 2
            pen.line(
                np.array([[x, y - 0.08 * a], [x + sgn * 0.02 * a, y + 0.1 * a]]), fold_c, 0.03 * a
            )

    # Nose.
    flare = 1.0 + 0.25 * e["wrinkle"]
    ny = nose_y - 0.05 * a * e["wrinkle"]
    pen.line(
        np.array([[fx - 0.05 * a, eye_y], [nx - 0.07 * a, ny - 0.1 * a]]),
        _shade(skin, 0.88),
        0.03 * a,
    )
    pen.ellipse(
        nx, ny, nose_w * flare, 0.08 * a, _shade(skin, 0.65), w=0.035 * a, start=10, end=170
    )
    for sgn in (-1, 1):
        pen.ellipse(
            nx + sgn * nose_w * 0.55 * flare, ny + 0.02 * a, 0.06 * a, 0.035 * a, _shade(skin, 0.45)
        )
    if e["wrinkle"] > 0.2:
        wc = _shade(skin, 1.0 - 0.35 * e["wrinkle"])
        for j in range(3):
            y = eye_y + (0.05 + 0.1 * j) * a
            w = 0.10 * a
            pen.line(_curve(nx - w, y, nx + w, y, y - 0.03 * a), wc, 0.03 * a)

    # Mouth corners, folds from nose to corners.
    mw = mouth_w * e["mouth_w"]
    lift = e["lift"] * a
    lx = fx - mw * (1.0 + (e["widen_asym"] if side < 0 else 0.0))
    rx = fx + mw * (1.0 + (e["widen_asym"] if side > 0 else 0.0))
    ly = mouth_y - lift - (e["lift_asym"] * a if side < 0 else 0.0)
    ry = mouth_y - lift - (e["lift_asym"] * a if side > 0 else 0.0)
    mid_y = mouth_y - 0.3 * lift
    if e["cheek"] > 0.2:
        fc = _shade(skin, 1.0 - 0.3 * e["cheek"])
        for sgn, (mx, my) in ((-1, (lx, ly)), (1, (rx, ry))):
            if cls_name == "disgust" and sgn != side:
                continue
            p0 = (nx + sgn * nose_w * 1.3, ny - 0.05 * a)
            p2 = (mx + sgn * 0.08 * a, my + 0.05 * a)
            p1 = ((p0[0] + p2[0]) / 2 + sgn * 0.08 * a, (p0[1] + p2[1]) / 2)
            pen.line(_quad3(p0, p1, p2), fc, 0.04 * a)
    if e["dimple"] > 0.2:
        mx, my = (rx, ry) if side > 0 else (lx, ly)
        pen.line(
            _quad3(
                (mx + side * 0.05 * a, my - 0.08 * a),
                (mx + side * 0.1 * a, my),
                (mx + side * 0.05 * a, my + 0.08 * a),
            ),
            _shade(skin, 0.7),
            0.035 * a,
        )

    # Lips: closed line or an open mouth with teeth.
    opening = e["open"] * a
    roundness = e["round"]
    up_y = mid_y - opening * e["upper"]
    lo_y = mid_y + opening * (1.0 - e["upper"])
    upper = _curve(lx, ly, rx, ry, up_y, roundness)
    lower = _curve(lx, ly, rx, ry, lo_y, roundness)
    if opening > 0.02 * a:
        pen.fill(np.concatenate([upper, lower[::-1]]), _shade(skin, 0.2))
        if e["teeth"] > 0.05:
            band = upper.copy()
            band[:, 1] = np.minimum(upper[:, 1] + opening * 0.55 * e["teeth"], lower[:, 1])
            pen.fill(np.concatenate([upper, band[::-1]]), _shade(skin + 50, 1.0))
        pen.line(upper, lip_c, lip_t)
        pen.line(lower, lip_c, lip_t)
    else:
        pen.line(upper, lip_c, lip_t)
    chin_y = lo_y + 0.14 * a
    pen.line(
        _curve(fx - 0.5 * mw, chin_y, fx + 0.5 * mw, chin_y, chin_y + 0.04 * a),
        _shade(skin, 0.85),
        0.04 * a,
    )

    _draw_occluder(pen, occ, U, N, eyes, eye_y, cx, mouth_y, a, b, skin)

    out = _finish(img, size, light_angle, light, exposure, blur, noise, rng)
    attrs = {
        "expression": cls_name,
        "intensity": intensity,
        "face_w": 2 * a,
        "face_h": 2 * b,
        "jaw": jaw,
        "skin": skin,
        "hair": hair,
        "hair_style": hair_style,
        "background": bg,
        "eye_spacing": 2 * eye_dx,
        "side": int(side),
        "light_angle": light_angle,
        "light_strength": light,
        "exposure": exposure,
        "rotation": rotation,
        "yaw": yaw,
        "scale": scale,
        "shift_x": tx,
        "shift_y": ty,
        "blur": blur,
        "occlusion": occ,
        "noise_sigma": noise,
    }
    return out, attrs


def _counts(per_class: int | Mapping[str, int], names: Sequence[str]) -> list[int]:
    if isinstance(per_class, Mapping):
        counts = dict.fromkeys(names, 0)
        for key, n in per_class.items():
            name = canonical_name(key)
            if name not in counts:
                raise FersynthError(
                    f"unknown demo class '{name}'",
                    hint=f"use one of {', '.join(names)} (contempt needs num_classes=8)",
                )
            counts[name] = int(n)
        out = [counts[n] for n in names]
    else:
        out = [int(per_class)] * len(names)
    if any(n < 0 for n in out):
        raise FersynthError("negative image count for demo faces", hint="use counts >= 0")
    return out


def _generate(
    per_class, seed, stream, size=48, num_classes=7, label_noise=0.0, difficulty=0.5
) -> DemoFaces:
    if not 0.0 <= label_noise < 1.0:
        raise FersynthError(f"label_noise {label_noise} out of range", hint="use 0 <= p < 1")
    if not 0.0 <= difficulty <= 1.0:
        raise FersynthError(f"difficulty {difficulty} out of range", hint="use 0..1")
    if seed < 0:
        raise FersynthError(f"demo seed {seed} is negative", hint="use a seed >= 0")
    if size < 16:
        raise FersynthError(f"demo face size {size} too small", hint="use size >= 16")
    names = class_names(num_classes)
    counts = _counts(per_class, names)
    ss = max(1, math.ceil(96 / size))
    total = sum(counts)
    pixels = np.empty((total, size, size), np.uint8)
    true = np.empty(total, np.int64)
    labels = np.empty(total, np.int64)
    rows = []
    i = 0
    for c, n in enumerate(counts):
        rng = np.random.default_rng([seed, stream, c])
        for k in range(n):
            flip = num_classes > 1 and rng.random() < label_noise
            other = int(rng.integers(num_classes - 1)) if num_classes > 1 else 0
            pixels[i], attrs = _render(names[c], rng, size, ss, difficulty)
            true[i] = c
            labels[i] = (other + (other >= c)) if flip else c
            attrs["index"] = k
            attrs["noisy"] = bool(flip)
            rows.append(attrs)
            i += 1
    attrs = pd.DataFrame(rows)
    return DemoFaces(pixels, labels, true, attrs, tuple(names))


def make_demo_faces(
    per_class: int | Mapping[str, int],
    seed: int = 0,
    size: int = 48,
    num_classes: int = 7,
    label_noise: float = 0.0,
    difficulty: float = 0.5,
) -> DemoFaces:
    """Seeded synthetic faces, `per_class` of each canonical class (or a {class: count} map).

    Images come in class order; `label_noise` is the chance that an image's label is replaced
    by a uniformly drawn other class (`attrs.noisy` marks those), `difficulty` in 0..1 scales
    expression subtlety and the nuisance spread (pose, lighting, blur, occlusion, noise).
    """
    return _generate(per_class, seed, 0, size, num_classes, label_noise, difficulty)


def _split_stream(split: str) -> int:
    return 0 if split == "train" else zlib.crc32(split.encode())


def write_demo_folder(
    out_dir: str | os.PathLike,
    per_class: int | Mapping[str, int],
    seed: int = 0,
    splits: Sequence[str] = ("train", "test"),
    test_per_class: int | Mapping[str, int] | None = None,
    **make_kw,
) -> Path:
    """Write demo faces as `out_dir/<split>/<class>/<split>_<i>.png` and return `out_dir`.

    The train split gets `per_class` images per class, every other split `test_per_class`
    (default per_class // 4, at least 1). Splits are drawn from disjoint random streams; the
    train split equals `make_demo_faces(per_class, seed, **make_kw)`. The folder appears
    complete or not at all.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FersynthError(
            f"{out} already exists and is not empty", hint="choose a new folder or remove it first"
        )
    if test_per_class is None:
        if isinstance(per_class, Mapping):
            test_per_class = {k: max(1, int(v) // 4) if v else 0 for k, v in per_class.items()}
        else:
            test_per_class = max(1, int(per_class) // 4)
    with atomic_dir(out) as tmp:  # `out` is absent or empty (checked above)
        for split in splits:
            n = per_class if split == "train" else test_per_class
            faces = _generate(n, seed, _split_stream(split), **make_kw)
            for name in faces.classes:
                (tmp / split / name).mkdir(parents=True)
            for i, (img, lab) in enumerate(zip(faces.pixels, faces.labels, strict=True)):
                ok, buf = cv2.imencode(".png", img)
                if not ok:
                    raise FersynthError(f"could not encode demo image {i}")
                (tmp / split / faces.classes[lab] / f"{split}_{i}.png").write_bytes(buf.tobytes())
    return out
