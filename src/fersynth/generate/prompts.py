"""Prompt builder: per-emotion phrases with facial action units, crossed with an attribute grid.

The grid is Sultanov et al. 2025's (age, gender, ethnicity, lighting, angle, obstruction,
blur) plus head pose (SyntFER). Sampling is seeded: `balanced` spreads every attribute value
evenly within each class, `factorial` draws distinct cells of the full product (all of
them when no count is given), `random` draws each attribute independently.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from fersynth.errors import FersynthError
from fersynth.labels import CLASSES, canonical_name

# Facial action units (FACS) by number.
AU_NAMES: dict[int, str] = {
    1: "inner brow raiser", 2: "outer brow raiser", 4: "brow lowerer", 5: "upper lid raiser",
    6: "cheek raiser", 7: "lid tightener", 9: "nose wrinkler", 12: "lip corner puller",
    14: "dimpler", 15: "lip corner depressor", 16: "lower lip depressor", 20: "lip stretcher",
    23: "lip tightener", 26: "jaw drop",
}

# Emotion -> (what the face does, the AUs of its prototype, the noun used at the end).
EMOTIONS: dict[str, dict] = {
    "angry": {"phrase": "a scowling expression with lowered brows, glaring eyes and tight lips",
              "aus": (4, 5, 7, 23), "noun": "anger"},
    "disgust": {"phrase": "a disgusted expression with a wrinkled nose and a raised upper lip",
                "aus": (9, 15, 16), "noun": "disgust"},
    "fear": {"phrase": "a fearful expression with raised brows, wide eyes and stretched lips",
             "aus": (1, 2, 4, 5, 7, 20, 26), "noun": "fear"},
    "happy": {"phrase": "a genuine smile with raised cheeks and pulled-up lip corners",
              "aus": (6, 12), "noun": "happiness"},
    "sad": {"phrase": "a sad expression with raised inner brows and downturned lip corners",
            "aus": (1, 4, 15), "noun": "sadness"},
    "surprise": {"phrase": "a surprised expression with raised brows, wide-open eyes and a dropped jaw",
                 "aus": (1, 2, 5, 26), "noun": "surprise"},
    "neutral": {"phrase": "a relaxed neutral expression", "aus": (), "noun": "no emotion, a neutral face"},
    "contempt": {"phrase": "a contemptuous half-smile with one lip corner raised",
                 "aus": (12, 14), "noun": "contempt", "unilateral": True},
}

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "age": ("child", "teenager", "young adult", "middle-aged", "elderly"),
    "gender": ("male", "female"),
    "ethnicity": ("Caucasian", "African", "Asian", "Hispanic", "Middle Eastern"),
    "lighting": ("bright", "low", "shadowy"),
    "angle": ("frontal", "side", "top-down", "bottom-up"),
    "obstruction": ("none", "hands", "hair", "glasses", "mask"),
    "blur": ("none", "slight", "moderate"),
    "pose": ("facing the camera", "head turned slightly left", "head turned slightly right",
             "head tilted slightly up", "head tilted slightly down"),
}

DEFAULT_NEGATIVE = ("cartoon, drawing, painting, illustration, 3d render, deformed face, distorted features, "
                    "extra limbs, multiple faces, text, watermark, cropped face, low quality")
SAMPLING = ("balanced", "factorial", "random")


@dataclass
class PromptSpec:
    """One prompt with everything it was built from (recorded per generated image)."""

    label: int
    emotion: str
    prompt: str
    negative_prompt: str
    attributes: dict = field(default_factory=dict)
    action_units: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def au_text(emotion: str) -> str:
    e = EMOTIONS[canonical_name(emotion)]
    if not e["aus"]:
        return "no facial action units active"
    parts = [f"{AU_NAMES[a]} (AU{a})" for a in e["aus"]]
    side = ", on one side of the face only" if e.get("unilateral") else ""
    return "facial action units " + " + ".join(parts) + side


def build_prompt(emotion: str, attributes: Mapping[str, str] | None = None, include_aus: bool = True) -> str:
    """A Sultanov-style sentence: who, with what expression (and AUs), how lit, seen from where."""
    name = canonical_name(emotion)
    e = EMOTIONS[name]
    a = dict(attributes or {})
    who = " ".join(v for v in (a.get("ethnicity"), a.get("gender")) if v) or "person"
    if a.get("age"):
        who = f"{a['age']}, {who}" if who != "person" else a["age"]
    article = "an" if who[0].lower() in "aeiou" else "a"
    s = f"A close-up photo of {article} {who} with {e['phrase']}"
    if include_aus:
        s += f", {au_text(name)}"
    if a.get("lighting"):
        s += f", captured in {a['lighting']} light"
    if a.get("angle"):
        s += f", from a {a['angle']} angle"
    if a.get("pose"):
        s += f", {a['pose']}"
    if a.get("obstruction") and a["obstruction"] != "none":
        s += f", partly covered by {a['obstruction']}"
    if a.get("blur") and a["blur"] != "none":
        s += f", with {a['blur']} blur"
    return s + f", expressing {e['noun']}."


def _grid(attributes: Mapping[str, Sequence[str]] | None) -> dict[str, tuple[str, ...]]:
    if attributes is None:
        return dict(ATTRIBUTES)
    grid = {}
    for k, vals in attributes.items():
        if k not in ATTRIBUTES:
            raise FersynthError(f"unknown prompt attribute '{k}'", hint=f"choose from {', '.join(ATTRIBUTES)}")
        vals = tuple(vals)
        if not vals:
            raise FersynthError(f"prompt attribute '{k}' has no values")
        grid[k] = vals
    return grid


def _cell(grid: dict, flat: int) -> dict:
    out = {}
    for k, vals in reversed(grid.items()):
        flat, r = divmod(flat, len(vals))
        out[k] = vals[r]
    return dict(reversed(list(out.items())))


def sample_prompts(
    classes: Sequence[int | str],
    per_class: int | None,
    seed: int = 0,
    sampling: str = "balanced",
    attributes: Mapping[str, Sequence[str]] | None = None,
    negative_prompt: str = DEFAULT_NEGATIVE,
    include_aus: bool = True,
) -> list[PromptSpec]:
    """`per_class` prompts for each class (class order kept), attributes drawn by `sampling`.

    `attributes` replaces the default grid (a subset of its keys; pass {} for no attributes).
    `per_class=None` is only meaningful for `factorial` and means every cell of the grid.
    """
    if sampling not in SAMPLING:
        raise FersynthError(f"unknown prompt sampling '{sampling}'", hint=f"choose one of {', '.join(SAMPLING)}")
    grid = _grid(attributes)
    cells = math.prod(len(v) for v in grid.values())
    if per_class is None:
        if sampling != "factorial":
            raise FersynthError("a prompt count per class is needed", hint="pass --per-class N")
        per_class = cells
    if per_class < 1:
        raise FersynthError(f"prompts per class must be >= 1, got {per_class}")
    out: list[PromptSpec] = []
    for c in classes:
        label = c if isinstance(c, int) else CLASSES.index(canonical_name(c))
        name = CLASSES[label]
        rng = np.random.default_rng([seed, label])
        if sampling == "factorial":
            if per_class > cells:
                raise FersynthError(f"{per_class} prompts per class asked, the grid has only {cells} cells",
                                    hint="use balanced sampling, or fewer prompts")
            flats = range(cells) if per_class == cells else sorted(rng.choice(cells, per_class, replace=False))
            combos = [_cell(grid, int(f)) for f in flats]
        elif sampling == "balanced":
            cols = {}
            for k, vals in grid.items():
                reps = np.tile(np.arange(len(vals)), -(-per_class // len(vals)))[:per_class]
                cols[k] = [vals[i] for i in rng.permutation(reps)]
            combos = [{k: cols[k][i] for k in grid} for i in range(per_class)]
        else:
            combos = [{k: vals[int(rng.integers(len(vals)))] for k, vals in grid.items()} for _ in range(per_class)]
        for a in combos:
            out.append(PromptSpec(label, name, build_prompt(name, a, include_aus), negative_prompt, a,
                                  list(EMOTIONS[name]["aus"])))
    return out


def grid_size(attributes: Mapping[str, Sequence[str]] | None = None) -> int:
    return math.prod(len(v) for v in _grid(attributes).values())


def iter_grid(attributes: Mapping[str, Sequence[str]] | None = None):
    """Every cell of the attribute grid, as dicts, in a fixed order."""
    grid = _grid(attributes)
    for combo in itertools.product(*grid.values()):
        yield dict(zip(grid, combo, strict=True))
