"""Dataset format adapters behind a registry, with auto-detection.

An adapter lists a dataset's images (relative path, canonical label, split, subset and any
extra columns) or, for CSV formats, yields their pixels directly. `fersynth.data.ingest`
turns a listing into a Manifest. Adapters never modify the source.
"""

from __future__ import annotations

import csv
import difflib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fersynth.data.decode import is_image_name
from fersynth.errors import FersynthError
from fersynth.labels import CLASSES, SYNONYMS, canonical_index

SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}
FER2013_PREFIXES = {"Training": "train", "PublicTest": "test", "PrivateTest": "test"}


@dataclass
class IngestOptions:
    size: int | None = None
    mode: str = "auto"  # auto | gray | rgb
    skip_bad: bool = False
    class_map: dict[str, str] = field(default_factory=dict)  # dataset name (lower) -> canonical name
    images: str | None = None  # FER+: where the FER2013 images are (folder or fer2013.csv)
    photos: str = "face"  # images not of the dataset's size: face | resize | refuse (see data.ingest)


@dataclass
class Listing:
    root: Path
    dataset: str
    rows: list[dict]  # path (relative to root), label, split, subset, + extras
    pixels: np.ndarray | None = None  # formats that carry pixels (CSV): row-aligned with rows
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, why)
    notes: dict = field(default_factory=dict)
    num_classes: int = 7


@dataclass(frozen=True)
class DatasetFormat:
    name: str
    description: str
    layout: str
    detect: Callable[[Path], bool]
    list: Callable[[Path, IngestOptions], Listing]


_FORMATS: dict[str, DatasetFormat] = {}


def register_format(name: str, description: str, layout: str, detect: Callable[[Path], bool]):
    def deco(fn):
        _FORMATS[name] = DatasetFormat(name, description, layout, detect, fn)
        return fn

    return deco


def list_formats() -> list[DatasetFormat]:
    return list(_FORMATS.values())


def get_format(name: str) -> DatasetFormat:
    if name not in _FORMATS:
        close = difflib.get_close_matches(name, list(_FORMATS), n=2)
        raise FersynthError(
            f"unknown dataset format '{name}'",
            hint=f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(_FORMATS)}",
        )
    return _FORMATS[name]


def detect_format(path: Path) -> DatasetFormat:
    if not path.exists():
        raise FersynthError(f"{path}: no such file or directory")
    if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
        raise FersynthError(f"{path}: directory is not readable", hint="check its permissions")
    for fmt in _FORMATS.values():  # registration order is detection priority
        try:
            if fmt.detect(path):
                return fmt
        except OSError:
            continue
    if path.is_dir() and not _has_any_image(path):
        raise FersynthError(f"{path}: no images in it", hint="point to the folder that holds the dataset's images or CSV")
    raise FersynthError(
        f"{path}: cannot tell the dataset format",
        hint=f"pass --format, one of {', '.join(_FORMATS)}",
    )


def _has_any_image(path: Path) -> bool:
    """Whether any image file (or CSV) lies under `path`; stops at the first one."""
    for _, _, names in os.walk(path):
        if any(is_image_name(n) or n.lower().endswith(".csv") for n in names):
            return True
    return False


# ---- helpers --------------------------------------------------------------------------


def _visible(entries):
    return sorted(e for e in entries if not e.name.startswith((".", "_")) and e.name not in ("Thumbs.db",))


def _subdirs(path: Path) -> list[Path]:
    try:
        return _visible(p for p in path.iterdir() if p.is_dir())
    except OSError as e:
        raise FersynthError(f"{path}: unreadable directory ({e.strerror})", hint="check its permissions") from None


def _class_label(folder: str, opts: IngestOptions, order: dict[str, str] | None, where: Path) -> int:
    key = folder.lower()
    if key in opts.class_map:
        return CLASSES.index(opts.class_map[key])
    if order is not None and key in order:
        return CLASSES.index(order[key])
    try:
        return canonical_index(folder)
    except FersynthError as e:
        raise FersynthError(
            f"{where}: unknown class folder '{folder}'" + (f" ({e.hint})" if e.hint and "mean" in e.hint else ""),
            hint=f"pass --class-map {folder}=CLASS (classes: {', '.join(CLASSES)})",
        ) from None


