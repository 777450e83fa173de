"""The experiment config: one YAML file describes a whole study (data, generators, verification,
arms, training recipe, seeds, test sets). pydantic validates it; an error names its YAML path.

    name: fer2013-cpu
    data: {path: ../shared/data/fer2013, test_subsets: [PrivateTest]}
    train: {preset: cpu-fast, set: {max_minutes: 8}}
    generators:
      own: {kind: own, train: {max_minutes: 40}, per_class: 1500}
    verify: {experts: [baseline]}
    arms:
      - {name: baseline, strategy: real}
      - {name: oversample, strategy: oversample, rho: 2}
      - {name: own-append300, strategy: append, generator: own, n: 300}
    seeds: [0, 1, 2]

Relative paths in the file are resolved against the file's folder.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from pathlib import Path
from typing import Annotated, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from fersynth.errors import FersynthError
from fersynth.generate.registry import GenerationSpec, generator_entries, registry_version
from fersynth.validation import parse_sets, set_dotted, validated
from fersynth.verify.calibrate import CalibrationConfig
from fersynth.verify.policy import VerifyPolicy


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DataConfig(_Strict):
    """The real dataset: train rows feed everything, validation is carved from them once."""

    path: str
    format: str | None = None
    size: int | None = Field(None, ge=8, description="resize every image on ingest")
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    split_seed: int = Field(0, description="seed of the validation carve (shared by every arm and seed)")
    test_subsets: list[str] | None = Field(None, description="in-domain test rows (default: every test row)")
    quality: bool = Field(True, description="score image quality (q_* columns) in the profile")


class TrainSection(_Strict):
    preset: str | None = "cpu-fast"
    set: dict = Field(default_factory=dict, description="training config overrides, dotted keys allowed")


class VerifySection(_Strict):
    enabled: bool = True
    experts: list[str] = Field(default_factory=lambda: ["baseline"],
                               description="'baseline' (the baseline arm, first seed) or model paths")
    policy: VerifyPolicy = Field(default_factory=VerifyPolicy,
                                 description="mode vote | mean, k, threshold, relabel, relabel_threshold, ...")
    test_reference: bool = Field(True, description="drop near-duplicates of test and validation images")
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig,
                                           description="calibrate the policy on part of the validation split: "
                                                       "method none | prior | thresholds | both, target_keep, ...")


class ArmConfig(BaseModel):
    """What every arm has beside its strategy's parameters (`fersynth.compose`'s registry)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
    generator: str | None = None
    verified: bool = Field(True, description="false: this arm draws from its generator's images unverified "
                                             "(a control for the verifier)")
    train: dict = Field(default_factory=dict, description="training overrides for this arm only")

    @model_validator(mode="after")
    def _check(self):
        from fersynth.compose import get_strategy

        e = get_strategy(self.strategy)
        if e.synthetic and not self.generator:
            raise ValueError(f"strategy '{self.strategy}' needs `generator`")
        if not e.synthetic and self.generator:
            raise ValueError(f"strategy '{self.strategy}' uses no generator")
        if not e.synthetic and not self.verified:
            raise ValueError(f"strategy '{self.strategy}' has no synthetic images to leave unverified")
        return self

    def strategy_config(self):
        """The compose strategy's own config (the arm's fields that the strategy defines)."""
        from fersynth.compose import get_strategy

        cls = get_strategy(self.strategy).config
        return cls.model_validate(self.model_dump(include=set(cls.model_fields)))


class TestSetConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
    path: str | None = Field(None, description="default: the experiment's own dataset")
    format: str | None = None
    subsets: list[str] | None = None
    label_map: dict[str, str] = Field(default_factory=dict, description="data class -> model class, e.g. contempt: neutral")
    report_unseen: bool = False
    ferplus: bool = False


class ExperimentConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
    description: str = ""
    data: DataConfig
    train: TrainSection = Field(default_factory=TrainSection)
    generators: dict[str, GenerationSpec] = Field(default_factory=dict)
    verify: VerifySection = Field(default_factory=VerifySection)
    arms: list[ArmConfig]
    seeds: list[int] = Field(default_factory=lambda: [0])
    test_sets: list[TestSetConfig] = Field(default_factory=list, description="cross-dataset tests (the in-domain one is always run)")
    baseline_arm: str | None = Field(None, description="default: the first arm with strategy real")
    control_arm: str | None = Field(None, description="default: the first oversample / class-weighted arm")
    n_boot: int = Field(1000, ge=0)
    budget_minutes: float | None = Field(None, gt=0, description="stated wall-time budget (reported, not enforced)")

    @model_validator(mode="before")
    @classmethod
    def _default_kind(cls, data):
        gens = data.get("generators") if isinstance(data, dict) else None
        if isinstance(gens, dict) and any(isinstance(g, dict) and "kind" not in g for g in gens.values()):
            data = dict(data, generators={n: ({"kind": "own", **g} if isinstance(g, dict) and "kind" not in g else g)
                                          for n, g in gens.items()})
        return data

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if not v or len(set(v)) != len(v):
            raise ValueError("seeds must be a non-empty list of distinct integers")
        return v

    @model_validator(mode="after")
    def _check(self):
        names = [a.name for a in self.arms]
        if not names:
            raise ValueError("at least one arm is needed")
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"arm names must be unique: {sorted(dup)}")
        for a in self.arms:
            if a.generator and a.generator not in self.generators:
                close = difflib.get_close_matches(a.generator, list(self.generators), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(f"arm '{a.name}' names unknown generator '{a.generator}'{hint}")
        for gname, g in self.generators.items():
            if g.guide is None:
                continue
            if g.mode != "guided":
                raise ValueError(f"generators.{gname}.guide: only a generator in mode 'guided' has a guide")
            if g.guide not in names:
                raise ValueError(f"generators.{gname}.guide: '{g.guide}' is not an arm")
            if self.arm(g.guide).generator:
                raise ValueError(f"generators.{gname}.guide: arm '{g.guide}' draws from a generator; "
                                 "a guide trains on real data only")
        if self.baseline_arm is None:
            self.baseline_arm = next((a.name for a in self.arms if a.strategy == "real"), None)
            if self.baseline_arm is None:
                raise ValueError("no baseline: add an arm with strategy 'real' or set baseline_arm")
        elif self.baseline_arm not in names:
            raise ValueError(f"baseline_arm '{self.baseline_arm}' is not an arm")
        if self.control_arm is None:
            from fersynth.compose import get_strategy

            self.control_arm = next((a.name for a in self.arms if get_strategy(a.strategy).control), None)
        elif self.control_arm not in names:
            raise ValueError(f"control_arm '{self.control_arm}' is not an arm")
        from fersynth.train import resolve_config

        for i, a in enumerate(self.arms):  # every arm's training config, resolved as its stage will
            try:
                resolve_config(self.train.preset, overrides={**self.train.set, **a.train})
            except FersynthError as e:
                raise ValueError(f"arm '{a.name}' (arms[{i}].train / train.set): {e.message}") from None
        tn = [t.name for t in self.test_sets]
        if len(set(tn)) != len(tn) or "test" in tn:
            raise ValueError("test set names must be unique and not 'test' (the in-domain set)")
        return self

    def arm(self, name: str) -> ArmConfig:
        return next(a for a in self.arms if a.name == name)

    def guide_arm(self, name: str) -> str | None:
        """The arm whose first-seed model guides generator `name` (None: it is not guided)."""
        g = self.generators[name]
        return (g.guide or self.baseline_arm) if g.mode == "guided" else None

    def arm_order(self) -> list[ArmConfig]:
        """Arms in the order they run: the baseline, then the arms that guide a generator, then the rest."""
        guides = {self.guide_arm(n) for n in self.generators} - {None}
        first = [self.baseline_arm] + [a.name for a in self.arms if a.name in guides and a.name != self.baseline_arm]
        return [self.arm(n) for n in first] + [a for a in self.arms if a.name not in first]

    def model_owner(self, name: str) -> str:
        """The generator whose trained model `name` uses: the first one (in config order) of the same
        kind, training settings and device that trains its own weights, so that two generators
        differing only in how they sample (e.g. `sample` and `expand`) train one model, not two."""
        def ident(g: GenerationSpec):
            t = None if g.weights else g.train_identity()
            return None if t is None else (g.kind, json.dumps(t, sort_keys=True, default=str), g.device)

        mine = ident(self.generators[name])
        if mine is None:
            return name
        return next(other for other, o in self.generators.items() if ident(o) == mine)


_MODELS: dict[tuple, type[ExperimentConfig]] = {}


def _tagged(members: list[type[BaseModel]], tag: str):
    if len(members) == 1:
        return members[0]
    return Annotated[Union[tuple(members)], Field(discriminator=tag)]  # noqa: UP007


def experiment_model() -> type[ExperimentConfig]:
    """ExperimentConfig with `generators` and `arms` as discriminated unions of what the
    registries hold (a generator's `kind`, an arm's `strategy`), rebuilt when they change."""
    from fersynth.compose import strategies, strategy_version

    key = (registry_version(), strategy_version())
    if key not in _MODELS:
        arms = [create_model(f"{e.config.__name__.removesuffix('Config')}Arm", __base__=(e.config, ArmConfig),
                             allow_short=(bool, Field(True, description="a pool smaller than asked is used whole; "
                                                                        "the shortfall is reported")))
                for e in strategies()]
        gens = [e.config for e in generator_entries()]
        _MODELS.clear()
        _MODELS[key] = create_model("ExperimentConfig", __base__=ExperimentConfig,
                                    generators=(dict[str, _tagged(gens, "kind")], Field(default_factory=dict)),
                                    arms=(list[_tagged(arms, "strategy")], ...))
    return _MODELS[key]


def config_schema() -> dict:
    """JSON Schema of a study YAML, with every registered generator and strategy."""
    return experiment_model().model_json_schema()


def validate_config(data: dict, source: str = "config") -> ExperimentConfig:
    """The whole study validated at once: every error names its YAML path."""
    return validated(experiment_model(), data, where=source)


def _resolve_paths(data: dict, base: Path) -> dict:
    def res(v):
        if v is None:
            return v
        p = Path(os.path.expanduser(str(v)))
        return str(p if p.is_absolute() else (base / p).resolve())

    d = copy.deepcopy(data)
    if isinstance(d.get("data"), dict) and "path" in d["data"]:
        d["data"]["path"] = res(d["data"]["path"])
    for g in (d.get("generators") or {}).values():
        if isinstance(g, dict):
            for k in ("weights", "config", "agree_with"):
                if g.get(k):
                    g[k] = res(g[k])
    for t in d.get("test_sets") or []:
        if isinstance(t, dict) and t.get("path"):
            t["path"] = res(t["path"])
    v = d.get("verify")
    if isinstance(v, dict) and isinstance(v.get("experts"), list):
        v["experts"] = [e if e == "baseline" else res(e) for e in v["experts"]]
    return d


def load_config(path: str | os.PathLike, sets: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment config, apply `--set key=value` overrides, validate."""
    p = Path(path)
    if not p.is_file():
        raise FersynthError(f"{p}: no config file there", hint="see configs/ for examples")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise FersynthError(f"{p}:{where} is not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise FersynthError(f"{p}: expected a mapping of keys at the top level")
    # the file's relative paths are relative to its folder; those given with --set to the working
    # directory, as on any command line (resolved paths are absolute, so the second pass keeps them)
    data = _resolve_paths(data, p.resolve().parent)
    for k, v in parse_sets(sets).items():
        set_dotted(data, k, v)
    data = _resolve_paths(data, Path.cwd())
    return validate_config(data, source=str(p))


def config_from_dict(data: dict, base: str | os.PathLike = ".", sets: list[str] | None = None) -> ExperimentConfig:
    """A config from a mapping whose relative paths are relative to `base`; the relative paths of
    `sets` (KEY=VALUE overrides) are relative to the working directory."""
    data = _resolve_paths(copy.deepcopy(data), Path(base).resolve())
    for k, v in parse_sets(sets).items():
        set_dotted(data, k, v)
    return validate_config(_resolve_paths(data, Path.cwd()))


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
