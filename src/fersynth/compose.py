"""Training sets that mix a real manifest with synthetic images, by a named, seeded strategy.

Strategies live in a registry (`register_strategy`): a pydantic config (an arm of a study YAML,
or `fersynth compose`'s options) and a function that picks rows. Each returns a Manifest: real
rows plus chosen synthetic rows, split "train". The built-in ones:

- ``real``: the real training rows unchanged (the baseline arm).
- ``append``: N synthetic images per class (Sultanov 2025: 300).
- ``balance``: synthetic images join minority classes until max/min <= rho (Zhu 2024).
- ``expand``: K synthetic images per real training image (their parent_id).
- ``synthetic-only``: synthetic training rows only (N per class, or the whole pool).
- ``mix``: a training set of the real set's size (or N) with a `fraction` of synthetic rows;
  both parts keep the real class distribution.
- ``oversample`` (control): copies of minority real images until max/min <= rho.
- ``class-weighted`` (control): rows unchanged; meta["class_weighted"] tells the trainer.

Synthetic rows never enter validation or test. A pool row derived from a test or validation
image (parent_id), or one that is a near-duplicate of such an image, is refused, as is a
request the pool cannot fill (unless allow_short). Only verified rows (verdict keep or
relabel) are used when the pool carries verdicts. The strategies that remove real training
rows or add real copies (synthetic-only, mix, oversample) first carve validation from the
real training rows (seeded, stratified, like the trainer) so it stays real and unduplicated.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fersynth.data.manifest import Manifest, exact_hashes
from fersynth.errors import FersynthError
from fersynth.labels import CLASSES


# ---------------------------------------------------------------------- the registry
class StrategyConfig(BaseModel):
    """A strategy's parameters: an arm of a study YAML, or `fersynth compose STRATEGY`'s options.
    Subclasses fix `strategy` to their name and add their own fields."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    strategy: str
    allow_short: bool = Field(False, description="a pool smaller than asked is used whole; the shortfall is reported")


@dataclass(frozen=True)
class StrategyEntry:
    name: str
    config: type[StrategyConfig]
    fn: Callable  # fn(cfg, job: ComposeJob) -> None: sets job.keep_real, adds job.extra
    synthetic: bool  # draws from a synthetic pool
    control: bool  # a real-data control arm (the report compares synthetic arms with it)
    carve: bool  # removes or copies real training rows: validation is carved first
    description: str


_STRATEGIES: dict[str, StrategyEntry] = {}
_VERSION = [0]


def register_strategy(name: str, *, config: type[StrategyConfig], synthetic: bool, control: bool = False,
                      carve: bool = False, description: str = ""):
    """Decorator for `fn(cfg, job)`; `config.strategy` must be `Literal[name]`."""

    def deco(fn):
        if name in _STRATEGIES:
            raise ValueError(f"strategy '{name}' registered twice")
        if getattr(config.model_fields["strategy"].annotation, "__args__", None) != (name,):
            raise ValueError(f"strategy '{name}': its config's strategy must be Literal['{name}']")
        doc = description or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        _STRATEGIES[name] = StrategyEntry(name, config, fn, synthetic, control, carve, doc)
        _VERSION[0] += 1
        return fn

    return deco


def unregister_strategy(name: str) -> None:
    _STRATEGIES.pop(name, None)
    _VERSION[0] += 1


def strategy_version() -> int:
    return _VERSION[0]


def strategies() -> list[StrategyEntry]:
    return list(_STRATEGIES.values())


def get_strategy(name: str) -> StrategyEntry:
    if name not in _STRATEGIES:
        close = difflib.get_close_matches(str(name), list(_STRATEGIES), n=1)
        raise FersynthError(f"compose strategy: unknown strategy '{name}'",
                            hint=f"did you mean {close[0]}?" if close else f"strategies: {', '.join(_STRATEGIES)}")
    return _STRATEGIES[name]