def _walk_class_folders(
    root: Path,
    base: Path,
    split: str,
    subset_of: Callable[[str], str],
    opts: IngestOptions,
    listing: Listing,
    order: dict[str, str] | None = None,
) -> None:
    classes = _subdirs(base)
    for cdir in classes:
        label = _class_label(cdir.name, opts, order, cdir)
        try:
            files = _visible(f for f in cdir.iterdir() if f.is_file())
        except OSError as e:
            raise FersynthError(f"{cdir}: unreadable directory ({e.strerror})") from None
        n_before = len(listing.rows)
        for f in files:
            rel = f.relative_to(root).as_posix()
            if not is_image_name(f.name):
                if opts.skip_bad:
                    listing.skipped.append((rel, "not an image file"))
                    continue
                raise FersynthError(
                    f"{f}: not an image file in class folder '{cdir.name}'",
                    hint="remove it or pass --skip-bad",
                )
            listing.rows.append({"path": rel, "label": label, "split": split, "subset": subset_of(f.name)})
        if len(listing.rows) == n_before:
            if opts.skip_bad:
                listing.skipped.append((cdir.relative_to(root).as_posix(), "empty class folder"))
            else:
                raise FersynthError(f"{cdir}: class folder is empty", hint="remove it or pass --skip-bad")
    if any(r["label"] == CLASSES.index("contempt") for r in listing.rows):
        listing.num_classes = 8


def _split_dirs(path: Path) -> list[Path]:
    return [d for d in _subdirs(path) if d.name.lower() in SPLIT_ALIASES]


def _has_split_layout(path: Path) -> bool:
    return path.is_dir() and bool(_split_dirs(path)) and all(_subdirs(d) for d in _split_dirs(path))


def _first_file(path: Path) -> str | None:
    for d in _split_dirs(path):
        for c in _subdirs(d):
            for f in c.iterdir():
                if f.is_file():
                    return f.name
    return None


# ---- FER+ votes (checked first: its folder has no images of its own) -------------------

FERPLUS_ORDER = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
FERPLUS_FILE = "fer2013new.csv"
FERPLUS_MAP = "fer2013new_rows_to_kaggle_jpg.csv"


def _ferplus_csv(path: Path) -> Path | None:
    if path.is_file() and path.name == FERPLUS_FILE:
        return path
    if path.is_dir() and (path / FERPLUS_FILE).is_file():
        return path / FERPLUS_FILE
    return None


