"""Every dataset format: detection, counts, labels, subsets; and every kind of bad input."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED_DATA, face, fer_csv_text, pix_str, write_img
from fersynth.data.formats import IngestOptions
from fersynth.data.ingest import ingest
from fersynth.data.manifest import Manifest
from fersynth.errors import FersynthError
from fersynth.labels import CLASSES


def test_fer2013_folders(fer_folder):
    m, rep = ingest(fer_folder)
    assert rep.format == "fer2013"
    assert len(m) == 10 and m.pixels.shape == (10, 48, 48) and m.pixels.dtype == np.uint8
    counts = m.df.groupby(["subset", "label"]).size().to_dict()
    assert counts[("Training", CLASSES.index("happy"))] == 3
    assert counts[("PrivateTest", CLASSES.index("sad"))] == 1
    assert set(m.df.loc[m.df.subset == "PublicTest", "split"]) == {"test"}
    assert m.df["id"].is_unique and (m.df["source"] == "real").all()


def test_manifest_roundtrip(fer_folder, tmp_path):
    m, _ = ingest(fer_folder)
    m.save(tmp_path / "man")
    back = Manifest.load(tmp_path / "man")
    assert back.df.equals(m.df) and np.array_equal(back.pixels, m.pixels)
    assert back.root == m.root


def test_source_untouched(fer_folder):
    before = sorted((p.relative_to(fer_folder), p.stat().st_mtime_ns) for p in fer_folder.rglob("*"))
    ingest(fer_folder)
    after = sorted((p.relative_to(fer_folder), p.stat().st_mtime_ns) for p in fer_folder.rglob("*"))
    assert before == after


def test_fer2013_csv(fer_csv):
    m, rep = ingest(fer_csv)
    assert rep.format == "fer2013_csv"
    assert list(m.labels) == [3, 0, 6, 1]
    assert list(m.df["subset"]) == ["Training", "Training", "PublicTest", "PrivateTest"]
    assert list(m.df["split"]) == ["train", "train", "test", "test"]
    expected = np.array(pix_str(1).split(), dtype=np.uint8).reshape(48, 48)
    assert np.array_equal(m.pixels[0], expected)


@pytest.mark.parametrize(
    "row, needle",
    [
        ((3, "1 2 x 4", "Training"), "row 3: malformed pixel string (token 'x'"),
        ((3, pix_str(9, 2000), "Training"), "row 3: 2000 pixels"),
        ((9, pix_str(9), "Training"), "row 3: emotion '9' is not a code 0-6"),
        ((3, pix_str(9), "Validation"), "row 3: Usage 'Validation'"),
    ],
)
def test_fer2013_csv_bad_rows(tmp_path, row, needle):
    p = tmp_path / "fer2013.csv"
    p.write_text(fer_csv_text([(3, pix_str(1), "Training"), row]))
    with pytest.raises(FersynthError, match="fer2013.csv") as e:
        ingest(p)
    assert needle in str(e.value)
    m, rep = ingest(p, options=IngestOptions(skip_bad=True))
    assert len(m) == 1 and len(rep.skipped) == 1 and "row 3" in rep.skipped[0][0]


def test_fer2013_csv_missing_column(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("emotion,Usage\n3,Training\n")
    with pytest.raises(FersynthError, match="missing column 'pixels'"):
        ingest(p, format="fer2013_csv")


def test_imagefolder_with_class_map(tmp_path):
    root = tmp_path / "mine"
    write_img(root / "train" / "joy" / "a.png", face(1))
    write_img(root / "train" / "angry" / "b.png", face(2))
    write_img(root / "val" / "joy" / "c.png", face(3))
    write_img(root / "test" / "grumpy" / "d.png", face(4))
    with pytest.raises(FersynthError, match="unknown class folder 'grumpy'"):
        ingest(root)
    m, rep = ingest(root, options=IngestOptions(class_map={"grumpy": "angry"}))
    assert rep.format == "imagefolder"
    assert dict(zip(m.df["path"], m.labels)) == {
        "train/joy/a.png": 3, "train/angry/b.png": 0, "val/joy/c.png": 3, "test/grumpy/d.png": 0}
    assert set(m.df["split"]) == {"train", "val", "test"}


def test_ckplus_class_folders_with_contempt(tmp_path):
    root = tmp_path / "ckplus"
    for i, cls in enumerate(["anger", "contempt", "sadness", "surprise"]):
        write_img(root / cls / f"S0{i}.png", face(i))
    m, rep = ingest(root)
    assert rep.format == "ckplus"
    assert sorted(m.labels) == sorted(CLASSES.index(c) for c in ["angry", "contempt", "sad", "surprise"])
    assert m.num_classes == 8


def test_affectnet_numeric_folders(tmp_path):
    root = tmp_path / "affectnet"
    for k in range(8):
        write_img(root / "train" / str(k) / f"{k}.jpg", face(k, rgb=True))
    write_img(root / "val" / "7" / "v.jpg", face(99, rgb=True))
    m, rep = ingest(root)
    assert rep.format == "affectnet"
    got = dict(zip(m.df["path"], m.labels))
    assert got["train/0/0.jpg"] == CLASSES.index("neutral") and got["train/6/6.jpg"] == CLASSES.index("angry")
    assert got["val/7/v.jpg"] == CLASSES.index("contempt")
    assert m.df.loc[m.df.path == "val/7/v.jpg", "split"].item() == "test"
    assert m.pixels.shape[1:] == (48, 48, 3)


def test_rafdb(tmp_path):
    root = tmp_path / "rafdb"
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 1\ntrain_00002.jpg 4\ntest_0001.jpg 6\n")
    for n in ("train_00001", "train_00002", "test_0001"):
        write_img(root / "Image" / "aligned" / f"{n}_aligned.jpg", face(len(n), size=100, rgb=True))
    m, rep = ingest(root)
    assert rep.format == "rafdb"
    assert list(m.labels) == [CLASSES.index("surprise"), CLASSES.index("happy"), CLASSES.index("angry")]
    assert list(m.df["split"]) == ["train", "train", "test"]
    (root / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 1\ntrain_00002.jpg 9\n")
    with pytest.raises(FersynthError, match="list_patition_label.txt:2"):
        ingest(root)


def test_ferplus_joined_by_row_order(tmp_path, fer_csv):
    votes = tmp_path / "fer2013new.csv"
    votes.write_text(
        "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
        "Training,fer0000000.png,0,9,0,0,0,0,0,0,1,0\n"     # happy, clear majority
        "Training,fer0000001.png,4,0,0,3,3,0,0,0,0,0\n"     # no majority -> unlabelled
        "PublicTest,,0,0,0,0,0,0,0,0,0,10\n"                # no image in FER+
        "PrivateTest,fer0000003.png,0,0,0,0,0,0,0,0,2,8\n"  # not a face
    )
    m, rep = ingest(votes, options=IngestOptions(images=str(fer_csv)))
    assert rep.format == "ferplus"
    assert list(m.labels) == [CLASSES.index("happy"), -1]
    assert rep.notes["dropped"] == {"no_image": 1, "not_a_face": 1, "unknown": 0, "no_majority": 1}
    soft = np.asarray(m.df["soft_label"].iloc[0])
    assert soft[CLASSES.index("happy")] == pytest.approx(1.0)
    assert list(m.df["orig_label"]) == [3, 0]


def test_ferplus_needs_images(tmp_path):
    votes = tmp_path / "fp" / "fer2013new.csv"
    votes.parent.mkdir()
    votes.write_text("Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n")
    with pytest.raises(FersynthError, match="need the FER2013 images"):
        ingest(votes)


def test_corrupt_and_truncated_images(fer_folder):
    bad = fer_folder / "train" / "happy" / "Training_broken.jpg"
    good = (fer_folder / "train" / "happy" / "Training_00.jpg").read_bytes()
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(FersynthError, match="Training_broken.jpg: corrupt or truncated"):
        ingest(fer_folder)
    m, rep = ingest(fer_folder, options=IngestOptions(skip_bad=True))
    assert len(m) == 10 and rep.skipped[0][0].endswith("Training_broken.jpg")
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(FersynthError, match="Training_broken.jpg: not an image"):
        ingest(fer_folder)


def test_non_image_file_and_empty_class(fer_folder):
    (fer_folder / "train" / "sad" / "notes.txt").write_text("hello")
    with pytest.raises(FersynthError, match="notes.txt: not an image file in class folder 'sad'"):
        ingest(fer_folder)
    (fer_folder / "train" / "sad" / "notes.txt").unlink()
    (fer_folder / "train" / "fear").mkdir()
    with pytest.raises(FersynthError, match="fear: class folder is empty"):
        ingest(fer_folder)
    m, rep = ingest(fer_folder, options=IngestOptions(skip_bad=True))
    assert len(m) == 10 and rep.skipped == [("train/fear", "empty class folder")]


def test_mixed_sizes_refused_or_resized(fer_folder):
    write_img(fer_folder / "train" / "happy" / "Training_big.png", face(5, size=64))
    with pytest.raises(FersynthError, match="Training_big.png: is 64x64 but the dataset's images are 48x48") as e:
        ingest(fer_folder, options=IngestOptions(photos="refuse"))
    assert "--photos" in str(e.value)
    with pytest.raises(FersynthError, match="mixed image sizes") as e:
        ingest(fer_folder, options=IngestOptions(photos="resize"))
    assert "--size" in str(e.value)
    m, _ = ingest(fer_folder, options=IngestOptions(size=32, photos="resize"))
    assert m.pixels.shape == (11, 32, 32)


def _photo_with_face(rgb: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A 640x480 'phone picture' with a demo face pasted in, and that face."""
    from fersynth.data.demo import make_demo_faces

    img = make_demo_faces(3, seed=0, size=144, difficulty=0.0).pixels[1]  # one the Haar cascade finds
    frame = np.full((480, 640), 90, np.uint8)
    frame[100:244, 200:344] = img
    return (np.dstack([frame] * 3) if rgb else frame), img


