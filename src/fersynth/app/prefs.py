"""What the app's user liked and skipped, per emotion and track, in a local SQLite file.

Like the seed study's player, the app learns its user: each like or skip is counted for the
(emotion, track) pair, kept across restarts, and an emotion's playlist is reordered so that
tracks the user liked come first (most liked first) and tracks they skipped come last; the
rest keep the playlist file's order. The file lives under the user's data folder unless
`fersynth app --prefs FILE` names another.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time
from pathlib import Path

from fersynth.app.live import Playlist, Track
from fersynth.errors import FersynthError

ACTIONS = ("like", "skip")


def default_path() -> Path:
    """`$XDG_DATA_HOME/fersynth/app.sqlite` (~/.local/share), ~/Library/Application Support on
    macOS, %APPDATA% on Windows."""
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "fersynth" / "app.sqlite"


class Preferences:
    """Like / skip counts per (emotion, track title), persisted in SQLite; thread-safe."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else default_path()
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False)
            self._db.execute("CREATE TABLE IF NOT EXISTS feedback (emotion TEXT NOT NULL, track TEXT NOT NULL, "
                             "likes INTEGER NOT NULL DEFAULT 0, skips INTEGER NOT NULL DEFAULT 0, "
                             "updated REAL NOT NULL, PRIMARY KEY (emotion, track))")
            self._db.commit()
        except (sqlite3.Error, OSError) as e:
            raise FersynthError(f"{self.path}: cannot use as the app's preference file ({e})",
                                hint="pass --prefs with a writable SQLite file path") from None

    def record(self, emotion: str, track: str, action: str) -> None:
        """Count one like or skip (committed at once: a crash loses nothing already answered)."""
        if action not in ACTIONS:
            raise FersynthError(f"unknown feedback action '{action}'", hint="like or skip")
        col = "likes" if action == "like" else "skips"
        with self._lock:
            self._db.execute(f"INSERT INTO feedback (emotion, track, {col}, updated) VALUES (?, ?, 1, ?) "
                             f"ON CONFLICT (emotion, track) DO UPDATE SET {col} = {col} + 1, updated = excluded.updated",
                             (emotion, track, time.time()))
            self._db.commit()

    def counts(self, emotion: str) -> dict[str, tuple[int, int]]:
        """{track title: (likes, skips)} for one emotion."""
        with self._lock:
            rows = self._db.execute("SELECT track, likes, skips FROM feedback WHERE emotion = ?", (emotion,)).fetchall()
        return {t: (lk, sk) for t, lk, sk in rows}

    def order(self, playlist: Playlist) -> list[int]:
        """Indices of `playlist.tracks` in play order: liked (likes > skips, most net likes first),
        then the unrated in file order, then skipped (most net skips last)."""
        c = self.counts(playlist.emotion)

        def key(i: int):
            lk, sk = c.get(playlist.tracks[i].title, (0, 0))
            net = lk - sk
            return (0 if net > 0 else 2 if net < 0 else 1, -net, i)

        return sorted(range(len(playlist.tracks)), key=key)

    def ordered(self, playlist: Playlist) -> Playlist:
        tracks: tuple[Track, ...] = tuple(playlist.tracks[i] for i in self.order(playlist))
        return Playlist(playlist.emotion, playlist.name, tracks)

    def close(self) -> None:
        with self._lock:
            self._db.close()
