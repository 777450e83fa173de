"""Decode image files once, in parallel, into a packed uint8 array, or chunk by chunk.

Truncated and corrupt files are errors (PIL refuses to load them), never silently padded.
`decode_stream` is what ingest uses: chunks of files are decoded by worker processes, at most
a few chunks in flight, and handed back in order, so memory holds a few chunks, not the set.
A photo (an image whose size differs from the dataset's own, e.g. a phone picture among
48x48 crops) is brought into the dataset's domain there: the largest face found by the Haar
cascade of `fersynth.faces.convert` is cropped with a margin and converted to the dataset's
size and colour mode; a photo without a face is dropped and counted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm"}


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


@dataclass
class Decoded:
    pixels: np.ndarray  # (N, H, W) or (N, H, W, 3) uint8, rows for the files that decoded
    ok: np.ndarray  # (len(paths),) bool
    errors: list[tuple[int, str]] = field(default_factory=list)  # (index into paths, reason)


def decode_one(path: str, size: int | None = None, mode: str = "auto") -> np.ndarray:
    """One file -> uint8 (H, W) or (H, W, 3). Raises ValueError with a short reason."""
    try:
        with Image.open(path) as im:
            im.load()
            if mode == "gray" or (mode == "auto" and im.mode in ("L", "I;16", "I", "1", "LA", "P") and _is_gray_palette(im)):
                im = im.convert("L")
            else:
                im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR if max(im.size) < size else Image.Resampling.BOX)
            arr = np.asarray(im, dtype=np.uint8)
    except UnidentifiedImageError:
        raise ValueError("not an image (unrecognised format)") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"corrupt or truncated image ({e})") from None
    if mode == "auto" and arr.ndim == 3 and _channels_equal(arr):
        arr = arr[..., 0].copy()
    return arr


def _is_gray_palette(im: Image.Image) -> bool:
    if im.mode != "P":
        return True
    pal = im.getpalette() or []
    return all(pal[i] == pal[i + 1] == pal[i + 2] for i in range(0, len(pal) - 2, 3))


def _channels_equal(arr: np.ndarray) -> bool:
    return bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())


def _decode_chunk(args):
    paths, size, mode = args
    out, errs = [], []
    for i, p in enumerate(paths):
        try:
            out.append(decode_one(p, size, mode))
        except ValueError as e:
            out.append(None)
            errs.append((i, str(e)))
    return out, errs


@dataclass(frozen=True)
class DecodeSpec:
    """How `decode_stream` decodes: `size` (None: as stored), colour `mode`, and for photos (files
    whose size is not `native`, as (width, height)) the `photos` policy (face | resize | refuse)."""

    size: int | None = None
    mode: str = "auto"
    native: tuple[int, int] | None = None
    photos: str = "face"
    photo_size: int | None = None  # side a face crop is converted to (the dataset's)
    photo_gray: bool = True


PHOTO_MAX_SIDE = 1024  # photos are shrunk to this before face detection (Haar is scale-searching anyway)


def _decode_photo(path: str, spec: DecodeSpec) -> np.ndarray | None:
    from fersynth.faces.convert import DomainSpec, convert_image

    with Image.open(path) as im:
        im.draft("RGB", (PHOTO_MAX_SIDE, PHOTO_MAX_SIDE))  # JPEG: decode at a reduced scale
        im = im.convert("RGB")
        im.thumbnail((PHOTO_MAX_SIDE, PHOTO_MAX_SIDE), Image.Resampling.BOX)
        arr = np.asarray(im, dtype=np.uint8)
    return convert_image(arr, DomainSpec(size=spec.photo_size, gray=spec.photo_gray, detect_face=True))


def decode_spec_file(path: str, spec: DecodeSpec) -> tuple[np.ndarray | None, str]:
    """One file under `spec` -> (image or None, kind): kind is 'image', 'photo' (a face crop) or
    'noface' (a photo without a face, None). Raises ValueError with a short reason."""
    if spec.native is not None and spec.photos != "resize":
        try:
            with Image.open(path) as im:
                size = im.size
        except UnidentifiedImageError:
            raise ValueError("not an image (unrecognised format)") from None
        except (OSError, SyntaxError) as e:
            raise ValueError(f"corrupt or truncated image ({e})") from None
        if size != spec.native:
            if spec.photos == "refuse" or spec.photo_size is None:
                n = spec.native
                raise ValueError(f"is {size[0]}x{size[1]} but the dataset's images are {n[0]}x{n[1]}"
                                 " (pass --photos face to crop faces from photos, or --photos resize --size N)")
            try:
                img = _decode_photo(path, spec)
            except (OSError, SyntaxError) as e:
                raise ValueError(f"corrupt or truncated image ({e})") from None
            return img, "photo" if img is not None else "noface"
    return decode_one(path, spec.size, spec.mode), "image"


def _decode_spec_chunk(args):
    paths, spec = args
    out, kinds, errs = [], [], []
    for i, p in enumerate(paths):
        try:
            img, kind = decode_spec_file(p, spec)
        except ValueError as e:
            img, kind = None, "error"
            errs.append((i, str(e)))
        out.append(img)
        kinds.append(kind)
    return out, kinds, errs


def decode_stream(paths: Sequence[str], spec: DecodeSpec, workers: int | None = None, chunk: int = 512):
    """Yield (start, images, kinds, errors) per chunk of `paths`, in order: images[i] is None where
    kinds[i] is 'error' (reason in errors as (index into paths, why)) or 'noface'. At most
    2 x workers chunks are decoded ahead of the consumer."""
    from collections import deque

    workers = workers or default_workers()  # `paths`: a list, or anything sliced into lists
    starts = range(0, len(paths), chunk)
    if workers == 1 or len(paths) <= chunk:
        for s in starts:
            imgs, kinds, errs = _decode_spec_chunk((paths[s : s + chunk], spec))
            yield s, imgs, kinds, [(s + i, r) for i, r in errs]
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        it = iter(starts)
        for s in it:
            pending.append((s, pool.submit(_decode_spec_chunk, (paths[s : s + chunk], spec))))
            if len(pending) >= 2 * workers:
                break
        while pending:
            s, fut = pending.popleft()
            imgs, kinds, errs = fut.result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_decode_spec_chunk, (paths[nxt : nxt + chunk], spec))))
            yield s, imgs, kinds, [(s + i, r) for i, r in errs]


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def decode_files(
    paths: Sequence[str],
    size: int | None = None,
    mode: str = "auto",
    workers: int | None = None,
    progress=None,
) -> tuple[list[np.ndarray | None], list[tuple[int, str]]]:
    """Decode every file; returns per-file arrays (None where it failed) and (index, reason) errors.

    `progress(n_done)` is called after each chunk.
    """
    workers = workers or default_workers()
    paths = list(paths)
    chunk = max(64, len(paths) // (workers * 8) + 1)
    jobs = [(paths[i : i + chunk], size, mode) for i in range(0, len(paths), chunk)]
    images: list[np.ndarray | None] = []
    errors: list[tuple[int, str]] = []
    if workers == 1 or len(jobs) == 1:
        results = map(_decode_chunk, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(_decode_chunk, jobs)
    try:
        for j, (imgs, errs) in enumerate(results):
            base = j * chunk
            errors.extend((base + i, r) for i, r in errs)
            images.extend(imgs)
            if progress is not None:
                progress(len(images))
    finally:
        if pool is not None:
            pool.shutdown()
    return images, errors


def stack_images(images: Sequence[np.ndarray], paths: Sequence[str]) -> np.ndarray:
    """Stack same-shaped images; mixed sizes or channel counts are reported with two example files."""
    if not images:
        return np.zeros((0, 48, 48), dtype=np.uint8)
    shapes: dict[tuple, int] = {}
    for i, im in enumerate(images):
        shapes.setdefault(im.shape, i)
    if len(shapes) > 1:
        grays = [s for s in shapes if len(s) == 2]
        if grays and len({s[:2] for s in shapes}) == 1:
            # same size, some gray some RGB: promote gray to RGB
            images = [np.repeat(im[..., None], 3, axis=2) if im.ndim == 2 else im for im in images]
            return np.stack(images)
        (s1, i1), (s2, i2) = list(shapes.items())[:2]
        from fersynth.errors import FersynthError

        raise FersynthError(
            f"mixed image sizes: {paths[i1]} is {s1[1]}x{s1[0]} but {paths[i2]} is {s2[1]}x{s2[0]}",
            hint="pass --size N to resize every image to NxN",
        )
    return np.stack(images)
