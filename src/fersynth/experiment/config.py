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
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fersynth.errors import FersynthError
from fersynth.verify.calibrate import CalibrationConfig

STRATEGIES = ("real", "append", "balance", "expand", "synthetic-only", "mix", "oversample", "class-weighted")
SYNTHETIC_STRATEGIES = ("append", "balance", "expand", "synthetic-only", "mix")
CONTROL_STRATEGIES = ("oversample", "class-weighted")


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


class GeneratorConfig(_Strict):
    """One generator and the pool of images it makes for the arms that name it."""

    kind: Literal["own", "sd"] = "own"
    weights: str | None = Field(None, description="own: a trained weights folder (skips training); sd: the model")
    arch: str | None = Field(None, description="sd single-file checkpoints: sd | sdxl | sd3")
    config: str | None = Field(None, description="sd single-file checkpoints: local diffusers config folder")
    train: dict = Field(default_factory=dict, description="own: OwnConfig fields (size, channels, max_minutes, ...) "
                                                          "or `preset: NAME` (e.g. fer2013-cpu) plus overrides")
    mode: Literal["sample", "expand", "guided"] = "sample"
    per_class: int | dict[str, int] = Field(300, description="sample / guided: images per class (or per class name)")
    k: int = Field(2, ge=1, description="expand: variants per real training image")
    strength: float = Field(0.5, gt=0, le=1, description="expand: how far each real image is noised")
    sources_per_class: int | None = Field(None, ge=1, description="expand: real images per class (seeded pick)")
    steps: int = Field(25, ge=1)
    cfg_scale: float | None = Field(None, description="classifier-free guidance (default: own 2.0, sd 7.0)")
    cfg_scale_per_class: dict[str, float] = Field(default_factory=dict,
                                                  description="own: guidance scale per class name (others: cfg_scale)")
    scheduler: str | None = None
    guidance: float = Field(0.1, ge=0, description="guided: classifier step size")
    guidance_start: float = Field(0.5, ge=0, le=1)
    batch_size: int = Field(50, ge=1)
    seed: int = 0
    device: str = "cpu"
    prompts: dict = Field(default_factory=dict, description="sd: sampling (balanced|factorial|random), aus, negative")

    @model_validator(mode="after")
    def _check(self):
        if self.kind == "sd" and not self.weights:
            raise ValueError("an sd generator needs `weights` (a local diffusers folder or .safetensors file)")
        if self.mode == "guided" and self.kind == "own" and self.guidance <= 0:
            raise ValueError("guided mode needs guidance > 0")
        return self


class VerifySection(_Strict):
    enabled: bool = True
    experts: list[str] = Field(default_factory=lambda: ["baseline"],
                               description="'baseline' (the baseline arm, first seed) or model paths")
    policy: dict = Field(default_factory=dict, description="VerifyPolicy fields: mode, k, threshold, relabel, ...")
    test_reference: bool = Field(True, description="drop near-duplicates of test and validation images")
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig,
                                           description="calibrate the policy on part of the validation split: "
                                                       "method none | prior | thresholds | both, target_keep, ...")


class ArmConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
    strategy: Literal["real", "append", "balance", "expand", "synthetic-only", "mix", "oversample",
                      "class-weighted"]
    generator: str | None = None
    n: int | None = Field(None, ge=0)
    rho: float | None = Field(None, ge=1)
    k: int | None = Field(None, ge=1)
    fraction: float | None = Field(None, ge=0, le=1)
    allow_short: bool = Field(True, description="a pool smaller than asked is used whole; the shortfall is reported")
    verified: bool = Field(True, description="false: this arm draws from its generator's images unverified "
                                             "(a control for the verifier)")
    train: dict = Field(default_factory=dict, description="training overrides for this arm only")

    @model_validator(mode="after")
    def _check(self):
        if self.strategy in SYNTHETIC_STRATEGIES and not self.generator:
            raise ValueError(f"strategy '{self.strategy}' needs `generator`")
        if self.strategy not in SYNTHETIC_STRATEGIES and self.generator:
            raise ValueError(f"strategy '{self.strategy}' uses no generator")
        if self.strategy not in SYNTHETIC_STRATEGIES and not self.verified:
            raise ValueError(f"strategy '{self.strategy}' has no synthetic images to leave unverified")
        need = {"append": "n", "balance": "rho", "expand": "k", "mix": "fraction", "oversample": "rho"}
        f = need.get(self.strategy)
        if f and getattr(self, f) is None:
            raise ValueError(f"strategy '{self.strategy}' needs `{f}`")
        return self


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
    generators: dict[str, GeneratorConfig] = Field(default_factory=dict)
    verify: VerifySection = Field(default_factory=VerifySection)
    arms: list[ArmConfig]
    seeds: list[int] = Field(default_factory=lambda: [0])
    test_sets: list[TestSetConfig] = Field(default_factory=list, description="cross-dataset tests (the in-domain one is always run)")
    baseline_arm: str | None = Field(None, description="default: the first arm with strategy real")
    control_arm: str | None = Field(None, description="default: the first oversample / class-weighted arm")
    n_boot: int = Field(1000, ge=0)
    budget_minutes: float | None = Field(None, gt=0, description="stated wall-time budget (reported, not enforced)")

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
        if self.baseline_arm is None:
            self.baseline_arm = next((a.name for a in self.arms if a.strategy == "real"), None)
            if self.baseline_arm is None:
                raise ValueError("no baseline: add an arm with strategy 'real' or set baseline_arm")
        elif self.baseline_arm not in names:
            raise ValueError(f"baseline_arm '{self.baseline_arm}' is not an arm")
        if self.control_arm is None:
            self.control_arm = next((a.name for a in self.arms if a.strategy in CONTROL_STRATEGIES), None)
        elif self.control_arm not in names:
            raise ValueError(f"control_arm '{self.control_arm}' is not an arm")
        tn = [t.name for t in self.test_sets]
        if len(set(tn)) != len(tn) or "test" in tn:
            raise ValueError("test set names must be unique and not 'test' (the in-domain set)")
        return self

    def arm(self, name: str) -> ArmConfig:
        return next(a for a in self.arms if a.name == name)


