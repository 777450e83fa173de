"""Convolutional FER architectures: VGG-19, ResNet-18/50, ResEmoteNet and the CPU-fast FerNet.

Also holds the local-file ImageNet weight loader shared by every `pretrained_path` model:
safetensors or `torch.load(weights_only=True)`, first conv adapted to `in_chans`, the
classifier skipped, every other tensor loaded strictly (names and shapes must match).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from timm.models._manipulate import adapt_input_conv

from fersynth.errors import FersynthError
from fersynth.models.registry import register_model

# --------------------------------------------------------------------------------------------
# shared helpers


def check_kwargs(model: str, kwargs: dict) -> None:
    """Refuse options a model does not know, instead of silently ignoring them."""
    if kwargs:
        raise FersynthError(
            f"model '{model}' got unknown option(s): {', '.join(sorted(kwargs))}",
            hint="check the model options in the training config",
        )


def check_in_chans(model: str, in_chans: int) -> None:
    if in_chans < 1:
        raise FersynthError(
            f"model '{model}': in_chans must be >= 1, got {in_chans}", hint="use 1 or 3"
        )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a local safetensors or torch file without unpickling code."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FersynthError(
            f"pretrained weights file not found: {p}",
            hint="pass a local .safetensors or .pth file (nothing is downloaded)",
        )
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p), device="cpu")
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # any decode failure is a user error about this file
        raise FersynthError(
            f"cannot read weights from {p}: {type(e).__name__}: {e}",
            hint="expected a safetensors file or a state_dict saved with torch.save",
        ) from e
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise FersynthError(
            f"{p} does not hold a state dict of tensors", hint="save model.state_dict()"
        )
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def resize_kernel(weight: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resample a conv kernel spatially (e.g. 7x7 -> 3x3), keeping its response to flat input."""
    if tuple(weight.shape[-2:]) == tuple(size):
        return weight
    w = weight.float()
    out = F.interpolate(w, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    out = out * (w.shape[-2] * w.shape[-1]) / (size[0] * size[1])
    # make each kernel's sum exact: that sum is the response to a flat patch
    out = (
        out + (w.sum((-2, -1), keepdim=True) - out.sum((-2, -1), keepdim=True)) / out[0, 0].numel()
    )
    return out.to(weight.dtype)


def _is_under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def load_pretrained(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    *,
    name: str,
    source: str,
    in_chans: int,
    input_convs: Sequence[str],
    classifier: Sequence[str],
) -> None:
    """Load an ImageNet state dict into `model`.

    `input_convs` are weight keys of convs that see the image: adapted to `in_chans` (RGB kernels
    summed for 1 channel) and spatially resampled if the model's kernel is smaller. Keys under the
    `classifier` prefixes are skipped on both sides. Everything else must match exactly.
    """
    target = model.state_dict()
    sd = {k: v for k, v in state_dict.items() if not _is_under(k, classifier)}
    for key in input_convs:
        if key in sd and key in target:
            w = adapt_input_conv(in_chans, sd[key])
            sd[key] = resize_kernel(w, target[key].shape[-2:])
    missing = [
        k
        for k in target
        if k not in sd and not _is_under(k, classifier) and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in sd if k not in target]
    mismatched = [
        f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}"
        for k, v in sd.items()
        if k in target and v.shape != target[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape", mismatched),
        ):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{label}: {', '.join(keys[:3])}{more}")
        raise FersynthError(
            f"{source} does not fit model '{name}': " + "; ".join(parts),
            hint=f"pass an ImageNet checkpoint of the {name} architecture",
        )
    model.load_state_dict(sd, strict=False)


def _init_conv_bn(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------
# VGG-19 (batch norm)

_VGG19_STAGES = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))  # (width, convs), then a pool


