"""Packed pixel arrays larger than memory: written in chunks, read through mmap, in batches.

A Manifest's `pixels.npy` is an ordinary uint8 ``.npy`` file, (N, H, W) grayscale or
(N, H, W, 3) RGB. This module keeps memory bounded by a few batches whatever N is:

- `PixelWriter` appends row blocks to a ``.npy`` file with plain sequential writes (no
  array of the whole set), then writes the final row count into the header;
- `Rows` is a lazy selection of rows of a (memory-mapped) array; `Manifest.select` on a
  memory-mapped manifest returns one, so carving train / val / test copies no pixels;
- `batches` hands consecutive row blocks to scoring, hashing and prediction, and `release`
  drops the pages of a memory map that were read, so that resident memory (RSS) stays at
  about one block instead of growing to the file's size as the map is read through.

Resolution stored and read by each stage: `data ingest` stores every image once, at the
dataset's own size (the most common image size; `--size N` makes it N x N), in the dataset's
colour mode; photos of another size are face-cropped to that size (`fersynth.data.decode`).
Quality scores and perceptual hashes read that stored size in batches (quality on its luma,
the pHash area-resized to 32x32); training and evaluation read it in batches and resize on
the fly to the model's `img_size` (`train.augment.to_model_input`); nothing keeps a second,
resized copy of the pixels.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator

import numpy as np

RELEASE_BYTES = 64 << 20  # drop a memory map's resident pages after this much was read from it

_NPY_MAGIC = b"\x93NUMPY\x01\x00"


def _header_text(shape: tuple[int, ...]) -> str:
    dims = tuple(int(s) for s in shape)
    return "{'descr': '|u1', 'fortran_order': False, 'shape': " + repr(dims) + ", }"


def _header(shape: tuple[int, ...], total: int) -> bytes:
    """A .npy (version 1.0) header of exactly `total` bytes, space-padded as numpy pads its own."""
    text = _header_text(shape)
    body = text.ljust(total - len(_NPY_MAGIC) - 2 - 1) + "\n"
    return _NPY_MAGIC + (total - len(_NPY_MAGIC) - 2).to_bytes(2, "little") + body.encode("latin1")


class PixelWriter:
    """Append uint8 row blocks of one shape to a ``.npy`` file holding at most `capacity` rows.

    The header is written for `capacity` rows and rewritten on `close` for the rows actually
    appended (the file is then cut to that length), so rows that failed to decode leave no gap.
    """

    def __init__(self, path: str | os.PathLike, capacity: int, row_shape: tuple[int, ...]):
        self.path = os.fspath(path)
        self.capacity = int(capacity)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.rows = 0
        need = len(_NPY_MAGIC) + 2 + len(_header_text((self.capacity, *self.row_shape))) + 1
        self._hlen = -(-need // 64) * 64
        self._f = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        self._f.write(_header((self.capacity, *self.row_shape), self._hlen))

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=np.uint8)
        if block.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {block.shape[1:]} appended to a file of {self.row_shape}")
        if self.rows + len(block) > self.capacity:
            raise ValueError(f"more than {self.capacity} rows appended")
        self._f.write(block.data)
        self.rows += len(block)

    def close(self) -> tuple[int, ...]:
        """Finish the file; returns its array shape."""
        if self._f.closed:
            return (self.rows, *self.row_shape)
        self._f.seek(0)
        self._f.write(_header((self.rows, *self.row_shape), self._hlen))
        self._f.truncate(self._hlen + self.rows * int(np.prod(self.row_shape)))
        self._f.close()
        return (self.rows, *self.row_shape)

    def abort(self) -> None:
        self._f.close()


def write_npy(path: str | os.PathLike, pixels, batch: int = 1024) -> None:
    """Write any row-indexable uint8 array (ndarray, memmap, `Rows`) to a .npy file block by block."""
    w = PixelWriter(path, len(pixels), tuple(pixels.shape[1:]))
    try:
        for _, block in batches(pixels, batch):
            w.append(block)
        w.close()
    except BaseException:
        w.abort()
        raise


def _mmap_of(arr) -> mmap.mmap | None:
    """The mmap object behind a memory-mapped array (or a view of one), if any."""
    while arr is not None:
        mm = getattr(arr, "_mmap", None)
        if isinstance(mm, mmap.mmap):
            return mm
        arr = getattr(arr, "base", None)
    return None


_read_since_release: dict[int, int] = {}


def release(arr, nbytes: int | None = None) -> None:
    """Drop the resident pages of `arr`'s memory map (they stay in the page cache); with `nbytes`,
    only once that many bytes have been read from it since the last release."""
    mm = _mmap_of(arr.base if isinstance(arr, Rows) else arr)
    if mm is None or not hasattr(mm, "madvise"):
        return
    key = id(mm)
    if nbytes is not None:
        _read_since_release[key] = _read_since_release.get(key, 0) + nbytes
        if _read_since_release[key] < RELEASE_BYTES:
            return
    _read_since_release[key] = 0
    try:
        mm.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):  # closed map, or a kernel without it: memory is only not returned early
        pass


def is_lazy(pixels) -> bool:
    """True for pixels read from disk on demand (a memory map, or a `Rows` / `MapRows` over one)."""
    return isinstance(pixels, (Rows, MapRows)) or _mmap_of(pixels) is not None


def take(base, idx: np.ndarray) -> np.ndarray:
    """Rows `idx` of `base` as an in-memory array, read in file order."""
    idx = np.asarray(idx, dtype=np.int64)
    if not is_lazy(base):
        return base[idx]
    order = np.argsort(idx, kind="stable")
    out = np.empty((len(idx), *base.shape[1:]), dtype=base.dtype)
    out[order] = base[idx[order]]
    release(base, out.nbytes)
    return out


class Rows:
    """Rows `index` of `base` (usually a memory-mapped .npy), read only when indexed.

    Behaves like a read-only uint8 array for what stages use: `shape`, `ndim`, `dtype`, `len`,
    indexing by int / slice / integer or boolean array (returns an in-memory ndarray), and
    `np.asarray` (reads every row: only for sets that fit in memory).
    """

    def __init__(self, base, index):
        if isinstance(base, Rows):
            index = base.index[np.asarray(index, dtype=np.int64)]
            base = base.base
        self.base = base
        self.index = np.asarray(index, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.base.shape[1:])

    @property
    def ndim(self) -> int:
        return self.base.ndim

    @property
    def dtype(self):
        return self.base.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return np.array(self.base[self.index[key]])
        if isinstance(key, slice):
            idx = self.index[key]
            if len(idx) and (idx[1:] - idx[:-1] == 1).all():  # a contiguous run: one slice of the file
                out = np.array(self.base[idx[0] : idx[-1] + 1])
                release(self.base, out.nbytes)
                return out
            return take(self.base, idx)
        return take(self.base, self.index[np.asarray(key)])

    def __iter__(self) -> Iterator[np.ndarray]:
        for _, block in batches(self, 256):
            yield from block

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def astype(self, dtype, copy=True):
        return np.asarray(self).astype(dtype)


class MapRows:
    """`fn` applied to whatever rows of `pixels` are read (e.g. histogram equalisation of a
    memory-mapped set, done per batch instead of on a full in-memory copy)."""

    def __init__(self, pixels, fn):
        self.pixels, self.fn = pixels, fn

    shape = property(lambda self: self.pixels.shape)
    ndim = property(lambda self: self.pixels.ndim)
    dtype = property(lambda self: self.pixels.dtype)

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, key):
        block = self.pixels[key]
        if isinstance(key, (int, np.integer)):
            return self.fn(np.asarray(block)[None])[0]
        return self.fn(np.array(block))

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def batches(pixels, size: int = 1024) -> Iterator[tuple[int, np.ndarray]]:
    """(start, block) for consecutive blocks of `size` rows, each an in-memory array; pages of a
    memory-mapped source are released as they are read."""
    n = len(pixels)
    for s in range(0, n, size):
        block = pixels[s : s + size]
        if not isinstance(pixels, Rows) and _mmap_of(pixels) is not None:
            block = np.array(block)
            release(pixels, block.nbytes)
        yield s, block
