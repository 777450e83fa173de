"""Verification of synthetic images by an ensemble of FER experts."""

from fersynth.verify.experts import (
    Expert,
    KerasMiniXceptionExpert,
    TFLiteExpert,
    TorchExpert,
    ensemble_proba,
    load_expert,
)

__all__ = [
    "Expert",
    "KerasMiniXceptionExpert",
    "TFLiteExpert",
    "TorchExpert",
    "ensemble_proba",
    "load_expert",
]