def strategy_config(strategy: str, params: dict, where: str = "compose") -> StrategyConfig:
    from fersynth.validation import validated

    entry = get_strategy(strategy)
    return validated(entry.config, {"strategy": strategy, **params}, where=where,
                     hint=f"strategy {strategy}: {entry.description}")


def imbalance_ratio(counts: np.ndarray) -> float | None:
    """max/min over classes present in the label space (a class with 0 images gives inf)."""
    c = np.asarray(counts)
    if not len(c) or c.max() == 0:
        return None
    return float("inf") if c.min() == 0 else float(c.max() / c.min())


def _counts(labels: np.ndarray, k: int) -> np.ndarray:
    lab = np.asarray(labels, dtype=np.int64)
    return np.bincount(lab[(lab >= 0) & (lab < k)], minlength=k)[:k]


def _target_for_rho(counts: np.ndarray, rho: float) -> np.ndarray:
    """Rows to add per class so that every class holds at least max/rho images."""
    need = math.ceil(counts.max() / rho - 1e-9)
    return np.maximum(need - counts, 0)


def _allocate(total: int, shares: np.ndarray) -> np.ndarray:
    """Split `total` over classes in proportion to `shares` (largest remainder)."""
    s = np.asarray(shares, dtype=np.float64)
    if total <= 0 or s.sum() <= 0:
        return np.zeros(len(s), dtype=np.int64)
    exact = total * s / s.sum()
    out = np.floor(exact).astype(np.int64)
    rest = total - out.sum()
    out[np.argsort(-(exact - out), kind="stable")[:rest]] += 1
    return out


def _pick(rng: np.random.Generator, idx: np.ndarray, n: int) -> np.ndarray:
    """n of `idx` without replacement (all of them if fewer), returned in row order."""
    if n >= len(idx):
        return idx
    return np.sort(rng.choice(idx, n, replace=False))


class _Shortfall:
    def __init__(self):
        self.missing: dict[str, int] = {}

    def add(self, cls: int, n: int) -> None:
        if n > 0:
            self.missing[CLASSES[cls]] = self.missing.get(CLASSES[cls], 0) + int(n)

    def check(self, allow: bool, what: str) -> None:
        if self.missing and not allow:
            detail = ", ".join(f"{c} {n}" for c, n in self.missing.items())
            raise FersynthError(
                f"the synthetic pool is {sum(self.missing.values())} short for {what} ({detail} missing)",
                hint="generate more images, ask for fewer, or pass --allow-short to use what there is",
            )


def synthetic_pool(synthetic: Manifest, num_classes: int) -> tuple[Manifest, dict]:
    """Usable synthetic rows: verified (keep / relabel) when verdicts exist, labelled in range."""
    df = synthetic.df
    info: dict = {"rows": len(df)}
    use = np.ones(len(df), dtype=bool)
    if "verdict" in df.columns:
        ok = df["verdict"].isin(["keep", "relabel"]).to_numpy()
        info["not_verified"] = int((~ok).sum())
        use &= ok
    lab = pd.to_numeric(df["label"], errors="coerce").fillna(-1).to_numpy(np.int64)
    if "intended_label" in df.columns and "verdict" not in df.columns:
        intended = pd.to_numeric(df["intended_label"], errors="coerce").fillna(-1).to_numpy(np.int64)
        lab = np.where(lab >= 0, lab, intended)
    out_of_range = (lab < 0) | (lab >= num_classes)
    info["unlabelled_or_unknown_class"] = int((use & out_of_range).sum())
    use &= ~out_of_range
    pool = synthetic.select(use)
    pool = Manifest(pool.df.assign(label=lab[use], split="train"), pool.pixels, pool.root, pool.meta)
    info["usable"] = len(pool)
    return pool, info


