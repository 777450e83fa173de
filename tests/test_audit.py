"""Label-noise audit: ranking metrics on a hand-made case, precision / recall on demo faces
with flipped labels, column resolution for FER+ data, and `fersynth data audit`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fersynth.cli.main import main
from fersynth.data.demo import make_demo_faces
from fersynth.data.manifest import Manifest, pixel_hash
from fersynth.errors import FersynthError
from fersynth.labels import CLASSES
from fersynth.models import create_model
from fersynth.train.checkpoint import save_checkpoint
from fersynth.verify import Expert, audit, ranking_metrics, suspicion
from fersynth.verify.audit import resolve_columns

N_PER, FLIP_EVERY = 10, 7


def dist(c: int, p: float, k: int = 7) -> np.ndarray:
    v = np.full(k, (1 - p) / (k - 1), dtype=np.float32)
    v[c] = p
    return v


class TableExpert(Expert):
    def __init__(self, table, name):
        super().__init__(CLASSES[:7], name=name)
        self.table = table

    def _predict_raw(self, batch):
        return np.stack([self.table[pixel_hash(im)] for im in batch])


def test_ranking_metrics_by_hand():
    r = ranking_metrics(np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0], bool), fractions=(0.25, 0.5, 1.0))
    assert r["base_rate"] == 0.5 and r["mislabelled"] == 2
    assert r["k_at_25pct"] == 1 and r["precision_at_25pct"] == 1.0 and r["recall_at_25pct"] == 0.5
    assert r["precision_at_50pct"] == 0.5 and r["recall_at_50pct"] == 0.5
    assert r["precision_at_100pct"] == 0.5 and r["recall_at_100pct"] == 1.0
    assert r["average_precision"] == pytest.approx((1 + 2 / 3) / 2)
    assert r["roc_auc"] == pytest.approx(0.75)


def test_suspicion_scores():
    p = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    np.testing.assert_allclose(suspicion(p, np.array([0, 0])), [0.4, 0.8])
    np.testing.assert_allclose(suspicion(p, np.array([0, 2]), "margin"), [-0.3, 0.2])
    with pytest.raises(FersynthError, match="unknown suspicion score"):
        suspicion(p, np.array([0, 0]), "entropy")


@pytest.fixture(scope="module")
def noisy():
    """Demo faces laid out like the FER+ ingest: orig_label (under audit) has every 7th label
    flipped, label is the true class (the reference), and a few rows have no reference."""
    d = make_demo_faces(N_PER, seed=31)
    n = len(d.pixels)
    orig = d.labels.copy()
    flip = np.arange(n) % FLIP_EVERY == 3
    orig[flip] = (orig[flip] + 2) % 7
    ref = d.labels.copy()
    ref[[5, 12]] = -1  # FER+ has no majority for these
    split = np.where(np.arange(n) % 10 == 9, "test", "train")
    m = Manifest.from_arrays(d.pixels, ref, split=split, dataset="demo", orig_label=orig)
    return m, d.labels, flip


def experts_for(m: Manifest, true: np.ndarray):
    """'seer' knows the true class; 'memoriser' trusts the noisy label (like a model trained on it)."""
    orig = m.df["orig_label"].to_numpy()
    seer, memo = {}, {}
    for i, h in enumerate(m.df["pixel_hash"]):
        seer[h] = dist(true[i], 0.6 + 0.003 * (i % 50))
        memo[h] = dist(orig[i], 0.9 if orig[i] != true[i] else 0.5 + 0.003 * (i % 50))
    return [TableExpert(seer, "seer"), TableExpert(memo, "memoriser")]


def test_audit_precision_recall_on_flipped_labels(noisy, tmp_path):
    m, true, flip = noisy
    experts = experts_for(m, true)
    rank, rep = audit(m, [experts[0]], fractions=(0.1, 0.5), out_dir=tmp_path / "a")
    train = m.df["split"].to_numpy() == "train"
    has_ref = m.df["label"].to_numpy() >= 0
    n_eval = int((train & has_ref).sum())
    n_mis = int((train & has_ref & flip).sum())
    assert rep["label_column"] == "orig_label" and rep["reference_column"] == "label"
    assert rep["rows"] == int(train.sum()) and rep["evaluated_rows"] == n_eval
    assert rep["base_rate"] == pytest.approx(n_mis / n_eval)
    k10 = round(0.1 * n_eval)
    assert k10 < n_mis
    assert rep["precision_at_10pct"] == 1.0 and rep["recall_at_10pct"] == pytest.approx(k10 / n_mis)
    assert rep["recall_at_50pct"] == 1.0 and rep["precision_at_50pct"] == pytest.approx(n_mis / round(0.5 * n_eval))
    assert rep["roc_auc"] == 1.0 and rep["average_precision"] == 1.0
    # The ranking puts every flipped training image first.
    flipped_ids = set(m.df.loc[train & flip, "id"])
    assert set(rank["id"].head(len(flipped_ids))) == flipped_ids
    assert rank["rank"].tolist()[:3] == [1, 2, 3] and rank["suspicion"].is_monotonic_decreasing
    assert rank.loc[rank["id"].isin(flipped_ids), "mislabelled"].all()
    assert json.loads((tmp_path / "a" / "audit.json").read_text())["precision_at_10pct"] == 1.0
    assert (tmp_path / "a" / "ranking.csv").read_text().startswith("rank,id,path,subset,label,suspicion")


def test_audit_reports_each_expert_alone(noisy):
    m, true, flip = noisy
    _, rep = audit(m, experts_for(m, true), fractions=(0.1,))
    alone = rep["per_expert"]
    assert alone["seer"]["precision_at_10pct"] == 1.0
    assert alone["memoriser"]["precision_at_10pct"] == 0.0  # it is surest exactly where the label is wrong
    assert rep["expert_agreement_with_label"]["memoriser"] == 1.0
    assert rep["expert_agreement_with_reference"]["seer"] == 1.0
    assert set(rep["ensemble"]) >= {"precision_at_10pct", "recall_at_10pct", "base_rate", "roc_auc"}


def test_audit_columns_split_and_errors(noisy):
    m, true, _ = noisy
    ex = experts_for(m, true)
    assert resolve_columns(m.df, None, None) == ("orig_label", "label")
    assert resolve_columns(m.df, "label", None) == ("label", None)
    assert resolve_columns(m.df, None, "none") == ("orig_label", None)
    _, rep = audit(m, ex, label_column="label")
    assert rep["reference_column"] is None and "precision_at_5pct" not in rep
    _, rep = audit(m, ex, split="all")
    assert rep["rows"] == len(m)
    with pytest.raises(FersynthError, match="no column 'votes'"):
        audit(m, ex, reference_column="votes")
    with pytest.raises(FersynthError, match="top fraction 5 is outside"):
        audit(m, ex, fractions=(5,))
    lab = m.df["orig_label"].to_numpy().copy()
    lab[0] = 7
    m8 = Manifest(m.df.assign(orig_label=lab), m.pixels)
    with pytest.raises(FersynthError, match="no output for class\\(es\\) contempt, which the labels under audit use"):
        audit(m8, ex)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("fernet_s", num_classes=7, in_chans=1, img_size=48)
    meta = {"architecture": "fernet_s", "num_classes": 7, "classes": list(CLASSES[:7]), "in_chans": 1,
            "img_size": 48, "preprocessing": {"equalize": "none", "tta": False}}
    d = tmp_path_factory.mktemp("runs") / "tiny"
    save_checkpoint(model, meta, d / "best")
    return d


def test_data_audit_cli(noisy, run_dir, tmp_path, capsys):
    m, _, _ = noisy
    m.save(tmp_path / "data")
    code = main(["data", "audit", str(tmp_path / "data"), "--experts", str(run_dir), "--out", str(tmp_path / "a"),
                 "--top", "0.05", "--top", "0.2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rep = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert rep["experts"] == ["tiny"] and {"precision_at_5pct", "recall_at_20pct"} <= set(rep)
    assert "top 5pct: precision" in out
    code = main(["data", "audit", str(tmp_path / "data"), "-e", str(run_dir), "--json", "--reference-column", "none"])
    assert code == 0 and json.loads(capsys.readouterr().out)["reference_column"] is None
    lab = m.df["orig_label"].to_numpy().copy()
    lab[0] = 7
    Manifest(m.df.assign(orig_label=lab), m.pixels).save(tmp_path / "c8")
    for argv, msg in [
        (["data", "audit", tmp_path / "c8", "-e", run_dir], "no output for class(es) contempt"),
        (["data", "audit", tmp_path / "data", "-e", run_dir, "--split", "holdout"], "split 'holdout'"),
        (["data", "audit", tmp_path / "data", "-e", run_dir, "--score", "entropy"], "unknown suspicion score"),
    ]:
        assert main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err
    code = main(["data", "audit", str(tmp_path / "c8"), "-e", str(run_dir), "--map", "contempt=neutral", "--json"])
    assert code == 0, capsys.readouterr().err
