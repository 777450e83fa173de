"""A trained model at work on a camera stream: face -> emotion -> playlist.

`LiveSession.step(frame)` finds the largest face (OpenCV's Haar cascade, or the whole frame
when the input is already a face crop), scores it with any expert (`fersynth.verify.experts`:
a fersynth checkpoint, the `fer` package's Keras mini-Xception, a TFLite model), smooths the
class probabilities over frames, and switches the playlist only when a new emotion has led
for `hold` frames in a row, so that a blink or a bad frame does not change the music.

The web page (`fersynth.app.server`) and the headless video mode (`fersynth app --video`)
both drive this class.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from fersynth.errors import FersynthError
from fersynth.faces.convert import Detector, DomainSpec, crop_to_domain, face_box
from fersynth.labels import canonical_name

DEFAULT_PLAYLISTS = Path(__file__).with_name("playlists.yaml")


# --------------------------------------------------------------------------- playlists
@dataclass(frozen=True)
class Track:
    title: str
    url: str | None = None  # http(s) address, or a local audio file (served by the app)

    def is_local(self) -> bool:
        return self.url is not None and not self.url.startswith(("http://", "https://"))


@dataclass(frozen=True)
class Playlist:
    emotion: str
    name: str
    tracks: tuple[Track, ...]

    def to_dict(self) -> dict:
        return {"emotion": self.emotion, "name": self.name,
                "tracks": [{"title": t.title, "url": t.url} for t in self.tracks]}


def load_playlists(path: str | os.PathLike | None = None) -> dict[str, Playlist]:
    """Read `{emotion: {name: str, tracks: [title | {title, url}]}}` (YAML or JSON).

    Emotions are canonical class names or their synonyms; a local track `url` is resolved
    against the file's folder and must exist. Errors name the file and the key.
    """
    path = Path(path) if path is not None else DEFAULT_PLAYLISTS
    if not path.is_file():
        raise FersynthError(f"playlist file not found: {path}", hint="pass a YAML file of {emotion: {name, tracks}}")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FersynthError(f"{path}: not valid YAML ({first})") from None
    if not isinstance(raw, dict) or not raw:
        raise FersynthError(f"{path}: expected a mapping of emotion -> playlist", hint="see fersynth/app/playlists.yaml")
    out: dict[str, Playlist] = {}
    for key, value in raw.items():
        try:
            emotion = canonical_name(str(key))
        except FersynthError as e:
            raise FersynthError(f"{path}: unknown emotion '{key}'", hint=e.hint) from None
        if emotion in out:
            raise FersynthError(f"{path}: emotion '{emotion}' is given twice (key '{key}')")
        if isinstance(value, list):
            value = {"name": emotion, "tracks": value}
        if not isinstance(value, dict) or not isinstance(value.get("tracks"), list) or not value["tracks"]:
            raise FersynthError(f"{path}: '{key}.tracks' must be a non-empty list")
        unknown = set(value) - {"name", "tracks"}
        if unknown:
            raise FersynthError(f"{path}: unknown key '{key}.{sorted(unknown)[0]}'", hint="a playlist has name and tracks")
        tracks = []
        for i, t in enumerate(value["tracks"]):
            if isinstance(t, str):
                t = {"title": t}
            if not isinstance(t, dict) or not isinstance(t.get("title"), str) or set(t) - {"title", "url"}:
                raise FersynthError(f"{path}: '{key}.tracks[{i}]' must be a title or {{title, url}}")
            url = t.get("url")
            if url is not None and not str(url).startswith(("http://", "https://")):
                local = (path.parent / str(url)).resolve()
                if not local.is_file():
                    raise FersynthError(f"{path}: '{key}.tracks[{i}].url' {url} does not exist",
                                        hint="give an http(s) address or a path relative to the playlist file")
                url = str(local)
            tracks.append(Track(t["title"], url))
        out[emotion] = Playlist(emotion, str(value.get("name") or emotion), tuple(tracks))
    return out


# --------------------------------------------------------------------------- smoothing
def check_smoothing(alpha: float, hold: int) -> None:
    if not 0 < alpha <= 1:
        raise FersynthError(f"smoothing alpha {alpha} out of range", hint="use 0 < alpha <= 1")
    if hold < 1:
        raise FersynthError(f"hold {hold} must be >= 1")


class EmotionSmoother:
    """Exponential moving average of class probabilities with a hold rule for switching.

    `alpha` is the weight of the newest frame; the reported emotion changes to class c only
    after c has been the smoothed top class for `hold` consecutive updates.
    """

    def __init__(self, num_classes: int, alpha: float = 0.35, hold: int = 4):
        check_smoothing(alpha, hold)
        self.alpha, self.hold = float(alpha), int(hold)
        self.probs = np.zeros(num_classes, dtype=np.float64)
        self.current: int | None = None
        self._candidate: int | None = None
        self._streak = 0
        self._seen = False

    @property
    def seen(self) -> bool:
        """Whether any frame has been added."""
        return self._seen

    def update(self, probs: np.ndarray) -> bool:
        """Add one frame's probabilities; True when the reported emotion changed."""
        p = np.asarray(probs, dtype=np.float64)
        self.probs = p.copy() if not self._seen else (1 - self.alpha) * self.probs + self.alpha * p
        self._seen = True
        top = int(self.probs.argmax())
        if top == self.current:
            self._candidate, self._streak = None, 0
            return False
        self._streak = self._streak + 1 if top == self._candidate else 1
        self._candidate = top
        if self._streak >= self.hold:
            self.current, self._candidate, self._streak = top, None, 0
            return True
        return False


