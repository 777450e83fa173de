"""`fersynth predict`: a model on images, folders, globs and videos -> one row per face per frame.

Inputs expand to files (folders recursively, globs with `**`); videos are read every N-th
frame. Each frame's faces are found with OpenCV's Haar cascade (`fersynth.faces.convert`: the
largest, or all), cropped square with a margin and scored in batches by a `Predictor`; a frame
without a face gives one row with `face` = -1 and empty scores. Rows carry file, frame, time,
face, box, one probability per class, label and confidence. `--annotate DIR` draws the boxes and
labels on copies of the images (PNG) or videos (MJPG .avi).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from fersynth.atomic import atomic_path, temporary_sibling
from fersynth.data.decode import is_image_name
from fersynth.errors import FersynthError
from fersynth.faces.convert import DomainSpec, face_boxes, haar_detector
from fersynth.predictor import Predictor, read_image

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
OUTPUT_FORMATS = ("csv", "parquet", "jsonl")


def is_video_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (recursive: images and videos) and globs -> a sorted, de-duplicated file list."""
    files: list[Path] = []
    for spec in inputs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and (is_image_name(q.name) or is_video_name(q.name)))
            if not found:
                raise FersynthError(f"{spec}: no images or videos in this folder")
            files += found
        elif p.is_file():
            if not (is_image_name(p.name) or is_video_name(p.name)):
                raise FersynthError(f"{spec}: not an image or video file (by its extension)",
                                    hint="images: .jpg .png ...; videos: .mp4 .avi .mov .mkv .webm ...")
            files.append(p)
        elif glob.has_magic(spec):
            found = sorted(Path(q) for q in glob.glob(spec, recursive=True)
                           if is_image_name(q) or is_video_name(q))
            if not found:
                raise FersynthError(f"{spec}: the pattern matches no image or video")
            files += found
        else:
            raise FersynthError(f"{spec}: no such file, folder or pattern")
    seen: set[Path] = set()
    return [f for f in files if not (f.resolve() in seen or seen.add(f.resolve()))]


@dataclass
class Frame:
    file: Path
    index: int
    time: float | None  # seconds into a video; None for an image
    image: np.ndarray  # uint8 (H, W) or (H, W, 3) RGB
    fps: float | None = None  # the rate of the yielded frames (a video's rate / every)


def iter_frames(path: Path, every: int = 1) -> Iterator[Frame]:
    """An image as one frame, or every `every`-th frame of a video."""
    if not is_video_name(path.name):
        yield Frame(path, 0, None, read_image(path))
        return
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise FersynthError(f"{path}: cannot open as a video", hint="give a video file OpenCV can decode")
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    i = 0
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            if i % every == 0:
                yield Frame(path, i, round(i / fps, 4) if fps > 0 else None, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
                            fps / every if fps > 0 else None)
            i += 1
    finally:
        cap.release()
    if i == 0:
        raise FersynthError(f"{path}: no frames could be read", hint="is the file a video OpenCV can decode?")


class FaceScorer:
    """Frames in, rows out: detection, cropping and batched scoring by one Predictor."""

    def __init__(self, predictor: Predictor, detect: bool = True, all_faces: bool = False,
                 margin: float = 0.2, min_face: float = 0.1, batch_size: int = 64):
        if batch_size < 1:
            raise FersynthError(f"--batch-size {batch_size} must be >= 1")
        if not 0 < min_face <= 1:
            raise FersynthError(f"--min-face {min_face} out of range", hint="a fraction of the image side, 0 < f <= 1")
        self.predictor, self.all_faces, self.batch_size = predictor, all_faces, batch_size
        self.spec = DomainSpec(size=48, gray=False, detect_face=detect, margin=margin, min_face=min_face)
        self.detector = haar_detector(min_face) if detect else None
        self._crops: list[np.ndarray] = []
        self._pending: list[dict] = []  # rows waiting for their batch, no-face rows included

    def add(self, frame: Frame) -> list[dict]:
        """Queue a frame's faces; returns the rows whose batch has been scored (in input order)."""
        img = frame.image
        boxes = face_boxes(img, self.spec, self.detector, largest_only=not self.all_faces)
        base = {"file": str(frame.file), "frame": frame.index, "time": frame.time}
        if not boxes:
            self._pending.append(dict(base, face=-1, x=None, y=None, w=None, h=None))
        for k, (x, y, s, _) in enumerate(boxes):
            self._pending.append(dict(base, face=k, x=x, y=y, w=s, h=s))
            self._crops.append(self.predictor.pre.prepare_one(img[y : y + s, x : x + s])[0])
        return self.flush() if len(self._crops) >= self.batch_size else []

    def flush(self) -> list[dict]:
        classes = self.predictor.classes
        probs = self.predictor.predict_proba(np.stack(self._crops), self.batch_size) if self._crops else None
        k = 0
        for row in self._pending:
            if row["face"] >= 0:
                p = probs[k]
                k += 1
                row.update({f"p_{c}": float(v) for c, v in zip(classes, p)})
                row["label"], row["confidence"] = classes[int(p.argmax())], float(p.max())
            else:
                row.update({f"p_{c}": np.nan for c in classes})
                row["label"], row["confidence"] = "", np.nan
        out, self._pending, self._crops = self._pending, [], []
        return out


