"""The live app: camera frames -> face -> emotion (any expert) -> playlist.

`fersynth app MODEL` serves the page (`server.create_app`); `live.LiveSession` is the logic.
"""

from fersynth.app.live import (
    EmotionSmoother,
    LiveSession,
    Playlist,
    Track,
    decode_image,
    load_playlists,
)

__all__ = ["EmotionSmoother", "LiveSession", "Playlist", "Track", "decode_image", "load_playlists"]
