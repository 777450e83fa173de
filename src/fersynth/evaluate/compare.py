"""Compare evaluated runs against a baseline: deltas with CIs, McNemar, seed aggregates per arm.

Input is a list of `evaluate_predictions` outputs, each optionally carrying "arm" (e.g.
"real", "real+sd3") and "seed" (the training seed). Predictions are paired by image id;
two runs with predictions but no common id are an error, not a silent unpaired comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fersynth.errors import FersynthError
from fersynth.evaluate.stats import (
    BOOT_METRICS,
    bootstrap_p_value,
    holm,
    mcnemar_from_counts,
    mean_std,
    paired_bootstrap,
    percentile_ci,
    t_interval,
    welch_t,
)
from fersynth.labels import CLASSES

TABLE_METRICS = (
    "accuracy",
    "mean_class_accuracy",
    "macro_f1",
    "top2_accuracy",
    "macro_precision",
    "weighted_f1",
)
ARM_METRICS = ("accuracy", "mean_class_accuracy", "macro_f1", "top2_accuracy", "weighted_f1")


def _scored(result: dict) -> dict | None:
    """{id: (label, pred)} of the rows the run scored, or None without predictions."""
    preds = result.get("predictions")
    if not preds:
        return None
    return {r["id"]: (int(r["label"]), int(r["pred"])) for r in preds if not r.get("excluded")}


def _pair(a: dict, b: dict, ra: dict, rb: dict, name_a: str, name_b: str):
    """Labels and both predictions on the ids the two runs share (baseline order)."""
    if not (ra.get("ids_given", True) and rb.get("ids_given", True)):
        if ra.get("n_total") != rb.get("n_total"):
            raise FersynthError(
                f"runs '{name_a}' and '{name_b}' have no image ids and different row counts",
                hint="pass ids= to evaluate_predictions so rows can be matched",
            )
    shared = [i for i in a if i in b]
    if not shared:
        raise FersynthError(
            f"runs '{name_a}' and '{name_b}' share no prediction ids",
            hint="compare runs evaluated on the same test set (same manifest ids)",
        )
    y = np.fromiter((a[i][0] for i in shared), dtype=np.int64, count=len(shared))
    yb = np.fromiter((b[i][0] for i in shared), dtype=np.int64, count=len(shared))
    bad = np.flatnonzero(y != yb)
    if bad.size:
        raise FersynthError(
            f"runs '{name_a}' and '{name_b}' disagree on the label of id {shared[bad[0]]!r} "
            f"({bad.size} ids in all)",
            hint="the ids do not refer to the same images; check the test manifests",
        )
    pa = np.fromiter((a[i][1] for i in shared), dtype=np.int64, count=len(shared))
    pb = np.fromiter((b[i][1] for i in shared), dtype=np.int64, count=len(shared))
    return y, pa, pb


def _default_names(results: Sequence[dict]) -> list[str]:
    names = []
    for i, r in enumerate(results):
        if r.get("name"):
            n = str(r["name"])
        elif r.get("arm") is not None:
            n = str(r["arm"]) + (f"/seed{r['seed']}" if r.get("seed") is not None else "")
        else:
            n = f"run{i}"
        names.append(n)
    if len(set(names)) != len(names):
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    return names


def _unpaired_delta(ra: dict, rb: dict, metric: str) -> dict:
    va, vb = ra.get(metric), rb.get(metric)
    if va is None or vb is None:
        return {"delta": None, "ci95": [None, None], "p_value": None, "method": "unavailable"}
    out = {"delta": float(vb - va), "ci95": [None, None], "p_value": None, "method": "unpaired"}
    ca, cb = ra.get("ci95", {}).get(metric), rb.get("ci95", {}).get(metric)
    if ca and cb and None not in ca and None not in cb:
        # Normal approximation from each run's own bootstrap interval.
        se = math.hypot((ca[1] - ca[0]) / 3.92, (cb[1] - cb[0]) / 3.92)
        out["ci95"] = [out["delta"] - 1.96 * se, out["delta"] + 1.96 * se]
        if se > 0:
            z = abs(out["delta"]) / se
            out["p_value"] = float(math.erfc(z / math.sqrt(2)))
        out["method"] = "unpaired (normal approx. from per-run bootstrap CIs)"
    return out


def compare_runs(
    results: list[dict],
    names: list[str] | None = None,
    baseline: int = 0,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Compare each run with `results[baseline]`, and arms with the baseline's arm.

    Deltas are run minus baseline. Summary metrics that depend only on (label, prediction)
    get a paired bootstrap CI and p-value on the shared ids, plus McNemar on correctness;
    other metrics get the plain difference. Runs without predictions fall back to an
    unpaired normal approximation. P-values are also given Holm-adjusted over the runs.
    """
    if not results:
        raise FersynthError("no results to compare", hint="pass at least two evaluations")
    names = list(names) if names is not None else _default_names(results)
    if len(names) != len(results) or len(set(names)) != len(names):
        raise FersynthError("names must be unique, one per result", hint=f"got {names}")
    if not 0 <= baseline < len(results):
        raise FersynthError(
            f"baseline index {baseline} out of range", hint=f"use 0..{len(results) - 1}"
        )
    base_name = names[baseline]
    scored = [_scored(r) for r in results]

    metrics = {
        m: {
            "values": {n: r.get(m) for n, r in zip(names, results, strict=True)},
            "ci95": {n: (r.get("ci95") or {}).get(m) for n, r in zip(names, results, strict=True)},
        }
        for m in TABLE_METRICS
    }

    comparisons: dict[str, dict] = {}
    for j, (name, r) in enumerate(zip(names, results, strict=True)):
        if j == baseline:
            continue
        comparisons[name] = _compare_pair(
            results[baseline], r, scored[baseline], scored[j], base_name, name, n_boot, seed
        )

    _holm_fill([c["mcnemar"] for c in comparisons.values() if c["mcnemar"]])
    for m in TABLE_METRICS:
        _holm_fill([c["metrics"][m] for c in comparisons.values()])

    arms, arm_comparisons = _arms(results, names, baseline, scored, n_boot, seed)
    return {
        "names": names,
        "baseline": base_name,
        "runs": [
            {
                "name": n,
                "arm": r.get("arm"),
                "seed": r.get("seed"),
                "n": r.get("n"),
                "unseen_classes": r.get("unseen_classes") or {},
            }
            for n, r in zip(names, results, strict=True)
        ],
        "metrics": metrics,
        "comparisons": comparisons,
        "arms": arms,
        "arm_comparisons": arm_comparisons,
        "n_boot": int(n_boot),
        "bootstrap_seed": int(seed),
    }


