"""Training: config, presets, batched augmentation, the loop and checkpoints."""

from fersynth.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fersynth.train.config import AugmentConfig, TrainConfig
from fersynth.train.presets import PRESETS, get_preset

__all__ = ["AugmentConfig", "Checkpoint", "PRESETS", "TrainConfig", "get_preset", "load_checkpoint", "save_checkpoint", "resolve_config"]


def resolve_config(preset: str | None = None, flags: dict | None = None, overrides: dict | None = None,
                   base: dict | None = None) -> TrainConfig:
    """Preset, then a config file's values (`base`), then `--set` overrides; explicit flags may not contradict a preset."""
    from fersynth.errors import FersynthError
    from fersynth.validation import set_dotted, validated

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
        set_dotted(data, k, v)
    return validated(TrainConfig, data, where="training config", hint="see `fersynth train --help`")


def _norm(v):
    return list(v) if isinstance(v, tuple) else v
