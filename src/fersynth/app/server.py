"""The live web app: a FastAPI server and one static page that uses the browser's camera.

The page captures a frame every few hundred milliseconds, posts it as JPEG bytes to
`POST /api/frame?session=ID`, and draws what comes back: the face box, the class
probabilities, the held emotion and its playlist. Each browser tab gets its own
`LiveSession` (its own smoothing); the model is shared. Frames are not stored.

    GET  /                 the page
    GET  /api/info         model name, classes, settings
    GET  /api/playlists    every playlist
    POST /api/frame        image bytes -> Reading JSON (400 with {"error"} on a bad image)
    POST /api/feedback     {"emotion", "track", "action": "like" | "skip"} -> the reordered playlist
    GET  /media/{emotion}/{i}   a local audio file named in the playlist file (nothing else)

With a `Preferences` store (`fersynth.app.prefs`), every playlist the page gets is in the
user's order: liked tracks first, skipped ones last, remembered across restarts.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from fersynth.app.live import LiveSession, Playlist, decode_image
from fersynth.app.prefs import ACTIONS, Preferences
from fersynth.errors import FersynthError

STATIC = Path(__file__).with_name("static")
MAX_SESSIONS = 32
MAX_FRAME_BYTES = 8 << 20


def create_app(expert, playlists: dict[str, Playlist], detect: bool = True, alpha: float = 0.35,
               hold: int = 4, margin: float = 0.2, min_face: float = 0.15, model_name: str | None = None,
               prefs: Preferences | None = None):
    """The FastAPI application around one expert and one playlist map (and the user's preferences)."""
    app = FastAPI(title="fersynth live", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        """A bad query parameter named with what is wrong, without echoing its (maybe huge) value."""
        e = (exc.errors() or [{}])[0]
        where = ".".join(str(x) for x in e.get("loc", ())[1:]) or "request"
        return JSONResponse({"error": f"{where}: {e.get('msg', 'invalid')}"}, 422)
    lock, model_lock = threading.Lock(), threading.Lock()
    sessions: OrderedDict[str, LiveSession] = OrderedDict()
    settings = {"detect": detect, "alpha": alpha, "hold": hold, "margin": margin, "min_face": min_face}

    def session(sid: str) -> LiveSession:
        with lock:
            s = sessions.pop(sid, None) or LiveSession(expert, playlists, lock=model_lock, **settings)
            sessions[sid] = s
            while len(sessions) > MAX_SESSIONS:  # least recently used goes
                sessions.popitem(last=False)
            return s

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/api/info")
    def info() -> dict:
        return {"model": model_name or getattr(expert, "name", type(expert).__name__),
                "classes": list(expert.canonical_classes), "settings": settings,
                "playlists": sorted(playlists)}

    @app.get("/api/playlists")
    def all_playlists() -> dict:
        return {e: _public(p, prefs) for e, p in playlists.items()}

    @app.post("/api/frame")
    async def frame(request: Request, session_id: str = Query("default", alias="session", max_length=64)):
        data = await request.body()
        if len(data) > MAX_FRAME_BYTES:
            return JSONResponse({"error": f"frame is {len(data)} bytes, over the {MAX_FRAME_BYTES} limit"}, 413)
        try:
            img = decode_image(data)
            reading = session(session_id).step(img)
        except FersynthError as e:
            return JSONResponse({"error": str(e)}, 400)
        out = reading.to_dict()
        out["playlist"] = _public(reading.playlist, prefs) if reading.playlist else None
        return out

    @app.post("/api/feedback")
    async def feedback(request: Request):
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "feedback must be JSON {emotion, track, action}"}, 400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "feedback must be JSON {emotion, track, action}"}, 400)
        p = playlists.get(str(body.get("emotion")))
        if p is None:
            return JSONResponse({"error": f"no playlist for emotion {body.get('emotion')!r}"}, 400)
        if body.get("track") not in {t.title for t in p.tracks}:
            return JSONResponse({"error": f"no track {body.get('track')!r} in playlist '{p.name}'"}, 400)
        if body.get("action") not in ACTIONS:
            return JSONResponse({"error": f"action {body.get('action')!r} is not like or skip"}, 400)
        if prefs is None:
            return JSONResponse({"error": "this server keeps no preferences"}, 409)
        prefs.record(p.emotion, body["track"], body["action"])
        return _public(p, prefs)

    @app.get("/media/{emotion}/{index}")
    def media(emotion: str, index: int):
        p = playlists.get(emotion)
        if p is None or not 0 <= index < len(p.tracks) or not p.tracks[index].is_local():
            raise HTTPException(404, "no such local track")
        return FileResponse(p.tracks[index].url)

    return app


def _public(p: Playlist, prefs: Preferences | None = None) -> dict:
    """A playlist as the page sees it, in the user's order: local files become /media/ links
    (by their index in the playlist file), never file paths; each track carries its likes and skips."""
    order = prefs.order(p) if prefs is not None else range(len(p.tracks))
    counts = prefs.counts(p.emotion) if prefs is not None else {}
    tracks = []
    for i in order:
        t = p.tracks[i]
        likes, skips = counts.get(t.title, (0, 0))
        tracks.append({"title": t.title, "url": f"/media/{p.emotion}/{i}" if t.is_local() else t.url,
                       "likes": likes, "skips": skips})
    return {"emotion": p.emotion, "name": p.name, "tracks": tracks}