@register_format(
    "ferplus",
    "FER+ crowd votes joined to FER2013 images (majority and soft labels)",
    "`fer2013new.csv` (+ `fer2013new_rows_to_kaggle_jpg.csv` and a FER2013 folder beside it, or `--images fer2013.csv`)",
    lambda p: _ferplus_csv(p) is not None,
)
def list_ferplus(path: Path, opts: IngestOptions) -> Listing:
    votes_csv = _ferplus_csv(path)
    folder = votes_csv.parent
    images = Path(opts.images) if opts.images else None
    if images is None:
        for cand in (folder.parent / "fer2013", folder / "fer2013", folder / "fer2013.csv", folder.parent / "fer2013.csv"):
            if cand.exists():
                images = cand
                break
    if images is None or not images.exists():
        raise FersynthError(
            f"{votes_csv}: FER+ votes need the FER2013 images",
            hint="pass --images PATH (a FER2013 image folder or fer2013.csv)",
        )
    votes_rows = _read_csv_rows(votes_csv, required=("Usage", "Image name", *FERPLUS_ORDER, "unknown", "NF"))
    n = len(votes_rows)
    if images.is_file():
        base = list_fer2013_csv(images, opts)
        if len(base.rows) + len(base.skipped) != n:
            raise FersynthError(
                f"{votes_csv}: {n} vote rows but {images} has {len(base.rows) + len(base.skipped)} rows",
                hint="FER+ rows follow fer2013.csv row order; use the matching file",
            )
        file_of = {int(r["path"].rsplit("#", 1)[1]): (i, r) for i, r in enumerate(base.rows)}
        root, dataset = base.root, "ferplus"
    else:
        map_csv = folder / FERPLUS_MAP
        if not map_csv.is_file():
            raise FersynthError(
                f"{folder}: no {FERPLUS_MAP} to join FER+ rows to the images in {images}",
                hint="put the row-to-file map beside fer2013new.csv or pass --images fer2013.csv",
            )
        map_rows = _read_csv_rows(map_csv, required=("row_index", "kaggle_jpg_candidates", "kaggle_classes"))
        if len(map_rows) != n:
            raise FersynthError(f"{map_csv}: {len(map_rows)} rows but {votes_csv} has {n}")
        file_of = {}
        for i, m in enumerate(map_rows):
            cands = m["kaggle_jpg_candidates"].strip()
            if cands:
                first = cands.split(";")[0]
                cls = m["kaggle_classes"].split(";")[0]
                file_of[i] = (None, {"path": first, "orig_label": canonical_index(cls)})
        root, dataset, base = images, "ferplus", None

    listing = Listing(root=Path(root), dataset=dataset, rows=[], num_classes=8)
    keep_pix = []
    counts = {"no_image": 0, "not_a_face": 0, "unknown": 0, "no_majority": 0}
    perm = [CLASSES.index(n_) for n_ in ("neutral", "happy", "surprise", "sad", "angry", "disgust", "fear", "contempt")]
    for i, r in enumerate(votes_rows):
        where = f"{votes_csv.name} row {i + 2}"
        try:
            v = np.array([int(r[c]) for c in (*FERPLUS_ORDER, "unknown", "NF")], dtype=np.int64)
        except ValueError:
            raise FersynthError(f"{where}: vote counts must be integers", hint="check the file is the original fer2013new.csv") from None
        if not r["Image name"].strip() or i not in file_of:
            counts["no_image"] += 1
            continue
        # The FER+ reference rule: single votes are outliers; the top class must then hold
        # more than half of the remaining votes; unknown / not-a-face winners are dropped.
        w = np.where(v > 1, v, 0)
        if w.sum() == 0 or w.max() <= 0.5 * w.sum():
            label = -1
            counts["no_majority"] += 1
        elif w.argmax() >= 8:
            counts["not_a_face" if w.argmax() == 9 else "unknown"] += 1
            continue
        else:
            label = CLASSES.index(("neutral", "happy", "surprise", "sad", "angry", "disgust", "fear", "contempt")[w.argmax()])
        emo = np.zeros(8, dtype=np.float64)
        emo[perm] = w[:8] if w[:8].sum() else v[:8]
        src_idx, info = file_of[i]
        split = "train" if r["Usage"] == "Training" else "test"
        row = {
            "path": info["path"],
            "label": label,
            "split": split,
            "subset": r["Usage"],
            "soft_label": (emo / emo.sum()).tolist() if emo.sum() else [0.0] * 8,
            "ferplus_votes": v.tolist(),
            "orig_label": int(info.get("orig_label", info.get("label", -1))),
            "ferplus_row": i,
        }
        listing.rows.append(row)
        if src_idx is not None:
            keep_pix.append(src_idx)
    if base is not None:
        listing.pixels = base.pixels[keep_pix]
    listing.notes = {"dropped": counts, "images": str(images)}
    return listing


# ---- RAF-DB basic ---------------------------------------------------------------------

RAFDB_ORDER = {"1": "surprise", "2": "fear", "3": "disgust", "4": "happy", "5": "sad", "6": "angry", "7": "neutral"}
RAFDB_LIST = Path("EmoLabel") / "list_patition_label.txt"


