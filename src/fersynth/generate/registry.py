"""Registry of image generators: one typed config, one factory and one planner per generator.

A generator registers, in its own module (any module in `fersynth/generate/` is imported when
the registry is first used, and installed packages can add theirs through the entry-point
group `fersynth.generators`):

- a config class: a `GenerationSpec` subclass whose `kind` is a one-value Literal. It is the
  generator's section of a study YAML (`generators.<name>`) and what `fersynth generate KIND`
  builds from its options, so both validate the same fields;
- a factory `fn(spec, weights, classifier) -> Generator`;
- a planner `plan(spec, source, num_classes) -> [WorkItem]` (default `plan_items`: per-class
  counts in `sample` / `guided`, K variants per source image in `expand`, every target class
  per source image in `edit`);
- optionally `train(spec, real_train_rows, out_dir, progress) -> info` and
  `check_weights(path)`, for generators that learn from the user's data.

`prepare_generation` is the one way from a spec to (generator, work items): the CLI and
`fersynth run` both call it, so the same spec and seed give the same pixels from either.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fersynth.errors import FersynthError
from fersynth.labels import CLASSES

if TYPE_CHECKING:
    from fersynth.data.manifest import Manifest
    from fersynth.generate.base import Generator, WorkItem

CLASS_SEED_STRIDE = 7919  # class c of a plan with seed S draws its images from seed S + 7919 c


def class_index(name: str, what: str = "class") -> int:
    from fersynth.labels import canonical_name

    try:
        return CLASSES.index(canonical_name(str(name)))
    except (ValueError, FersynthError):
        raise ValueError(f"unknown class '{name}' (classes: {', '.join(CLASSES)})") from None


class GenerationSpec(BaseModel):
    """What every generator is asked for: a study YAML's `generators.<name>` section, or
    `fersynth generate KIND`'s options. Subclasses add their own fields and fix `kind`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    kind: str
    weights: str | None = Field(None, description="trained weights (a folder or file); own: skips training")
    mode: str = "sample"
    per_class: int | dict[str, int] = Field(300, description="sample / guided: images per class (or per class name)")
    classes: list[str] | None = Field(None, description="sample / guided / expand / edit: only these classes")
    k: int = Field(2, ge=1, description="expand: variants per real training image")
    strength: float = Field(0.5, gt=0, le=1, description="expand / edit: how far each real image is noised")
    targets: list[str] | None = Field(None, description="edit: target classes (default: every other class)")
    sources_per_class: int | None = Field(None, ge=1, description="expand / edit: real images per class (seeded pick)")
    steps: int = Field(25, ge=1)
    cfg_scale: float = Field(2.0, ge=0, description="classifier-free guidance scale")
    scheduler: str | None = None
    guidance: float = Field(0.1, ge=0, description="guided: classifier step size")
    guidance_start: float = Field(0.5, ge=0, le=1, description="guided: fraction of steps before guidance")
    guide: str | None = Field(None, description="guided, in a study: the arm whose first-seed model guides "
                                                "(default: the baseline arm); `fersynth generate` takes --classifier")
    batch_size: int = Field(50, ge=1, description="images per forward pass")
    shard_size: int = Field(64, ge=1, description="images per shard (the unit of resume)")
    seed: int = 0
    device: str = "cpu"

    @field_validator("per_class")
    @classmethod
    def _per_class(cls, v):
        if isinstance(v, int):
            if v < 0:
                raise ValueError("per_class must be >= 0")
            return v
        for name, n in v.items():
            class_index(name, "per_class")
            if n < 0:
                raise ValueError(f"per_class.{name} must be >= 0")
        return v

    @field_validator("classes", "targets")
    @classmethod
    def _names(cls, v):
        for name in v or []:
            class_index(name)
        return v

    # ------------------------------------------------------------------ what the spec asks for
    def class_list(self, names: list[str] | None, num_classes: int) -> list[int] | None:
        if names is None:
            return None
        out = sorted({class_index(n) for n in names})
        bad = [CLASSES[c] for c in out if c >= num_classes]
        if bad:
            raise FersynthError(f"class '{bad[0]}' is outside the generator's {num_classes} classes")
        return out

    def counts(self, num_classes: int) -> list[int]:
        """Images per class index for sample / guided."""
        if isinstance(self.per_class, int):
            counts = [self.per_class] * num_classes
        else:
            counts = [0] * num_classes
            for name, n in self.per_class.items():
                c = class_index(name)
                if c >= num_classes:
                    raise FersynthError(f"per_class: class '{name}' is not among the {num_classes} classes")
                counts[c] = int(n)
        keep = self.class_list(self.classes, num_classes)
        return [n if keep is None or c in keep else 0 for c, n in enumerate(counts)]

    def item_params(self, label: int) -> dict:
        """What each work item records of how it was made (provenance)."""
        p = {"cfg_scale": self.cfg_scale, "steps": self.steps, "scheduler": self.scheduler}
        if self.mode in ("expand", "edit"):
            p["strength"] = self.strength
        if self.mode == "guided":
            p.update(guidance=self.guidance, guidance_start=self.guidance_start)
        return p

    def train_identity(self) -> dict | None:
        """What identifies the weights this spec trains (None: it trains nothing)."""
        return None

    def train_files(self) -> list[str]:
        """Files or folders besides the real data that training reads: a study's cache key holds
        their fingerprints, so a changed file retrains the model."""
        return []