def test_photo_next_to_crops_is_face_cropped(fer_folder):
    import cv2

    photo, face_img = _photo_with_face()
    write_img(fer_folder / "train" / "happy" / "Training_phone.jpg", photo)
    write_img(fer_folder / "train" / "sad" / "Training_wall.png", np.tile(np.arange(640, dtype=np.uint8)[None] // 3, (480, 1)))
    m, rep = ingest(fer_folder)  # the default: photos are face-cropped
    assert m.pixels.shape == (11, 48, 48)  # the dataset's size and (gray) colour mode
    assert rep.notes["photos"] == {"converted": 1, "no_face": 1}
    assert ("train/sad/Training_wall.png", "photo without a detectable face (dropped)") in rep.skipped
    got = m.pixels[(m.df["path"] == "train/happy/Training_phone.jpg").to_numpy()][0].astype(int)
    want = cv2.resize(face_img, (48, 48), interpolation=cv2.INTER_AREA).astype(int)
    other = cv2.resize(np.full((144, 144), 90, np.uint8), (48, 48)).astype(int)
    assert np.abs(got - want).mean() < 0.5 * np.abs(got - other).mean()  # the face, not the background


def test_folder_of_only_faceless_photos_says_so(tmp_path):
    for cls in ("happy", "sad"):
        write_img(tmp_path / "d" / "train" / cls / "a.png", face(1, size=48))
        write_img(tmp_path / "d" / "train" / cls / "b.png", face(2, size=48))
    write_img(tmp_path / "d" / "train" / "sad" / "wall.png", np.full((300, 400), 120, np.uint8))
    m, rep = ingest(tmp_path / "d")
    assert len(m) == 4 and rep.notes["photos"] == {"converted": 0, "no_face": 1}


@pytest.mark.parametrize("dialect", ["bom", "crlf", "quoted", "trailing_blank", "all"])
def test_fer2013_csv_dialects(tmp_path, fer_csv, dialect):
    plain = ingest(fer_csv)[0]
    lines = fer_csv.read_text().splitlines()
    if dialect in ("quoted", "all"):
        lines = [lines[0]] + [",".join(f'"{f}"' for f in ln.split(",")) for ln in lines[1:]]
    text = ("\r\n" if dialect in ("crlf", "all") else "\n").join(lines) + "\n"
    if dialect in ("trailing_blank", "all"):
        text += "\n\r\n  \n,,\n"
    data = text.encode()
    if dialect in ("bom", "all"):
        data = b"\xef\xbb\xbf" + data
    p = tmp_path / "win" / "fer2013.csv"
    p.parent.mkdir()
    p.write_bytes(data)
    m, rep = ingest(p)  # detected without --format
    assert rep.format == "fer2013_csv" and not rep.skipped
    assert np.array_equal(m.pixels, plain.pixels) and list(m.labels) == list(plain.labels)
    assert list(m.df["subset"]) == list(plain.df["subset"])


def test_csv_bad_row_after_blank_lines_names_its_line(tmp_path):
    p = tmp_path / "fer2013.csv"
    p.write_text(f"emotion,pixels,Usage\n3,{pix_str(1)},Training\n\n3,1 2 x,Training\n")
    with pytest.raises(FersynthError, match="fer2013.csv row 4: malformed pixel string"):
        ingest(p)


def test_unreadable_and_unknown_paths(tmp_path):
    with pytest.raises(FersynthError, match="no such file"):
        ingest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FersynthError, match=f"{tmp_path / 'empty'}: no images in it"):
        ingest(tmp_path / "empty")
    (tmp_path / "empty" / "train" / "happy").mkdir(parents=True)  # a layout without images names the empty folder
    with pytest.raises(FersynthError, match="train/happy: class folder is empty"):
        ingest(tmp_path / "empty")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "x.png").write_bytes(b"")
    with pytest.raises(FersynthError, match="cannot tell the dataset format"):
        ingest(tmp_path / "odd")
    with pytest.raises(FersynthError, match="unknown dataset format 'fer2031'"):
        ingest(tmp_path / "empty", format="fer2031")


