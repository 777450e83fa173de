"""Read a dataset in any supported format into a Manifest (table + packed pixels)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fersynth.data.decode import decode_files, stack_images
from fersynth.data.formats import IngestOptions, detect_format, get_format
from fersynth.data.manifest import Manifest, is_manifest_dir, pixel_hashes, stable_ids
from fersynth.errors import FersynthError


@dataclass
class IngestReport:
    format: str
    rows: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: dict = field(default_factory=dict)


def ingest(
    path: str | os.PathLike,
    format: str | None = None,
    options: IngestOptions | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> tuple[Manifest, IngestReport]:
    """Detect (or take) the format, list, decode every image once, and build the Manifest."""
    path = Path(path)
    opts = options or IngestOptions()
    if opts.mode not in ("auto", "gray", "rgb"):
        raise FersynthError(f"unknown colour mode '{opts.mode}'", hint="use auto, gray or rgb")
    if not path.exists():
        raise FersynthError(f"{path}: no such file or directory")
    fmt = get_format(format) if format else detect_format(path)
    listing = fmt.list(path, opts)
    skipped = list(listing.skipped)
    rows = listing.rows

    if listing.pixels is not None:
        pixels = listing.pixels
        if opts.size is not None and pixels.shape[1:3] != (opts.size, opts.size):
            pixels = _resize_all(pixels, opts.size)
        if opts.mode == "rgb" and pixels.ndim == 3:
            pixels = np.repeat(pixels[..., None], 3, axis=3)
    else:
        if not rows:
            raise FersynthError(f"{path}: no images found", hint="check the layout against `fersynth data formats`")
        files = [str(listing.root / r["path"]) for r in rows]
        images, errors = _decode_with_progress(files, opts, workers, progress)
        if errors:
            if not opts.skip_bad:
                i, why = errors[0]
                more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
                raise FersynthError(f"{files[i]}: {why}{more}", hint="remove the file or pass --skip-bad")
            bad = {i for i, _ in errors}
            skipped += [(rows[i]["path"], why) for i, why in errors]
            rows = [r for i, r in enumerate(rows) if i not in bad]
            images = [im for i, im in enumerate(images) if i not in bad]
            files = [f for i, f in enumerate(files) if i not in bad]
        if not rows:
            raise FersynthError(f"{path}: every image failed to decode")
        pixels = stack_images(images, files)

    if len(rows) == 0:
        raise FersynthError(f"{path}: no usable rows", hint="every row was skipped; see the skipped list")
    hashes = pixel_hashes(pixels)
    df = pd.DataFrame(rows)
    df.insert(0, "id", stable_ids(hashes))
    df["dataset"] = listing.dataset
    df["source"] = "real"
    df["pixel_hash"] = hashes
    df["label"] = df["label"].astype(np.int64)
    order = ["id", "path", "label", "split", "subset", "dataset", "source"]
    df = df[order + [c for c in df.columns if c not in order]]
    meta = {
        "format": fmt.name,
        "source_path": str(path.resolve()),
        "num_classes": listing.num_classes,
        "notes": listing.notes,
        "skipped": len(skipped),
    }
    manifest = Manifest(df, pixels, str(listing.root.resolve()), meta)
    return manifest, IngestReport(fmt.name, len(df), skipped, listing.notes)


def load_any(path: str | os.PathLike, format: str | None = None, options: IngestOptions | None = None,
             progress: bool = False) -> tuple[Manifest, IngestReport | None]:
    """A manifest directory is loaded; anything else is ingested."""
    if is_manifest_dir(path):
        return Manifest.load(path), None
    return ingest(path, format, options, progress=progress)


def _resize_all(pixels: np.ndarray, size: int) -> np.ndarray:
    import cv2

    interp = cv2.INTER_AREA if pixels.shape[1] > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(p, (size, size), interpolation=interp) for p in pixels])


def _decode_with_progress(files, opts, workers, progress):
    if not progress or len(files) < 2000:
        return decode_files(files, opts.size, opts.mode, workers)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task("decoding", total=len(files))
        return decode_files(files, opts.size, opts.mode, workers, progress=lambda n: bar.update(task, completed=n))
