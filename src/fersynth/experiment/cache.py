"""Content-hash stage cache: a stage whose inputs and config hash to a finished artifact is skipped.

Each stage lives in `stages/<stage id>/`. `key.json` records the hash of what the stage was
run with; `done.json` is written last, so a stage without it is unfinished and is resumed (the
stage's own code picks up in the same folder: training from its last epoch, generation from
its finished shards). A stage whose key changed is cleared and run again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from fersynth.atomic import digest, write_json_atomic

_EDGE = 1 << 20  # bytes hashed at each end of a large single file


def fingerprint(path: str | os.PathLike) -> dict:
    """What identifies a dataset or weights on disk, cheaply and independent of when it was copied.

    A folder: its file count, total bytes and a hash of every relative path with its size (a
    file moved to another class folder, added or removed changes it). A single file: its size
    and a hash of its content (all of it up to 2 MiB, else the first and last MiB). Times are
    left out on purpose: copying or re-mounting a dataset must not invalidate a finished study.
    An in-place edit that keeps a folder's file sizes is not seen; `--set` a new key to force it.
    """
    p = Path(path)
    h = hashlib.blake2b(digest_size=8)
    if p.is_file():
        size = p.stat().st_size
        with open(p, "rb") as f:
            if size <= 2 * _EDGE:
                h.update(f.read())
            else:
                h.update(f.read(_EDGE))
                f.seek(size - _EDGE)
                h.update(f.read(_EDGE))
        return {"path": str(p.resolve()), "files": 1, "bytes": size, "content": h.hexdigest()}
    entries = []
    for root, _, names in os.walk(p):
        for n in names:
            full = os.path.join(root, n)
            try:
                size = os.stat(full).st_size
            except OSError:
                continue
            entries.append((os.path.relpath(full, p), size))
    entries.sort()
    for rel, size in entries:
        h.update(f"{rel}\0{size}\n".encode())
    return {"path": str(p.resolve()), "files": len(entries), "bytes": sum(s for _, s in entries),
            "listing": h.hexdigest()}


class StageCache:
    """Runs stages in `root/stages`, skipping those already done with the same key."""

    def __init__(self, root: str | os.PathLike, log: Callable[[str], None] = print):
        self.root = Path(root) / "stages"
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.hits: list[str] = []
        self.ran: list[str] = []

    def path(self, stage_id: str) -> Path:
        return self.root / stage_id

    def done(self, stage_id: str, key: str) -> bool:
        f = self.path(stage_id) / "done.json"
        if not f.is_file():
            return False
        try:
            return json.loads(f.read_text()).get("key") == key
        except (OSError, json.JSONDecodeError):
            return False

    def run(self, stage_id: str, key_obj, fn: Callable[[Path], dict | None]) -> tuple[Path, str]:
        """Run `fn(stage_dir)` unless done; returns (stage dir, key)."""
        key = digest(key_obj)
        d = self.path(stage_id)
        if self.done(stage_id, key):
            self.hits.append(stage_id)
            self.log(f"cache hit   {stage_id} [{key}]")
            return d, key
        kf = d / "key.json"
        state = "run"
        if d.exists():
            old = None
            try:
                old = json.loads(kf.read_text()).get("key") if kf.is_file() else None
            except (OSError, json.JSONDecodeError):
                pass
            if old != key:
                shutil.rmtree(d)
                state = "rerun"  # its inputs or config changed
            else:
                state = "resume"
        d.mkdir(parents=True, exist_ok=True)
        write_json_atomic({"key": key, "inputs": key_obj}, kf)
        self.log(f"{state:<11} {stage_id} [{key}]")
        t0 = time.perf_counter()
        info = fn(d) or {}
        write_json_atomic({"key": key, "seconds": round(time.perf_counter() - t0, 2), **info}, d / "done.json")
        self.ran.append(stage_id)
        return d, key