@dataclass(frozen=True)
class GeneratorEntry:
    name: str
    fn: Callable  # factory(spec, weights, classifier) -> Generator
    config: type[GenerationSpec]
    plan: Callable  # plan(spec, source, num_classes) -> list[WorkItem]
    description: str
    modes: tuple[str, ...]
    needs: str  # what it needs to run, for `fersynth generators list`
    train: Callable | None = None  # train(spec, real_train, out_dir, progress) -> info
    check_weights: Callable | None = None  # check_weights(path): raise FersynthError when unusable


_REGISTRY: dict[str, GeneratorEntry] = {}
_VERSION = [0]


def register_generator(name: str | None = None, *, config: type[GenerationSpec], plan: Callable | None = None,
                       train: Callable | None = None, check_weights: Callable | None = None,
                       description: str = "", modes: tuple[str, ...] = (), needs: str = ""):
    """Decorator for a factory `fn(spec, weights, classifier) -> Generator`."""

    def deco(fn):
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"generator '{key}' registered twice")
        kind = config.model_fields["kind"].annotation
        if getattr(kind, "__args__", None) != (key,):
            raise ValueError(f"generator '{key}': its config's kind must be Literal['{key}']")
        doc = description or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        _REGISTRY[key] = GeneratorEntry(key, fn, config, plan or plan_items, doc, tuple(modes), needs, train,
                                        check_weights)
        _VERSION[0] += 1
        return fn

    return deco


def unregister_generator(name: str) -> None:
    """Remove a registered generator (for tests and plugins that replace one)."""
    _REGISTRY.pop(name, None)
    _VERSION[0] += 1


def registry_version() -> int:
    _ensure_loaded()
    return _VERSION[0]


_LOADED = [False]


def _ensure_loaded() -> None:
    """Import every module of this package once (each registers its generators), then plugins."""
    if _LOADED[0]:
        return
    _LOADED[0] = True
    import importlib
    import pkgutil

    import fersynth.generate as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{mod.name}")
    from importlib.metadata import entry_points

    for ep in entry_points(group="fersynth.generators"):
        ep.load()


def list_generators(pattern: str = "*") -> list[str]:
    _ensure_loaded()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def generator_entries() -> list[GeneratorEntry]:
    _ensure_loaded()
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def get_generator_entry(name: str) -> GeneratorEntry:
    _ensure_loaded()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see `fersynth generators list`"
        raise FersynthError(f"unknown generator '{name}'", hint=hint)
    return _REGISTRY[name]


def generation_spec(kind: str, values: dict, where: str = "generator") -> GenerationSpec:
    """A validated spec of generator `kind` from plain values (one clear error otherwise)."""
    from fersynth.validation import validated

    entry = get_generator_entry(kind)
    return validated(entry.config, {"kind": kind, **values}, where=where)


