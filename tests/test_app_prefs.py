"""The app learns its user: likes and skips per emotion in SQLite, playlists in the user's order."""

from __future__ import annotations

import pytest

from fersynth.app.live import load_playlists
from fersynth.app.prefs import Preferences, default_path
from fersynth.errors import FersynthError
from fersynth.labels import CLASSES


@pytest.fixture
def lists(tmp_path):
    (tmp_path / "a.mp3").write_bytes(b"ID3a")
    p = tmp_path / "pl.yaml"
    p.write_text("happy: {name: Up, tracks: [{title: A, url: a.mp3}, B, {title: C, url: 'https://e/c'}, D]}\n"
                 "sad: {name: Down, tracks: [A, B]}\n")
    return load_playlists(p)


def titles(pl) -> list[str]:
    return [t.title for t in pl.tracks]


def test_liked_first_skipped_last_and_it_survives_a_restart(lists, tmp_path):
    db = tmp_path / "data" / "prefs.sqlite"
    prefs = Preferences(db)
    happy = lists["happy"]
    assert titles(prefs.ordered(happy)) == ["A", "B", "C", "D"]  # nothing rated: the file's order
    prefs.record("happy", "C", "like")
    prefs.record("happy", "A", "skip")
    prefs.record("happy", "D", "like")
    prefs.record("happy", "D", "like")
    assert titles(prefs.ordered(happy)) == ["D", "C", "B", "A"]  # most liked first, skipped last
    assert titles(prefs.ordered(lists["sad"])) == ["A", "B"]  # per emotion
    prefs.close()
    again = Preferences(db)  # a restart
    assert titles(again.ordered(happy)) == ["D", "C", "B", "A"]
    assert again.counts("happy") == {"C": (1, 0), "A": (0, 1), "D": (2, 0)}
    again.record("happy", "A", "like")  # a like cancels a skip: back to unrated
    assert titles(again.ordered(happy)) == ["D", "C", "A", "B"]
    again.close()


def test_bad_preferences_file_and_action(tmp_path):
    bad = tmp_path / "not.sqlite"
    bad.write_text("this is not a database, just text that is long enough " * 20)
    with pytest.raises(FersynthError, match="not.sqlite: cannot use as the app's preference file"):
        Preferences(bad)
    ok = Preferences(tmp_path / "ok.sqlite")
    with pytest.raises(FersynthError, match="unknown feedback action 'love'"):
        ok.record("happy", "A", "love")
    ok.close()


def test_default_path_is_under_the_users_data_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    import sys

    if sys.platform.startswith("linux"):
        assert default_path() == tmp_path / "fersynth" / "app.sqlite"


class Untouched:
    """The feedback endpoint never scores images; an expert that would fail loudly if it did."""

    name = "untouched"
    canonical_classes = CLASSES[:7]

    def predict_proba(self, x):  # pragma: no cover - must not be called
        raise AssertionError("the feedback path scored an image")


def test_server_feedback_reorders_playlists(lists, tmp_path):
    from fastapi.testclient import TestClient

    from fersynth.app.server import create_app

    db = tmp_path / "prefs.sqlite"
    first, second = Preferences(db), Preferences(db)
    client = TestClient(create_app(Untouched(), lists, prefs=first))
    r = client.post("/api/feedback", json={"emotion": "happy", "track": "D", "action": "like"})
    assert r.status_code == 200 and [t["title"] for t in r.json()["tracks"]] == ["D", "A", "B", "C"]
    r = client.post("/api/feedback", json={"emotion": "happy", "track": "A", "action": "skip"}).json()
    assert [t["title"] for t in r["tracks"]] == ["D", "B", "C", "A"]
    a = r["tracks"][-1]
    assert a["url"] == "/media/happy/0" and a["skips"] == 1  # the media link keeps the file's index
    assert client.get("/media/happy/0").content == b"ID3a"
    for body, msg in [({"emotion": "joy", "track": "A", "action": "like"}, "no playlist for emotion"),
                      ({"emotion": "happy", "track": "Z", "action": "like"}, "no track 'Z'"),
                      ({"emotion": "happy", "track": "A", "action": "love"}, "is not like or skip")]:
        bad = client.post("/api/feedback", json=body)
        assert bad.status_code == 400 and msg in bad.json()["error"]
    assert client.post("/api/feedback", content=b"{not json").status_code == 400
    # a new server on the same file (a restart) serves the learned order
    first.close()
    fresh = TestClient(create_app(Untouched(), lists, prefs=second))
    assert [t["title"] for t in fresh.get("/api/playlists").json()["happy"]["tracks"]] == ["D", "B", "C", "A"]
    no_store = TestClient(create_app(Untouched(), lists))
    assert no_store.post("/api/feedback", json={"emotion": "happy", "track": "A", "action": "like"}).status_code == 409
    second.close()
