"""The writer every generator shares: planned work items -> images + a provenance Manifest.

A run directory looks like::

    run.json                 generator, model, settings and a digest of the plan (resume guard)
    images/<class>/<index>.png
    shards/shard-00003/      one finished shard: a Manifest, written atomically
    shards/shard-00004.rows.jsonl   rows of a shard in progress (never merged)
    manifest/                the merged Manifest, once every shard is finished
    summary.json             counts (requested, written, dropped without a face), time, rate

Items are cut into shards of `shard_size`; process `rank` of `world_size` takes shards
`rank, rank + world_size, ...` (torchrun / accelerate set both). A finished shard is skipped
on resume; in a partial shard the images already written are reused (their rows are in the
`.rows.jsonl` file) and the rest is generated, so a killed run loses nothing and duplicates
nothing. Each item carries its own seed, so an image does not depend on batching or sharding.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from fersynth.atomic import atomic_open, digest, write_json_atomic
from fersynth.data.manifest import Manifest, is_manifest_dir, pixel_hashes, stable_ids
from fersynth.errors import FersynthError
from fersynth.faces.convert import Detector, DomainSpec, convert_batch
from fersynth.faults import kill_point
from fersynth.labels import CLASSES

SHARDS = "shards"
IMAGES = "images"
MERGED = "manifest"


@dataclass
class WorkItem:
    """One image to make: its plan index, intended label, seed and what it is conditioned on."""

    index: int
    label: int
    seed: int
    mode: str = "sample"
    prompt: str = ""  # text prompt, or a description of the condition for unprompted models
    parent_id: str | None = None
    parent_index: int | None = None  # row of the source manifest (expand / edit)
    params: dict = field(default_factory=dict)

    def key(self) -> dict:
        d = asdict(self)
        d.pop("parent_index")
        return d


class Generator(ABC):
    """Makes uint8 images (B, H, W) or (B, H, W, 3) for a batch of work items."""

    name: str = "?"
    model_id: str = "?"

    @abstractmethod
    def generate(self, items: list[WorkItem]) -> np.ndarray: ...

    def batch_mode(self, items: list[WorkItem], modes: tuple[str, ...]) -> str:
        """The one mode a batch is in; a batch mixing modes or naming an unknown one is refused."""
        found = {it.mode for it in items}
        if len(found) != 1:
            raise ValueError(f"one mode per batch, got {sorted(found)}")
        mode = found.pop()
        if mode not in modes:
            raise FersynthError(f"unknown mode '{mode}' for generator {self.name}",
                                hint=f"choose one of {', '.join(modes)}")
        return mode


def _write_png(img: np.ndarray, path: Path) -> None:
    ok, buf = cv2.imencode(".png", img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise FersynthError(f"could not encode {path}")
    with atomic_open(path, "wb") as f:
        f.write(buf.tobytes())


def _read_png(path: Path, gray: bool) -> np.ndarray | None:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
    if img is None:
        return None
    return img if gray else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def process_split() -> tuple[int, int, object | None]:
    """(rank, world size, accelerate state or None): torchrun / accelerate launch set WORLD_SIZE."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        s = PartialState()
        return s.process_index, s.num_processes, s
    return 0, 1, None


def shard_name(k: int) -> str:
    return f"shard-{k:05d}"


def _shard_done(d: Path) -> bool:
    return is_manifest_dir(d) or (d / "empty.json").is_file()


def _read_partial_rows(path: Path) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        rows[int(r["index"])] = r
    return rows


def _class_name(label: int) -> str:
    return CLASSES[label] if 0 <= label < len(CLASSES) else "unlabelled"


def _progress(enabled: bool):
    from fersynth.progress import progress_bar

    return progress_bar(enabled, rate=True)


def open_run(generator, items: list[WorkItem], out_dir, *, settings: dict | None, domain, dataset: str,
             shard_size: int, batch_size: int, write: bool = True) -> tuple[Path, dict]:
    """Check a generation plan and its folder: a new folder gets run.json (when `write`); one that
    holds a run with other settings is refused, so that resuming never mixes two plans."""
    if not items:
        raise FersynthError("nothing to generate", hint="check --per-class / --k / the source images")
    if shard_size < 1 or batch_size < 1:
        raise FersynthError("--shard-size and --batch-size must be >= 1")
    out = Path(out_dir)
    (out / SHARDS).mkdir(parents=True, exist_ok=True)
    run = {
        "generator": generator.name,
        "model": generator.model_id,
        "settings": settings or {},
        "domain": domain.to_dict() if domain else None,
        "dataset": dataset,
        "items": len(items),
        "shard_size": shard_size,
        "plan_digest": digest([it.key() for it in items]),
    }
    run_file = out / "run.json"
    if run_file.is_file():
        old = json.loads(run_file.read_text())
        keys = ("generator", "model", "domain", "items", "shard_size", "plan_digest")
        diff = [k for k in keys if old.get(k) != run[k]]
        if diff:
            raise FersynthError(
                f"{out} holds a generation run with other settings ({', '.join(diff)} differ)",
                hint="choose a new --out, or repeat the original command to resume it",
            )
    elif write:
        write_json_atomic(run, run_file)
    return out, run