class VGG19(nn.Module):
    """VGG-19-BN for small faces.

    `features` is laid out exactly as torchvision's vgg19_bn (16 conv3x3-BN-ReLU, 5 max-pools), so
    its ImageNet features load by name. Five 2x pools take 48x48 to 1x1 (64 -> 2x2, 224 -> 7x7);
    an adaptive average pool then gives a 512-d vector for any size >= 32, and the three FC layers
    are 512-512-num_classes with dropout instead of ImageNet's 25088-4096-4096 (120M parameters
    that 28k 48x48 images cannot train).
    """

    def __init__(
        self, num_classes: int = 7, in_chans: int = 1, hidden: int = 512, drop_rate: float = 0.5
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for width, convs in _VGG19_STAGES:
            for _ in range(convs):
                layers += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(True)]
                c = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(512, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(hidden, num_classes),
        )
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model(
    "vgg19",
    default_img_size=48,
    pretrained=True,
    description="VGG-19-BN (16 conv + 3 FC), small-input head (Sultanov 2025)",
)
def vgg19(
    num_classes: int = 7,
    in_chans: int = 1,
    img_size: int = 48,
    pretrained_path: str | None = None,
    hidden: int = 512,
    drop_rate: float = 0.5,
    **kwargs,
) -> nn.Module:
    check_kwargs("vgg19", kwargs)
    check_in_chans("vgg19", in_chans)
    if img_size < 32:
        raise FersynthError(f"vgg19 needs img_size >= 32, got {img_size}", hint="use 48 or more")
    model = VGG19(num_classes, in_chans, hidden=hidden, drop_rate=drop_rate)
    if pretrained_path is not None:
        load_pretrained(
            model,
            read_state_dict(pretrained_path),
            name="vgg19",
            source=str(pretrained_path),
            in_chans=in_chans,
            input_convs=["features.0.weight"],
            classifier=["classifier"],
        )
    return model


# --------------------------------------------------------------------------------------------
# ResNet-18 / 50 (torchvision layout, so torchvision and timm ImageNet weights load by name)


def _resnet(
    arch: str,
    num_classes: int,
    in_chans: int,
    img_size: int,
    pretrained_path: str | None,
    small_stem: bool | None,
    kwargs: dict,
) -> nn.Module:
    check_kwargs(arch, kwargs)
    check_in_chans(arch, in_chans)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if small_stem is None:
        small_stem = img_size <= 64
    if small_stem:
        # CIFAR-style stem: 3x3 stride 1 and no max-pool, so 48x48 ends at 6x6 instead of 2x2.
        model.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if pretrained_path is not None:
        # 7x7 stem kernels are resampled to 3x3 for the small stem.
        load_pretrained(
            model,
            read_state_dict(pretrained_path),
            name=arch,
            source=str(pretrained_path),
            in_chans=in_chans,
            input_convs=["conv1.weight"],
            classifier=["fc"],
        )
    return model


@register_model(
    "resnet18",
    default_img_size=112,
    pretrained=True,
    description="ResNet-18 (torchvision), 3x3 stride-1 stem without max-pool at <= 64 px",
)
def resnet18(
    num_classes: int = 7,
    in_chans: int = 1,
    img_size: int = 112,
    pretrained_path: str | None = None,
    small_stem: bool | None = None,
    **kwargs,
) -> nn.Module:
    return _resnet("resnet18", num_classes, in_chans, img_size, pretrained_path, small_stem, kwargs)


@register_model(
    "resnet50",
    default_img_size=112,
    pretrained=True,
    description="ResNet-50 (torchvision), 3x3 stride-1 stem without max-pool at <= 64 px",
)
def resnet50(
    num_classes: int = 7,
    in_chans: int = 1,
    img_size: int = 112,
    pretrained_path: str | None = None,
    small_stem: bool | None = None,
    **kwargs,
) -> nn.Module:
    return _resnet("resnet50", num_classes, in_chans, img_size, pretrained_path, small_stem, kwargs)


# --------------------------------------------------------------------------------------------
# ResEmoteNet (Roy et al. 2024)