def _compare_pair(ra, rb, sa, sb, name_a, name_b, n_boot, seed) -> dict:
    out: dict = {
        "paired": False,
        "n_paired": 0,
        "note": None,
        "metrics": {},
        "per_class": {},
        "mcnemar": None,
    }
    if sa is not None and sb is not None:
        y, pa, pb = _pair(sa, sb, ra, rb, name_a, name_b)
        out["paired"], out["n_paired"] = True, int(len(y))
        if len(y) < max(len(sa), len(sb)):
            out["note"] = (
                f"paired on the {len(y)} ids both runs scored ({len(sa)} and {len(sb)} scored)"
            )
        res = paired_bootstrap(y, pa, pb, n_boot=n_boot, seed=seed)
        ca, cb = pa == y, pb == y
        mc = mcnemar_from_counts(np.count_nonzero(ca & ~cb), np.count_nonzero(~ca & cb))
        mc["n"] = int(len(y))
        out["mcnemar"] = mc
        for m in TABLE_METRICS:
            if m in BOOT_METRICS:
                d, s = res["point"][m], res["samples"][m]
                out["metrics"][m] = {
                    "delta": d,
                    "ci95": percentile_ci(s),
                    "p_value": bootstrap_p_value(d, s),
                    "method": "paired bootstrap",
                }
            else:
                va, vb = ra.get(m), rb.get(m)
                out["metrics"][m] = {
                    "delta": None if va is None or vb is None else float(vb - va),
                    "ci95": [None, None],
                    "p_value": None,
                    "method": "difference",
                }
        support = np.bincount(y, minlength=len(CLASSES))
        for c in range(len(CLASSES)):
            if support[c] == 0:
                continue
            out["per_class"][CLASSES[c]] = {
                k: {
                    "delta": float(res["class_point"][k][c]),
                    "ci95": percentile_ci(res["class_samples"][k][:, c]),
                }
                for k in ("recall", "f1")
            } | {"support": int(support[c])}
    else:
        out["note"] = "no predictions to pair; deltas are unpaired"
        for m in TABLE_METRICS:
            out["metrics"][m] = _unpaired_delta(ra, rb, m)
        pca, pcb = ra.get("per_class") or {}, rb.get("per_class") or {}
        for c in CLASSES:
            if c in pca and c in pcb and pca[c].get("support") and pcb[c].get("support"):
                out["per_class"][c] = {
                    k: {"delta": _diff(pca[c].get(k), pcb[c].get(k)), "ci95": [None, None]}
                    for k in ("recall", "f1")
                } | {"support": int(pcb[c]["support"])}
    return out


