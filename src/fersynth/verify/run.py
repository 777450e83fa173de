"""`fersynth verify` as a function: score synthetic images with an ensemble of experts and apply
a VerifyPolicy; write the verified manifest, a per-class acceptance table and a grid figure.
Given real data, it also checks (and optionally calibrates) the policy on real validation
images (`verify.calibrate`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fersynth.atomic import atomic_path
from fersynth.data.manifest import Manifest, exact_hashes
from fersynth.errors import FersynthError
from fersynth.labels import CLASSES, canonical_index
from fersynth.verify.calibrate import CalibrationConfig, calibrate_and_check
from fersynth.verify.experts import Expert
from fersynth.verify.policy import (
    DROP,
    KEEP,
    REASONS,
    RELABEL,
    VerifyPolicy,
    decide,
    near_any,
    normalise,
)

INTENDED = "intended_label"


def apply_label_map(labels: np.ndarray, mapping: Mapping[str, str] | None) -> np.ndarray:
    """Replace canonical indices per {from class: to class} (e.g. {'contempt': 'neutral'})."""
    out = np.asarray(labels, dtype=np.int64).copy()
    for src, dst in (mapping or {}).items():
        out[np.asarray(labels) == canonical_index(src)] = canonical_index(dst)
    return out


def expert_names(experts: Sequence[Expert]) -> list[str]:
    """Expert names made unique (a repeated name gets #2, #3, ...)."""
    seen: dict[str, int] = {}
    out = []
    for e in experts:
        n = seen.get(e.name, 0) + 1
        seen[e.name] = n
        out.append(e.name if n == 1 else f"{e.name}#{n}")
    return out


def check_class_sets(experts: Sequence[Expert], labels: np.ndarray, what: str = "intended labels") -> int:
    """Number of classes K the ensemble works over; every expert must know every class in `labels`."""
    used = sorted({int(c) for c in np.unique(labels) if c >= 0})
    k = max([len(CLASSES[:7]), *(c + 1 for c in used)])
    for e in experts:
        missing = [CLASSES[c] for c in used if CLASSES[c] not in e.classes]
        if missing:
            raise FersynthError(
                f"expert '{e.name}' has no output for class(es) {', '.join(missing)}, which the {what} use"
                f" (its classes: {', '.join(e.classes)})",
                hint=f"map them onto classes it knows (--map {missing[0]}=CLASS) or leave that expert out",
            )
    return k


def expert_probabilities(
    experts: Sequence[Expert], pixels: np.ndarray, num_classes: int, batch_size: int = 256, progress: bool = False
) -> np.ndarray:
    """(E, N, K) canonical-order probabilities, each expert's rows renormalised over the K classes."""
    if not experts:
        raise FersynthError("no experts given", hint="pass --experts SPEC at least once")
    n = len(pixels)
    out = np.zeros((len(experts), n, num_classes), dtype=np.float32)
    chunk = max(batch_size, 1024)
    bar = _bar(progress and n > chunk)
    with bar:
        task = bar.add_task("experts", total=len(experts) * n)
        for i, e in enumerate(experts):
            for s in range(0, n, chunk):
                p = e.predict_proba(np.asarray(pixels[s : s + chunk]), batch_size=batch_size)
                q = np.zeros((len(p), max(num_classes, p.shape[1])), dtype=np.float32)
                q[:, : p.shape[1]] = p
                out[i, s : s + len(p)] = normalise(q, num_classes)
                bar.update(task, advance=len(p), description=f"expert {e.name}")
    return out


def _bar(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), transient=True, disable=not enabled)


def intended_labels(synth: Manifest) -> np.ndarray:
    if INTENDED not in synth.df.columns:
        raise FersynthError(
            "the manifest has no intended labels (no 'intended_label' column)",
            hint="verify takes generated images whose intended_label says the expression each was made for",
        )
    y = pd.to_numeric(synth.df[INTENDED], errors="coerce").fillna(-1).to_numpy(dtype=np.int64)
    bad = np.flatnonzero(y < 0)
    if len(bad):
        raise FersynthError(
            f"{len(bad)} row(s) have no intended label (first: id {synth.df['id'].iloc[bad[0]]})",
            hint="drop unlabelled rows before verifying, or set their intended_label",
        )
    return y


def _heldout(reference: Manifest) -> Manifest:
    """The test (and val) rows of a reference manifest; all of it when it has none."""
    held = reference.df["split"].isin(["test", "val"]).to_numpy()
    return reference.select(held) if held.any() else reference


def validation_rows(real: Manifest, val_fraction: float = 0.1, seed: int = 0) -> Manifest:
    """The real validation rows of `real`; carved from its training rows (stratified, seeded,
    duplicate groups kept together, as `fersynth train` does) when it has none."""
    df = real.df
    real_rows = df["source"].eq("real").to_numpy() if "source" in df.columns else np.ones(len(df), bool)
    labelled = real_rows & (pd.to_numeric(df["label"], errors="coerce").fillna(-1).to_numpy() >= 0)
    val = labelled & df["split"].eq("val").to_numpy()
    if val.any():
        return real.select(val)
    train = labelled & df["split"].eq("train").to_numpy()
    if not train.any():
        raise FersynthError("the real data has no labelled validation or training rows to check the verifier on",
                            hint="give the dataset the experts' task comes from (its training split)")
    from fersynth.data.splits import ensure_validation

    carved = ensure_validation(real.select(train), val_fraction, seed)
    return carved.where(split="val")


