"""Vision transformers for FER: Swin-T (Zhu 2024) at the input's own resolution."""

from __future__ import annotations

import torch.nn as nn
from timm.models.swin_transformer import SwinTransformer, checkpoint_filter_fn

from fersynth.errors import FersynthError
from fersynth.models.cnn import check_in_chans, check_kwargs, load_pretrained, read_state_dict
from fersynth.models.registry import register_model

_PATCH = 4


def swin_window_size(img_size: int, patch_size: int = _PATCH, max_window: int = 7) -> int:
    """Largest window <= max_window (7, as in ImageNet Swin-T) that divides the token grid.

    48 -> 12x12 tokens -> window 6; 64 -> 16 -> 4; 100 -> 25 -> 5; 112 -> 28 -> 7; 224 -> 56 -> 7.
    A grid with no divisor >= 3 keeps 7 (timm pads the grid). Later stages whose grid is smaller
    than the window attend globally (timm clamps the window per stage).
    """
    grid = img_size // patch_size
    for w in range(max_window, 2, -1):
        if grid % w == 0:
            return w
    return max_window


@register_model(
    "swin_t",
    default_img_size=224,
    default_in_chans=3,
    pretrained=True,
    description="Swin-T (timm swin_tiny_patch4_window7_224) at native resolution (Zhu 2024)",
)
def swin_t(
    num_classes: int = 7,
    in_chans: int = 3,
    img_size: int = 224,
    pretrained_path: str | None = None,
    window_size: int | None = None,
    drop_path_rate: float = 0.1,
    drop_rate: float = 0.0,
    **kwargs,
) -> nn.Module:
    """Swin-T run on the image at its own size rather than upsampled to 224: 48x48 costs ~1/20 of
    the 224 compute. The window is picked per size (see `swin_window_size`); an ImageNet 224
    checkpoint is loaded through timm's filter, which resizes the relative-position tables.
    Inputs must be img_size x img_size (timm's strict size check)."""
    check_kwargs("swin_t", kwargs)
    check_in_chans("swin_t", in_chans)
    if img_size < 32 or img_size % _PATCH:
        raise FersynthError(
            f"swin_t needs img_size >= 32 and a multiple of {_PATCH}, got {img_size}",
            hint="use 48, 64, 112 or 224",
        )
    model = SwinTransformer(
        img_size=img_size,
        patch_size=_PATCH,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        window_size=window_size or swin_window_size(img_size),
        drop_path_rate=drop_path_rate,
        drop_rate=drop_rate,
    )
    if pretrained_path is not None:
        sd = read_state_dict(pretrained_path)
        # the filter resamples tables to the new window and maps original Microsoft checkpoints
        sd = checkpoint_filter_fn(sd, model)
        load_pretrained(
            model,
            sd,
            name="swin_t",
            source=str(pretrained_path),
            in_chans=in_chans,
            input_convs=["patch_embed.proj.weight"],
            classifier=["head.fc"],
        )
    return model