def run_generation(
    generator: Generator,
    items: list[WorkItem],
    out_dir: str | os.PathLike,
    *,
    domain: DomainSpec | None = None,
    dataset: str = "synthetic",
    settings: dict | None = None,
    shard_size: int = 64,
    batch_size: int = 8,
    progress: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
    detector: Detector | None = None,
) -> dict:
    """Generate `items` into `out_dir` (resuming a previous run there) and merge when complete.

    Returns the summary: counts, dropped images, the merged manifest path (None when other
    processes still hold unfinished shards).
    """
    state = None
    if rank is None or world_size is None:
        rank, world_size, state = process_split()
    out, run = open_run(generator, items, out_dir, settings=settings, domain=domain, dataset=dataset,
                        shard_size=shard_size, batch_size=batch_size, write=rank == 0)

    shards = [items[i : i + shard_size] for i in range(0, len(items), shard_size)]
    mine = [k for k in range(len(shards)) if k % world_size == rank]
    todo = [k for k in mine if not _shard_done(out / SHARDS / shard_name(k))]
    total = sum(len(shards[k]) for k in mine)
    done_already = total - sum(len(shards[k]) for k in todo)
    t0 = time.perf_counter()
    made = 0
    with _progress(progress and total > 0) as bar:
        task = bar.add_task(f"{generator.name}: generating", total=total, completed=done_already,
                            start=done_already)
        for k in todo:
            made += _run_shard(generator, shards[k], k, out, domain, dataset, batch_size, detector,
                               lambda n: bar.update(task, advance=n))
    seconds = time.perf_counter() - t0
    if state is not None:
        state.wait_for_everyone()
    merged = None
    if rank == 0:
        merged = merge_shards(out, expected_shards=len(shards), allow_missing=False)
    summary = {"generated_now": made, "seconds": round(seconds, 3),
               "images_per_second": round(made / seconds, 4) if made and seconds > 0 else None}
    if merged is not None:
        summary = dict(json.loads((out / "summary.json").read_text()), **summary)
        write_json_atomic(summary, out / "summary.json")
    summary["manifest"] = str(out / MERGED) if merged is not None else None
    return summary


def _run_shard(gen: Generator, items: list[WorkItem], k: int, out: Path, domain: DomainSpec | None,
               dataset: str, batch_size: int, detector, advance) -> int:
    partial_file = out / SHARDS / f"{shard_name(k)}.rows.jsonl"
    rows = _read_partial_rows(partial_file)
    pixels: dict[int, np.ndarray] = {}
    for idx, r in list(rows.items()):
        if r["kept"]:
            img = _read_png(out / r["path"], gray=r.get("gray", True))
            if img is None:  # its image never made it to disk: generate again
                del rows[idx]
                continue
            pixels[idx] = img
    advance(len(rows))
    todo = [it for it in items if it.index not in rows]
    made = 0
    with open(partial_file, "a") as log:
        for b in range(0, len(todo), batch_size):
            batch = todo[b : b + batch_size]
            raw = np.asarray(gen.generate(batch))
            if raw.dtype != np.uint8 or len(raw) != len(batch):
                raise RuntimeError(f"generator {gen.name} returned {raw.dtype} {raw.shape} for {len(batch)} items")
            if domain is not None:
                imgs, keep = convert_batch(raw, domain, detector)
            else:
                imgs, keep = raw, np.ones(len(raw), dtype=bool)
            j = 0
            lines = []
            for it, kept in zip(batch, keep, strict=True):
                rec = {"index": it.index, "kept": bool(kept)}
                if kept:
                    img = imgs[j]
                    j += 1
                    rel = f"{IMAGES}/{_class_name(it.label)}/{it.index:07d}.png"
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    _write_png(img, out / rel)
                    pixels[it.index] = img
                    rec.update(path=rel, gray=img.ndim == 2)
                rows[it.index] = rec
                lines.append(json.dumps(rec) + "\n")
            log.writelines(lines)
            log.flush()
            os.fsync(log.fileno())
            kill_point("generate-batch")
            made += len(batch)
            advance(len(batch))
    kept_items = [it for it in items if rows[it.index]["kept"]]
    dropped = len(items) - len(kept_items)
    shard_dir = out / SHARDS / shard_name(k)
    if kept_items:
        m = _items_manifest(gen, kept_items, [rows[it.index]["path"] for it in kept_items],
                            np.stack([pixels[it.index] for it in kept_items]), dataset, str(out))
    else:
        m = None
    meta = {"shard": k, "items": len(items), "kept": len(kept_items), "dropped_no_face": dropped}
    if m is None:  # an empty shard is still finished: record it as a marker manifest
        shard_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(meta, shard_dir / "empty.json")
    else:
        m.meta.update(meta)
        m.save(shard_dir)
    partial_file.unlink(missing_ok=True)
    return made