def verify(
    synth: Manifest,
    experts: Sequence[Expert],
    policy: VerifyPolicy | None = None,
    test_reference: Manifest | None = None,
    *,
    label_map: Mapping[str, str] | None = None,
    weights: Sequence[float] | None = None,
    real: Manifest | None = None,
    calibration: CalibrationConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> tuple[Manifest, dict]:
    """Score every image of `synth` with `experts` and apply `policy`.

    Returns the manifest with expert_probs, verdict, label, soft_label, verify_reason (plus
    verify_n_agree, verify_p_intended) and a JSON-able report. With `real` (a dataset with
    validation rows, or training rows to carve them from), the report's `real_check` gives the
    policy's keep rates on real validation images and on them with shuffled labels; with
    `calibration`, the policy is calibrated on part of those rows first (`verify.calibrate`),
    and the verdicts use the calibrated probabilities and per-class thresholds. With
    `out_dir`, writes the manifest there and adds report.json, acceptance.csv and grid.png.
    """
    from fersynth.data.duplicates import phash

    policy = policy or VerifyPolicy()
    calibration = calibration or CalibrationConfig()
    if len(synth) == 0:
        raise FersynthError("the synthetic manifest is empty")
    if calibration.enabled and real is None:
        raise FersynthError(f"calibration '{calibration.method}' needs real validation images",
                            hint="pass the real dataset (--real PATH) or use --calibrate none")
    intended = apply_label_map(intended_labels(synth), label_map)
    k = check_class_sets(experts, intended)
    names = expert_names(experts)
    real_check, cal = None, None
    if real is not None:
        val = validation_rows(real)
        y_val = apply_label_map(val.df["label"].to_numpy(dtype=np.int64), label_map)
        k = max(k, check_class_sets(experts, y_val, "real validation labels"))
        per_val = expert_probabilities(experts, val.pixels, k, progress=progress)
        cal, real_check = calibrate_and_check(per_val, y_val, policy, calibration, weights, names)
    per = expert_probabilities(experts, synth.pixels, k, progress=progress)

    df = synth.df
    exact = exact_hashes(synth)
    need_hash = policy.dedup or test_reference is not None
    hashes = phash(synth.pixels) if need_hash else None
    test_dup, ref_info = None, None
    if test_reference is not None:
        held = _heldout(test_reference)
        test_dup = near_any(hashes, phash(held.pixels), policy.radius, exact, exact_hashes(held))
        ref_info = {"rows": len(held), "near_duplicates": int(test_dup.sum())}
    q = None
    if policy.min_q_score is not None:
        if "q_score" in df.columns:
            q = pd.to_numeric(df["q_score"], errors="coerce").fillna(-np.inf).to_numpy()
        else:
            from fersynth.quality import quality_scores

            q = quality_scores(synth.pixels)["q_score"].to_numpy()
    d = decide(cal.apply(per) if cal else per, intended, policy, q_score=q, phashes=hashes, exact_hashes=exact,
               test_duplicate=test_dup, weights=weights, thresholds=cal.thresholds if cal else None)

    out = df.copy()
    out[INTENDED] = intended
    out["expert_probs"] = [
        {n: [round(float(v), 5) for v in per[j, i]] for j, n in enumerate(names)} for i in range(len(df))
    ]
    out["verdict"] = d.verdict
    out["label"] = d.label
    old_soft = out["soft_label"].tolist() if "soft_label" in out.columns else [None] * len(out)
    out["soft_label"] = [
        [round(float(v), 5) for v in d.soft_label[i]] if d.verdict[i] == RELABEL else old_soft[i]
        for i in range(len(out))
    ]
    out["verify_reason"] = d.reason
    out["verify_n_agree"] = d.n_agree
    out["verify_p_intended"] = d.p_intended.round(5)
    report = {
        "rows": len(out),
        "experts": names,
        "policy": policy.model_dump(),
        "votes_needed": policy.needed_votes(len(experts)) if policy.mode == "vote" else None,
        "counts": {v: int((d.verdict == v).sum()) for v in (KEEP, RELABEL, DROP)},
        "reasons": {r: int((d.reason == r).sum()) for r in REASONS if (d.reason == r).any()},
        "acceptance": acceptance_table(out, k).reset_index().to_dict(orient="records"),
        "relabelled_to": _relabel_counts(out),
        # SynFER's "FER accuracy of generated images": how often each expert names the intended class.
        "expert_agreement": {n: float((per[j].argmax(1) == intended).mean()) for j, n in enumerate(names)},
        "ensemble_agreement": float((d.mean_probs.argmax(1) == intended).mean()),
        "expert_agreement_per_class": {n: _per_class_agreement(per[j], intended, k) for j, n in enumerate(names)},
        "ensemble_agreement_per_class": _per_class_agreement(d.mean_probs, intended, k),
        "test_reference": ref_info,
        "real_check": real_check,
    }
    meta = dict(synth.meta, verify={k_: report[k_] for k_ in ("experts", "policy", "counts")})
    if cal is not None:
        meta["verify"]["calibration"] = real_check["calibration"]
    verified = Manifest(out, synth.pixels, synth.root, meta)
    if out_dir is not None:
        write_outputs(verified, report, out_dir)
    return verified, report


def _per_class_agreement(probs: np.ndarray, intended: np.ndarray, k: int) -> dict[str, float]:
    """Share of each intended class's images that `probs` assigns to that class (classes with images only)."""
    hit = probs.argmax(1) == intended
    return {CLASSES[c] if c < len(CLASSES) else str(c): float(hit[intended == c].mean())
            for c in range(k) if (intended == c).any()}


def acceptance_table(df: pd.DataFrame, num_classes: int | None = None) -> pd.DataFrame:
    """Per intended class: images, kept, relabelled (away), dropped, accepted share, and the
    class count after verification (kept + relabelled into the class)."""
    y = df[INTENDED].to_numpy(dtype=np.int64)
    v = df["verdict"].astype(str).to_numpy()
    lab = df["label"].to_numpy(dtype=np.int64)
    k = num_classes or max(7, int(max(y.max(initial=0), lab.max(initial=0))) + 1)
    rows = []
    for c in range(k):
        m = y == c
        kept, rel, drop = int((m & (v == KEEP)).sum()), int((m & (v == RELABEL)).sum()), int((m & (v == DROP)).sum())
        after = int(((lab == c) & (v != DROP)).sum())
        rows.append({"class": CLASSES[c], "intended": int(m.sum()), "kept": kept, "relabelled": rel,
                     "dropped": drop, "accepted_share": round((kept + rel) / m.sum(), 4) if m.any() else None,
                     "after": after})
    tot = {"class": "total", "intended": len(y), "kept": int((v == KEEP).sum()), "relabelled": int((v == RELABEL).sum()),
           "dropped": int((v == DROP).sum())}
    tot["accepted_share"] = round((tot["kept"] + tot["relabelled"]) / max(len(y), 1), 4)
    tot["after"] = tot["kept"] + tot["relabelled"]
    return pd.DataFrame([*rows, tot]).set_index("class")


def _relabel_counts(df: pd.DataFrame) -> dict:
    r = df[df["verdict"] == RELABEL]
    out: dict[str, dict[str, int]] = {}
    for (a, b), n in r.groupby([INTENDED, "label"]).size().items():
        out.setdefault(CLASSES[int(a)], {})[CLASSES[int(b)]] = int(n)
    return out


def write_outputs(verified: Manifest, report: dict, out_dir: str | os.PathLike) -> Path:
    from fersynth.atomic import write_json_atomic

    out = Path(out_dir)
    verified.save(out)
    write_json_atomic(report, out / "report.json")
    table = pd.DataFrame(report["acceptance"])
    with atomic_path(out / "acceptance.csv") as tmp:
        table.to_csv(tmp, index=False)
    plot_verdict_grid(verified, out / "grid.png")
    return out


def plot_verdict_grid(m: Manifest, path: str | os.PathLike, per_row: int = 10, seed: int = 0) -> Path:
    """A figure with one row of examples per verdict: accepted, relabelled, dropped."""
    from matplotlib.figure import Figure

    from fersynth.evaluate.plots import save_figure

    rng = np.random.default_rng(seed)
    df = m.df
    fig = Figure(figsize=(per_row * 1.15, 3 * 1.45))
    axes = fig.subplots(3, per_row, squeeze=False)
    titles = {KEEP: "accepted", RELABEL: "relabelled", DROP: "dropped"}
    for r, verdict in enumerate((KEEP, RELABEL, DROP)):
        idx = np.flatnonzero(df["verdict"].to_numpy() == verdict)
        if len(idx) > per_row:
            idx = np.sort(rng.choice(idx, per_row, replace=False))
        for c in range(per_row):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if c == 0:
                ax.set_ylabel(f"{titles[verdict]}\n({int((df['verdict'] == verdict).sum())})", fontsize=8)
            if c >= len(idx):
                if c == 0:
                    ax.text(0.5, 0.5, "none", ha="center", va="center", fontsize=8, transform=ax.transAxes)
                continue
            i = idx[c]
            img = m.pixels[i]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
            want = CLASSES[int(df[INTENDED].iloc[i])]
            if verdict == KEEP:
                t = want
            elif verdict == RELABEL:
                t = f"{want}\n-> {CLASSES[int(df['label'].iloc[i])]}"
            else:
                t = f"{want}\n{df['verify_reason'].iloc[i].replace('_', ' ')}"
            ax.set_title(t, fontsize=6)
    fig.suptitle("verification: accepted / relabelled / dropped", fontsize=9)
    return save_figure(fig, path)
