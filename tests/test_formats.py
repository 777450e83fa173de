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


def test_mixed_sizes_need_size_flag(fer_folder):
    write_img(fer_folder / "train" / "happy" / "Training_big.png", face(5, size=64))
    with pytest.raises(FersynthError, match="mixed image sizes") as e:
        ingest(fer_folder)
    assert "--size" in str(e.value)
    m, _ = ingest(fer_folder, options=IngestOptions(size=32))
    assert m.pixels.shape == (11, 32, 32)


def test_unreadable_and_unknown_paths(tmp_path):
    with pytest.raises(FersynthError, match="no such file"):
        ingest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FersynthError, match="cannot tell the dataset format"):
        ingest(tmp_path / "empty")
    with pytest.raises(FersynthError, match="unknown dataset format 'fer2031'"):
        ingest(tmp_path / "empty", format="fer2031")


@pytest.mark.shared
def test_shared_fer2013_counts():
    m, _ = ingest(SHARED_DATA / "fer2013")
    c = m.df.groupby(["subset", "label"]).size().unstack()
    names = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert list(c.loc["Training", [CLASSES.index(n) for n in names]]) == [3995, 436, 4097, 7215, 4830, 3171, 4965]
    assert list(c.loc["PublicTest", [CLASSES.index(n) for n in names]]) == [467, 56, 496, 895, 653, 415, 607]
    assert list(c.loc["PrivateTest", [CLASSES.index(n) for n in names]]) == [491, 55, 528, 879, 594, 416, 626]
