"""FER architectures behind a timm-style registry. Importing this package registers them all."""

from fersynth.models.registry import create_model, get_model_entry, list_models, register_model

__all__ = [
    "count_params",
    "create_model",
    "get_model_entry",
    "list_models",
    "model_flops",
    "model_info",
    "register_model",
]

# Registration happens on import; each module adds its architectures to the registry.
from fersynth.models import cnn, ir50, mini_xception, transformers  # noqa: E402, F401
from fersynth.models.flops import count_params, model_flops, model_info  # noqa: E402
