"""Batched training augmentation with per-sample random parameters (inference preprocessing:
`fersynth.predictor`).

Images stay packed uint8 until a batch is drawn; the batch is augmented in one pass (a single
`affine_grid`/`grid_sample` for rotation, zoom and shift, a masked mirror, torchvision v2's
functional blur and erasing), so the same code runs on CPU and GPU with no per-image Python.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from fersynth.predictor import equalize_pixels, to_model_input  # noqa: F401  (moved; old imports keep working)
from fersynth.train.config import AugmentConfig


class BatchAugment:
    """Random mirror, rotation, zoom, shift, blur and erasing for a float batch (N,C,H,W)."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        c = self.cfg
        n, dev = x.shape[0], x.device

        def u(lo, hi):
            return torch.rand(n, generator=gen).mul_(hi - lo).add_(lo).to(dev)

        if c.hflip:
            flip = (torch.rand(n, generator=gen) < 0.5).to(dev)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if c.rotation > 0 or c.scale != (1.0, 1.0) or c.translate > 0:
            ang = u(-c.rotation, c.rotation) * (math.pi / 180)
            s = u(*c.scale)
            tx, ty = u(-c.translate, c.translate) * 2, u(-c.translate, c.translate) * 2
            cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
            theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if c.blur_p > 0:
            pick = torch.rand(n, generator=gen) < c.blur_p
            if pick.any():
                idx = pick.nonzero().squeeze(1).to(dev)
                x = x.clone()
                x[idx] = TF.gaussian_blur(x[idx], kernel_size=[5, 5], sigma=[1.0, 1.0])
        if c.erase_p > 0:
            h, w = x.shape[-2:]
            pick = (torch.rand(n, generator=gen) < c.erase_p).to(dev)
            eh = (u(0.1, 0.4) * h).floor()
            ew = (u(0.1, 0.4) * w).floor()
            top = (u(0, 1) * (h - eh)).floor()
            left = (u(0, 1) * (w - ew)).floor()
            rows = torch.arange(h, device=dev)[None, :, None]
            cols = torch.arange(w, device=dev)[None, None, :]
            box = ((rows >= top[:, None, None]) & (rows < (top + eh)[:, None, None])
                   & (cols >= left[:, None, None]) & (cols < (left + ew)[:, None, None]) & pick[:, None, None])
            x = x.masked_fill(box[:, None], 0.0)
        return x
