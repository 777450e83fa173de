"""Verification policy: pure functions from expert probabilities to keep / relabel / drop.

An image made to show `intended` is *kept* when the experts agree with that label (mode
"vote": at least k experts' argmax is the intended class with probability >= threshold;
mode "mean": the ensemble's mean probability of the intended class is >= threshold). When
the ensemble confidently names another class (its argmax differs from the intended label
and its mean probability is >= relabel_threshold) the image is *relabelled* to that class,
with the ensemble's averaged distribution as its soft label (SynFER's calibration). Anything
else is *dropped*. Images below a quality score, near-duplicates of an earlier accepted
image and near-duplicates of a test image are dropped whatever the experts say.

Both modes reduce to one *keep score* per image and intended class (`keep_score`): kept
iff score >= threshold. A per-class threshold vector (fitted by `verify.calibrate`) may
replace the policy's single threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fersynth.data.duplicates import (
    DEGENERATE_HASH,
    MAX_RADIUS,
    exact_group_ids,
    merge_groups,
    near_group_ids,
)
from fersynth.errors import FersynthError

KEEP, RELABEL, DROP = "keep", "relabel", "drop"
VERDICTS = (KEEP, RELABEL, DROP)
# Reasons, in order of precedence (the first that applies is recorded).
R_TEST_DUP = "near_duplicate_of_test"
R_QUALITY = "low_quality"
R_DUP = "near_duplicate"
R_AGREE = "experts_agree"
R_RELABEL = "confident_disagreement"
R_DISAGREE = "experts_disagree"
R_UNSURE = "low_confidence"
REASONS = (R_TEST_DUP, R_QUALITY, R_DUP, R_AGREE, R_RELABEL, R_DISAGREE, R_UNSURE)


class VerifyPolicy(BaseModel):
    """How expert probabilities become verdicts (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    mode: str = Field("vote", description="how experts' probabilities become a keep score: a registered "
                                          "mode (`KEEP_SCORES`): vote | mean")
    k: int | None = Field(None, ge=1, description="vote mode: experts that must agree (default: a majority)")
    threshold: float = Field(0.5, ge=0, le=1)
    relabel: bool = True
    relabel_threshold: float = Field(0.7, ge=0, le=1)
    min_q_score: float | None = Field(None, description="drop images whose q_score is below this")
    dedup: bool = True
    radius: int = Field(4, ge=0, le=MAX_RADIUS, description="pHash Hamming radius for near-duplicates")

    @model_validator(mode="after")
    def _check(self):
        if self.mode not in KEEP_SCORES:
            raise ValueError(f"mode '{self.mode}' is not a verification mode (modes: {', '.join(KEEP_SCORES)})")
        if self.mode != "vote" and self.k is not None:
            raise ValueError("k applies to mode 'vote' only")
        return self

    def needed_votes(self, n_experts: int) -> int:
        k = self.k if self.k is not None else n_experts // 2 + 1
        if k > n_experts:
            raise FersynthError(
                f"policy asks for {k} agreeing experts but only {n_experts} were given",
                hint="lower --k or add experts",
            )
        return k


@dataclass
class Decision:
    """Per-image outcome of `decide` (all arrays have one entry per image)."""

    verdict: np.ndarray  # str: keep / relabel / drop
    label: np.ndarray  # int64: intended for keep and drop, the ensemble's class for relabel
    soft_label: np.ndarray  # float32 (N, K): averaged distribution for relabel rows, NaN elsewhere
    reason: np.ndarray  # str, one of REASONS
    n_agree: np.ndarray  # int64: experts whose argmax is the intended class above threshold
    p_intended: np.ndarray  # float32: ensemble mean probability of the intended class
    mean_probs: np.ndarray  # float32 (N, K)


def normalise(probs: np.ndarray, num_classes: int) -> np.ndarray:
    """Keep the first `num_classes` columns and renormalise rows to sum 1 (all-zero rows stay)."""
    p = np.asarray(probs, dtype=np.float32)[..., :num_classes]
    s = p.sum(axis=-1, keepdims=True)
    return np.divide(p, s, out=np.zeros_like(p), where=s > 0)


def _checked(per_expert, intended) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(per_expert, dtype=np.float32)
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3:
        raise ValueError(f"per-expert probabilities must be (E, N, K), got {p.shape}")
    _, n, k = p.shape
    y = np.asarray(intended, dtype=np.int64)
    if y.shape != (n,):
        raise ValueError(f"{len(y)} intended labels for {n} images")
    if n and (y.min() < 0 or y.max() >= k):
        raise FersynthError(
            f"intended labels must lie in 0..{k - 1}, got {int(y.min())}..{int(y.max())}",
            hint="every image to verify needs the class it was generated for",
        )
    return p, y


def ensemble_mean(p: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """(N, K) weighted mean of per-expert probabilities (E, N, K)."""
    w = np.ones(len(p)) if weights is None else np.asarray(weights, dtype=np.float64)
    return np.tensordot(w / w.sum(), p, axes=1).astype(np.float32)


KEEP_SCORES: dict[str, object] = {}


def register_keep_score(mode: str):
    """Register `fn(per_expert (E, N, K), intended (N,), policy, weights) -> (N,) keep scores` as a
    verification mode: an image is kept iff its score >= the policy's (or its class's) threshold."""

    def deco(fn):
        if mode in KEEP_SCORES:
            raise ValueError(f"verification mode '{mode}' registered twice")
        KEEP_SCORES[mode] = fn
        return fn

    return deco


@register_keep_score("mean")
def _mean_score(p: np.ndarray, y: np.ndarray, policy: VerifyPolicy, weights) -> np.ndarray:
    """The ensemble's (weighted) mean probability of the intended class."""
    return ensemble_mean(p, weights)[np.arange(len(y)), y]


@register_keep_score("vote")
def _vote_score(p: np.ndarray, y: np.ndarray, policy: VerifyPolicy, weights) -> np.ndarray:
    """The k-th largest probability of the intended class among the experts whose argmax it is
    (-1 when fewer than k experts name it)."""
    rows = np.arange(len(y))
    q = np.where(p.argmax(axis=2) == y[None], p[:, rows, y], -1.0)
    return -np.sort(-q, axis=0)[policy.needed_votes(len(p)) - 1].astype(np.float32)


def keep_score(
    per_expert: np.ndarray,
    intended: Sequence[int] | np.ndarray,
    policy: VerifyPolicy | None = None,
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """Per image, the highest threshold at which `policy` would still keep it for its intended
    class: the policy's registered mode (`KEEP_SCORES`) applied to the experts' probabilities."""
    policy = policy or VerifyPolicy()
    p, y = _checked(per_expert, intended)
    return KEEP_SCORES[policy.mode](p, y, policy, weights)


def decide(
    per_expert: np.ndarray,
    intended: Sequence[int] | np.ndarray,
    policy: VerifyPolicy | None = None,
    *,
    q_score: np.ndarray | None = None,
    phashes: np.ndarray | None = None,
    exact_hashes: Sequence[str] | None = None,
    test_duplicate: np.ndarray | None = None,
    weights: Sequence[float] | None = None,
    thresholds: np.ndarray | None = None,
) -> Decision:
    """Verdicts for N images from per-expert probabilities (E, N, K) in canonical order.

    `q_score` enables the quality filter (with policy.min_q_score); `phashes` (and optionally
    `exact_hashes`, pixel digests) enable dropping near-duplicates of an earlier accepted
    image; `test_duplicate` marks images that are near-duplicates of a test image.
    `thresholds` (K,) replaces policy.threshold with one threshold per intended class.
    """
    policy = policy or VerifyPolicy()
    p, y = _checked(per_expert, intended)
    n_exp, n, k = p.shape
    mean = ensemble_mean(p, weights)
    rows = np.arange(n)
    p_int = mean[rows, y]
    thr = np.full(n, policy.threshold, np.float32) if thresholds is None else \
        np.asarray(thresholds, dtype=np.float32)[y]
    hit = (p.argmax(axis=2) == y[None]) & (p[:, rows, y] >= thr[None])
    n_agree = hit.sum(axis=0).astype(np.int64)
    agree = keep_score(p, y, policy, weights) >= thr
    top = mean.argmax(axis=1)
    confident_other = (top != y) & (mean.max(axis=1) >= policy.relabel_threshold)
    relabel = ~agree & confident_other & policy.relabel

    verdict = np.where(agree, KEEP, np.where(relabel, RELABEL, DROP)).astype(object)
    reason = np.where(
        agree, R_AGREE, np.where(relabel, R_RELABEL, np.where(top != y, R_DISAGREE, R_UNSURE))
    ).astype(object)

    if test_duplicate is not None:
        td = np.asarray(test_duplicate, dtype=bool)
        verdict[td], reason[td] = DROP, R_TEST_DUP
    if policy.min_q_score is not None:
        if q_score is None:
            raise FersynthError("the quality filter needs quality scores", hint="run `fersynth data quality` first")
        low = (np.asarray(q_score, dtype=np.float64) < policy.min_q_score) & (verdict != DROP)
        verdict[low], reason[low] = DROP, R_QUALITY
    if policy.dedup and phashes is not None:
        later = later_duplicates(phashes, verdict != DROP, policy.radius, exact_hashes)
        verdict[later], reason[later] = DROP, R_DUP

    label = np.where(verdict == RELABEL, top, y).astype(np.int64)
    soft = np.full((n, k), np.nan, dtype=np.float32)
    soft[verdict == RELABEL] = mean[verdict == RELABEL]
    return Decision(verdict.astype(str), label, soft, reason.astype(str), n_agree, p_int, mean)


def later_duplicates(
    phashes: np.ndarray,
    candidates: np.ndarray,
    radius: int = 4,
    exact_hashes: Sequence[str] | None = None,
) -> np.ndarray:
    """True for candidate rows that are near-duplicates (pHash within `radius`, or identical
    pixels) of an earlier candidate row; the first row of each group is kept."""
    cand = np.flatnonzero(np.asarray(candidates, dtype=bool))
    out = np.zeros(len(candidates), dtype=bool)
    if len(cand) < 2:
        return out
    groups = near_group_ids(np.asarray(phashes, dtype=np.uint64)[cand], radius)
    if exact_hashes is not None:
        exact = exact_group_ids([exact_hashes[i] for i in cand])
        groups = merge_groups(groups, exact)
    in_group = groups >= 0
    _, first = np.unique(groups[in_group], return_index=True)
    dup = in_group.copy()
    dup[np.flatnonzero(in_group)[first]] = False
    out[cand[dup]] = True
    return out


def near_any(
    query: np.ndarray,
    reference: np.ndarray,
    radius: int = 4,
    query_exact: Sequence[str] | None = None,
    reference_exact: Sequence[str] | None = None,
    block: int = 512,
) -> np.ndarray:
    """True for each query pHash within `radius` bits of some reference pHash (blank images'
    degenerate hashes never match), or whose pixel digest equals a reference digest."""
    q = np.asarray(query, dtype=np.uint64)
    r = np.asarray(reference, dtype=np.uint64)
    r = np.unique(r[r != DEGENERATE_HASH])
    out = np.zeros(len(q), dtype=bool)
    valid = np.flatnonzero(q != DEGENERATE_HASH)
    if len(r):
        for s in range(0, len(valid), block):
            idx = valid[s : s + block]
            d = np.bitwise_count(q[idx, None] ^ r[None, :])
            out[idx] = (d <= radius).any(axis=1)
    if query_exact is not None and reference_exact is not None:
        out |= np.isin(np.asarray(query_exact, dtype=object), np.asarray(reference_exact, dtype=object))
    return out
