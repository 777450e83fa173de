"""The live web app: a FastAPI server and one static page that uses the browser's camera.

The page captures a frame every few hundred milliseconds, posts it as JPEG bytes to
`POST /api/frame?session=ID`, and draws what comes back: the face box, the class
probabilities, the held emotion and its playlist. Each browser tab gets its own
`LiveSession` (its own smoothing); the model is shared. Frames are not stored.

    GET  /                 the page
    GET  /api/info         model name, classes, settings
    GET  /api/playlists    every playlist
    POST /api/frame        image bytes -> Reading JSON (400 with {"error"} on a bad image)
    GET  /media/{emotion}/{i}   a local audio file named in the playlist file (nothing else)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from fersynth.app.live import LiveSession, Playlist, decode_image
from fersynth.errors import FersynthError

STATIC = Path(__file__).with_name("static")
MAX_SESSIONS = 32
MAX_FRAME_BYTES = 8 << 20


def create_app(expert, playlists: dict[str, Playlist], detect: bool = True, alpha: float = 0.35,
               hold: int = 4, margin: float = 0.2, min_face: float = 0.15, model_name: str | None = None):
    """The FastAPI application around one expert and one playlist map."""
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
        return {e: _public(p) for e, p in playlists.items()}

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
        out["playlist"] = _public(reading.playlist) if reading.playlist else None
        return out

    @app.get("/media/{emotion}/{index}")
    def media(emotion: str, index: int):
        p = playlists.get(emotion)
        if p is None or not 0 <= index < len(p.tracks) or not p.tracks[index].is_local():
            raise HTTPException(404, "no such local track")
        return FileResponse(p.tracks[index].url)

    return app


def _public(p: Playlist) -> dict:
    """A playlist as the page sees it: local files become /media/ links, never file paths."""
    d = p.to_dict()
    for i, t in enumerate(p.tracks):
        if t.is_local():
            d["tracks"][i]["url"] = f"/media/{p.emotion}/{i}"
    return d
