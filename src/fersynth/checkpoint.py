"""Checkpoints: weights as safetensors, everything else as JSON beside them. Nothing is unpickled."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fersynth.atomic import atomic_path, write_json_atomic
from fersynth.errors import FersynthError

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    model: torch.nn.Module
    meta: dict  # architecture, num_classes, classes, in_chans, img_size, preprocessing, config, metrics

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])


def save_checkpoint(model: torch.nn.Module, meta: dict, path: str | os.PathLike) -> Path:
    """Write `<path>.safetensors` and `<path>.json` atomically (JSON last: its presence marks completeness)."""
    path = Path(path).with_suffix("")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
    with atomic_path(path.with_suffix(".safetensors")) as tmp:
        save_file(state, str(tmp), metadata={"fersynth": str(FORMAT_VERSION), "architecture": meta["architecture"]})
    write_json_atomic(dict(meta, format_version=FORMAT_VERSION), path.with_suffix(".json"))
    return path.with_suffix(".safetensors")


def _unwrap(model):
    return getattr(model, "module", model)


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """A run directory means its best checkpoint; a .json or .safetensors names one directly."""
    p = Path(path)
    if p.is_dir():
        p = p / "best.safetensors"
    p = p.with_suffix(".safetensors")
    if not p.is_file():
        raise FersynthError(f"{path}: no checkpoint there (expected {p.name})", hint="pass a run directory or a .safetensors file")
    if not p.with_suffix(".json").is_file():
        raise FersynthError(f"{p}: metadata {p.with_suffix('.json').name} is missing", hint="checkpoints are a .safetensors + .json pair")
    return p


def load_checkpoint(path: str | os.PathLike, device: str = "cpu") -> Checkpoint:
    from fersynth.models import create_model

    p = resolve_checkpoint_path(path)
    try:
        meta = json.loads(p.with_suffix(".json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FersynthError(f"{p.with_suffix('.json')}: unreadable checkpoint metadata ({e})") from None
    for key in ("architecture", "num_classes", "classes", "in_chans", "img_size"):
        if key not in meta:
            raise FersynthError(f"{p.with_suffix('.json')}: checkpoint metadata lacks '{key}'")
    try:
        state = load_file(str(p), device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise FersynthError(f"{p}: corrupted checkpoint ({e})", hint="re-train or restore the file") from None
    model = create_model(meta["architecture"], num_classes=meta["num_classes"], in_chans=meta["in_chans"],
                         img_size=meta["img_size"], **meta.get("model_kwargs", {}))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0][:200]
        raise FersynthError(
            f"{p}: weights do not fit architecture '{meta['architecture']}' ({first})",
            hint="the checkpoint belongs to another architecture or class count",
        ) from None
    model.to(device).eval()
    return Checkpoint(model, meta)
