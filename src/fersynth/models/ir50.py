"""IR-50: the ArcFace "improved residual" ResNet-50 face backbone (SyntFER, POSTER) with a
classification head, for 48 to 112 px faces."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from fersynth.errors import FersynthError
from fersynth.models.cnn import check_in_chans, check_kwargs
from fersynth.models.registry import register_model

# (in_channels, depth, units); the first unit of every stage has stride 2
_IR50_STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))


class BottleneckIR(nn.Module):
    """BN-conv3x3-BN-PReLU-conv3x3(stride)-BN plus a shortcut (ArcFace, Deng et al. 2019)."""

    def __init__(self, in_channel: int, depth: int, stride: int):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
            nn.BatchNorm2d(depth),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IR50(nn.Module):
    """IR-50 body (four stride-2 stages: 112 -> 7x7, 48 -> 3x3), the ArcFace output layer
    (BN, dropout, flatten, FC-512, BN1d) giving a 512-d embedding, then a linear classifier.

    The flattened grid keeps where on the face a feature fired; grids beyond 7x7 (inputs over
    112 px) are average-pooled to 7x7 so the embedding layer stays the ArcFace size.
    """

    def __init__(
        self,
        num_classes: int = 7,
        in_chans: int = 1,
        img_size: int = 112,
        drop_rate: float = 0.4,
        embed_dim: int = 512,
    ):
        super().__init__()
        self.input_layer = nn.Sequential(
            nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)
        )
        units = []
        for in_ch, depth, n in _IR50_STAGES:
            units.append(BottleneckIR(in_ch, depth, 2))
            units += [BottleneckIR(depth, depth, 1) for _ in range(n - 1)]
        self.body = nn.Sequential(*units)
        grid = img_size
        for _ in _IR50_STAGES:
            grid = math.ceil(grid / 2)
        self.pool = nn.AdaptiveAvgPool2d(7) if grid > 7 else nn.Identity()
        grid = min(grid, 7)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(drop_rate),
            nn.Flatten(),
            nn.Linear(512 * grid * grid, embed_dim),
            nn.BatchNorm1d(embed_dim),
        )
        self.head = nn.Linear(embed_dim, num_classes)
        self.img_size = img_size
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.pool(self.body(self.input_layer(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            raise FersynthError(
                f"ir50 was built for {self.img_size}x{self.img_size} input, "
                f"got {x.shape[-2]}x{x.shape[-1]}",
                hint="build the model with the img_size of the data",
            )
        return self.head(self.forward_features(x))


@register_model(
    "ir50",
    default_img_size=112,
    description="IR-50 ArcFace face backbone + classifier (SyntFER / POSTER)",
)
def ir50(
    num_classes: int = 7, in_chans: int = 1, img_size: int = 112, drop_rate: float = 0.4, **kwargs
) -> nn.Module:
    check_kwargs("ir50", kwargs)
    check_in_chans("ir50", in_chans)
    if img_size < 32:
        raise FersynthError(f"ir50 needs img_size >= 32, got {img_size}", hint="use 48, 64 or 112")
    return IR50(num_classes, in_chans, img_size, drop_rate=drop_rate)