def create_generator(spec: GenerationSpec | str, weights: str | os.PathLike | None = None,
                     classifier: str | os.PathLike | None = None, **values) -> Generator:
    """The generator a spec (or a kind and its values) describes."""
    if isinstance(spec, str):
        spec = generation_spec(spec, {"weights": str(weights) if weights else None, **values})
    entry = get_generator_entry(spec.kind)
    return entry.fn(spec, weights=weights or spec.weights, classifier=classifier)


# ---------------------------------------------------------------------- planning
def plan_per_class(counts: list[int], seed: int, make: Callable[[int, int, int], list]) -> list[WorkItem]:
    """Items for `counts[c]` images of each class c, from `make(c, n, class_seed)`, indexed in
    order. Class c draws from seed + 7919 c, so changing one class's count leaves the others'
    images as they were."""
    items = []
    for c, n in enumerate(counts):
        for it in make(c, n, seed + CLASS_SEED_STRIDE * c) if n else []:
            it.index = len(items)
            items.append(it)
    return items


def plan_items(spec: GenerationSpec, source: Manifest | None, num_classes: int) -> list[WorkItem]:
    """The default planner (see the module docstring); prompts, if any, are the generator's business."""
    from fersynth.generate.own import plan_edit, plan_expand, plan_sample

    if spec.mode == "expand":
        return plan_expand(source, spec.k, spec.seed, spec.item_params(-1))
    if spec.mode == "edit":
        return plan_edit(source, spec.class_list(spec.targets, num_classes), spec.seed, spec.item_params(-1),
                         num_classes)
    return plan_per_class(spec.counts(num_classes), spec.seed,
                          lambda c, n, s: plan_sample([c], n, s, spec.mode, spec.item_params(c)))


def source_for(spec: GenerationSpec, real: Manifest | None, num_classes: int) -> Manifest | None:
    """The real training rows an expand / edit spec starts from (a seeded pick per class)."""
    if spec.mode not in ("expand", "edit"):
        return None
    if real is None:
        raise FersynthError(f"{spec.mode} needs real images", hint="pass --data with a train split")
    from fersynth.generate.own import source_rows

    src = source_rows(real, num_classes, spec.sources_per_class, spec.seed)
    keep = spec.class_list(spec.classes, num_classes)
    if keep is not None:
        src = src.select(src.df["label"].isin(keep).to_numpy())
    return src


def prepare_generation(spec: GenerationSpec, real: Manifest | None = None,
                       weights: str | os.PathLike | None = None,
                       classifier: str | os.PathLike | None = None) -> tuple[Generator, list[WorkItem]]:
    """(generator, work items) for a spec: what `fersynth generate` and `fersynth run` execute."""
    entry = get_generator_entry(spec.kind)
    if spec.mode not in entry.modes:
        raise FersynthError(f"unknown mode '{spec.mode}' for generator {spec.kind}",
                            hint=f"choose one of {', '.join(entry.modes)}")
    if spec.mode == "guided" and classifier is None:
        raise FersynthError("guided mode needs a FER classifier", hint="pass --classifier CHECKPOINT")
    weights = weights or spec.weights
    gen = entry.fn(spec, weights=Path(weights) if weights else None, classifier=classifier)
    k = getattr(gen, "num_classes", None) or _num_classes(spec, real)
    source = source_for(spec, real, k)
    if source is not None:
        gen.source = source
    return gen, entry.plan(spec, source, k)


def _num_classes(spec: GenerationSpec, real: Manifest | None) -> int:
    """Classes of a generator that is not tied to a label set (text prompts): the real data's,
    or the 7 basic expressions, widened to 8 when the spec names contempt."""
    asked = [*(spec.classes or []), *(spec.targets or []),
             *(spec.per_class if isinstance(spec.per_class, dict) else [])]
    need = max((class_index(n) + 1 for n in asked), default=0)
    return max(real.num_classes if real is not None else 7, need)