class SEBlock(nn.Module):
    """Squeeze-and-excitation: channel weights from a global average through a bottleneck MLP."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fc(x.mean(dim=(2, 3)))
        return x * w[:, :, None, None]


class ResidualBlock(nn.Module):
    """Two conv3x3-BN with a (projected when needed) identity shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResEmoteNet(nn.Module):
    """ResEmoteNet: 3 conv-BN-ReLU-maxpool blocks (64-128-256), SE, 3 strided residual blocks
    (512-1024-2048), global average pool, FC 1024-512-256-classes with dropout, as in the
    authors' code."""

    def __init__(self, num_classes: int = 7, in_chans: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 64, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 128, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(128)
        self.conv3 = nn.Conv2d(128, 256, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(256)
        self.se = SEBlock(256)
        self.res_block1 = ResidualBlock(256, 512, stride=2)
        self.res_block2 = ResidualBlock(512, 1024, stride=2)
        self.res_block3 = ResidualBlock(1024, 2048, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, 512)
        self.fc3 = nn.Linear(512, 256)
        self.fc4 = nn.Linear(256, num_classes)
        self.dropout1 = nn.Dropout(0.2)
        self.dropout2 = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout1(F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2))
        x = self.dropout1(F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2))
        x = F.max_pool2d(F.relu(self.bn3(self.conv3(x))), 2)
        x = self.se(x)
        x = self.res_block3(self.res_block2(self.res_block1(x)))
        x = torch.flatten(self.pool(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        x = self.dropout2(F.relu(self.fc2(x)))
        x = self.dropout2(F.relu(self.fc3(x)))
        return self.fc4(x)


@register_model(
    "resemotenet",
    default_img_size=64,
    description="ResEmoteNet: conv-BN blocks, squeeze-excitation, residual blocks "
    "(Roy et al. 2024)",
)
def resemotenet(num_classes: int = 7, in_chans: int = 1, img_size: int = 64, **kwargs) -> nn.Module:
    check_kwargs("resemotenet", kwargs)
    check_in_chans("resemotenet", in_chans)
    if img_size < 8:
        raise FersynthError(f"resemotenet needs img_size >= 8, got {img_size}", hint="use 64")
    return ResEmoteNet(num_classes, in_chans)


# --------------------------------------------------------------------------------------------
# FerNet: compact VGG-style model for CPU training


class FerNet(nn.Module):
    """Plain conv3x3-BN-ReLU stages separated by 2x max-pools, global average pool, dropout, FC.

    Dense 3x3 convs only (no depthwise: slow on CPU in PyTorch); the full-resolution stage is a
    single narrow conv because memory-bound layers at 48x48 cost far more time than their FLOPs.
    """

    def __init__(
        self,
        num_classes: int = 7,
        in_chans: int = 1,
        widths: Sequence[int] = (32, 64, 128, 256),
        depths: Sequence[int] = (1, 1, 2, 2),
        drop_rate: float = 0.3,
    ):
        super().__init__()
        if len(widths) != len(depths):
            raise ValueError("widths and depths must have the same length")
        layers: list[nn.Module] = []
        c = in_chans
        for i, (w, d) in enumerate(zip(widths, depths, strict=True)):
            if i > 0:
                layers.append(nn.MaxPool2d(2, 2))
            for _ in range(d):
                layers += [
                    nn.Conv2d(c, w, 3, padding=1, bias=False),
                    nn.BatchNorm2d(w),
                    nn.ReLU(inplace=True),
                ]
                c = w
        self.features = nn.Sequential(*layers)
        self.num_features = c
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(c, num_classes)
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean(dim=(2, 3))
        return self.fc(self.drop(x))


def _fernet(
    name: str, num_classes: int, in_chans: int, widths, depths, drop_rate: float, kwargs: dict
) -> nn.Module:
    check_kwargs(name, kwargs)
    check_in_chans(name, in_chans)
    return FerNet(num_classes, in_chans, widths=widths, depths=depths, drop_rate=drop_rate)


@register_model(
    "fernet_s",
    default_img_size=48,
    description="compact VGG-style CNN for CPU training (cpu-fast preset), ~0.1 GFLOPs at 48x48",
)
def fernet_s(
    num_classes: int = 7, in_chans: int = 1, img_size: int = 48, drop_rate: float = 0.3, **kwargs
) -> nn.Module:
    return _fernet(
        "fernet_s", num_classes, in_chans, (32, 64, 128, 256), (1, 1, 1, 2), drop_rate, kwargs
    )


@register_model(
    "fernet_m",
    default_img_size=48,
    description="FerNet at 1.5x width for ~2x the CPU budget, ~0.24 GFLOPs at 48x48",
)
def fernet_m(
    num_classes: int = 7, in_chans: int = 1, img_size: int = 48, drop_rate: float = 0.4, **kwargs
) -> nn.Module:
    return _fernet(
        "fernet_m", num_classes, in_chans, (48, 96, 192, 384), (1, 1, 1, 2), drop_rate, kwargs
    )
