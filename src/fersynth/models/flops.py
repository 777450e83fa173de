"""Model cost: parameter counts and forward FLOPs per image (2 x multiply-adds)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from fersynth.models.registry import create_model, get_model_entry


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_flops(model: nn.Module, img_size: int = 48, in_chans: int = 1) -> int:
    """Forward FLOPs for one `in_chans` x `img_size` x `img_size` image (convs, matmuls,
    attention; a multiply-add counts 2). The model is run once in eval mode on zeros."""
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, in_chans, img_size, img_size)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)


def model_info(
    name: str, img_size: int | None = None, in_chans: int | None = None, num_classes: int = 7
) -> dict:
    """Parameters and GFLOPs/image of a registered model, at its default size unless given."""
    entry = get_model_entry(name)
    img_size = img_size or entry.default_img_size
    in_chans = in_chans or entry.default_in_chans
    model = create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    return {
        "name": name,
        "description": entry.description,
        "img_size": img_size,
        "in_chans": in_chans,
        "num_classes": num_classes,
        "params": count_params(model),
        "gflops": model_flops(model, img_size, in_chans) / 1e9,
        "pretrained": entry.pretrained,
    }
