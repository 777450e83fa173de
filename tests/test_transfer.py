"""The generated-look shortcut check of the study report (fersynth.evaluate.transfer)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fersynth.data.manifest import Manifest
from fersynth.evaluate.transfer import shortcut_readings, transfer_matrix


def _called(dis_on_angry: float, dis_on_dis: float = 1.0) -> dict:
    return {"angry": {"angry": round(1 - dis_on_angry, 4), "disgust": dis_on_angry},
            "disgust": {"angry": round(1 - dis_on_dis, 4), "disgust": dis_on_dis}}


def test_an_arm_that_names_other_generated_faces_by_its_added_class_is_flagged():
    # the FER2013 study's pattern: the balance arm's model calls 54% of the generated angry faces disgust
    called = {"baseline": _called(0.0, 0.2), "balance": _called(0.54), "append": _called(0.05, 0.99),
              "weighted": _called(0.3, 0.98)}
    added = {"balance": {"disgust": 1274}, "append": {"angry": 300, "disgust": 300}, "weighted": {}}
    flags = shortcut_readings(called, "baseline", added)
    assert [(f["arm"], f["generated"], f["named"]) for f in flags] == [("balance", "angry", "disgust")]
    f = flags[0]
    assert f["share"] == 0.54 and f["reference_share"] == 0.0 and f["named_share_of_synthetic_rows"] == 1.0
    # a rise below the margin, or to a class the arm added no generated rows of, is not a shortcut
    assert shortcut_readings({"baseline": _called(0.0), "b": _called(0.15)}, "baseline", {"b": {"disgust": 9}}) == []
    assert shortcut_readings({"baseline": _called(0.0), "b": _called(0.9)}, "baseline", {"b": {"angry": 9}}) == []
    assert shortcut_readings({"b": _called(0.9)}, "baseline", {"b": {"disgust": 9}}) == []  # no reference ran


class _Fixed:
    """A predictor that names every image by its brightest-pixel rule (tests the bookkeeping only)."""

    classes = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]

    def predict_proba(self, pixels, batch_size=256):
        p = np.zeros((len(pixels), 7), np.float32)
        p[np.arange(len(pixels)), np.where(pixels.mean(axis=(1, 2)) > 127, 1, 0)] = 1
        return p


def test_transfer_matrix_counts_per_intended_class(tmp_path, monkeypatch):
    from fersynth import predictor

    pix = np.zeros((6, 8, 8), np.uint8)
    pix[[1, 3, 4, 5]] = 255  # bright: named disgust
    m = Manifest(pd.DataFrame({"id": [f"g{i}" for i in range(6)], "label": [0, 0, 0, 1, 1, 1],
                               "split": "train", "source": "own", "path": "", "subset": "", "dataset": "own"}),
                 pix)
    monkeypatch.setattr(predictor.Predictor, "load", classmethod(lambda cls, path, device=None: _Fixed()))
    called = transfer_matrix(m, tmp_path)
    assert called == {"angry": {"angry": round(2 / 3, 4), "disgust": round(1 / 3, 4)},
                      "disgust": {"angry": 0.0, "disgust": 1.0}}


def test_the_report_reads_the_flags_one_sentence_per_arm_and_class():
    from fersynth.experiment.report import shortcut_paragraph

    called = {"baseline": {"angry": {"angry": 0.9, "disgust": 0.0, "fear": 0.1},
                           "fear": {"angry": 0.1, "disgust": 0.05, "fear": 0.85},
                           "disgust": {"angry": 0.8, "disgust": 0.2, "fear": 0.0}},
              "balance": {"angry": {"angry": 0.46, "disgust": 0.54, "fear": 0.0},
                          "fear": {"angry": 0.0, "disgust": 0.5, "fear": 0.5},
                          "disgust": {"angry": 0.0, "disgust": 1.0, "fear": 0.0}}}
    flags = shortcut_readings(called, "baseline", {"balance": {"disgust": 300, "fear": 100}})
    text = shortcut_paragraph(flags, "baseline")
    assert text.count("**balance**") == 1
    assert ("**balance** calls generated images of other classes disgust: angry 54.00% (0.00%), fear 50.00% (5.00%), "
            "in brackets baseline's share; disgust is 75.00% of its generated training rows.") in text