def test_streaming_ingest_matches_in_memory_decode(tmp_path, monkeypatch):
    """More images than a chunk, two workers: the written pixels.npy holds the bytes the old
    in-memory path (decode every file, np.stack) gave, and reads back memory-mapped."""
    import fersynth.data.ingest as ing
    from fersynth.data.decode import decode_files, stack_images
    from fersynth.data.demo import write_demo_folder
    from fersynth.data.pixels import Rows

    root = write_demo_folder(tmp_path / "demo", 12, seed=3, size=40)
    monkeypatch.setattr(ing, "CHUNK", 16)
    m, rep = ingest(root, out=tmp_path / "man", workers=2)
    files = [str(root / p) for p in m.df["path"]]
    ref = stack_images(*decode_files(files, workers=1)[:1], files)
    assert len(m) == 12 * 7 + 3 * 7 > 16 * 4
    back = Manifest.load(tmp_path / "man")
    assert isinstance(back.pixels, np.memmap) and back.pixels.shape == ref.shape
    assert np.load(tmp_path / "man" / "pixels.npy").tobytes() == ref.tobytes()
    mem, _ = ingest(root)  # the in-memory variant writes the same
    assert mem.df.equals(back.df) and mem.pixels.tobytes() == ref.tobytes()
    sel = back.where(split="test")
    assert isinstance(sel.pixels, Rows) and np.array_equal(np.asarray(sel.pixels), ref[(m.df["split"] == "test").to_numpy()])
    sel.save(tmp_path / "sel")
    assert np.array_equal(Manifest.load(tmp_path / "sel", mmap=False).pixels, np.asarray(sel.pixels))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_colour_image_after_gray_ones_turns_the_set_rgb(fer_folder, monkeypatch):
    import fersynth.data.ingest as ing

    monkeypatch.setattr(ing, "CHUNK", 2)
    monkeypatch.setattr(ing, "PROBE", 1)  # the sample sees only gray images
    write_img(fer_folder / "train" / "sad" / "Training_zcolour.png", face(7, rgb=True))
    m, _ = ingest(fer_folder, workers=1)
    assert m.pixels.shape == (11, 48, 48, 3)
    gray_row = m.pixels[0]
    assert (gray_row[..., 0] == gray_row[..., 2]).all()
    from fersynth.data.manifest import pixel_hashes, stable_ids

    assert list(m.df["id"]) == stable_ids(pixel_hashes(m.pixels))  # ids of the promoted rows were redone