def columns(classes: list[str]) -> list[str]:
    return ["file", "frame", "time", "face", "x", "y", "w", "h", *[f"p_{c}" for c in classes], "label", "confidence"]


def output_format(path: Path | None, fmt: str | None) -> str:
    if fmt is None:
        suffix = path.suffix.lower().lstrip(".") if path is not None else "csv"
        fmt = {"json": "jsonl", "ndjson": "jsonl", "pq": "parquet"}.get(suffix, suffix)
    if fmt not in OUTPUT_FORMATS:
        raise FersynthError(f"output format '{fmt}' is not one of {', '.join(OUTPUT_FORMATS)}",
                            hint="name the file .csv, .parquet or .jsonl, or pass --format")
    return fmt


def write_rows(df: pd.DataFrame, path: Path, fmt: str) -> None:
    """Write the table atomically (a temporary file beside `path`, renamed when complete)."""
    from fersynth.atomic import atomic_open

    with atomic_open(path, "wb") as f:
        if fmt == "csv":
            df.to_csv(f, index=False)
        elif fmt == "parquet":
            df.to_parquet(f, index=False)
        else:
            df.to_json(f, orient="records", lines=True)


class Annotator:
    """Copies of the inputs with boxes and labels drawn: PNG per image, MJPG .avi per video."""

    def __init__(self, folder: Path):
        self.folder, self._writers, self._names = folder, {}, {}
        self._tmp: list[Path] = []

    def name(self, file: Path, video: bool) -> Path:
        if file not in self._names:
            stem, n = file.stem, 1
            taken = set(self._names.values())
            while (out := self.folder / f"{stem}{'' if n == 1 else f'_{n}'}{'.avi' if video else '.png'}") in taken:
                n += 1
            self._names[file] = out
        return self._names[file]

    def draw(self, frame: Frame, rows: list[dict]) -> None:
        img = frame.image if frame.image.ndim == 3 else cv2.cvtColor(frame.image, cv2.COLOR_GRAY2RGB)
        bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        for r in rows:
            if r["face"] < 0:
                continue
            x, y, w, h = r["x"], r["y"], r["w"], r["h"]
            cv2.rectangle(bgr, (x, y), (x + w, y + h), (0, 200, 0), 2)
            cv2.putText(bgr, f"{r['label']} {r['confidence']:.2f}", (x, max(12, y - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                        max(0.4, w / 250), (0, 200, 0), 1, cv2.LINE_AA)
        video = is_video_name(frame.file.name)
        out = self.name(frame.file, video)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not video:
            with atomic_path(out, keep_suffix=True) as tmp:
                if not cv2.imwrite(str(tmp), bgr):
                    raise FersynthError(f"{out}: could not write the annotated image")
            return
        tmp = temporary_sibling(out)
        vw = self._writers.get(out)
        if vw is None:
            vw = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), frame.fps or 10.0, (bgr.shape[1], bgr.shape[0]))
            if not vw.isOpened():
                raise FersynthError(f"{out}: could not open a video writer")
            self._writers[out] = vw
            self._tmp.append(tmp)
        vw.write(bgr)

    def close(self, ok: bool) -> None:
        """Finish the videos: renamed into place on success, removed otherwise."""
        for out, vw in self._writers.items():
            vw.release()
            tmp = temporary_sibling(out)
            if ok:
                os.replace(tmp, out)
            else:
                tmp.unlink(missing_ok=True)
        self._writers = {}


def predict_files(predictor: Predictor, inputs: list[str], every: int = 1, detect: bool = True,
                  all_faces: bool = False, margin: float = 0.2, min_face: float = 0.1, batch_size: int = 64,
                  annotate: Path | None = None, progress: bool = False) -> pd.DataFrame:
    """Every face of every (every-th video) frame of `inputs`, scored: the `fersynth predict` table."""
    from fersynth.progress import progress_bar

    if every < 1:
        raise FersynthError(f"--every {every} must be >= 1")
    files = expand_inputs(inputs)
    scorer = FaceScorer(predictor, detect, all_faces, margin, min_face, batch_size)
    ann = Annotator(Path(annotate)) if annotate is not None else None
    rows: list[dict] = []
    queued: list[Frame] = []  # frames waiting for their scores, for --annotate

    def emit(got: list[dict]) -> None:
        rows.extend(got)
        by_frame: dict[tuple[str, int], list[dict]] = {}
        for r in got:
            by_frame.setdefault((r["file"], r["frame"]), []).append(r)
        while queued and (str(queued[0].file), queued[0].index) in by_frame:
            fr = queued.pop(0)
            ann.draw(fr, by_frame[(str(fr.file), fr.index)])

    ok = False
    try:
        with progress_bar(progress, rate=True) as bar:
            task = bar.add_task("predict", total=len(files), unit="file")
            for f in files:
                for frame in iter_frames(f, every):
                    if ann is not None:
                        queued.append(frame)
                    emit(scorer.add(frame))
                bar.update(task, advance=1)
            emit(scorer.flush())
        ok = True
    finally:
        if ann is not None:
            ann.close(ok)
    df = pd.DataFrame(rows, columns=columns(predictor.classes))
    for c in ("x", "y", "w", "h"):
        df[c] = df[c].astype("Int64")
    return df
