"""`fersynth app MODEL`: the live emotion -> playlist app (web page), or the same on a video file."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import typer

from fersynth.atomic import atomic_open
from fersynth.errors import FersynthError


def register(app: typer.Typer) -> None:
    app.command("app")(live_app)


def live_app(
    model: Path = typer.Argument(..., help="A fersynth run directory, checkpoint or exported .onnx, a Keras mini-Xception .hdf5 or a .tflite model."),
    playlists: Path = typer.Option(None, "--playlists", help="YAML {emotion: {name, tracks}} (default: the bundled one)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on."),
    port: int = typer.Option(8000, "--port", help="Port to serve on."),
    video: str = typer.Option(None, "--video", help="Run headless on a video file (or camera index) instead of serving the page."),
    out: Path = typer.Option(None, "--out", "-o", help="With --video: write one JSON line per processed frame here."),
    every: int = typer.Option(1, "--every", help="With --video: process every N-th frame."),
    max_frames: int = typer.Option(0, "--max-frames", help="With --video: stop after this many processed frames (0: all)."),
    no_detect: bool = typer.Option(False, "--no-detect", help="Frames are already face crops: skip face detection."),
    hold: int = typer.Option(4, "--hold", help="Frames a new emotion must lead before the playlist switches."),
    alpha: float = typer.Option(0.35, "--alpha", help="Weight of the newest frame in the smoothed probabilities."),
    prefs: Path = typer.Option(None, "--prefs", help="SQLite file of the user's likes and skips (default: app.sqlite under the user's data folder, e.g. ~/.local/share/fersynth)."),
) -> None:
    """Show a trained model live: camera -> face -> emotion -> music playlist.

    Serves a page at http://HOST:PORT that uses the browser's camera; frames are scored by the
    server and not stored. Likes and skips reorder each emotion's playlist (liked first, skipped
    last) and are remembered in --prefs. With --video, the same runs on a file and prints each switch."""
    from fersynth.app.live import check_smoothing, load_playlists
    from fersynth.verify.experts import load_expert

    if out is not None and video is None:
        raise FersynthError("--out is only used with --video", hint="add --video FILE, or drop --out")
    if every < 1:
        raise FersynthError(f"--every {every} must be >= 1")
    if max_frames < 0:
        raise FersynthError(f"--max-frames {max_frames} must be >= 0")
    if not 0 < port < 65536:
        raise FersynthError(f"--port {port} out of range", hint="use 1..65535")
    check_smoothing(alpha, hold)  # before the model loads
    lists = load_playlists(playlists)
    expert = load_expert(model)
    if video is not None:
        _run_video(expert, lists, video, out, every, max_frames, not no_detect, hold, alpha)
        return
    try:
        import uvicorn

        from fersynth.app.server import create_app
    except ImportError as e:
        raise FersynthError(f"the web app needs fastapi and uvicorn ({e})", hint="pip install fastapi uvicorn") from None
    from fersynth.app.prefs import Preferences

    store = Preferences(prefs)
    web = create_app(expert, lists, detect=not no_detect, hold=hold, alpha=alpha, model_name=str(model), prefs=store)
    print(f"fersynth live: model {model}; preferences {store.path}; open http://{host}:{port} (Ctrl+C stops)", flush=True)
    uvicorn.run(web, host=host, port=port, log_level="warning")


def _run_video(expert, lists, source: str, out: Path | None, every: int, max_frames: int, detect: bool,
               hold: int, alpha: float) -> None:
    import cv2

    from fersynth.app.live import LiveSession

    src = int(source) if source.isdigit() else source
    if isinstance(src, str) and not Path(src).is_file():
        raise FersynthError(f"video not found: {src}", hint="give a video file or a camera index such as 0")
    cap = cv2.VideoCapture(src)
    if not cap.isOpened():
        raise FersynthError(f"{source}: cannot open as video", hint="give a video file OpenCV can read, or a camera index")
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    live = LiveSession(expert, lists, detect=detect, hold=hold, alpha=alpha)
    read = processed = faces = 0
    held_frames: dict[str, int] = {}
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.callback(cap.release)
        sink = stack.enter_context(atomic_open(out)) if out is not None else None  # kept only on success
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            read += 1
            if (read - 1) % every:
                continue
            r = live.step(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            processed += 1
            faces += r.box is not None
            t = (read - 1) / fps if fps > 0 else None
            if r.emotion:
                held_frames[r.emotion] = held_frames.get(r.emotion, 0) + 1
            if r.changed:
                when = f"{t:7.2f}s" if t is not None else f"frame {read - 1}"
                pl = r.playlist
                print(f"{when}  {r.emotion:<9} -> " + (f"playlist '{pl.name}': {pl.tracks[0].title}" if pl else "(no playlist)"))
            if sink:
                sink.write(json.dumps(dict(r.to_dict(), index=read - 1, t=t)) + "\n")
            if max_frames and processed >= max_frames:
                break
        if read == 0:
            raise FersynthError(f"{source}: no frames could be read", hint="is the file a video OpenCV can decode?")
    dt = time.perf_counter() - t0
    share = ", ".join(f"{k} {v / processed:.0%}" for k, v in sorted(held_frames.items(), key=lambda kv: -kv[1]))
    print(f"{processed} frames scored ({faces} with a face) in {dt:.1f} s ({processed / max(dt, 1e-9):.1f} frames/s)"
          + (f"; held emotion: {share}" if share else "") + (f"; -> {out}" if out else ""))