def _heldout_ids(real: Manifest, radius: int) -> tuple[set, np.ndarray, list[str]]:
    """Ids of held-out (val/test) rows plus training rows that are their near twins, and the
    held-out rows' pHashes and pixel digests."""
    from fersynth.data.duplicates import phash
    from fersynth.verify.policy import near_any

    df = real.df
    held = df["split"].isin(["val", "test"]).to_numpy()
    ids = set(df.loc[held, "id"].astype(str))
    exact = exact_hashes(real)
    if not held.any():
        return ids, np.zeros(0, np.uint64), []
    ph = phash(real.pixels)
    held_ph = ph[held]
    held_exact = [e for e, h in zip(exact, held, strict=True) if h]
    twin = near_any(ph[~held], held_ph, radius, [e for e, h in zip(exact, held, strict=True) if not h], held_exact)
    ids |= set(df.loc[~held, "id"].astype(str)[twin])
    return ids, held_ph, held_exact


def check_leakage(pool: Manifest, real: Manifest, radius: int = 4) -> None:
    """Refuse pool rows derived from, or near-duplicates of, a held-out (val/test) image."""
    from fersynth.data.duplicates import phash
    from fersynth.verify.policy import near_any

    if not len(pool):
        return
    held_ids, held_ph, held_exact = _heldout_ids(real, radius)
    df = pool.df
    if "parent_id" in df.columns:
        parents = df["parent_id"].astype(object).where(df["parent_id"].notna(), None)
        bad = parents.map(lambda p: p is not None and str(p) in held_ids).to_numpy(dtype=bool)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise FersynthError(
                f"{int(bad.sum())} synthetic row(s) derive from a test or validation image"
                f" (first: id {df['id'].iloc[i]}, parent {df['parent_id'].iloc[i]})",
                hint="generate from training images only; nothing derived from a test image may enter training",
            )
    if len(held_ph):
        exact = exact_hashes(pool)
        near = near_any(phash(pool.pixels), held_ph, radius, exact, held_exact)
        if near.any():
            i = int(np.flatnonzero(near)[0])
            raise FersynthError(
                f"{int(near.sum())} synthetic row(s) are near-duplicates of a test or validation image"
                f" (first: id {df['id'].iloc[i]})",
                hint="drop them first (`fersynth verify --test-reference REAL` marks them dropped)",
            )


def _tied_to(pool: Manifest, images: Manifest, radius: int) -> np.ndarray:
    """Pool rows derived from (parent_id) or near-duplicates of any of `images`."""
    from fersynth.data.duplicates import phash
    from fersynth.verify.policy import near_any

    tied = np.zeros(len(pool), dtype=bool)
    if "parent_id" in pool.df.columns:
        tied |= pool.df["parent_id"].astype(str).isin(set(images.df["id"].astype(str))).to_numpy()
    return tied | near_any(phash(pool.pixels), phash(images.pixels), radius, exact_hashes(pool), exact_hashes(images))


@dataclass
class ComposeJob:
    """What a strategy works on: the real manifest (validation carved where the strategy needs
    it), its training rows and counts, the usable synthetic pool by class, a seeded generator.
    A strategy sets `keep_real` (real rows kept) and appends the rows it adds to `extra`."""

    real: Manifest
    is_train: np.ndarray
    train_counts: np.ndarray
    k: int
    rng: np.random.Generator
    report: dict
    pool: Manifest | None = None
    pool_by_class: list[np.ndarray] = field(default_factory=list)
    keep_real: np.ndarray | None = None
    extra: list[Manifest] = field(default_factory=list)
    short: _Shortfall = field(default_factory=lambda: _Shortfall())

    def take(self, c: int, n: int) -> np.ndarray:
        """n seeded pool rows of class c (all of them, and a recorded shortfall, if fewer)."""
        idx = self.pool_by_class[c]
        self.short.add(c, n - len(idx))
        return _pick(self.rng, idx, n)

    def add_pool_rows(self, chosen: list[np.ndarray]) -> None:
        sel = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
        self.extra.append(self.pool.select(sel))