def _items_manifest(gen: Generator, items: list[WorkItem], paths: list[str], pixels: np.ndarray,
                    dataset: str, root: str) -> Manifest:
    return Manifest.from_arrays(
        pixels,
        [it.label for it in items],
        paths=paths,
        split="train",
        subset="synthetic",
        dataset=dataset,
        source="synthetic",
        root=root,
        gen_index=[it.index for it in items],
        generator=gen.name,
        model=gen.model_id,
        mode=[it.mode for it in items],
        prompt=[it.prompt for it in items],
        seed=np.asarray([it.seed for it in items], dtype=np.int64),
        parent_id=[it.parent_id for it in items],
        params=[json.dumps(it.params, sort_keys=True) for it in items],
        intended_label=np.asarray([it.label for it in items], dtype=np.int64),
    )


def merge_shards(out_dir: str | os.PathLike, expected_shards: int | None = None,
                 allow_missing: bool = False) -> Manifest | None:
    """Join finished shards into `out_dir/manifest` (ids re-derived over the whole set)."""
    out = Path(out_dir)
    run = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
    if expected_shards is None:
        if not run:
            raise FersynthError(f"{out}: not a generation run (no run.json)")
        expected_shards = -(-run["items"] // run["shard_size"])
    names = [shard_name(k) for k in range(expected_shards)]
    missing = [n for n in names if not _shard_done(out / SHARDS / n)]
    if missing and not allow_missing:
        raise FersynthError(
            f"{out}: {len(missing)} of {expected_shards} shards are unfinished ({missing[0]} ...)",
            hint="run the same command again to resume; partial shards are never merged",
        )
    parts, dropped = [], 0
    for n in names:
        d = out / SHARDS / n
        if n in missing:
            continue
        if (d / "empty.json").is_file():
            dropped += json.loads((d / "empty.json").read_text())["dropped_no_face"]
            continue
        m = Manifest.load(d)
        dropped += int(m.meta.get("dropped_no_face", 0))
        parts.append(m)
    requested = run.get("items", 0)
    if not parts:
        write_json_atomic({"requested": requested, "written": 0, "dropped_no_face": dropped}, out / "summary.json")
        raise FersynthError(f"{out}: every generated image was dropped ({dropped} without a face)",
                            hint="turn face detection off (--no-detect-face) or check the generator")
    m = Manifest.concat(parts)
    order = np.argsort(m.df["gen_index"].to_numpy(), kind="stable")
    m = m.select(order)
    hashes = pixel_hashes(m.pixels)
    m.df["pixel_hash"] = hashes
    m.df["id"] = stable_ids(hashes)
    m.root = str(out)
    for key in ("shard", "items", "kept", "dropped_no_face", "rows"):
        m.meta.pop(key, None)
    m.meta.update(generation={k: run.get(k) for k in ("generator", "model", "settings", "domain")},
                  dropped_no_face=dropped)
    m.save(out / MERGED)
    counts = {CLASSES[c]: int(n) for c, n in zip(*np.unique(m.labels, return_counts=True), strict=True)}
    write_json_atomic({"requested": requested, "written": len(m), "dropped_no_face": dropped,
                 "per_class": counts}, out / "summary.json")
    return m


def clean_run(out_dir: str | os.PathLike) -> None:
    """Remove a generation run directory (used by --overwrite)."""
    shutil.rmtree(out_dir, ignore_errors=True)
