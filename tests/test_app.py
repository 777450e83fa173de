"""The live app: playlists, smoothing, the session on a trained checkpoint, the server, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fersynth.app.live import EmotionSmoother, LiveSession, decode_image, load_playlists
from fersynth.cli.main import main
from fersynth.data.demo import make_demo_faces
from fersynth.data.manifest import Manifest
from fersynth.errors import FersynthError
from fersynth.labels import CLASSES
from fersynth.train import resolve_config
from fersynth.train.loop import train
from fersynth.verify.experts import load_expert

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    d = make_demo_faces(60, seed=1, difficulty=0.3)  # the recipe test_train shows to learn demo faces
    cfg = resolve_config(None, {"model": "fernet_s", "batch_size": 32, "epochs": 6, "optimizer": "adamw",
                                "lr": 3e-3, "scheduler": "onecycle", "num_threads": 2})
    run = tmp_path_factory.mktemp("app") / "run"
    train(Manifest.from_arrays(d.pixels, d.labels, split="train"), cfg, run, progress=False)
    return run


@pytest.fixture(scope="module")
def two_faces(ckpt):
    """Two demo faces the checkpoint gives different, confident classes (as 96x96 frames)."""
    expert = load_expert(ckpt)
    faces = make_demo_faces(6, seed=50, size=96, difficulty=0.3).pixels
    probs = expert.predict_proba(faces)
    order = np.argsort(-probs.max(1))
    a = order[0]
    b = next(i for i in order if probs[i].argmax() != probs[a].argmax())
    return [(faces[i], CLASSES[int(probs[i].argmax())]) for i in (a, b)]


def png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


# --------------------------------------------------------------------------- playlists
def test_default_playlists_cover_every_class():
    lists = load_playlists()
    assert set(lists) == set(CLASSES)
    assert all(p.tracks and p.name for p in lists.values())


@pytest.mark.parametrize("text, message", [
    ("hapy: [a]\n", "unknown emotion 'hapy' (hint: did you mean 'happy'?)"),
    ("happy: {name: x, tracks: []}\n", "'happy.tracks' must be a non-empty list"),
    ("happy: {name: x, tracks: [a], colour: red}\n", "unknown key 'happy.colour'"),
    ("happy: {tracks: [{title: a, url: nothere.mp3}]}\n", "'happy.tracks[0].url' nothere.mp3 does not exist"),
    ("happy: [a]\njoy: [b]\n", "emotion 'happy' is given twice"),
    ("- a\n", "expected a mapping"),
    ("happy: [a\n", "not valid YAML"),
])
def test_bad_playlists_name_file_and_key(tmp_path, text, message):
    p = tmp_path / "pl.yaml"
    p.write_text(text)
    with pytest.raises(FersynthError) as e:
        load_playlists(p)
    assert str(p) in str(e.value) and message in str(e.value)


def test_playlist_local_track_is_resolved(tmp_path):
    (tmp_path / "music").mkdir()
    (tmp_path / "music" / "a.mp3").write_bytes(b"ID3")
    p = tmp_path / "pl.yaml"
    p.write_text("sadness: {name: Slow, tracks: [{title: A, url: music/a.mp3}, {title: B, url: 'https://x/b'}]}\n")
    pl = load_playlists(p)["sad"]
    assert pl.tracks[0].is_local() and Path(pl.tracks[0].url) == (tmp_path / "music" / "a.mp3").resolve()
    assert not pl.tracks[1].is_local()


# --------------------------------------------------------------------------- smoothing
def onehot(k: int, n: int = 7, p: float = 0.9) -> np.ndarray:
    v = np.full(n, (1 - p) / (n - 1))
    v[k] = p
    return v


def test_smoother_switches_only_after_hold_frames():
    s = EmotionSmoother(7, alpha=1.0, hold=3)
    assert [s.update(onehot(3)) for _ in range(3)] == [False, False, True] and s.current == 3
    s.update(onehot(4))  # one odd frame
    s.update(onehot(3))
    assert s.current == 3
    assert [s.update(onehot(4)) for _ in range(3)] == [False, False, True] and s.current == 4


def test_smoother_average_damps_a_single_frame():
    s = EmotionSmoother(7, alpha=0.3, hold=1)
    for _ in range(5):
        s.update(onehot(3))
    assert s.update(onehot(0)) is False and s.current == 3  # one frame cannot outweigh five
    with pytest.raises(FersynthError, match="smoothing alpha 0.0 out of range"):
        EmotionSmoother(7, alpha=0.0)


# --------------------------------------------------------------------------- the session
def test_session_scores_the_face_box_and_switches_the_playlist(ckpt, two_faces):
    expert, lists = load_expert(ckpt), load_playlists()
    (fa, ca), (fb, cb) = two_faces
    frame_of = {}
    for face, c in two_faces:  # the face pasted at (40, 20) of a larger frame
        f = np.full((160, 200), 30, np.uint8)
        f[20:116, 40:136] = face
        frame_of[c] = f
    live = LiveSession(expert, lists, hold=3, alpha=0.6, margin=0.0, detector=lambda g: [(40, 20, 96, 96)])
    r = live.step(frame_of[ca])
    assert r.box == (40, 20, 96, 96) and r.emotion is None and r.frame_size == (200, 160)
    direct = expert.predict_proba(np.repeat(fa[..., None], 3, 2)[None])[0]
    np.testing.assert_allclose([r.probs[c] for c in expert.canonical_classes], direct, atol=1e-4)
    readings = [live.step(frame_of[ca]) for _ in range(2)]
    assert readings[-1].changed and readings[-1].emotion == ca and readings[-1].playlist.emotion == ca
    seq = [live.step(frame_of[cb]) for _ in range(8)]
    switched = [i for i, r in enumerate(seq) if r.changed]
    assert len(switched) == 1 and seq[-1].emotion == cb and seq[-1].playlist.name == lists[cb].name
    assert switched[0] >= 2  # held for at least `hold` frames first


def test_no_face_keeps_the_music(ckpt, two_faces):
    lists = load_playlists()
    (fa, ca), (fb, cb) = two_faces
    seen = {"face": True}
    live = LiveSession(load_expert(ckpt), lists, hold=2, alpha=0.6, margin=0.0,
                       detector=lambda g: [(0, 0, 96, 96)] if seen["face"] else [])
    first = [live.step(fa) for _ in range(3)]
    assert first[-1].emotion == ca and first[-1].playlist.name == lists[ca].name  # a playlist is playing
    seen["face"] = False  # the face leaves the frame (another face's pixels are there, but none is found)
    gone = [live.step(fb) for _ in range(6)]
    for r in gone:
        assert r.box is None and r.probs is None and not r.changed
        assert r.emotion == ca and r.playlist.name == lists[ca].name  # the music stays
    seen["face"] = True  # the other face shows up: the switch needs `hold` frames again
    back = [live.step(fb) for _ in range(6)]
    assert back[0].emotion == ca and back[-1].emotion == cb and sum(r.changed for r in back) == 1


def test_decode_image_errors():
    with pytest.raises(FersynthError, match="empty image"):
        decode_image(b"")
    with pytest.raises(FersynthError, match="not a decodable image"):
        decode_image(b"not an image at all")
    rgb = decode_image(png(np.dstack([np.full((4, 4), v, np.uint8) for v in (10, 20, 30)])))  # BGR on disk
    assert rgb.shape == (4, 4, 3) and tuple(rgb[0, 0]) == (30, 20, 10)


@pytest.mark.shared
def test_haar_finds_a_real_face_in_a_frame():
    folder = SHARED / "data" / "fer2013" / "test" / "happy"
    if not folder.is_dir():
        pytest.skip("../shared/data/fer2013 not present")
    from fersynth.app.live import _as_rgb
    from fersynth.faces.convert import DomainSpec, face_box

    spec = DomainSpec(size=96, gray=False, detect_face=True, margin=0.0, min_face=0.15)
    hits = 0
    for p in sorted(folder.iterdir())[:20]:
        face = cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (144, 144))
        frame = np.full((240, 320), 90, np.uint8)
        frame[50:194, 100:244] = face
        box = face_box(_as_rgb(frame), spec)
        if box is not None:
            x, y, s, _ = box
            assert 80 <= x and x + s <= 264 and 30 <= y and y + s <= 214, box  # on the pasted face
            hits += 1
    assert hits >= 10, f"Haar found {hits} of 20 FER2013 faces"


# --------------------------------------------------------------------------- the server
def test_server_page_info_frame_and_media(ckpt, two_faces, tmp_path):
    from fastapi.testclient import TestClient

    from fersynth.app.server import create_app

    (tmp_path / "a.mp3").write_bytes(b"ID3fake")
    pl = tmp_path / "pl.yaml"
    face, c = two_faces[0]
    pl.write_text(f"{c}: {{name: Mine, tracks: [{{title: A, url: a.mp3}}, {{title: B, url: 'https://e/b'}}]}}\n")
    client = TestClient(create_app(load_expert(ckpt), load_playlists(pl), detect=False, hold=2))
    page = client.get("/")
    assert page.status_code == 200 and "getUserMedia" in page.text
    info = client.get("/api/info").json()
    assert info["classes"] == list(CLASSES[:7]) and info["playlists"] == [c]
    rs = [client.post("/api/frame?session=t1", content=png(face)).json() for _ in range(2)]
    assert rs[0]["emotion"] is None and rs[1]["emotion"] == c and rs[1]["changed"]
    assert rs[1]["box"] == [0, 0, 96, 96] and abs(sum(rs[1]["probs"].values()) - 1) < 1e-3
    assert rs[1]["playlist"]["tracks"][0]["url"] == f"/media/{c}/0"  # never a file path
    assert client.post("/api/frame?session=t2", content=png(face)).json()["emotion"] is None  # own smoothing
    bad = client.post("/api/frame", content=b"garbage")
    assert bad.status_code == 400 and "not a decodable image" in bad.json()["error"]
    assert client.get(f"/media/{c}/0").content == b"ID3fake"
    assert client.get(f"/media/{c}/1").status_code == 404  # remote: not served
    assert client.get("/media/happy/9").status_code == 404
    long = client.post("/api/frame", params={"session": "x" * 60_000}, content=png(face))  # httpx caps URLs at 64k
    assert long.status_code == 422 and len(long.text) < 300, long.text[:300]  # not the name echoed back
    assert "session" in long.json()["error"] and "64" in long.json()["error"]


# --------------------------------------------------------------------------- the CLI
def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert vw.isOpened()
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR) if f.ndim == 2 else f)
    vw.release()
    return path


def test_cli_video_mode_prints_switches_and_writes_jsonl(ckpt, two_faces, tmp_path, capsys):
    (fa, ca), (fb, cb) = two_faces
    video = write_video(tmp_path / "v.avi", [fa] * 6 + [fb] * 8)
    out = tmp_path / "out" / "frames.jsonl"
    code = main(["app", str(ckpt), "--video", str(video), "--no-detect", "--hold", "2", "--alpha", "0.8",
                 "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 14 and rows[0]["index"] == 0 and abs(rows[1]["t"] - 0.1) < 1e-6
    assert rows[5]["emotion"] == ca and rows[-1]["emotion"] == cb
    assert f"{ca:<9} -> playlist" in text and f"{cb:<9} -> playlist" in text and "14 frames scored" in text


@pytest.mark.parametrize("args, message", [
    (["nope-model", "--video", "x"], "expert model not found"),
    (["{ckpt}", "--video", "{tmp}/missing.mp4"], "video not found"),
    (["{ckpt}", "--video", "{tmp}/notvideo.mp4", "--out", "{tmp}/o.jsonl"], "notvideo.mp4"),
    (["{ckpt}", "--out", "{tmp}/o.jsonl"], "--out is only used with --video"),
    (["{ckpt}", "--playlists", "{tmp}/missing.yaml"], "playlist file not found"),
    (["{ckpt}", "--hold", "0"], "hold 0 must be >= 1"),
    (["{ckpt}", "--port", "70000"], "--port 70000 out of range"),
])
def test_cli_bad_inputs_exit_2(ckpt, tmp_path, capsys, args, message):
    (tmp_path / "notvideo.mp4").write_text("this is text")
    code = main(["app"] + [a.format(ckpt=ckpt, tmp=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o.jsonl").exists() and not list(tmp_path.glob(".o.jsonl*"))  # nothing half-written


# --------------------------------------------------------------------------- the page in a real browser
def browser_or_skip() -> tuple[str, str]:
    """Chromium and chromedriver from the system (CI installs Debian's), or skip with the reason."""
    import shutil

    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        pytest.skip("no system chromium + chromedriver here (apt-get install chromium chromium-driver; CI has them)")
    return chrome, driver


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 5) -> Path:
    """Grey frames as a YUV4MPEG2 4:2:0 file, the format Chromium's fake camera reads."""
    h, w = frames[0].shape
    chroma = np.full((h // 2) * (w // 2), 128, np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for fr in frames:
            f.write(b"FRAME\n" + np.ascontiguousarray(fr).tobytes() + chroma + chroma)
    return path


def camera_frame(face: np.ndarray) -> np.ndarray:
    """A 480 x 360 camera frame (the width the page sends) with the face in the middle."""
    f = np.full((360, 480), 100, np.uint8)
    f[105:255, 165:315] = cv2.resize(face, (150, 150))
    return f


def page_view(frame: np.ndarray) -> np.ndarray:
    """What the server gets from the page: the frame as JPEG (quality 0.85)."""
    return decode_image(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())


class AppServer:
    """`fersynth app` in its own process, as a user starts it."""

    def __init__(self, *args: str):
        import socket
        import subprocess
        import sys
        import time
        import urllib.request

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "fersynth.cli.main", "app", *args, "--port", str(self.port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        t0 = time.time()
        while time.time() - t0 < 120:
            if self.proc.poll() is not None:
                raise AssertionError(f"fersynth app exited: {self.proc.stdout.read()}")
            try:
                urllib.request.urlopen(f"{self.url}/api/info", timeout=2).read()
                return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise AssertionError("fersynth app did not answer within 120 s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except Exception:
            self.proc.kill()
            self.proc.wait()


def test_page_in_chromium_with_a_fake_camera(ckpt, tmp_path):
    """The page on Chromium's fake camera: one expression, then another. It shows the face box
    and the probabilities and switches the playlist; a like and a skip reorder that emotion's
    next playlist after a restart of the server."""
    chrome, chromedriver = browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # two demo faces the app, seeing them the way the page sends them, puts in different classes
    expert = load_expert(ckpt)
    live = LiveSession(expert, load_playlists(), min_face=0.15)
    scored = []
    for face in make_demo_faces(6, seed=50, size=96, difficulty=0.3).pixels:
        crop = live.face(page_view(camera_frame(face)))[1]
        if crop is not None:
            p = expert.predict_proba(crop[None])[0]
            scored.append((float(p.max()), CLASSES[int(p.argmax())], face))
    scored.sort(key=lambda s: -s[0])
    _, ca, fa = scored[0]
    _, cb, fb = next(s for s in scored if s[1] != ca)
    # 4 s of the first face, then 20 s of the second (the fake camera loops the file)
    video = write_y4m(tmp_path / "camera.y4m", [camera_frame(fa)] * 20 + [camera_frame(fb)] * 100)
    (tmp_path / "tone.wav").write_bytes(_wav_bytes())
    pl = tmp_path / "pl.yaml"
    pl.write_text(f"{ca}: {{name: First list, tracks: [{{title: T1, url: tone.wav}}, T2]}}\n"
                  f"{cb}: {{name: Second list, tracks: [{{title: S1, url: tone.wav}}, {{title: S2, url: tone.wav}}, S3]}}\n")
    prefs = tmp_path / "user" / "prefs.sqlite"
    args = [str(ckpt), "--playlists", str(pl), "--prefs", str(prefs), "--hold", "2", "--alpha", "0.8"]

    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--mute-audio",
              "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
              f"--use-file-for-fake-video-capture={video}", "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(a)
    server = AppServer(*args)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)  # no selenium-manager
    try:
        wait = WebDriverWait(driver, 90, poll_frequency=0.2)

        def text(css):  # as in the DOM, before CSS capitalises it
            return driver.execute_script("return document.querySelector(arguments[0]).textContent", css)

        def titles():
            return driver.execute_script(
                "return [...document.querySelectorAll('#tracks li')].map((li) => li.dataset.title)")

        driver.get(server.url + "/?autostart=1")
        wait.until(lambda d: text("#emotion") == ca)
        assert text("#plname") == "First list"
        assert driver.find_element(By.ID, "overlay").get_attribute("data-box")  # the face box is drawn
        vals = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#bars .val")]
        assert len(vals) == 7 and all(v.endswith("%") for v in vals)
        assert driver.execute_script("return document.getElementById('audio').src").endswith(f"/media/{ca}/0")
        wait.until(lambda d: text("#emotion") == cb)  # the second expression: the playlist switches
        assert text("#plname") == "Second list" and titles() == ["S1", "S2", "S3"]
        driver.find_element(By.CSS_SELECTOR, "#tracks li[data-title='S3'] button.like").click()
        wait.until(lambda d: titles() == ["S3", "S1", "S2"])
        driver.find_element(By.CSS_SELECTOR, "#tracks li[data-title='S1'] button.skip").click()
        wait.until(lambda d: titles() == ["S3", "S2", "S1"])
        server.stop()  # restart: a new process on the same preference file
        server = AppServer(*args)
        driver.get(server.url + "/?autostart=1")
        wait.until(lambda d: text("#emotion") == cb)
        assert titles() == ["S3", "S2", "S1"]  # liked first, skipped last
        assert text("#plname") == "Second list"
    finally:
        driver.quit()
        server.stop()


def _wav_bytes(seconds: float = 1.0, rate: int = 8000) -> bytes:
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(rate)
        t = np.arange(int(seconds * rate)) / rate
        w.writeframes((128 + 40 * np.sin(2 * np.pi * 440 * t)).astype(np.uint8).tobytes())
    return buf.getvalue()