@pytest.mark.shared
def test_shared_fer2013_counts():
    m, _ = ingest(SHARED_DATA / "fer2013")
    c = m.df.groupby(["subset", "label"]).size().unstack()
    names = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert list(c.loc["Training", [CLASSES.index(n) for n in names]]) == [3995, 436, 4097, 7215, 4830, 3171, 4965]
    assert list(c.loc["PublicTest", [CLASSES.index(n) for n in names]]) == [467, 56, 496, 895, 653, 415, 607]
    assert list(c.loc["PrivateTest", [CLASSES.index(n) for n in names]]) == [491, 55, 528, 879, 594, 416, 626]


def test_failed_ingest_leaves_the_old_manifest_whole(tmp_path, monkeypatch):
    """A decode error in a later chunk stops ingest: the manifest already at --out is untouched
    and no temporary folder or partial pixels.npy is left beside it."""
    import fersynth.data.ingest as ing
    from fersynth.data.demo import write_demo_folder

    root = write_demo_folder(tmp_path / "demo", 6, seed=1)
    first, _ = ingest(root, out=tmp_path / "man")
    before = {p.name: p.read_bytes() for p in (tmp_path / "man").iterdir()}
    last = sorted((root / "train" / "surprise").iterdir())[-1]
    last.write_bytes(last.read_bytes()[:100])
    monkeypatch.setattr(ing, "CHUNK", 8)
    with pytest.raises(FersynthError, match=f"{last.name}: corrupt or truncated"):
        ingest(root, out=tmp_path / "man", workers=2)
    assert {p.name: p.read_bytes() for p in (tmp_path / "man").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "man"]