def compose(strategy: str | StrategyConfig, real: Manifest, synthetic: Manifest | None = None, *, seed: int = 0,
            radius: int = 4, val_fraction: float = 0.1, **params) -> Manifest:
    """The composed training manifest; meta["compose"] reports counts before and after.

    `strategy` is a registered name with its parameters in `params`, or a strategy config.
    `seed` drives the picks (and the validation carve), `radius` the pHash radius for
    near-duplicates of held-out images."""
    from fersynth.data.splits import ensure_validation

    cfg = strategy if isinstance(strategy, StrategyConfig) else strategy_config(strategy, params)
    entry = get_strategy(cfg.strategy)
    k = max(real.num_classes, 7)
    report: dict = {"strategy": cfg.strategy,
                    "params": {**cfg.model_dump(exclude_none=True), "seed": seed, "radius": radius,
                               "val_fraction": val_fraction}}
    given = real
    if entry.carve:
        real = ensure_validation(real, val_fraction, seed)
    is_train = (real.df["split"].eq("train") & (real.df["label"] >= 0)).to_numpy()
    train_counts = _counts(real.labels[is_train], k)
    report["real_train_counts"] = dict(zip(CLASSES[:k], train_counts.tolist(), strict=True))
    report["imbalance_before"] = imbalance_ratio(train_counts)
    job = ComposeJob(real, is_train, train_counts, k, np.random.default_rng(seed), report)
    if entry.synthetic:
        if synthetic is None:
            raise FersynthError(f"strategy '{cfg.strategy}' needs a synthetic manifest", hint="pass --synthetic PATH")
        pool, info = synthetic_pool(synthetic, k)
        report["pool"] = info
        check_leakage(pool, given, radius)
        carved = real.df["split"].eq("val").to_numpy() & ~given.df["split"].eq("val").to_numpy()
        if carved.any() and len(pool):
            # Rows tied to images this call carved into validation are left out, not refused.
            out_ = _tied_to(pool, real.select(carved), radius)
            report["pool"]["tied_to_validation"] = int(out_.sum())
            pool = pool.select(~out_)
        job.pool = pool
        job.pool_by_class = [np.flatnonzero(pool.labels == c) for c in range(k)]
        report["pool_counts"] = dict(zip(CLASSES[:k], [len(i) for i in job.pool_by_class], strict=True))
    entry.fn(cfg, job)
    if entry.synthetic:
        report["shortfall"] = job.short.missing
    kept = job.real if job.keep_real is None else job.real.select(job.keep_real)
    return _finish(kept, report, k, job.extra)


# ---------------------------------------------------------------------- the strategies
class RealConfig(StrategyConfig):
    strategy: Literal["real"] = "real"


@register_strategy("real", config=RealConfig, synthetic=False,
                   description="the real training rows as they are (the baseline)")
def _real(cfg: RealConfig, job: ComposeJob) -> None:
    pass


class AppendConfig(StrategyConfig):
    strategy: Literal["append"] = "append"
    n: int = Field(ge=0, description="synthetic images per class (Sultanov 2025: 300)")


@register_strategy("append", config=AppendConfig, synthetic=True,
                   description="N synthetic images per class added to the real training rows")
def _append(cfg: AppendConfig, job: ComposeJob) -> None:
    job.add_pool_rows([job.take(c, cfg.n) for c in range(job.k)])
    job.short.check(cfg.allow_short, f"{cfg.n} per class")


class SyntheticOnlyConfig(StrategyConfig):
    strategy: Literal["synthetic-only"] = "synthetic-only"
    n: int | None = Field(None, ge=0, description="synthetic images per class (default: the whole pool)")


@register_strategy("synthetic-only", config=SyntheticOnlyConfig, synthetic=True, carve=True,
                   description="synthetic training rows only (N per class, or the whole pool)")
def _synthetic_only(cfg: SyntheticOnlyConfig, job: ComposeJob) -> None:
    job.keep_real = ~job.is_train
    job.add_pool_rows([job.take(c, len(job.pool_by_class[c]) if cfg.n is None else cfg.n) for c in range(job.k)])
    job.short.check(cfg.allow_short, f"{cfg.n} per class" if cfg.n is not None else "every class")


