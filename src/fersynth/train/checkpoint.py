"""Moved to `fersynth.checkpoint` (inference must not import training); kept so old imports work."""

from fersynth.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    load_checkpoint,
    resolve_checkpoint_path,
    save_checkpoint,
)

__all__ = ["FORMAT_VERSION", "Checkpoint", "load_checkpoint", "resolve_checkpoint_path", "save_checkpoint"]
