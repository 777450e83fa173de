"""timm-style registry of FER architectures: @register_model, list_models(), create_model().

A registered entry point has the signature
    fn(num_classes: int = 7, in_chans: int = 1, img_size: int = 48, **kwargs) -> nn.Module
and may accept `pretrained_path` (a local ImageNet weights file) where the architecture has one.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from fersynth.errors import FersynthError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    fn: Callable[..., nn.Module]
    description: str
    default_img_size: int
    default_in_chans: int
    pretrained: bool  # accepts an ImageNet weights file via pretrained_path


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str | None = None,
    *,
    description: str = "",
    default_img_size: int = 48,
    default_in_chans: int = 1,
    pretrained: bool = False,
):
    def deco(fn):
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model '{key}' registered twice")
        doc = description or (fn.__doc__ or "").strip().splitlines()[0] if (description or fn.__doc__) else ""
        _REGISTRY[key] = ModelEntry(key, fn, doc, default_img_size, default_in_chans, pretrained)
        return fn

    return deco


def _ensure_loaded() -> None:
    # Importing the package registers every architecture.
    import fersynth.models  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    _ensure_loaded()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_model_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see `fersynth models list`"
        raise FersynthError(f"unknown model '{name}'", hint=hint)
    return _REGISTRY[name]


def create_model(
    name: str,
    num_classes: int = 7,
    in_chans: int = 1,
    img_size: int = 48,
    pretrained_path: str | None = None,
    **kwargs,
) -> nn.Module:
    entry = get_model_entry(name)
    if pretrained_path is not None:
        if not entry.pretrained:
            raise FersynthError(f"model '{name}' has no pretrained initialisation", hint="drop --pretrained")
        kwargs["pretrained_path"] = pretrained_path
    return entry.fn(num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)