# --------------------------------------------------------------------------- the session
@dataclass
class Reading:
    """One frame's outcome. `box` is (x, y, side, side) in frame pixels, None when no face."""

    box: tuple[int, int, int, int] | None
    probs: dict[str, float] | None  # this frame's probabilities
    smoothed: dict[str, float] | None
    emotion: str | None  # the reported (held) emotion
    changed: bool
    playlist: Playlist | None
    frame_size: tuple[int, int] = (0, 0)  # (width, height)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"box": list(self.box) if self.box else None, "probs": self.probs, "smoothed": self.smoothed,
                "emotion": self.emotion, "changed": self.changed,
                "playlist": self.playlist.to_dict() if self.playlist else None,
                "frame": {"width": self.frame_size[0], "height": self.frame_size[1]}}


class LiveSession:
    """Face -> expert -> smoother -> playlist, one frame at a time (RGB or gray uint8)."""

    def __init__(self, expert, playlists: dict[str, Playlist], detect: bool = True, margin: float = 0.2,
                 min_face: float = 0.15, alpha: float = 0.35, hold: int = 4,
                 detector: Detector | None = None, lock: threading.Lock | None = None):
        self.expert = expert
        self.classes = list(expert.canonical_classes)
        self.playlists = playlists
        self.spec = DomainSpec(size=96, gray=False, detect_face=detect, margin=margin, min_face=min_face)
        self.detector = detector
        self.smoother = EmotionSmoother(len(self.classes), alpha=alpha, hold=hold)
        self._lock = lock or threading.Lock()

    @property
    def emotion(self) -> str | None:
        c = self.smoother.current
        return None if c is None else self.classes[c]

    def playlist(self) -> Playlist | None:
        e = self.emotion
        return None if e is None else self.playlists.get(e)

    def face(self, frame: np.ndarray) -> tuple[tuple[int, int, int, int] | None, np.ndarray | None]:
        """The square face box and its crop resized to 96 x 96 RGB, or (None, None)."""
        img = _as_rgb(frame)
        box = face_box(img, self.spec, self.detector)
        return (None, None) if box is None else (box, crop_to_domain(img, box, self.spec))

    def step(self, frame: np.ndarray) -> Reading:
        box, crop = self.face(frame)
        h, w = np.asarray(frame).shape[:2]
        if crop is None:  # no face: the music stays as it is
            return Reading(None, None, self._named(self.smoother.probs) if self.smoother.seen else None,
                           self.emotion, False, self.playlist(), (w, h))
        with self._lock:  # one model, possibly several browser sessions
            p = self.expert.predict_proba(crop[None])[0]
        changed = self.smoother.update(p)
        return Reading(box, self._named(p), self._named(self.smoother.probs), self.emotion, changed,
                       self.playlist(), (w, h))

    def _named(self, p: np.ndarray) -> dict[str, float]:
        return {c: round(float(v), 4) for c, v in zip(self.classes, p)}


def _as_rgb(frame: np.ndarray) -> np.ndarray:
    a = np.asarray(frame)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise FersynthError(f"a frame must be a uint8 (H,W) or (H,W,3) image, got {a.dtype} {a.shape}")
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    return a[..., :3]


def decode_image(data: bytes, name: str = "frame") -> np.ndarray:
    """JPEG / PNG / WebP bytes -> RGB uint8, or a FersynthError naming `name`."""
    if not data:
        raise FersynthError(f"{name}: empty image")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise FersynthError(f"{name}: not a decodable image ({len(data)} bytes)", hint="send JPEG or PNG bytes")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
