"""Image quality: per-image scores and flags (vectorised), and enhancement of weak images."""

from fersynth.quality.enhance import (
    ENHANCERS,
    clahe,
    denoise,
    enhance,
    enhance_low_quality,
    equalize_hist,
    super_resolve,
    unsharp_mask,
)
from fersynth.quality.metrics import (
    BLANK_STD,
    BLURRY_SHARPNESS,
    DETAIL_CUTOFF,
    FLAG_NAMES,
    GLCM_LEVELS,
    LOW_CONTRAST,
    LOW_ENTROPY,
    SCORE_REFS,
    combined_score,
    quality_flags,
    quality_scores,
)

__all__ = [
    "BLANK_STD",
    "BLURRY_SHARPNESS",
    "DETAIL_CUTOFF",
    "ENHANCERS",
    "FLAG_NAMES",
    "GLCM_LEVELS",
    "LOW_CONTRAST",
    "LOW_ENTROPY",
    "SCORE_REFS",
    "clahe",
    "combined_score",
    "denoise",
    "enhance",
    "enhance_low_quality",
    "equalize_hist",
    "quality_flags",
    "quality_scores",
    "super_resolve",
    "unsharp_mask",
]
