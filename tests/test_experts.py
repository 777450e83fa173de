"""Experts: the Keras mini-Xception loader, TF "same" padding, class-order mapping, errors,
and (marked `shared`) the two real pretrained models on FER2013 PrivateTest images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from fersynth.errors import FersynthError
from fersynth.labels import CLASSES, canonical_index
from fersynth.models.mini_xception import (
    Conv2dSame,
    MaxPool2dSame,
    MiniXception,
    load_keras_mini_xception,
)
from fersynth.models.registry import create_model
from fersynth.verify.experts import (
    FACEX_CLASSES,
    KERAS_FER_CLASSES,
    Expert,
    KerasMiniXceptionExpert,
    TorchExpert,
    ensemble_proba,
    load_expert,
    resize_skimage,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
HDF5 = SHARED / "models" / "fer-mini-xception" / "emotion_model.hdf5"
TFLITE = SHARED / "models" / "facex-mobilenetv2" / "model_optimized.tflite"
FER_TEST = SHARED / "data" / "fer2013" / "test"


# ---------------------------------------------------------------- Keras-layout writer


def _randomize(model: MiniXception, seed: int = 0) -> MiniXception:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def write_keras_mini_xception(model: MiniXception, path: Path, with_config: bool = True) -> None:
    """Write `model` as Keras 2.0.5 saves mini-Xception: the same layer names, numbering,
    layer order, weight groups (<layer>/<layer>_1/<name>:0) and, optionally, model_config."""
    n = len(model.blocks)
    layers: list[tuple[str, str, list[str], dict[str, np.ndarray]]] = []  # name, class, inputs, w

    def conv_w(conv, bias=False):
        w = {"kernel": conv.weight.detach().numpy().transpose(2, 3, 1, 0)}  # OIHW -> HWIO
        if bias:
            w["bias"] = conv.bias.detach().numpy()
        return w

    def sep_w(sep):
        return {
            "depthwise_kernel": sep.depthwise.weight.detach().numpy().transpose(2, 3, 0, 1),
            "pointwise_kernel": sep.pointwise.weight.detach().numpy().transpose(2, 3, 1, 0),
        }

    def bn_w(bn):
        return {
            "gamma": bn.weight.detach().numpy(),
            "beta": bn.bias.detach().numpy(),
            "moving_mean": bn.running_mean.numpy(),
            "moving_variance": bn.running_var.numpy(),
        }

    def add(name, cls, inputs, w=None):
        layers.append((name, cls, inputs, w or {}))

    add("input_1", "InputLayer", [])
    add("conv2d_1", "Conv2D", ["input_1"], conv_w(model.conv1))
    add("batch_normalization_1", "BatchNormalization", ["conv2d_1"], bn_w(model.bn1))
    add("activation_1", "Activation", ["batch_normalization_1"])
    add("conv2d_2", "Conv2D", ["activation_1"], conv_w(model.conv2))
    add("batch_normalization_2", "BatchNormalization", ["conv2d_2"], bn_w(model.bn2))
    add("activation_2", "Activation", ["batch_normalization_2"])
    prev = "activation_2"
    for i, b in enumerate(model.blocks):
        s1, s2, sc = (
            f"separable_conv2d_{2 * i + 1}",
            f"separable_conv2d_{2 * i + 2}",
            f"conv2d_{3 + i}",
        )
        bsc, b1, b2 = (f"batch_normalization_{3 * i + k}" for k in (3, 4, 5))
        act, pool, addn = f"activation_{3 + i}", f"max_pooling2d_{1 + i}", f"add_{1 + i}"
        add(s1, "SeparableConv2D", [prev], sep_w(b.sep1))
        add(b1, "BatchNormalization", [s1], bn_w(b.bn1))
        add(act, "Activation", [b1])
        add(s2, "SeparableConv2D", [act], sep_w(b.sep2))
        add(b2, "BatchNormalization", [s2], bn_w(b.bn2))
        add(sc, "Conv2D", [prev], conv_w(b.shortcut))
        add(pool, "MaxPooling2D", [b2])
        add(bsc, "BatchNormalization", [sc], bn_w(b.shortcut_bn))
        add(addn, "Add", [pool, bsc])
        prev = addn
    add(f"conv2d_{3 + n}", "Conv2D", [prev], conv_w(model.head, bias=True))
    add("global_average_pooling2d_1", "GlobalAveragePooling2D", [f"conv2d_{3 + n}"])
    add("predictions", "Activation", ["global_average_pooling2d_1"])

    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"2.0.5"
        f.attrs["backend"] = b"tensorflow"
        if with_config:
            cfg = {
                "class_name": "Model",
                "config": {
                    "name": "model_1",
                    "layers": [
                        {
                            "class_name": cls,
                            "name": name,
                            "config": {"name": name},
                            "inbound_nodes": [[[i, 0, 0, {}] for i in ins]] if ins else [],
                        }
                        for name, cls, ins, _ in layers
                    ],
                },
            }
            f.attrs["model_config"] = json.dumps(cfg).encode()
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = np.array([name.encode() for name, *_ in layers], dtype="S")
        for name, _, _, w in layers:
            g = mw.create_group(name)
            names = [f"{name}_1/{k}:0" for k in w]
            g.attrs["weight_names"] = np.array([s.encode() for s in names], dtype="S")
            for s, v in zip(names, w.values(), strict=True):
                g.create_dataset(s, data=np.ascontiguousarray(v, dtype=np.float32))


# ---------------------------------------------------------------- loader


@pytest.mark.parametrize(
    "kwargs, with_config, size",
    [
        ({}, True, 64),  # the real file's architecture
        ({}, False, 48),  # weights-only file: batch norms paired by layer order
        (
            {"num_classes": 8, "in_chans": 3, "stem_channels": 4, "block_channels": (6, 10)},
            True,
            21,
        ),
    ],
)
def test_keras_loader_roundtrip(tmp_path, kwargs, with_config, size):
    ref = _randomize(MiniXception(**kwargs), seed=len(kwargs) + size)
    path = tmp_path / "m.hdf5"
    write_keras_mini_xception(ref, path, with_config=with_config)
    loaded = load_keras_mini_xception(path)
    x = torch.randn(3, ref.in_chans, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = ref(x), loaded(x)
    assert got.shape == (3, ref.num_classes)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # a wrong transpose or a swapped batch norm must be visible: outputs are not degenerate
    assert expected.std() > 1e-3


def test_keras_loader_rejects_bad_files(tmp_path):
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(FersynthError, match="cannot read"):
        load_keras_mini_xception(junk)
    with pytest.raises(FersynthError, match="not found"):
        load_keras_mini_xception(tmp_path / "missing.hdf5")
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as f:
        f.create_group("model_weights").attrs["layer_names"] = [b"input_1"]
        f["model_weights"].create_group("input_1").attrs["weight_names"] = []
    with pytest.raises(FersynthError, match="does not look like a mini-Xception"):
        load_keras_mini_xception(empty)


@pytest.mark.shared
@pytest.mark.skipif(not HDF5.is_file(), reason="needs ../shared/models")
def test_writer_layout_matches_real_file(tmp_path):
    fake = tmp_path / "fake.hdf5"
    write_keras_mini_xception(MiniXception(), fake)

    def layout(p):
        out = {}
        with h5py.File(p, "r") as f:
            names = [n.decode() for n in f["model_weights"].attrs["layer_names"]]
            f["model_weights"].visititems(
                lambda k, v: out.__setitem__(k, v.shape) if isinstance(v, h5py.Dataset) else None
            )
        return names, out

    assert layout(fake) == layout(HDF5)


# ---------------------------------------------------------------- TF "same" padding


def test_maxpool_same_odd_input_pads_both_sides_with_minus_inf():
    x = -torch.arange(1, 26, dtype=torch.float32).reshape(1, 1, 5, 5)  # all negative
    out = MaxPool2dSame(3, 2)(x)
    expected = torch.tensor([[-1.0, -2, -4], [-6, -7, -9], [-16, -17, -19]])
    torch.testing.assert_close(out[0, 0], expected)


def test_maxpool_same_even_input_pads_bottom_right():
    x = -torch.arange(1, 17, dtype=torch.float32).reshape(1, 1, 4, 4)
    out = MaxPool2dSame(3, 2)(x)
    # TF puts the single extra row/column at the bottom/right; torch's padding=1 would not
    torch.testing.assert_close(out[0, 0], torch.tensor([[-1.0, -3], [-9, -11]]))
    x = -torch.arange(1, 21, dtype=torch.float32).reshape(1, 1, 5, 4)  # H odd, W even
    out = MaxPool2dSame(3, 2)(x)
    torch.testing.assert_close(out[0, 0], torch.tensor([[-1.0, -3], [-5, -7], [-13, -15]]))


def test_strided_1x1_conv_same_takes_top_left_samples():
    conv = Conv2dSame(1, 1, 1, stride=2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    for size in (5, 6):
        x = torch.randn(1, 1, size, size)
        torch.testing.assert_close(conv(x), x[..., ::2, ::2])


def test_mini_xception_registered_and_trains():
    model = create_model("mini_xception", num_classes=8, in_chans=3, img_size=32)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 8) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.bn1.eps == 1e-3


# ---------------------------------------------------------------- class order and ensemble


class FixedExpert(Expert):
    """Returns the same own-order probability row for every image."""

    def __init__(self, classes, row, name="fixed"):
        super().__init__(classes, name=name)
        self.row = np.asarray(row, dtype=np.float32)

    def _predict_raw(self, batch):
        return np.tile(self.row, (len(batch), 1))


def test_permuted_class_order_gives_canonical_columns():
    order = ("neutral", "happiness", "sadness", "anger", "surprised", "fear", "disgust")
    row = np.array([0.30, 0.25, 0.15, 0.12, 0.08, 0.06, 0.04])
    e = FixedExpert(order, row)
    p = e.predict_proba(np.zeros((5, 10, 10), np.uint8), batch_size=2)
    assert p.shape == (5, 7) and e.canonical_classes == CLASSES[:7]
    for own, name in enumerate(order):
        np.testing.assert_allclose(p[:, canonical_index(name)], row[own])
    assert (e.predict(np.zeros((1, 4, 4, 3), np.uint8)) == CLASSES.index("neutral")).all()


def test_external_orders_map_as_documented():
    facex = FixedExpert(FACEX_CLASSES, np.eye(7)[4])  # facex output 4 is 'neutral'
    p = facex.predict_proba(np.zeros((1, 2, 2), np.uint8))
    assert CLASSES[int(p.argmax())] == "neutral"
    assert facex.classes == ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
    keras = FixedExpert(KERAS_FER_CLASSES, np.eye(7)[4])
    assert keras.classes == CLASSES[:7]
    assert CLASSES[int(keras.predict(np.zeros((1, 2, 2), np.uint8))[0])] == "sad"


def test_missing_class_column_is_zero_and_ensemble_pads():
    six = ("happy", "angry", "fear", "sad", "surprise", "neutral")  # no disgust
    a = FixedExpert(six, [0.5, 0.1, 0.1, 0.1, 0.1, 0.1], name="six")
    b = FixedExpert(CLASSES, np.full(8, 1 / 8), name="eight")
    x = np.zeros((4, 8, 8), np.uint8)
    pa = a.predict_proba(x)
    assert pa.shape == (4, 7) and (pa[:, CLASSES.index("disgust")] == 0).all()
    mean, per = ensemble_proba([a, b], x, weights=[3, 1])
    assert per.shape == (2, 4, 8) and mean.shape == (4, 8)
    np.testing.assert_allclose(per[0, :, 7], 0)
    np.testing.assert_allclose(mean, 0.75 * per[0] + 0.25 * per[1], rtol=1e-6)
    np.testing.assert_allclose(mean.sum(1), 1, rtol=1e-5)
    with pytest.raises(FersynthError, match="weights"):
        ensemble_proba([a, b], x, weights=[1])
    with pytest.raises(FersynthError, match="no experts"):
        ensemble_proba([], x)


class ConstLogits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x)
        return self.logits.expand(len(x), -1)


def test_torch_expert_preprocessing_and_order():
    order = ("surprise", "angry", "happy")
    model = ConstLogits([2.0, 0.0, 1.0])
    e = TorchExpert(model, order, img_size=12, in_chans=1, normalize=(0.5, 0.5))
    rgb = np.zeros((3, 24, 20, 3), np.uint8)
    rgb[..., 0] = 255  # pure red -> gray 76 (BT.601)
    p = e.predict_proba(rgb, batch_size=2)
    soft = np.exp([2.0, 0.0, 1.0]) / np.exp([2.0, 0.0, 1.0]).sum()
    np.testing.assert_allclose(p[:, CLASSES.index("surprise")], soft[0], rtol=1e-6)
    np.testing.assert_allclose(p[:, CLASSES.index("happy")], soft[2], rtol=1e-6)
    assert p.shape == (3, 6)  # columns up to canonical 'surprise'
    x = torch.cat(model.seen)
    assert x.shape == (3, 1, 12, 12)
    torch.testing.assert_close(x, torch.full_like(x, (76 / 255 - 0.5) / 0.5))
    with pytest.raises(FersynthError, match="uint8"):
        e.predict_proba(rgb.astype(np.float32))


def test_resize_skimage_matches_skimage():
    transform = pytest.importorskip("skimage.transform")
    rng = np.random.default_rng(0)
    for shape, size in (((2, 48, 48), 200), ((2, 90, 71), 40)):
        x = rng.integers(0, 256, shape, dtype=np.uint8)
        expected = np.stack([transform.resize(im, (size, size)) for im in x])
        np.testing.assert_allclose(resize_skimage(x, size), expected, atol=1e-6)


# ---------------------------------------------------------------- errors


def test_load_expert_errors(tmp_path, monkeypatch):
    with pytest.raises(FersynthError, match="not found") as ei:
        load_expert(tmp_path / "nope.hdf5")
    assert "nope.hdf5" in ei.value.message
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(FersynthError, match="model.onnx: not a loadable ONNX model"):
        load_expert(onnx)
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"x")
    with pytest.raises(FersynthError, match="unknown expert model type") as ei:
        load_expert(pt)
    assert ".tflite" in ei.value.hint
    st = tmp_path / "ckpt.safetensors"
    st.write_bytes(b"x")
    with pytest.raises(FersynthError, match="metadata ckpt.json is missing"):
        load_expert(st)
    st.with_suffix(".json").write_text('{"architecture": "fernet_s"}')
    with pytest.raises(FersynthError, match="lacks 'num_classes'"):
        load_expert(st)
    (tmp_path / "run").mkdir()
    with pytest.raises(FersynthError, match="not a fersynth run directory"):
        load_expert(tmp_path / "run")
    tfl = tmp_path / "m.tflite"
    tfl.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(FersynthError, match="ai-edge-litert") as ei:
        load_expert(tfl)
    assert "pip install 'fersynth[tflite]'" in ei.value.hint


def test_load_expert_dispatches_hdf5(tmp_path):
    path = tmp_path / "tiny.h5"
    write_keras_mini_xception(_randomize(MiniXception()), path)
    e = load_expert(path)
    assert isinstance(e, KerasMiniXceptionExpert) and e.classes == KERAS_FER_CLASSES
    p = e.predict_proba(np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8))
    assert p.shape == (3, 7)
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)


# ---------------------------------------------------------------- real models (shared)


@pytest.fixture(scope="module")
def private_test():
    """20 PrivateTest images per class (140), decoded to (N,48,48) uint8 + canonical labels."""
    if not FER_TEST.is_dir():
        pytest.skip("needs ../shared/data/fer2013")
    xs, ys = [], []
    for folder in sorted(FER_TEST.iterdir()):
        for f in sorted(folder.glob("PrivateTest_*.jpg"))[:20]:
            xs.append(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE))
            ys.append(canonical_index(folder.name))
    return np.stack(xs), np.array(ys)


def _check_probs(p, n):
    assert p.shape == (n, 7) and p.dtype == np.float32
    assert (p >= 0).all()
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-4)


@pytest.mark.shared
@pytest.mark.skipif(not HDF5.is_file(), reason="needs ../shared/models")
def test_real_keras_mini_xception(private_test):
    x, y = private_test
    e = load_expert(HDF5)
    p = e.predict_proba(x, batch_size=64)
    _check_probs(p, len(x))
    acc = (p.argmax(1) == y).mean()
    assert acc > 0.45, acc  # chance is 1/7; full PrivateTest: 65.87%
    rgb = np.repeat(x[:8, ..., None], 3, axis=-1)
    np.testing.assert_allclose(e.predict_proba(rgb), p[:8], atol=1e-6)


@pytest.mark.shared
@pytest.mark.skipif(not TFLITE.is_file(), reason="needs ../shared/models")
def test_real_tflite_facex(private_test):
    pytest.importorskip("ai_edge_litert")
    x, y = private_test[0][::2], private_test[1][::2]  # 10 per class: ~4x slower model
    e = load_expert(TFLITE)
    assert e.input_size == 200 and e.in_chans == 3
    p = e.predict_proba(x, batch_size=40)
    _check_probs(p, len(x))
    acc = (p.argmax(1) == y).mean()
    assert acc > 0.25, acc  # chance is 1/7; full PrivateTest: 43.08%
    e._batched = False  # one image at a time gives the same answer as batches
    np.testing.assert_allclose(e.predict_proba(x[:3]), p[:3], atol=1e-5)
    mean, per = ensemble_proba([load_expert(HDF5), e], x[:6])
    assert per.shape == (2, 6, 7)
    np.testing.assert_allclose(mean, per.mean(0), rtol=1e-5)
