"""The Manifest: the one table every stage reads and writes, plus its packed pixel cache.

On disk a manifest is a directory::

    manifest.parquet   one row per image (core columns below, optional families after)
    pixels.npy         uint8 (N, H, W) grayscale or (N, H, W, 3) RGB, row i <-> table row i
    meta.json          root (where `path` is relative to), classes, image shape, provenance

Core columns: id (stable, from the pixels), path (relative to root), label (canonical index,
-1 unlabelled), split (train / val / test), subset (the dataset's own split name), dataset,
source (real / synthetic / pseudo). A stage adds columns or rows; it never rewrites images.
Writes go to a temporary directory that is renamed into place, so a manifest on disk is
always complete. `Manifest.load` memory-maps `pixels.npy`, and selecting rows of a mapped
manifest selects lazily (`fersynth.data.pixels.Rows`), so memory stays bounded by the batches
a stage reads, not by the dataset (see `fersynth.data.pixels` for what each stage reads).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fersynth.atomic import atomic_dir
from fersynth.data.pixels import Rows, batches, is_lazy, write_npy
from fersynth.errors import FersynthError
from fersynth.labels import CLASSES

CORE_COLUMNS = ("id", "path", "label", "split", "subset", "dataset", "source")
SPLITS = ("train", "val", "test")
MANIFEST_FILE = "manifest.parquet"
PIXELS_FILE = "pixels.npy"
META_FILE = "meta.json"


def pixel_hash(img: np.ndarray) -> str:
    """16-hex-digit digest of an image's decoded pixels (shape included)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(str(img.shape).encode())
    h.update(np.ascontiguousarray(img).tobytes())
    return h.hexdigest()


def pixel_hashes(pixels: np.ndarray) -> list[str]:
    return [pixel_hash(p) for _, block in batches(pixels) for p in block]


def exact_hashes(m: Manifest) -> list[str]:
    """Each row's pixel digest: the manifest's `pixel_hash` column (the data contract's record of
    it), or computed from the pixels where the column is absent."""
    if "pixel_hash" in m.df.columns:
        return m.df["pixel_hash"].astype(str).tolist()
    return pixel_hashes(m.pixels)


def stable_ids(hashes: Sequence[str]) -> list[str]:
    """Ids from pixel hashes; identical images get -1, -2, ... suffixes in row order."""
    seen: dict[str, int] = {}
    out = []
    for h in hashes:
        n = seen.get(h, 0)
        seen[h] = n + 1
        out.append(h if n == 0 else f"{h}-{n}")
    return out


def is_manifest_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST_FILE).is_file()


