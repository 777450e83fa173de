"""Registry of image generators: @register_generator, list_generators(), get_generator().

A registered entry is a factory `fn(**kwargs) -> Generator` (see `fersynth.generate.base`)
together with the modes it supports.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

from fersynth.errors import FersynthError


@dataclass(frozen=True)
class GeneratorEntry:
    name: str
    fn: Callable
    description: str
    modes: tuple[str, ...]
    needs: str  # what it needs to run, for `fersynth generators list`


_REGISTRY: dict[str, GeneratorEntry] = {}


def register_generator(name: str | None = None, *, description: str = "", modes: tuple[str, ...] = (),
                       needs: str = ""):
    def deco(fn):
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"generator '{key}' registered twice")
        doc = description or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        _REGISTRY[key] = GeneratorEntry(key, fn, doc, tuple(modes), needs)
        return fn

    return deco


def _ensure_loaded() -> None:
    import fersynth.generate  # noqa: F401  (importing the package registers every generator)


def list_generators(pattern: str = "*") -> list[str]:
    _ensure_loaded()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_generator_entry(name: str) -> GeneratorEntry:
    _ensure_loaded()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see `fersynth generators list`"
        raise FersynthError(f"unknown generator '{name}'", hint=hint)
    return _REGISTRY[name]


def create_generator(name: str, **kwargs):
    return get_generator_entry(name).fn(**kwargs)