@register_format(
    "rafdb",
    "RAF-DB basic emotions (labels 1-7 mapped to canonical order)",
    "`EmoLabel/list_patition_label.txt` + `Image/aligned/*_aligned.jpg` (or `Image/original/`)",
    lambda p: p.is_dir() and (p / RAFDB_LIST).is_file(),
)
def list_rafdb(path: Path, opts: IngestOptions) -> Listing:
    label_file = path / RAFDB_LIST
    aligned = (path / "Image" / "aligned").is_dir()
    img_dir = Path("Image") / ("aligned" if aligned else "original")
    listing = Listing(root=path, dataset="rafdb", rows=[])
    for lineno, line in enumerate(label_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[1] not in RAFDB_ORDER:
            msg = f"{label_file}:{lineno}: expected '<name>.jpg <label 1-7>', got '{line.strip()}'"
            if opts.skip_bad:
                listing.skipped.append((f"{RAFDB_LIST}:{lineno}", "malformed line"))
                continue
            raise FersynthError(msg, hint="fix the line or pass --skip-bad")
        name, lab = parts
        stem, ext = os.path.splitext(name)
        fname = f"{stem}_aligned{ext}" if aligned else name
        split = "train" if name.startswith("train") else "test"
        listing.rows.append(
            {"path": (img_dir / fname).as_posix(), "label": CLASSES.index(RAFDB_ORDER[lab]), "split": split, "subset": split}
        )
    return listing


# ---- FER2013 CSV ----------------------------------------------------------------------

FER2013_CSV_ORDER = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


# CSV dialects: a UTF-8 byte-order mark (Excel / Windows "CSV UTF-8"), CRLF line ends, quoted
# fields and blank lines (trailing or not) are all read as the plain file would be.
CSV_ENCODING = "utf-8-sig"


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding=CSV_ENCODING) as f:
        return [h.strip() for h in next(csv.reader(f), [])]


def _blank(row: dict) -> bool:
    return all(not (v or "").strip() for k, v in row.items() if k is not None) and not row.get(None)


def _read_csv_rows(path: Path, required: tuple[str, ...]) -> list[dict]:
    """Data rows as dicts of stripped column names; blank lines are left out and each row keeps its
    line number in the file under '_line'."""
    try:
        with open(path, newline="", encoding=CSV_ENCODING) as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise FersynthError(
                    f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)}"
                    f" (found: {', '.join(header) or 'nothing'})",
                    hint="is this the right file?",
                )
            out = []
            for row in reader:
                if not _blank(row):
                    out.append({k.strip(): (v or "") for k, v in row.items() if k is not None} | {"_line": reader.line_num})
            return out
    except OSError as e:
        raise FersynthError(f"{path}: cannot read ({e.strerror})") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise FersynthError(f"{path}: not a readable CSV ({e})") from None


@register_format(
    "fer2013_csv",
    "FER2013 as one CSV (emotion 0-6, 48x48 pixel string, Usage)",
    "`fer2013.csv` with columns `emotion,pixels,Usage`",
    lambda p: p.is_file() and p.suffix.lower() == ".csv" and {"emotion", "pixels"} <= set(_csv_header(p)),
)
def list_fer2013_csv(path: Path, opts: IngestOptions) -> Listing:
    rows = _read_csv_rows(path, required=("emotion", "pixels"))
    listing = Listing(root=path.parent, dataset="fer2013", rows=[])
    pix = []
    side = None
    for i, r in enumerate(rows):
        where = f"{path.name} row {r['_line']}"  # the line in the file (header is line 1)
        try:
            arr = _parse_pixels(r["pixels"])
            code = r["emotion"].strip()
            if not code.isdigit() or int(code) > 6:
                raise ValueError(f"emotion '{code}' is not a code 0-6 (angry..neutral)")
            n = arr.size
            s = int(round(n**0.5))
            if s * s != n:
                raise ValueError(f"{n} pixels is not a square image (48x48 needs 2304)")
            if side is None:
                side = s
            elif s != side:
                raise ValueError(f"{n} pixels but earlier rows have {side * side} ({side}x{side})")
        except ValueError as e:
            if opts.skip_bad:
                listing.skipped.append((where, str(e)))
                continue
            raise FersynthError(f"{where}: {e}", hint="fix or remove the row, or pass --skip-bad") from None
        usage = r.get("Usage", "Training").strip() or "Training"
        if usage not in FER2013_PREFIXES:
            msg = f"Usage '{usage}' is not Training, PublicTest or PrivateTest"
            if opts.skip_bad:
                listing.skipped.append((where, msg))
                continue
            raise FersynthError(f"{where}: {msg}", hint="fix the row or pass --skip-bad")
        pix.append(arr.reshape(side, side))
        listing.rows.append(
            {"path": f"{path.name}#{i}", "label": CLASSES.index(FER2013_CSV_ORDER[int(code)]),
             "split": FER2013_PREFIXES[usage], "subset": usage}
        )
    listing.pixels = np.stack(pix) if pix else np.zeros((0, 48, 48), np.uint8)
    return listing