def _diff(a, b):
    return None if a is None or b is None else float(b - a)


def _holm_fill(entries: list[dict]) -> None:
    adj = holm([e.get("p_value") for e in entries])
    for e, p in zip(entries, adj, strict=True):
        e["p_holm"] = p


ALPHA = 0.05
BOOT_ARM_METRICS = ("accuracy", "mean_class_accuracy", "macro_f1")


def _arm_predictions(runs: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """(labels, (S, N) predictions, ids) of one arm's runs on the ids every run scored."""
    scored = [_scored(r) for r in runs]
    if not scored or any(s is None for s in scored):
        return None
    ids = [i for i in scored[0] if all(i in s for s in scored[1:])]
    if not ids:
        return None
    y = np.array([scored[0][i][0] for i in ids], dtype=np.int64)
    return y, np.array([[s[i][1] for i in ids] for s in scored], dtype=np.int64), ids


def compare_arms(runs_a: Sequence[dict], runs_b: Sequence[dict], num_classes: int | None = None,
                 n_boot: int = 1000, seed: int = 0, metrics: Sequence[str] = ARM_METRICS) -> dict:
    """Arm B minus arm A, each a list of evaluations (one per training seed) on one test set.

    The one arm comparison of fersynth (`fersynth compare` and the study report): accuracy,
    mean class accuracy, macro F1 and per-class recall / F1 get the seed-averaged paired image
    bootstrap (`stats.seed_averaged_paired_bootstrap`) on the images both arms scored, and
    every metric gets Welch's t across seeds (`welch`). `significant` is the rule that reads it.
    Without predictions to pair, the metrics carry Welch's test only.
    """
    from fersynth.evaluate.stats import seed_averaged_paired_bootstrap

    out: dict = {"per_class": {}, "paired": False}
    pa, pb = _arm_predictions(runs_a), _arm_predictions(runs_b)
    boot = None
    if pa is not None and pb is not None:
        ids = [i for i in pa[2] if i in set(pb[2])]
        ia, ib = {i: n for n, i in enumerate(pa[2])}, {i: n for n, i in enumerate(pb[2])}
        sel_a, sel_b = [ia[i] for i in ids], [ib[i] for i in ids]
        y = pa[0][sel_a]
        if ids and np.array_equal(y, pb[0][sel_b]):
            k = num_classes or max(len(CLASSES[:7]), int(max(y.max(), pa[1].max(), pb[1].max())) + 1)
            boot = seed_averaged_paired_bootstrap(y, pa[1][:, sel_a], pb[1][:, sel_b], k,
                                                  n_boot=max(n_boot, 200), seed=seed)
            out.update(paired=True, per_class=boot.pop("per_class"),
                       **{f: boot[f] for f in ("n", "seeds_a", "seeds_b", "n_boot", "method")})
    for m in metrics:
        w = welch_t([r.get(m) for r in runs_a], [r.get(m) for r in runs_b])
        if boot is not None and m in boot:
            out[m] = dict(boot[m], welch=w, method="seed-averaged paired bootstrap")
        else:
            out[m] = {"delta": w.get("delta"), "ci95": w.get("ci95", [None, None]), "p_value": w.get("p_value"),
                      "welch": w, "method": "Welch t across seeds"}
    return out


def significant(entry: dict, alpha: float = ALPHA) -> bool:
    """A delta counts as significant when its p-value is below alpha and, where there are at least
    two seeds per arm, Welch's t across seeds agrees."""
    p = entry.get("p_value")
    welch = entry.get("welch") or {}
    if p is None or p >= alpha:
        return False
    if welch.get("n_a", 0) >= 2 and welch.get("n_b", 0) >= 2:
        return welch.get("p_value") is not None and welch["p_value"] < alpha
    return True


def _arms(results, names, baseline, scored, n_boot: int = 1000, seed: int = 0):
    arm_of = [
        r.get("arm") if r.get("arm") is not None else n for n, r in zip(names, results, strict=True)
    ]
    groups: dict[str, list[int]] = {}
    for i, a in enumerate(arm_of):
        groups.setdefault(str(a), []).append(i)
    if all(len(v) < 2 for v in groups.values()):
        return None, None

    arms = {}
    for arm, idx in groups.items():
        arms[arm] = {
            "runs": [names[i] for i in idx],
            "seeds": [results[i].get("seed") for i in idx],
            "metrics": {
                m: mean_std([results[i].get(m) for i in idx])
                | {"t_ci95": t_interval([results[i].get(m) for i in idx])}
                for m in ARM_METRICS
            },
        }

    base_arm = str(arm_of[baseline])
    comps = {}
    for arm, idx in groups.items():
        if arm == base_arm:
            continue
        c = compare_arms([results[i] for i in groups[base_arm]], [results[i] for i in idx], n_boot=n_boot, seed=seed)
        comps[arm] = {"metrics": {m: c[m] for m in ARM_METRICS}, "per_class": c["per_class"],
                      "paired": c["paired"],
                      "pooled_mcnemar": _pooled_mcnemar(groups[base_arm], idx, results, names, scored)}
    for m in ARM_METRICS:
        _holm_fill([c["metrics"][m] for c in comps.values()])
    return arms, {"baseline_arm": base_arm, "arms": comps}


def _pooled_mcnemar(idx_a, idx_b, results, names, scored):
    """Sum McNemar's discordant counts over seed-matched run pairs (descriptive: the pooled
    observations are not independent across seeds)."""
    by_seed_a: dict = {}
    by_seed_b: dict = {}
    for idx, by_seed in ((idx_a, by_seed_a), (idx_b, by_seed_b)):
        for i in idx:
            if results[i].get("seed") is not None:
                by_seed.setdefault(results[i]["seed"], i)
    seeds = [s for s in by_seed_a if s in by_seed_b]
    if not seeds:
        return None
    b = c = n = 0
    for s in seeds:
        i, j = by_seed_a[s], by_seed_b[s]
        if scored[i] is None or scored[j] is None:
            return None
        y, pa, pb = _pair(scored[i], scored[j], results[i], results[j], names[i], names[j])
        ca, cb = pa == y, pb == y
        b += int(np.count_nonzero(ca & ~cb))
        c += int(np.count_nonzero(~ca & cb))
        n += len(y)
    out = mcnemar_from_counts(b, c)
    out.update(
        n=n, seeds=seeds, note="pooled over seed-matched pairs; observations are not independent"
    )
    return out


# --------------------------------------------------------------------------- text table


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _spct(v) -> str:
    return "–" if v is None else f"{100 * v:+.2f}"


def _ci(ci, signed=False) -> str:
    if not ci or ci[0] is None:
        return ""
    f = _spct if signed else _pct
    return f" [{f(ci[0])}, {f(ci[1])}]"


def _p(p) -> str:
    if p is None:
        return ""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _head(cells) -> list[str]:
    return [_row(cells), "|" + "---|" * len(cells)]


def _pnum(p) -> str:
    return "–" if p is None else "<0.001" if p < 0.001 else f"{p:.3f}"


def format_compare_table(cmp: dict) -> str:
    """Markdown tables of a `compare_runs` result (values in %, deltas in points)."""
    base = cmp["baseline"]
    others = [n for n in cmp["names"] if n != base]
    metrics = list(cmp["metrics"])
    lines = [
        f"Baseline: **{base}**. Values in %, baseline with 95% bootstrap CI; other runs: "
        "value (Δ = run − baseline in points [95% CI], paired-bootstrap p, Holm-adjusted p).",
        "",
        *_head(["run", "n", *metrics, "McNemar b / c"]),
    ]
    for r in cmp["runs"]:
        n = r["name"]
        row = [n, str(r["n"])]
        comp = cmp["comparisons"].get(n)
        for m in metrics:
            v = cmp["metrics"][m]["values"][n]
            if comp is None:
                row.append(_pct(v) + _ci(cmp["metrics"][m]["ci95"].get(n)))
                continue
            d = comp["metrics"][m]
            cell = f"{_pct(v)} ({_spct(d['delta'])}{_ci(d['ci95'], signed=True)}"
            if d.get("p_value") is not None:
                cell += f", {_p(d['p_value'])}, Holm {_pnum(d.get('p_holm'))}"
            row.append(cell + ")")
        mc = comp["mcnemar"] if comp else None
        row.append(
            "baseline"
            if comp is None
            else "–"
            if mc is None
            else f"{mc['b']} / {mc['c']}, {_p(mc['p_value'])}, Holm {_pnum(mc.get('p_holm'))} "
            f"({mc['method']})"
        )
        lines.append(_row(row))
    notes = [f"{n}: {c['note']}" for n, c in cmp["comparisons"].items() if c.get("note")]
    notes += [
        f"{r['name']}: rows of unseen classes excluded {r['unseen_classes']}"
        for r in cmp["runs"]
        if r["unseen_classes"]
    ]
    if notes:
        lines += [""] + [f"- {t}" for t in notes]

    classes = [c for c in CLASSES if any(c in cmp["comparisons"][n]["per_class"] for n in others)]
    if classes:
        lines += ["", "Per-class change vs baseline (points, 95% CI).", ""]
        lines += _head(["run", "metric", *classes])
        for n in others:
            for k in ("recall", "f1"):
                row = [n, k]
                for c in classes:
                    pc = cmp["comparisons"][n]["per_class"].get(c)
                    row.append(
                        "–" if pc is None else _spct(pc[k]["delta"]) + _ci(pc[k]["ci95"], True)
                    )
                lines.append(_row(row))

    if cmp.get("arms"):
        ac = cmp["arm_comparisons"]
        shown = ARM_METRICS[:3]
        lines += [
            "",
            f"Across seeds: mean ± std [95% t-interval]; Δ vs arm **{ac['baseline_arm']}** with the "
            "seed-averaged paired bootstrap p and Welch's t across seeds (the study report's test; "
            "* where both are below 0.05).",
            "",
            *_head(["arm", "runs", *shown]),
        ]
        for arm, a in cmp["arms"].items():
            row = [arm, str(len(a["runs"]))]
            comp = ac["arms"].get(arm)
            for m in shown:
                s = a["metrics"][m]
                std = "–" if s["std"] is None else f"{100 * s['std']:.2f}"
                cell = f"{_pct(s['mean'])} ± {std}{_ci(s['t_ci95'])}"
                if comp is not None:
                    w = comp["metrics"][m]
                    cell += f" (Δ {_spct(w['delta'])}{'*' if significant(w) else ''}"
                    cell += f", {_p(w['p_value'])}" if w["p_value"] is not None else ""
                    wp = w["welch"].get("p_value")
                    cell += f", Welch {_p(wp)})" if wp is not None and w["method"] != "Welch t across seeds" else ")"
                row.append(cell)
            lines.append(_row(row))
    return "\n".join(lines) + "\n"
