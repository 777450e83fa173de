"""Files and folders written so that no reader ever sees half of one: a temporary name, then a rename.

Temporary names are `.<name>.<random>.tmp` (and `.<name>.old` for a folder being swapped out), so
that what a killed process leaves behind can be recognised and swept (`sweep_temporaries`)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

TMP_SUFFIX = ".tmp"
# Writing failed because of where, not what: a full disk or a folder that can't be written.
DISK_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted"}
_UMASK = os.umask(0)  # read once (os.umask can only be read by setting it), then restored
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", newline: str | None = None) -> Iterator:
    """Open a temporary file beside `path`; on success it replaces `path`, on error it is removed.
    `newline` is passed to the text file (`""` for the csv module)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # an ordinary file's mode, not mkstemp's private 0600
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": newline})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it takes `path`'s place (an existing
    folder there is swapped out and removed), on error it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary file name beside `path`, for writers that take a name (OpenCV, pandas,
    ONNX, safetensors); on success the file replaces `path`, on error it is removed.
    `keep_suffix` ends the name with `path`'s suffix, for writers that choose a format by it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX + (path.suffix if keep_suffix else ""),
                               dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def temporary_sibling(path: str | os.PathLike) -> Path:
    """The temporary name of a file written over a long time (a video) before `os.replace`."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_SUFFIX}{path.suffix}")


def is_temporary(p: Path) -> bool:
    """A name this module (or an older hand-rolled writer) gives to something not yet in place."""
    tmp = p.name.endswith(TMP_SUFFIX) or p.name.removesuffix(p.suffix).endswith(TMP_SUFFIX)
    return p.name.startswith(".") and (tmp or (p.name.endswith(".old") and p.is_dir()))


def sweep_temporaries(root: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders that killed writers left under `root`; only call it
    while no other process writes there (a run folder under its lock). Returns what was removed."""
    removed = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if is_temporary(p):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                    dirnames.remove(name)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def digest(obj) -> str:
    """A short stable hash of any JSON-able object (cache keys, generation plans)."""
    import hashlib

    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def json_default(o):
    """JSON for numpy scalars and arrays and paths; anything else as its str()."""
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def write_json_atomic(obj, path: str | os.PathLike) -> Path:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, default=json_default)
        f.write("\n")
    return Path(path)