def _parse_pixels(text: str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            arr = np.fromstring(text.strip(), dtype=np.int32, sep=" ")
        except (DeprecationWarning, ValueError):
            arr = None
    n_tokens = len(text.split())
    if arr is None or arr.size != n_tokens or n_tokens == 0:
        bad = next((t for t in text.split() if not t.lstrip("-").isdigit()), None)
        raise ValueError(f"malformed pixel string (token '{bad}' is not an integer)" if bad else "empty pixel string")
    if arr.min() < 0 or arr.max() > 255:
        raise ValueError("pixel values must lie in 0-255")
    return arr.astype(np.uint8)


# ---- image folders --------------------------------------------------------------------


def _fer2013_subset(name: str) -> str:
    prefix = name.split("_", 1)[0]
    return prefix if prefix in FER2013_PREFIXES else "unknown"


@register_format(
    "fer2013",
    "FER2013 image folders (Training_ / PublicTest_ / PrivateTest_ prefixes kept as subset)",
    "`train/<class>/Training_*.jpg`, `test/<class>/{PublicTest,PrivateTest}_*.jpg`",
    lambda p: _has_split_layout(p) and (_first_file(p) or "").split("_", 1)[0] in FER2013_PREFIXES,
)
def list_fer2013_folders(path: Path, opts: IngestOptions) -> Listing:
    listing = Listing(root=path, dataset="fer2013", rows=[])
    for sdir in _split_dirs(path):
        split = SPLIT_ALIASES[sdir.name.lower()]
        _walk_class_folders(path, sdir, split, lambda n, s=split: _fer2013_subset(n) if _fer2013_subset(n) != "unknown" else s, opts, listing)
    return listing


AFFECTNET_ORDER = {"0": "neutral", "1": "happy", "2": "sad", "3": "surprise", "4": "fear", "5": "disgust", "6": "angry", "7": "contempt"}


def _is_affectnet(p: Path) -> bool:
    if not _has_split_layout(p):
        return False
    names = {c.name for d in _split_dirs(p) for c in _subdirs(d)}
    return bool(names) and (names <= set(AFFECTNET_ORDER) or "contempt" in {n.lower() for n in names})


@register_format(
    "affectnet",
    "AffectNet-style folders, 8 classes (numeric folders use AffectNet's order; val is the test set)",
    "`train/<0-7 or name>/*`, `val/<0-7 or name>/*`",
    _is_affectnet,
)
def list_affectnet(path: Path, opts: IngestOptions) -> Listing:
    listing = Listing(root=path, dataset="affectnet", rows=[], num_classes=8)
    for sdir in _split_dirs(path):
        split = SPLIT_ALIASES[sdir.name.lower()]
        # AffectNet's published validation set is the de facto test set.
        split = "test" if split == "val" else split
        _walk_class_folders(path, sdir, split, lambda n, s=sdir.name: s, opts, listing, order=AFFECTNET_ORDER)
    listing.num_classes = 8
    return listing


@register_format(
    "imagefolder",
    "Any image folder split into train / val / test, one folder per class (`--class-map` for other names)",
    "`<train|val|test>/<class>/*`",
    _has_split_layout,
)
def list_imagefolder(path: Path, opts: IngestOptions) -> Listing:
    listing = Listing(root=path, dataset=path.name, rows=[])
    for sdir in _split_dirs(path):
        split = SPLIT_ALIASES[sdir.name.lower()]
        _walk_class_folders(path, sdir, split, lambda n, s=sdir.name: s, opts, listing)
    return listing


def _is_class_folders(p: Path) -> bool:
    if not p.is_dir():
        return False
    subs = _subdirs(p)
    return bool(subs) and sum(s.name.lower() in SYNONYMS for s in subs) >= max(1, len(subs) // 2)


@register_format(
    "ckplus",
    "CK+ style class folders without a split (contempt included); all rows are split 'train'",
    "`<class>/*` (anger, contempt, disgust, fear, happy, sadness, surprise, ...)",
    _is_class_folders,
)
def list_class_folders(path: Path, opts: IngestOptions) -> Listing:
    listing = Listing(root=path, dataset=path.name, rows=[])
    _walk_class_folders(path, path, "train", lambda n: "all", opts, listing)
    return listing
