"""Training: config, presets, batched augmentation, the loop and checkpoints."""

from fersynth.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fersynth.train.config import AugmentConfig, TrainConfig
from fersynth.train.presets import PRESETS, get_preset

__all__ = ["AugmentConfig", "Checkpoint", "PRESETS", "TrainConfig", "get_preset", "load_checkpoint", "save_checkpoint", "resolve_config"]


def resolve_config(preset: str | None = None, flags: dict | None = None, overrides: dict | None = None,
                   base: dict | None = None) -> TrainConfig:
    """Preset, then a config file's values (`base`), then `--set` overrides; explicit flags may not contradict a preset."""
    from pydantic import ValidationError

    from fersynth.errors import FersynthError

    data: dict = {}
    if preset:
        data.update(get_preset(preset))
    for k, v in (base or {}).items():
        data[k] = v
    for k, v in (flags or {}).items():
        if v is None:
            continue
        if preset and k in data and _norm(data[k]) != _norm(v):
            raise FersynthError(
                f"--{k.replace('_', '-')} {v} conflicts with preset '{preset}' ({k}={data[k]})",
                hint=f"drop the flag, or override on purpose with --set {k}={v}",
            )
        data[k] = v
    for k, v in (overrides or {}).items():
        _set_path(data, k, v)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        raise FersynthError(f"config key '{loc}': {err['msg']}", hint="see `fersynth train --help`") from None


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def _set_path(d: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            from fersynth.errors import FersynthError

            raise FersynthError(f"--set {dotted}: '{p}' is not a section")
    d[parts[-1]] = value
