"""Canonical expression classes and the mapping of each dataset's own class names onto them.

Canonical order is FER2013's: 0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise,
6 neutral, then 7 contempt for datasets that have it. Label -1 means unlabelled.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from fersynth.errors import FersynthError

CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral", "contempt")
BASIC7: tuple[str, ...] = CLASSES[:7]
UNLABELLED = -1

# Every spelling seen in the supported datasets, lower-cased.
SYNONYMS: dict[str, str] = {
    "anger": "angry",
    "angry": "angry",
    "disgust": "disgust",
    "disgusted": "disgust",
    "fear": "fear",
    "fearful": "fear",
    "scared": "fear",
    "happy": "happy",
    "happiness": "happy",
    "joy": "happy",
    "sad": "sad",
    "sadness": "sad",
    "surprise": "surprise",
    "surprised": "surprise",
    "neutral": "neutral",
    "contempt": "contempt",
}


def canonical_name(name: str) -> str:
    """Map a dataset's class name (any case, common synonyms) to the canonical name."""
    key = name.strip().lower()
    if key in SYNONYMS:
        return SYNONYMS[key]
    # Folder names like "0_angry" or "1-disgust".
    for sep in ("_", "-", " "):
        if sep in key:
            tail = key.split(sep, 1)[1]
            if tail in SYNONYMS:
                return SYNONYMS[tail]
    close = difflib.get_close_matches(key, list(SYNONYMS), n=1)
    hint = f"did you mean '{close[0]}'?" if close else "pass --class-map NAME=CLASS"
    raise FersynthError(f"unknown class name '{name}'", hint=hint)


def canonical_index(name: str) -> int:
    return CLASSES.index(canonical_name(name))


def class_names(num_classes: int) -> list[str]:
    """Canonical names for a model with `num_classes` outputs (7 or 8)."""
    if not 1 <= num_classes <= len(CLASSES):
        raise FersynthError(f"unsupported class count {num_classes}", hint="use 7 or 8")
    return list(CLASSES[:num_classes])


def mapping_to_canonical(order: Sequence[str]) -> list[int]:
    """For a model or dataset whose outputs come in `order`, the canonical index of each position."""
    return [canonical_index(n) for n in order]


def parse_class_map(items: Iterable[str]) -> dict[str, str]:
    """Parse `NAME=CLASS` pairs from the command line into {dataset name: canonical name}."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise FersynthError(f"bad class mapping '{item}'", hint="write NAME=CLASS, e.g. joy=happy")
        src, dst = item.split("=", 1)
        out[src.strip().lower()] = canonical_name(dst)
    return out