@dataclass
class Manifest:
    """A table of images (`df`) with row-aligned packed pixels and the root their paths are under."""

    df: pd.DataFrame
    pixels: np.ndarray  # or a memory map / `Rows` selection of one (Manifest.load)
    root: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if len(self.df) != len(self.pixels):
            raise ValueError(f"manifest has {len(self.df)} rows but {len(self.pixels)} images")
        missing = [c for c in CORE_COLUMNS if c not in self.df.columns]
        if missing:
            raise FersynthError(f"manifest is missing core columns {missing}")
        self.df = self.df.reset_index(drop=True)

    # ---- construction -------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        pixels: np.ndarray,
        labels: Sequence[int],
        *,
        paths: Sequence[str] | None = None,
        split: str | Sequence[str] = "train",
        subset: str | Sequence[str] | None = None,
        dataset: str = "array",
        source: str = "real",
        root: str = "",
        meta: dict | None = None,
        **extra_columns,
    ) -> Manifest:
        n = len(pixels)
        hashes = pixel_hashes(pixels)
        df = pd.DataFrame(
            {
                "id": stable_ids(hashes),
                "path": list(paths) if paths is not None else [f"{dataset}#{i}" for i in range(n)],
                "label": np.asarray(labels, dtype=np.int64),
                "split": split if not isinstance(split, str) else [split] * n,
                "subset": (subset if subset is not None else split)
                if not isinstance(subset if subset is not None else split, str)
                else [subset if subset is not None else split] * n,
                "dataset": dataset,
                "source": source,
                "pixel_hash": hashes,
                **extra_columns,
            }
        )
        return cls(df, np.ascontiguousarray(pixels, dtype=np.uint8), root, dict(meta or {}))

    # ---- views --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.df)

    @property
    def labels(self) -> np.ndarray:
        return self.df["label"].to_numpy(dtype=np.int64)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.pixels.shape[1:])

    @property
    def num_classes(self) -> int:
        """Classes this manifest is labelled over (7, or 8 with contempt)."""
        n = self.meta.get("num_classes")
        if n:
            return int(n)
        lab = self.labels
        return 8 if (lab == CLASSES.index("contempt")).any() else 7

    @property
    def class_names(self) -> list[str]:
        return list(CLASSES[: self.num_classes])

    def gray(self) -> np.ndarray:
        """Pixels as uint8 (N, H, W) grayscale (ITU-R 601 luma for RGB)."""
        return to_gray(self.pixels)

    def select(self, mask) -> Manifest:
        """Rows where `mask` (boolean array / Series, or integer indices) holds."""
        idx = np.asarray(mask)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        pixels = Rows(self.pixels, idx) if is_lazy(self.pixels) else self.pixels[idx]
        return Manifest(self.df.iloc[idx].reset_index(drop=True), pixels, self.root, dict(self.meta))

    def where(self, **equals) -> Manifest:
        """Rows whose columns equal the given values (a list/tuple value means 'is in')."""
        mask = np.ones(len(self), dtype=bool)
        for col, val in equals.items():
            if col not in self.df.columns:
                raise FersynthError(f"manifest has no column '{col}'")
            if isinstance(val, (list, tuple, set)):
                mask &= self.df[col].isin(list(val)).to_numpy()
            else:
                mask &= (self.df[col] == val).to_numpy()
        return self.select(mask)

    @staticmethod
    def concat(parts: Sequence[Manifest]) -> Manifest:
        parts = [p for p in parts if len(p)]
        if not parts:
            raise FersynthError("nothing to concatenate: every manifest is empty")
        shapes = {p.image_shape for p in parts}
        if len(shapes) > 1:
            raise FersynthError(
                f"manifests hold images of different shapes {sorted(shapes)}",
                hint="convert them to one size first (ingest with --size)",
            )
        df = pd.concat([p.df for p in parts], ignore_index=True)
        meta = dict(parts[0].meta)
        meta["num_classes"] = max(p.num_classes for p in parts)
        return Manifest(df, np.concatenate([np.asarray(p.pixels) for p in parts]), parts[0].root, meta)

    # ---- disk ---------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write atomically: a temporary sibling directory renamed over `directory`."""
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            write_npy(tmp / PIXELS_FILE, self.pixels)  # block by block: a mapped manifest is never read whole
            self.write_table(tmp)
        return directory

    def write_table(self, directory: Path) -> None:
        """Write `manifest.parquet` and `meta.json` into `directory` (whose `pixels.npy` holds these rows)."""
        df = self.df.copy()
        for col in df.columns:  # nested python objects -> JSON text, so Parquet stays flat
            if df[col].dtype == object and df[col].map(lambda v: isinstance(v, (dict, list, np.ndarray))).any():
                df[col] = df[col].map(_to_json)
                self.meta.setdefault("json_columns", [])
                if col not in self.meta["json_columns"]:
                    self.meta["json_columns"].append(col)
        df.to_parquet(directory / MANIFEST_FILE, index=False)
        meta = dict(self.meta, root=str(self.root), image_shape=list(self.image_shape), rows=len(self))
        (directory / META_FILE).write_text(json.dumps(meta, indent=2, default=str))

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> Manifest:
        """Read a manifest directory; `pixels.npy` is memory-mapped read-only unless `mmap=False`."""
        directory = Path(directory)
        if not is_manifest_dir(directory):
            raise FersynthError(f"{directory}: not a manifest directory (no {MANIFEST_FILE})")
        try:
            df = pd.read_parquet(directory / MANIFEST_FILE)
            meta = json.loads((directory / META_FILE).read_text())
            pixels = np.load(directory / PIXELS_FILE, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise FersynthError(f"{directory}: unreadable manifest ({e})", hint="re-run the stage that wrote it") from e
        for col in meta.get("json_columns", []):
            if col in df.columns:
                df[col] = df[col].map(lambda s: json.loads(s) if isinstance(s, str) else s)
        return cls(df, pixels, meta.pop("root", ""), meta)


def _to_json(v):
    if isinstance(v, np.ndarray):
        v = v.tolist()
    return json.dumps(v) if isinstance(v, (dict, list)) else v


def to_gray(pixels: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W[, 3]) -> uint8 (N, H, W)."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 3:
        return pixels
    if pixels.ndim == 4 and pixels.shape[-1] == 3:
        w = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.clip(np.rint(pixels.astype(np.float32) @ w), 0, 255).astype(np.uint8)
    if pixels.ndim == 4 and pixels.shape[-1] == 1:
        return pixels[..., 0]
    raise ValueError(f"expected (N,H,W) or (N,H,W,3) pixels, got {pixels.shape}")
