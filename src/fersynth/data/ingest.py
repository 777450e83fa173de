"""Read a dataset in any supported format into a Manifest (table + packed pixels), streaming.

Images are decoded in chunks by worker processes (`decode.decode_stream`) and appended to
`pixels.npy` as they come (`pixels.PixelWriter`), inside the temporary folder that
`fersynth.atomic.atomic_dir` renames into place: memory holds a few chunks whatever the
dataset's size, and a killed ingest leaves no half-written manifest. `ingest(..., out=DIR)`
returns the written manifest memory-mapped; without `out` the pixels are streamed through a
temporary file and returned in memory (for small sets and tests).

What is stored: every image once, at the dataset's own size (the most common size among up
to 256 files sampled across the listing) or `--size N`, in its colour mode (`auto`: gray
unless the sampled images have colour; a colour image met later turns the set RGB). Files of
another size are photos: by default (`photos='face'`) the largest face is cropped and
converted to the dataset's size and colour; photos without a face are dropped and counted.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fersynth.atomic import atomic_dir
from fersynth.data.decode import DecodeSpec, decode_one, decode_stream
from fersynth.data.formats import IngestOptions, Listing, detect_format, get_format
from fersynth.data.manifest import PIXELS_FILE, Manifest, is_manifest_dir, pixel_hash, stable_ids
from fersynth.data.pixels import PixelWriter, batches
from fersynth.errors import FersynthError

PHOTO_POLICIES = ("face", "resize", "refuse")
CHUNK = 512  # images decoded per worker task
PROBE = 256  # files whose header is read to find the dataset's own image size


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
    out: str | os.PathLike | None = None,
) -> tuple[Manifest, IngestReport]:
    """Detect (or take) the format, list, decode every image once and write the Manifest to `out`
    (returned memory-mapped), or return it in memory when `out` is None."""
    path = Path(path)
    opts = options or IngestOptions()
    if opts.mode not in ("auto", "gray", "rgb"):
        raise FersynthError(f"unknown colour mode '{opts.mode}'", hint="use auto, gray or rgb")
    if opts.photos not in PHOTO_POLICIES:
        raise FersynthError(f"unknown photo policy '{opts.photos}'", hint=f"use one of {', '.join(PHOTO_POLICIES)}")
    if not path.exists():
        raise FersynthError(f"{path}: no such file or directory")
    fmt = get_format(format) if format else detect_format(path)
    listing = fmt.list(path, opts)
    if out is None:
        with tempfile.TemporaryDirectory(prefix="fersynth-ingest-") as tmp:
            m, report = _ingest_into(Path(tmp), path, fmt.name, listing, opts, workers, progress)
            pixels = np.load(Path(tmp) / PIXELS_FILE, allow_pickle=False)
        return Manifest(m.df, pixels, m.root, m.meta), report
    with atomic_dir(out) as tmp:
        m, report = _ingest_into(tmp, path, fmt.name, listing, opts, workers, progress)
        m.write_table(tmp)
    # The table in hand is the one written; only the pixels are mapped again, at their final place.
    return Manifest(m.df, np.load(Path(out) / PIXELS_FILE, mmap_mode="r", allow_pickle=False), m.root, m.meta), report


def load_any(path: str | os.PathLike, format: str | None = None, options: IngestOptions | None = None,
             progress: bool = False) -> tuple[Manifest, IngestReport | None]:
    """A manifest directory is loaded (pixels memory-mapped); anything else is ingested."""
    if is_manifest_dir(path):
        return Manifest.load(path), None
    return ingest(path, format, options, progress=progress)


def _ingest_into(tmp: Path, path: Path, fmt_name: str, listing: Listing, opts: IngestOptions, workers, progress
                 ) -> tuple[Manifest, IngestReport]:
    """Write `tmp/pixels.npy` for the listing; returns the manifest (pixels mapped) and the report."""
    sink_path = tmp / PIXELS_FILE
    skipped = list(listing.skipped)
    notes = dict(listing.notes)
    if listing.pixels is not None:
        keep, hashes = _write_array(sink_path, listing.pixels, opts)
    else:
        if not listing.rows:
            raise FersynthError(f"{path}: no images found", hint="check the layout against `fersynth data formats`")
        keep, hashes, photo_counts = _write_files(sink_path, path, listing, opts, workers, progress, skipped)
        if any(photo_counts.values()):
            notes["photos"] = photo_counts
    if not keep:
        raise FersynthError(f"{path}: no usable rows", hint="every row was skipped; see the skipped list")
    df = pd.DataFrame([listing.rows[i] for i in keep])
    listing.rows = []  # the table holds them now; at 300k rows the dicts are ~100 MB
    df.insert(0, "id", stable_ids(hashes))
    df["dataset"] = listing.dataset
    df["source"] = "real"
    df["pixel_hash"] = hashes
    df["label"] = df["label"].astype(np.int64)
    order = ["id", "path", "label", "split", "subset", "dataset", "source"]
    df = df[order + [c for c in df.columns if c not in order]]
    meta = {
        "format": fmt_name,
        "source_path": str(path.resolve()),
        "num_classes": listing.num_classes,
        "notes": notes,
        "skipped": len(skipped),
    }
    pixels = np.load(sink_path, mmap_mode="r", allow_pickle=False)
    return Manifest(df, pixels, str(listing.root.resolve()), meta), IngestReport(fmt_name, len(df), skipped, notes)


def _write_array(sink_path: Path, pixels: np.ndarray, opts: IngestOptions) -> tuple[list[int], list[str]]:
    """Formats that carry their pixels (CSV): resize / colour per block, straight to the file."""
    side = opts.size or pixels.shape[1]
    shape = (side, side, 3) if opts.mode == "rgb" else (side, side)
    writer = PixelWriter(sink_path, len(pixels), shape)
    hashes: list[str] = []
    try:
        for _, block in batches(pixels, 2048):
            if block.shape[1:3] != (side, side):
                block = _resize_all(block, side)
            if opts.mode == "rgb":
                block = np.repeat(block[..., None], 3, axis=3)
            writer.append(block)
            hashes += [pixel_hash(p) for p in block]
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return list(range(len(pixels))), hashes


def _plan(files: list[str], opts: IngestOptions) -> tuple[DecodeSpec, tuple[int, ...]]:
    """The dataset's own size (most common among sampled headers), the stored row shape and colour."""
    idx = sorted(set(np.linspace(0, len(files) - 1, min(len(files), PROBE)).round().astype(int).tolist()))
    size_of: dict[int, tuple[int, int]] = {}
    for i in idx:
        try:
            with Image.open(files[i]) as im:
                size_of[i] = im.size
        except (OSError, SyntaxError):
            continue  # reported when the file is decoded
    sizes = Counter(size_of.values())
    native = sizes.most_common(1)[0][0] if sizes else None
    if opts.size is not None:
        hw = (opts.size, opts.size)
    elif native is not None:
        hw = (native[1], native[0])
    else:
        hw = None  # nothing readable in the sample: the first decoded image decides
    if opts.mode == "auto":
        rgb = False
        for i in [i for i in size_of if size_of[i] == native][:32]:
            try:
                rgb = rgb or decode_one(files[i], opts.size, "auto").ndim == 3
            except ValueError:
                continue
    else:
        rgb = opts.mode == "rgb"
    square = hw is not None and hw[0] == hw[1]
    spec = DecodeSpec(size=opts.size, mode=opts.mode, native=native if opts.photos != "resize" else None,
                      photos=opts.photos, photo_size=hw[0] if square else None, photo_gray=not rgb)
    return spec, (None if hw is None else (*hw, 3) if rgb else hw)