class _RhoConfig(StrategyConfig):
    rho: float = Field(description="target imbalance ratio max/min >= 1")

    @field_validator("rho")
    @classmethod
    def _rho(cls, v):
        if v < 1:
            raise ValueError(f"rho must be >= 1 (max/min class ratio), got {v}; rho 1 means fully balanced, "
                             "FER2013 train is about 16.5")
        return v


class BalanceConfig(_RhoConfig):
    strategy: Literal["balance"] = "balance"


@register_strategy("balance", config=BalanceConfig, synthetic=True,
                   description="synthetic images join minority classes until max/min <= rho (Zhu 2024)")
def _balance(cfg: BalanceConfig, job: ComposeJob) -> None:
    add = _target_for_rho(job.train_counts, cfg.rho)
    job.add_pool_rows([job.take(c, int(add[c])) for c in range(job.k)])
    job.short.check(cfg.allow_short, f"an imbalance ratio of {cfg.rho:g}")


class ExpandConfig(StrategyConfig):
    strategy: Literal["expand"] = "expand"
    k: int = Field(ge=1, description="synthetic images per real training image (their parent_id)")


@register_strategy("expand", config=ExpandConfig, synthetic=True,
                   description="K synthetic images per real training image (made from it)")
def _expand(cfg: ExpandConfig, job: ComposeJob) -> None:
    pool, real = job.pool, job.real
    if "parent_id" not in pool.df.columns or not pool.df["parent_id"].notna().any():
        raise FersynthError("expand needs synthetic rows with a parent_id (the real image each was made from)",
                            hint="generate with an image-to-image method, or use append / balance")
    train_df = real.df[job.is_train]
    parent_label = dict(zip(train_df["id"].astype(str), train_df["label"].astype(int), strict=True))
    parents = pool.df["parent_id"].astype(str).to_numpy()
    of_train = np.isin(parents, list(parent_label))
    job.report["pool"]["parent_not_real_train"] = int((~of_train).sum())
    by_parent = pd.Series(np.flatnonzero(of_train)).groupby(parents[of_train]).apply(np.asarray).to_dict()
    picked = []
    for pid in train_df["id"].astype(str):
        kids = by_parent.get(pid, np.zeros(0, np.int64))
        job.short.add(parent_label[pid], cfg.k - len(kids))
        picked.append(_pick(job.rng, kids, cfg.k))
    job.add_pool_rows(picked)
    job.short.check(cfg.allow_short, f"{cfg.k} per real training image")


class MixConfig(StrategyConfig):
    strategy: Literal["mix"] = "mix"
    fraction: float = Field(ge=0, le=1, description="share of synthetic rows")
    n: int | None = Field(None, ge=0, description="training-set size (default: the real one's)")


@register_strategy("mix", config=MixConfig, synthetic=True, carve=True,
                   description="a training set of the real set's size (or N) with a fraction of synthetic rows")
def _mix(cfg: MixConfig, job: ComposeJob) -> None:
    total = int(job.is_train.sum()) if cfg.n is None else cfg.n
    n_syn = int(round(cfg.fraction * total))
    syn_per = _allocate(n_syn, job.train_counts)
    real_per = _allocate(total - n_syn, job.train_counts)
    job.keep_real = ~job.is_train
    chosen = []
    for c in range(job.k):
        chosen.append(job.take(c, int(syn_per[c])))
        real_c = np.flatnonzero(job.is_train & (job.real.labels == c))
        if real_per[c] > len(real_c):
            raise FersynthError(f"mix: {real_per[c]} real {CLASSES[c]} images wanted but only {len(real_c)} exist",
                                hint="use a smaller --n")
        job.keep_real[_pick(job.rng, real_c, int(real_per[c]))] = True
    job.add_pool_rows(chosen)
    job.short.check(cfg.allow_short, f"a synthetic fraction of {cfg.fraction:g}")
    job.report["mix"] = {"total": total, "synthetic": int(n_syn), "real": int(total - n_syn)}


