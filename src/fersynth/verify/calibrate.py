"""Verifier calibration on real validation images, so that verification is fair to rare classes.

Experts trained on imbalanced data seldom name a rare class (FER2013's disgust is 1.5% of the
rows), so one fixed threshold keeps almost none of the images made for it. The carved
validation split is divided, stratified and seeded, into a *fit* part and a *check* part. On
the fit part:

- `prior` fits, per expert, a temperature T and a class bias b on the log-probabilities,
  log p' = log p / T + b, by class-balanced negative log-likelihood (every class weighs the
  same, so b undoes the class prior the expert learnt: logit adjustment, in the spirit of
  SynFER's label calibrator);
- `thresholds` sets one keep threshold per class: the policy's keep score (`keep_score`) of
  the class's real images at the quantile that keeps `target_keep` of them, clipped to
  [min_threshold, max_threshold]. With `max_threshold_below_rows` N, max_threshold binds only
  the classes with fewer than N fit rows (a quantile of a few images is noise, so such a class
  may only lower the policy's threshold); the others get their fitted threshold, at most 1;
- `both` does the first, then the second on the corrected probabilities.

`check` then measures, on the check part only, the policy's keep rate on the real images per
class (`real_keep_rate`) and on the same images with their labels shuffled (a seeded
permutation; `shuffled_keep_rate`). A trustworthy verifier keeps most real images of every
class and few mislabelled ones. Test rows are never used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fersynth.errors import FersynthError
from fersynth.labels import CLASSES
from fersynth.verify.policy import KEEP, VerifyPolicy, decide, keep_score

METHODS = ("none", "prior", "thresholds", "both")


class CalibrationConfig(BaseModel):
    """How the verifier is calibrated on real validation images (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["none", "prior", "thresholds", "both"] = "none"
    fit_fraction: float = Field(0.5, gt=0, lt=1, description="share of the validation rows the calibration is fit on")
    target_keep: float = Field(0.7, gt=0, lt=1, description="thresholds: share of each class's real images to keep")
    min_threshold: float = Field(0.05, ge=0, le=1, description="thresholds: lowest per-class threshold")
    max_threshold: float = Field(0.95, ge=0, le=1, description="thresholds: highest per-class threshold")
    max_threshold_below_rows: int | None = Field(
        None, ge=1, description="thresholds: max_threshold binds only classes with fewer fit rows than this "
                                "(None: every class); the others may rise to 1")
    seed: int = Field(0, description="seed of the fit / check division and of the label shuffle")

    @model_validator(mode="after")
    def _check(self):
        if self.min_threshold > self.max_threshold:
            raise ValueError(f"min_threshold {self.min_threshold} is above max_threshold {self.max_threshold}")
        return self

    @property
    def enabled(self) -> bool:
        return self.method != "none"


@dataclass
class Calibration:
    """A fitted calibration: per-expert temperature (E,) and bias (E, K), per-class thresholds (K,)."""

    temperature: np.ndarray | None = None
    bias: np.ndarray | None = None
    thresholds: np.ndarray | None = None

    def apply(self, per_expert: np.ndarray) -> np.ndarray:
        """Corrected per-expert probabilities (E, N, K); unchanged without a prior correction."""
        p = np.asarray(per_expert, dtype=np.float32)
        if self.temperature is None:
            return p
        logit = np.log(np.clip(p, 1e-7, 1.0)) / self.temperature[:, None, None] + self.bias[:, None, :]
        logit -= logit.max(axis=2, keepdims=True)
        e = np.exp(logit)
        return (e / e.sum(axis=2, keepdims=True)).astype(np.float32)

    def to_dict(self, names: Sequence[str] | None = None) -> dict:
        out: dict = {}
        if self.temperature is not None:
            names = list(names) if names is not None else [f"expert{i}" for i in range(len(self.temperature))]
            k = self.bias.shape[1]
            out["experts"] = {n: {"temperature": round(float(t), 4),
                                  "bias": {CLASSES[c]: round(float(b[c]), 4) for c in range(k)}}
                              for n, t, b in zip(names, self.temperature, self.bias, strict=True)}
        if self.thresholds is not None:
            out["thresholds"] = {CLASSES[c]: round(float(t), 4) for c, t in enumerate(self.thresholds)}
        return out


def fit_check_split(labels: np.ndarray, fit_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask, True for the fit part: stratified by class, seeded; each class with two or
    more rows has rows on both sides."""
    y = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    fit = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n = int(round(fit_fraction * len(idx)))
        if len(idx) >= 2:
            n = min(max(n, 1), len(idx) - 1)
        fit[idx[:n]] = True
    return fit


def fit_prior(per_expert: np.ndarray, labels: np.ndarray, l2: float = 1e-3, iters: int = 200) -> tuple:
    """Per expert, temperature (E,) and bias (E, K) minimising the class-balanced NLL of `labels`
    (classes without rows keep bias 0)."""
    import torch

    p = np.asarray(per_expert, dtype=np.float32)
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    k = p.shape[2]
    counts = torch.bincount(y, minlength=k).double()
    present = counts > 0
    w = torch.where(present, 1.0 / counts.clamp(min=1), torch.zeros_like(counts)) / present.sum()
    temps, biases = [], []
    for e in range(len(p)):
        logp = torch.log(torch.as_tensor(p[e], dtype=torch.float64).clamp(min=1e-7))
        log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([log_t, b], lr=0.5, max_iter=iters, line_search_fn="strong_wolfe")

        def closure(logp=logp, log_t=log_t, b=b, opt=opt):
            opt.zero_grad()
            z = logp / log_t.exp() + b * present  # a class without rows keeps bias 0
            nll = -torch.log_softmax(z, dim=1)[torch.arange(len(y)), y]
            loss = (nll * w[y]).sum() + l2 * (b * present).pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        temps.append(float(log_t.detach().exp()))
        biases.append((b * present).detach().numpy())
    return np.asarray(temps, dtype=np.float32), np.asarray(biases, dtype=np.float32)


def fit_thresholds(scores: np.ndarray, labels: np.ndarray, num_classes: int, cfg: CalibrationConfig,
                   default: float) -> np.ndarray:
    """Per class, the largest threshold that keeps at least `target_keep` of its rows, clipped to
    [min_threshold, max_threshold] (to [min_threshold, 1] for a class with `max_threshold_below_rows`
    rows or more)."""
    y = np.asarray(labels, dtype=np.int64)
    out = np.full(num_classes, default, dtype=np.float32)
    for c in range(num_classes):
        s = np.sort(np.asarray(scores)[y == c])[::-1]
        if not len(s):
            continue
        t = s[int(np.ceil(cfg.target_keep * len(s))) - 1]
        small = cfg.max_threshold_below_rows is None or len(s) < cfg.max_threshold_below_rows
        out[c] = np.clip(t, cfg.min_threshold, cfg.max_threshold if small else 1.0)
    return out


def fit_calibration(per_expert: np.ndarray, labels: np.ndarray, policy: VerifyPolicy, cfg: CalibrationConfig,
                    weights: Sequence[float] | None = None) -> Calibration:
    """Fit `cfg.method` on per-expert probabilities (E, N, K) of real images with true `labels`."""
    cal = Calibration()
    if cfg.method in ("prior", "both"):
        cal.temperature, cal.bias = fit_prior(per_expert, labels)
    if cfg.method in ("thresholds", "both"):
        p = cal.apply(per_expert)
        s = keep_score(p, labels, policy, weights)
        cal.thresholds = fit_thresholds(s, labels, p.shape[2], cfg, policy.threshold)
    return cal


def keep_rates(per_expert: np.ndarray, labels: np.ndarray, policy: VerifyPolicy,
               calibration: Calibration | None = None, weights: Sequence[float] | None = None,
               seed: int = 0) -> dict:
    """The policy's keep rate on real images per class, and on the same images with shuffled labels.

    Only the experts' part of the policy applies (no quality, duplicate or test filters): a
    row counts as kept when its verdict is keep with its given label. Shuffled labels are a
    seeded permutation of `labels`; `shuffled_unchanged` is the share that kept its own label,
    and `shuffled_keep_rate_changed` the keep rate over the rows whose label changed.
    """
    cal = calibration or Calibration()
    p = cal.apply(per_expert)
    y = np.asarray(labels, dtype=np.int64)
    k = p.shape[2]
    kept = decide(p, y, policy, weights=weights, thresholds=cal.thresholds).verdict == KEEP
    ys = np.random.default_rng(seed).permutation(y)
    kept_s = decide(p, ys, policy, weights=weights, thresholds=cal.thresholds).verdict == KEEP
    changed = ys != y

    def per_class(mask_kept, lab):
        out = {CLASSES[c]: round(float(mask_kept[lab == c].mean()), 4) for c in range(k) if (lab == c).any()}
        out["overall"] = round(float(mask_kept.mean()), 4) if len(lab) else None
        return out

    real = per_class(kept, y)
    present = [c for c in range(k) if (y == c).any()]
    real["mean_class"] = round(float(np.mean([real[CLASSES[c]] for c in present])), 4) if present else None
    real["min_class"] = round(float(min(real[CLASSES[c]] for c in present)), 4) if present else None
    return {
        "rows": int(len(y)),
        "rows_per_class": {CLASSES[c]: int((y == c).sum()) for c in present},
        "real_keep_rate": real,
        "shuffled_keep_rate": per_class(kept_s, ys),
        "shuffled_unchanged": round(float((~changed).mean()), 4) if len(y) else None,
        "shuffled_keep_rate_changed": round(float(kept_s[changed].mean()), 4) if changed.any() else None,
    }


def calibrate_and_check(per_expert: np.ndarray, labels: np.ndarray, policy: VerifyPolicy,
                        cfg: CalibrationConfig | None = None, weights: Sequence[float] | None = None,
                        names: Sequence[str] | None = None) -> tuple[Calibration | None, dict]:
    """Divide real validation rows into fit and check parts, fit `cfg` on the first, and report keep
    rates on the second before (`uncalibrated`) and, when calibrating, after (`calibrated`)."""
    cfg = cfg or CalibrationConfig()
    y = np.asarray(labels, dtype=np.int64)
    if len(y) < 2:
        raise FersynthError(f"{len(y)} real validation image(s): too few to check or calibrate the verifier",
                            hint="give real data with a training split to carve validation from")
    fit = fit_check_split(y, cfg.fit_fraction, cfg.seed)
    p = np.asarray(per_expert, dtype=np.float32)
    rep: dict = {"method": cfg.method, "config": cfg.model_dump(), "fit_rows": int(fit.sum()),
                 "check_rows": int((~fit).sum()),
                 "uncalibrated": keep_rates(p[:, ~fit], y[~fit], policy, None, weights, cfg.seed)}
    cal = None
    if cfg.enabled:
        # A class with no fit rows keeps the uncalibrated treatment (bias 0, the policy's threshold).
        rep["uncalibrated_classes"] = [CLASSES[c] for c in range(p.shape[2]) if not (y[fit] == c).any()]
        cal = fit_calibration(p[:, fit], y[fit], policy, cfg, weights)
        rep["calibrated"] = keep_rates(p[:, ~fit], y[~fit], policy, cal, weights, cfg.seed)
        rep["calibration"] = cal.to_dict(names)
    return cal, rep