def _yaml_path(loc) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _set_dotted(d: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    cur = d
    for i, p in enumerate(parts[:-1]):
        if isinstance(cur, list):
            try:
                cur = cur[int(p)]
            except (ValueError, IndexError):
                raise FersynthError(f"--set {dotted}: '{p}' is not an index of {'.'.join(parts[:i]) or 'the config'}") from None
            continue
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict | list):
            raise FersynthError(f"--set {dotted}: '{'.'.join(parts[:i + 1])}' is not a section")
        cur = nxt
    if isinstance(cur, list):
        try:
            i = int(parts[-1])
            if i == len(cur):  # one past the end appends: --set arms.4={name: x, strategy: real}
                cur.append(value)
            else:
                cur[i] = value
        except (ValueError, IndexError):
            raise FersynthError(f"--set {dotted}: '{parts[-1]}' is not an index (the list has {len(cur)} items)",
                                hint="use an existing index, or the list's length to append") from None
    else:
        cur[parts[-1]] = value


def parse_sets(sets: list[str] | None, example: str = "--set seeds=[0] or --set train.set.epochs=2") -> dict:
    """`KEY=VALUE` strings -> {key: YAML-parsed value}."""
    out = {}
    for s in sets or []:
        if "=" not in s:
            raise FersynthError(f"--set '{s}': expected KEY=VALUE", hint=f"e.g. {example}")
        k, v = s.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def validate_config(data: dict, source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = _yaml_path(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parent = err["loc"][:-1]
            model = _model_at(parent)
            close = difflib.get_close_matches(str(err["loc"][-1]), list(model.model_fields), n=1) if model else []
            hint = f"did you mean '{close[0]}'?" if close else (f"known keys: {', '.join(model.model_fields)}" if model else None)
            raise FersynthError(f"{source}: unknown key '{where}'", hint=hint) from None
        raise FersynthError(f"{source}: {where}: {msg}") from None


def _model_at(loc) -> type[BaseModel] | None:
    model: type[BaseModel] | None = ExperimentConfig
    for p in loc:
        if model is None:
            return None
        if isinstance(p, int):
            continue
        f = model.model_fields.get(str(p))
        if f is None:
            # a dict-of-models key (generators.<name>)
            if model is ExperimentConfig:
                return None
            continue
        ann = f.annotation
        model = {"data": DataConfig, "train": TrainSection, "verify": VerifySection, "arms": ArmConfig,
                 "test_sets": TestSetConfig, "generators": GeneratorConfig}.get(str(p)) if model is ExperimentConfig \
            else (ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None)
    return model


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
            for k in ("weights", "config"):
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
    for k, v in parse_sets(sets).items():
        _set_dotted(data, k, v)
    data = _resolve_paths(data, p.resolve().parent)
    return validate_config(data, source=str(p))


def config_from_dict(data: dict, base: str | os.PathLike = ".", sets: list[str] | None = None) -> ExperimentConfig:
    data = copy.deepcopy(data)
    for k, v in parse_sets(sets).items():
        _set_dotted(data, k, v)
    return validate_config(_resolve_paths(data, Path(base).resolve()))


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
