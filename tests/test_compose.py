"""Composition strategies: counts for every strategy, stability under a seed, leakage refusal,
pool shortfall and the `fersynth compose` command's bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fersynth.cli.main import main
from fersynth.compose import compose, imbalance_ratio, strategies
from fersynth.data.demo import make_demo_faces
from fersynth.data.manifest import Manifest
from fersynth.errors import FersynthError
from fersynth.labels import CLASSES

COUNTS = {"angry": 30, "disgust": 5, "fear": 20, "happy": 40, "sad": 25, "surprise": 15, "neutral": 35}
TRAIN = np.array([COUNTS[c] for c in CLASSES[:7]])
R0 = {"radius": 0}  # demo faces share a template: keep chance pHash neighbours out of these tests


@pytest.fixture(scope="module")
def real() -> Manifest:
    d = make_demo_faces(COUNTS, seed=1)
    t = make_demo_faces(3, seed=2)
    return Manifest.concat([
        Manifest.from_arrays(d.pixels, d.labels, split="train", subset="Training", dataset="demo"),
        Manifest.from_arrays(t.pixels, t.labels, split="test", subset="PrivateTest", dataset="demo"),
    ])


def synthetic(per_class=20, seed=3, **cols) -> Manifest:
    d = make_demo_faces(per_class, seed=seed)
    n = len(d.pixels)
    cols = {"generator": "demo", "seed": np.arange(n), "parent_id": [None] * n, "params": ["{}"] * n, **cols}
    return Manifest.from_arrays(d.pixels, d.labels, dataset="demo-synth", source="synthetic",
                                intended_label=d.labels, **cols)


@pytest.fixture(scope="module")
def pool() -> Manifest:
    return synthetic()


def train_counts(m: Manifest, source: str | None = None) -> np.ndarray:
    df = m.df
    mask = df["split"].eq("train") & (df["source"].eq(source) if source else True)
    return np.bincount(df.loc[mask, "label"], minlength=7)[:7]


def syn_ids(m: Manifest) -> list[str]:
    return sorted(m.df.loc[m.df["source"] == "synthetic", "id"])


def test_append_counts_and_seed(real, pool):
    m = compose("append", real, pool, n=4, **R0)
    assert train_counts(m).tolist() == (TRAIN + 4).tolist()
    assert train_counts(m, "synthetic").tolist() == [4] * 7
    assert (m.df.loc[m.df["source"] == "synthetic", "split"] == "train").all()
    assert m.df["split"].eq("test").sum() == 21 and m.df["split"].eq("val").sum() == 0
    assert m.meta["compose"]["synthetic_added"] == dict.fromkeys(CLASSES[:7], 4)
    assert syn_ids(compose("append", real, pool, n=4, **R0)) == syn_ids(m)
    other = syn_ids(compose("append", real, pool, n=4, seed=1, **R0))
    assert other != syn_ids(m) and len(other) == 28
    # Provenance columns travel with the synthetic rows.
    assert {"generator", "seed", "parent_id", "params", "intended_label"} <= set(m.df.columns)


def test_synthetic_rows_never_enter_val_or_test(real):
    p = synthetic(5, seed=4)
    p = Manifest(p.df.assign(split="test"), p.pixels)
    m = compose("append", real, p, n=5, **R0)
    assert (m.df.loc[m.df["source"] == "synthetic", "split"] == "train").all()


def test_balance_to_rho(real, pool):
    m = compose("balance", real, pool, rho=2, **R0)
    added = train_counts(m, "synthetic")
    assert added.tolist() == [0, 15, 0, 0, 0, 5, 0]
    assert imbalance_ratio(train_counts(m)) <= 2
    assert m.meta["compose"]["imbalance_before"] == 8.0 and m.meta["compose"]["imbalance_after"] == 2.0
    assert syn_ids(compose("balance", real, pool, rho=2, **R0)) == syn_ids(m)
    # rho 1.5 wants 27 per class: disgust needs 22 but the pool holds 20.
    with pytest.raises(FersynthError, match=r"2 short for an imbalance ratio of 1.5 \(disgust 2 missing\)") as ei:
        compose("balance", real, pool, rho=1.5, **R0)
    assert "--allow-short" in ei.value.hint
    m = compose("balance", real, pool, rho=1.5, allow_short=True, **R0)
    assert train_counts(m, "synthetic").tolist() == [0, 20, 7, 0, 2, 12, 0]
    assert m.meta["compose"]["shortfall"] == {"disgust": 2}


def children(real: Manifest, per_parent: int) -> Manifest:
    """`per_parent` brightened copies of every real training image, with parent_id set."""
    tr = real.where(split="train")
    pix, lab, parents = [], [], []
    for j in range(per_parent):
        pix.append(np.clip(tr.pixels.astype(int) + 3 * (j + 1), 0, 255).astype(np.uint8))
        lab.append(tr.labels)
        parents += tr.df["id"].tolist()
    lab = np.concatenate(lab)
    return Manifest.from_arrays(np.concatenate(pix), lab, source="synthetic", intended_label=lab, parent_id=parents,
                                generator="gif")


def test_expand_k_per_real_image(real):
    kids = children(real, 3)
    m = compose("expand", real, kids, k=2, **R0)
    syn = m.df[m.df["source"] == "synthetic"]
    assert len(syn) == 2 * TRAIN.sum()
    assert syn["parent_id"].value_counts().eq(2).all()
    assert set(syn["parent_id"]) == set(real.df.loc[real.df["split"] == "train", "id"])
    assert train_counts(m).tolist() == (3 * TRAIN).tolist()
    assert syn_ids(compose("expand", real, kids, k=2, **R0)) == syn_ids(m)
    assert syn_ids(compose("expand", real, kids, k=2, seed=5, **R0)) != syn_ids(m)
    with pytest.raises(FersynthError, match="short for 4 per real training image"):
        compose("expand", real, kids, k=4, **R0)
    assert len(syn_ids(compose("expand", real, kids, k=4, allow_short=True, **R0))) == 3 * TRAIN.sum()
    with pytest.raises(FersynthError, match="needs synthetic rows with a parent_id"):
        compose("expand", real, Manifest(kids.df.drop(columns=["parent_id"]), kids.pixels), k=1, **R0)


def test_synthetic_only(real, pool):
    m = compose("synthetic-only", real, pool, n=5, **R0)
    df = m.df
    assert not (df["split"].eq("train") & df["source"].eq("real")).any()
    assert train_counts(m).tolist() == [5] * 7
    val = df[df["split"] == "val"]
    assert len(val) > 0 and val["source"].eq("real").all()  # validation stays real
    assert df["split"].eq("test").sum() == 21
    everything = compose("synthetic-only", real, pool, **R0)
    assert train_counts(everything).tolist() == [20] * 7
    assert syn_ids(compose("synthetic-only", real, pool, n=5, **R0)) == syn_ids(m)


def test_mix_fraction(real, pool):
    m = compose("mix", real, pool, fraction=0.25, **R0)
    rep = m.meta["compose"]
    n_train = sum(rep["real_train_counts"].values())  # real train rows left after carving validation
    assert n_train < TRAIN.sum() and m.df["split"].eq("val").sum() == TRAIN.sum() - n_train
    assert rep["mix"] == {"total": n_train, "synthetic": round(0.25 * n_train), "real": n_train - round(0.25 * n_train)}
    assert train_counts(m).sum() == n_train
    assert train_counts(m, "synthetic").sum() == round(0.25 * n_train)
    before = np.array(list(rep["real_train_counts"].values()))
    assert np.abs(train_counts(m) - before).max() <= 1  # the class distribution is kept
    assert syn_ids(compose("mix", real, pool, fraction=0.25, **R0)) == syn_ids(m)
    sized = compose("mix", real, pool, fraction=0.5, n=70, **R0)
    assert train_counts(sized).sum() == 70 and train_counts(sized, "synthetic").sum() == 35


def test_oversample_control(real):
    m = compose("oversample", real, rho=2, **R0)
    df = m.df
    copies = df[df["oversampled"].astype(bool)]
    assert imbalance_ratio(train_counts(m)) <= 2
    assert copies["parent_id"].isin(df.loc[df["split"] == "train", "id"]).all()
    assert not copies["parent_id"].isin(df.loc[df["split"] == "val", "id"]).any()
    assert (copies["split"] == "train").all() and (copies["source"] == "real").all()
    assert df["id"].is_unique
    real_train = np.array(list(m.meta["compose"]["real_train_counts"].values()))
    target = int(np.ceil(real_train.max() / 2))
    expected = np.maximum(target - real_train, 0)
    assert np.bincount(copies["label"], minlength=7).tolist() == expected.tolist()
    # Copies spread evenly: no image is copied twice before every image of its class once.
    d = copies[copies["label"] == 1]["parent_id"].value_counts()
    assert d.max() - d.min() <= 1
    again = compose("oversample", real, rho=2, **R0)
    assert again.df["id"].tolist() == df["id"].tolist()


def test_oversample_append_is_the_control_plus_n_per_class(real, pool):
    control = compose("oversample", real, rho=2, **R0)
    m = compose("oversample-append", real, pool, rho=2, n=3, **R0)
    syn = train_counts(m, "synthetic")
    assert syn.tolist() == [3] * 7  # every class gets the same number of generated faces
    assert (train_counts(m) - syn).tolist() == train_counts(control).tolist()  # the real part is the control's
    df = m.df
    assert df.loc[df["oversampled"].fillna(False).astype(bool), "source"].eq("real").all()
    assert df["id"].is_unique and (df.loc[df["source"] == "synthetic", "split"] == "train").all()
    assert m.meta["compose"]["synthetic_added"] == dict.fromkeys(CLASSES[:7], 3)
    with pytest.raises(FersynthError):
        compose("oversample-append", real, None, rho=2, n=3, **R0)  # it needs a synthetic pool


def test_class_weighted_control(real):
    m = compose("class-weighted", real)
    assert m.meta["class_weighted"] is True
    assert m.df["id"].tolist() == real.df["id"].tolist() and m.df["split"].tolist() == real.df["split"].tolist()


def test_only_verified_rows_are_used(real, pool):
    verdict = np.where(np.arange(len(pool)) % 4 == 0, "drop", "keep").astype(object)
    verdict[1] = "relabel"
    label = pool.labels.copy()
    label[1] = 3  # an angry image relabelled happy
    v = Manifest(pool.df.assign(verdict=verdict, label=label), pool.pixels)
    m = compose("synthetic-only", real, v, **R0)
    ids = set(syn_ids(m))
    assert ids == set(v.df.loc[v.df["verdict"] != "drop", "id"])
    assert m.df.loc[m.df["id"] == v.df["id"][1], "label"].item() == 3
    assert m.meta["compose"]["pool"]["not_verified"] == 35


def test_leakage_is_refused(real, pool):
    test_ids = real.df.loc[real.df["split"] == "test", "id"].tolist()
    parents = [None] * len(pool)
    parents[7] = test_ids[0]
    bad = Manifest(pool.df.assign(parent_id=parents), pool.pixels)
    with pytest.raises(FersynthError, match="1 synthetic row\\(s\\) derive from a test or validation image"):
        compose("append", real, bad, n=1, **R0)
    # A copy of a test image (slightly brightened, so not identical pixels) is refused.
    test = real.where(split="test")
    twin = np.clip(test.pixels[:1].astype(int) + 2, 0, 255).astype(np.uint8)
    near = Manifest.concat([pool, Manifest.from_arrays(twin, test.labels[:1], source="synthetic",
                                                         intended_label=test.labels[:1])])
    with pytest.raises(FersynthError, match="1 synthetic row\\(s\\) are near-duplicates of a test or validation"):
        compose("append", real, near, n=1, **R0)
    # Derived from a training image that is itself a near twin of a test image: refused too.
    train_twin = np.clip(test.pixels[:1].astype(int) + 1, 0, 255).astype(np.uint8)
    leaky = Manifest.concat([real, Manifest.from_arrays(train_twin, test.labels[:1], split="train")])
    twin_id = leaky.df["id"].iloc[-1]
    kid = Manifest.from_arrays(np.flip(test.pixels[:1], axis=2).copy(), test.labels[:1], source="synthetic",
                               intended_label=test.labels[:1], parent_id=[twin_id])
    with pytest.raises(FersynthError, match="derive from a test or validation image"):
        compose("append", leaky, kid, n=1, allow_short=True, **R0)
    # Oversampling and class weighting need no synthetic data; the others do.
    with pytest.raises(FersynthError, match="needs a synthetic manifest"):
        compose("append", real, None, n=1)


def test_bad_parameters(real, pool):
    with pytest.raises(FersynthError, match="rho must be >= 1"):
        compose("balance", real, pool, rho=0.5)
    with pytest.raises(FersynthError, match="rho must be >= 1"):
        compose("oversample", real, rho=0.9)
    with pytest.raises(FersynthError, match="compose: n: Field required"):
        compose("append", real, pool)
    with pytest.raises(FersynthError, match="compose strategy: unknown strategy 'stack'"):
        compose("stack", real, pool)
    with pytest.raises(FersynthError, match="compose: fraction: Input should be less than or equal to 1"):
        compose("mix", real, pool, fraction=1.5)
    with pytest.raises(FersynthError, match="compose: unknown key 'nn'"):
        compose("append", real, pool, n=1, nn=3)
    assert {e.name for e in strategies()} >= {"real", "append", "balance", "expand", "synthetic-only", "mix",
                                               "oversample", "class-weighted"}


def test_compose_cli(real, pool, tmp_path, capsys):
    real.save(tmp_path / "real")
    pool.save(tmp_path / "pool")
    base = ["compose", "--real", tmp_path / "real", "--synthetic", tmp_path / "pool", "--radius", "0"]
    code = main([str(a) for a in [base[0], "append", *base[1:], "--n", "3", "--out", tmp_path / "out"]])
    out, err = capsys.readouterr()
    assert code == 0, err
    m = Manifest.load(tmp_path / "out")
    assert train_counts(m, "synthetic").tolist() == [3] * 7
    assert json.loads((tmp_path / "out" / "compose.json").read_text())["synthetic_added"]["fear"] == 3
    assert "disgust" in out
    cases = [
        (["balance", "--rho", "0.5"], "rho must be >= 1"),
        (["balance", "--rho", "1"], "20 short for an imbalance ratio of 1 (disgust 15, surprise 5 missing)"),
        (["append", "--n", "25"], "missing"),
        (["stack"], "unknown strategy 'stack'"),
        (["expand", "--k", "1"], "needs synthetic rows with a parent_id"),
    ]
    for extra, msg in cases:
        code = main([str(a) for a in [base[0], extra[0], *base[1:], *extra[1:], "--out", tmp_path / "bad"]])
        err = capsys.readouterr().err
        assert code == 2, extra
        assert msg in err and "Traceback" not in err, err
    assert not (tmp_path / "bad").exists()
    code = main([str(a) for a in [base[0], "append", *base[1:], "--n", "25", "--allow-short", "--out", tmp_path / "s",
                                  "--json"]])
    rep = json.loads(capsys.readouterr().out)
    assert code == 0 and rep["shortfall"] == dict.fromkeys(CLASSES[:7], 5)
    code = main(["compose", "oversample", "--real", str(tmp_path / "real"), "--rho", "3", "--out", str(tmp_path / "os")])
    assert code == 0 and imbalance_ratio(train_counts(Manifest.load(tmp_path / "os"))) <= 3


def test_verified_pool_round_trips_through_compose(real, pool, tmp_path):
    from fersynth.data.manifest import pixel_hash
    from fersynth.verify import Expert, VerifyPolicy, verify

    class Sure(Expert):
        def _predict_raw(self, batch):
            out = np.full((len(batch), 7), 0.05, np.float32)
            for i, im in enumerate(batch):
                out[i, table[pixel_hash(im)]] = 0.7
            return out

    table = dict(zip(pool.df["pixel_hash"], pool.labels, strict=True))
    table[pool.df["pixel_hash"][0]] = 3  # an angry image the expert calls happy: relabelled
    verified, rep = verify(pool, [Sure(CLASSES[:7], name="sure")], VerifyPolicy(radius=0))
    assert rep["counts"]["relabel"] == 1
    verified.save(tmp_path / "verified")
    m = compose("append", real, Manifest.load(tmp_path / "verified"), n=21, allow_short=True, **R0)
    assert m.meta["compose"]["shortfall"] == {c: 2 if c == "angry" else 1 for c in CLASSES[:7] if c != "happy"}
    assert train_counts(m, "synthetic").tolist() == [19, 20, 20, 21, 20, 20, 20]
    m.save(tmp_path / "composed")
    back = Manifest.load(tmp_path / "composed")
    row = back.df[back.df["id"] == pool.df["id"][0]].iloc[0]
    assert row["label"] == 3 and row["verdict"] == "relabel" and row["split"] == "train"
    assert row["soft_label"] == pytest.approx(verified.df["soft_label"][0])
    assert back.df.loc[back.df["source"] == "real", "verdict"].isna().all()
