"""Training sets that mix a real manifest with synthetic images, by a named, seeded strategy.

Strategies (all return a Manifest: real rows plus chosen synthetic rows, split "train"):

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

import math
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fersynth.data.manifest import Manifest, pixel_hashes
from fersynth.errors import FersynthError
from fersynth.labels import CLASSES

STRATEGIES = ("append", "balance", "expand", "synthetic-only", "mix", "oversample", "class-weighted")
NEEDS_SYNTHETIC = ("append", "balance", "expand", "synthetic-only", "mix")
Strategy = Literal["append", "balance", "expand", "synthetic-only", "mix", "oversample", "class-weighted"]


class ComposeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy: Strategy
    n: int | None = Field(None, ge=0, description="append / synthetic-only: per class; mix: total size")
    rho: float | None = Field(None, description="balance / oversample: target imbalance ratio max/min >= 1")
    k: int | None = Field(None, ge=1, description="expand: synthetic images per real training image")
    fraction: float | None = Field(None, ge=0, le=1, description="mix: share of synthetic rows")
    seed: int = 0
    allow_short: bool = False
    radius: int = Field(4, ge=0, le=16, description="pHash radius for near-duplicates of test images")
    val_fraction: float = Field(0.1, gt=0, lt=0.5)


def _config(**kw) -> ComposeConfig:
    try:
        cfg = ComposeConfig(**kw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(map(str, err["loc"])) or "config"
        raise FersynthError(f"compose {where}: {err['msg']}",
                            hint=f"strategies: {', '.join(STRATEGIES)}") from None
    if cfg.rho is not None and cfg.rho < 1:
        raise FersynthError(f"rho must be >= 1 (max/min class ratio), got {cfg.rho}",
                            hint="rho 1 means fully balanced; FER2013 train is about 16.5")
    required = {"append": "n", "balance": "rho", "expand": "k", "mix": "fraction", "oversample": "rho"}
    need = required.get(cfg.strategy)
    if need and getattr(cfg, need) is None:
        flag = {"n": "--n", "rho": "--rho", "k": "--k", "fraction": "--fraction"}[need]
        raise FersynthError(f"strategy '{cfg.strategy}' needs {need}", hint=f"pass {flag}")
    return cfg


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
    exact = df["pixel_hash"].astype(str).tolist() if "pixel_hash" in df.columns else pixel_hashes(real.pixels)
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
        exact = df["pixel_hash"].astype(str).tolist() if "pixel_hash" in df.columns else pixel_hashes(pool.pixels)
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
    exact = pool.df["pixel_hash"].astype(str).tolist() if "pixel_hash" in pool.df.columns else pixel_hashes(pool.pixels)
    ref = images.df["pixel_hash"].astype(str).tolist() if "pixel_hash" in images.df.columns else pixel_hashes(images.pixels)
    return tied | near_any(phash(pool.pixels), phash(images.pixels), radius, exact, ref)


def _carve(real: Manifest, cfg: ComposeConfig) -> Manifest:
    from fersynth.data.duplicates import add_duplicate_columns
    from fersynth.data.splits import carve_validation

    if real.df["split"].eq("val").any():
        return real
    r = real if "near_group" in real.df.columns else add_duplicate_columns(real)
    carved = carve_validation(r, cfg.val_fraction, cfg.seed)
    return Manifest(real.df.assign(split=carved.df["split"].to_numpy()), real.pixels, real.root, carved.meta)


def compose(
    strategy: str,
    real: Manifest,
    synthetic: Manifest | None = None,
    **params,
) -> Manifest:
    """The composed training manifest; meta["compose"] reports counts before and after."""
    cfg = _config(strategy=strategy, **params)
    rng = np.random.default_rng(cfg.seed)
    k = max(real.num_classes, 7)
    report: dict = {"strategy": cfg.strategy, "params": cfg.model_dump(exclude_none=True)}
    given = real
    if cfg.strategy in ("synthetic-only", "mix", "oversample"):
        real = _carve(real, cfg)
    is_train = (real.df["split"].eq("train") & (real.df["label"] >= 0)).to_numpy()
    train_counts = _counts(real.labels[is_train], k)
    report["real_train_counts"] = dict(zip(CLASSES[:k], train_counts.tolist(), strict=True))
    report["imbalance_before"] = imbalance_ratio(train_counts)

    if cfg.strategy == "class-weighted":
        out = Manifest(real.df.copy(), real.pixels, real.root, dict(real.meta, class_weighted=True))
        return _finish(out, report, k, [])
    if cfg.strategy == "oversample":
        return _oversample(real, is_train, train_counts, cfg, rng, report, k)

    if synthetic is None:
        raise FersynthError(f"strategy '{cfg.strategy}' needs a synthetic manifest", hint="pass --synthetic PATH")
    pool, info = synthetic_pool(synthetic, k)
    report["pool"] = info
    check_leakage(pool, given, cfg.radius)
    carved = real.df["split"].eq("val").to_numpy() & ~given.df["split"].eq("val").to_numpy()
    if carved.any() and len(pool):
        # Rows tied to images this call carved into validation are left out, not refused.
        out_ = _tied_to(pool, real.select(carved), cfg.radius)
        report["pool"]["tied_to_validation"] = int(out_.sum())
        pool = pool.select(~out_)
    plab = pool.labels
    pool_by_class = [np.flatnonzero(plab == c) for c in range(k)]
    report["pool_counts"] = dict(zip(CLASSES[:k], [len(i) for i in pool_by_class], strict=True))
    short = _Shortfall()
    chosen: list[np.ndarray] = []
    real_keep = np.ones(len(real), dtype=bool)

    if cfg.strategy in ("append", "synthetic-only"):
        if cfg.strategy == "synthetic-only":
            real_keep = ~is_train
        for c in range(k):
            want = len(pool_by_class[c]) if cfg.n is None else cfg.n
            short.add(c, want - len(pool_by_class[c]))
            chosen.append(_pick(rng, pool_by_class[c], want))
        short.check(cfg.allow_short, f"{cfg.n} per class" if cfg.n is not None else "every class")
    elif cfg.strategy == "balance":
        add = _target_for_rho(train_counts, cfg.rho)
        for c in range(k):
            short.add(c, add[c] - len(pool_by_class[c]))
            chosen.append(_pick(rng, pool_by_class[c], int(add[c])))
        short.check(cfg.allow_short, f"an imbalance ratio of {cfg.rho:g}")
    elif cfg.strategy == "expand":
        chosen.append(_expand(real, is_train, pool, cfg, rng, short, report))
        short.check(cfg.allow_short, f"{cfg.k} per real training image")
    elif cfg.strategy == "mix":
        total = int(is_train.sum()) if cfg.n is None else cfg.n
        n_syn = int(round(cfg.fraction * total))
        syn_per = _allocate(n_syn, train_counts)
        real_per = _allocate(total - n_syn, train_counts)
        real_keep = ~is_train
        for c in range(k):
            short.add(c, syn_per[c] - len(pool_by_class[c]))
            chosen.append(_pick(rng, pool_by_class[c], int(syn_per[c])))
            real_c = np.flatnonzero(is_train & (real.labels == c))
            if real_per[c] > len(real_c):
                raise FersynthError(f"mix: {real_per[c]} real {CLASSES[c]} images wanted but only {len(real_c)} exist",
                                    hint="use a smaller --n")
            real_keep[_pick(rng, real_c, int(real_per[c]))] = True
        short.check(cfg.allow_short, f"a synthetic fraction of {cfg.fraction:g}")
        report["mix"] = {"total": total, "synthetic": int(n_syn), "real": int(total - n_syn)}
    report["shortfall"] = short.missing
    sel = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    return _finish(real.select(real_keep), report, k, [pool.select(sel)])


def _expand(real, is_train, pool, cfg, rng, short, report) -> np.ndarray:
    if "parent_id" not in pool.df.columns or not pool.df["parent_id"].notna().any():
        raise FersynthError("expand needs synthetic rows with a parent_id (the real image each was made from)",
                            hint="generate with an image-to-image method, or use append / balance")
    train_df = real.df[is_train]
    parent_label = dict(zip(train_df["id"].astype(str), train_df["label"].astype(int), strict=True))
    parents = pool.df["parent_id"].astype(str).to_numpy()
    of_train = np.isin(parents, list(parent_label))
    report["pool"]["parent_not_real_train"] = int((~of_train).sum())
    by_parent = pd.Series(np.flatnonzero(of_train)).groupby(parents[of_train]).apply(np.asarray).to_dict()
    picked = []
    for pid in train_df["id"].astype(str):
        kids = by_parent.get(pid, np.zeros(0, np.int64))
        short.add(parent_label[pid], cfg.k - len(kids))
        picked.append(_pick(rng, kids, cfg.k))
    return np.concatenate(picked) if picked else np.zeros(0, np.int64)


def _oversample(real, is_train, counts, cfg, rng, report, k) -> Manifest:
    add = _target_for_rho(counts, cfg.rho)
    copies = []
    for c in range(k):
        src = np.flatnonzero(is_train & (real.labels == c))
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
    base = Manifest(real.df.assign(oversampled=False), real.pixels, real.root, real.meta)
    copies_m = Manifest(df, dup.pixels, real.root, real.meta)
    return _finish(base, report, k, [copies_m])


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
