"""Verification of synthetic images by an ensemble of FER experts, and label-noise audits."""

from fersynth.verify.audit import audit, ranking_metrics, suspicion
from fersynth.verify.experts import (
    CheckpointExpert,
    Expert,
    KerasMiniXceptionExpert,
    TFLiteExpert,
    TorchExpert,
    ensemble_proba,
    load_expert,
)
from fersynth.verify.policy import Decision, VerifyPolicy, decide
from fersynth.verify.run import acceptance_table, plot_verdict_grid, verify

__all__ = [
    "CheckpointExpert",
    "Decision",
    "Expert",
    "KerasMiniXceptionExpert",
    "TFLiteExpert",
    "TorchExpert",
    "VerifyPolicy",
    "acceptance_table",
    "audit",
    "decide",
    "ensemble_proba",
    "load_expert",
    "plot_verdict_grid",
    "ranking_metrics",
    "suspicion",
    "verify",
]