class _Sink:
    """Appends decoded images in the stored shape; turns the file RGB if a colour image arrives
    in a set begun gray (`auto` mode), rehashing the rows already written."""

    def __init__(self, path: Path, capacity: int, shape: tuple[int, ...] | None):
        self.path, self.capacity, self.shape = path, capacity, shape
        self.writer = None if shape is None else PixelWriter(path, capacity, shape)
        self.hashes: list[str] = []
        self.first_file: str | None = None

    def add(self, imgs: list[np.ndarray], files: list[str]) -> None:
        if not imgs:
            return
        if self.writer is None:
            self.shape = imgs[0].shape
            self.writer = PixelWriter(self.path, self.capacity, self.shape)
        if self.first_file is None:
            self.first_file = files[0]
        if len(self.shape) == 2 and any(im.ndim == 3 for im in imgs):
            self._promote()
        for im, f in zip(imgs, files, strict=True):
            if im.shape[:2] != self.shape[:2]:
                s1, s2 = self.shape, im.shape
                raise FersynthError(
                    f"mixed image sizes: {self.first_file} is {s1[1]}x{s1[0]} but {f} is {s2[1]}x{s2[0]}",
                    hint="pass --size N to resize every image to NxN",
                )
        block = np.stack([np.repeat(im[..., None], 3, axis=2) if im.ndim < len(self.shape) else im for im in imgs])
        self.writer.append(block)
        self.hashes += [pixel_hash(p) for p in block]

    def _promote(self) -> None:
        old = self.path.with_name(self.path.name + ".gray")
        self.writer.close()
        os.replace(self.path, old)
        gray = np.load(old, mmap_mode="r")
        self.shape = (*self.shape, 3)
        self.writer = PixelWriter(self.path, self.capacity, self.shape)
        self.hashes = []
        for _, block in batches(gray, 2048):
            block = np.repeat(block[..., None], 3, axis=3)
            self.writer.append(block)
            self.hashes += [pixel_hash(p) for p in block]
        del gray
        old.unlink()

    def close(self) -> None:
        if self.writer is None:
            PixelWriter(self.path, 0, (48, 48)).close()
        else:
            self.writer.close()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def _write_files(sink_path: Path, path: Path, listing: Listing, opts: IngestOptions, workers, progress, skipped
                 ) -> tuple[list[int], list[str], dict]:
    rows = listing.rows
    files = _Files(listing)
    spec, shape = _plan(files, opts)
    sink = _Sink(sink_path, len(files), shape)
    keep: list[int] = []
    counts = {"converted": 0, "no_face": 0}
    bar = _progress_bar(len(files)) if progress and len(files) >= 2000 else None
    try:
        for start, imgs, kinds, errors in decode_stream(files, spec, workers, CHUNK):
            if errors and not opts.skip_bad:
                i, why = errors[0]
                more = f" (and {len(errors) - 1} more in the same chunk)" if len(errors) > 1 else ""
                hint = "remove the file or pass --skip-bad"
                raise FersynthError(f"{files[i]}: {why}{more}", hint=hint)
            skipped += [(rows[i]["path"], why) for i, why in errors]
            good, good_files = [], []
            for k, (img, kind) in enumerate(zip(imgs, kinds, strict=True)):
                if kind == "noface":
                    counts["no_face"] += 1
                    skipped.append((rows[start + k]["path"], "photo without a detectable face (dropped)"))
                elif img is not None:
                    counts["converted"] += kind == "photo"
                    keep.append(start + k)
                    good.append(img)
                    good_files.append(files[start + k])
            sink.add(good, good_files)
            if bar is not None:
                bar[0].update(bar[1], completed=start + len(imgs))
        if not keep:
            raise FersynthError(f"{path}: every image failed to decode" if not counts["no_face"]
                                else f"{path}: no image could be used (no face found in {counts['no_face']} photos)")
        sink.close()
    except BaseException:
        sink.abort()
        raise
    finally:
        if bar is not None:
            bar[0].stop()
    return keep, sink.hashes, counts


class _Files:
    """Absolute file paths of a listing's rows, made when a chunk asks for them (not one list of
    every path held through the whole ingest)."""

    def __init__(self, listing: Listing):
        self.root, self.rows = str(listing.root), listing.rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [os.path.join(self.root, r["path"]) for r in self.rows[i]]
        return os.path.join(self.root, self.rows[i]["path"])


def _progress_bar(total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), transient=True)
    bar.start()
    return bar, bar.add_task("decoding", total=total)


def _resize_all(pixels: np.ndarray, size: int) -> np.ndarray:
    import cv2

    interp = cv2.INTER_AREA if pixels.shape[1] > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(p, (size, size), interpolation=interp) for p in pixels])