class OversampleConfig(_RhoConfig):
    strategy: Literal["oversample"] = "oversample"


@register_strategy("oversample", config=OversampleConfig, synthetic=False, control=True, carve=True,
                   description="control: copies of minority real images until max/min <= rho")
def _oversample(cfg: OversampleConfig, job: ComposeJob) -> None:
    real, rng = job.real, job.rng
    add = _target_for_rho(job.train_counts, cfg.rho)
    copies = []
    for c in range(job.k):
        src = np.flatnonzero(job.is_train & (real.labels == c))
        if add[c] == 0 or not len(src):
            continue
        reps = -(-int(add[c]) // len(src))
        # Whole seeded permutations, so each image is copied at most once more than any other.
        order = np.concatenate([rng.permutation(src) for _ in range(reps)])[: add[c]]
        copies.append(np.sort(order))
    idx = np.concatenate(copies) if copies else np.zeros(0, np.int64)
    dup = real.select(idx)
    df = dup.df.copy()
    nth = df.groupby("id").cumcount() + 1
    df["parent_id"] = df["id"]
    df["id"] = df["id"].astype(str) + "~os" + nth.astype(str)
    df["oversampled"] = True
    job.real = Manifest(real.df.assign(oversampled=False), real.pixels, real.root, real.meta)
    job.extra.append(Manifest(df, dup.pixels, real.root, real.meta))


class OversampleAppendConfig(_RhoConfig):
    strategy: Literal["oversample-append"] = "oversample-append"
    n: int = Field(ge=0, description="synthetic images per class, added to every class alike")


@register_strategy("oversample-append", config=OversampleAppendConfig, synthetic=True, carve=True,
                   description="the oversampling control, then N synthetic images per class: what generated "
                               "faces add beyond rebalancing, with no class made of more generated faces than another")
def _oversample_append(cfg: OversampleAppendConfig, job: ComposeJob) -> None:
    _oversample(OversampleConfig(rho=cfg.rho), job)
    _append(AppendConfig(n=cfg.n, allow_short=cfg.allow_short), job)


class ClassWeightedConfig(StrategyConfig):
    strategy: Literal["class-weighted"] = "class-weighted"


@register_strategy("class-weighted", config=ClassWeightedConfig, synthetic=False, control=True,
                   description="control: rows unchanged; the trainer weights the loss by class")
def _class_weighted(cfg: ClassWeightedConfig, job: ComposeJob) -> None:
    job.real = Manifest(job.real.df.copy(), job.real.pixels, job.real.root, dict(job.real.meta, class_weighted=True))


def _finish(real: Manifest, report: dict, k: int, extra: list[Manifest]) -> Manifest:
    parts = [real, *[e for e in extra if len(e)]]
    out = Manifest.concat(parts) if len(parts) > 1 else real
    df = out.df
    train = (df["split"].eq("train") & (df["label"] >= 0)).to_numpy()
    syn = (df["source"] != "real").to_numpy() & train
    after = _counts(df["label"].to_numpy()[train], k)
    added = _counts(df["label"].to_numpy()[syn], k)
    report["train_counts"] = dict(zip(CLASSES[:k], after.tolist(), strict=True))
    report["synthetic_added"] = dict(zip(CLASSES[:k], added.tolist(), strict=True))
    report["imbalance_after"] = imbalance_ratio(after)
    report["rows"] = {"train": int(train.sum()), "synthetic": int(syn.sum()),
                      "val": int(df["split"].eq("val").sum()), "test": int(df["split"].eq("test").sum())}
    if "oversampled" in df.columns:
        report["rows"]["oversampled"] = int(df["oversampled"].fillna(False).astype(bool).sum())
    meta = dict(out.meta, compose=report)
    if real.meta.get("class_weighted"):
        meta["class_weighted"] = True
    return Manifest(df, out.pixels, out.root, meta)
