"""The study report: `report.md`, a self-contained `report.html` (figures embedded) and `results.csv`.

The content is built once as a list of blocks (headings, paragraphs, tables, figures, code)
and rendered twice, so the Markdown and the HTML always say the same thing. Which synthetic
arm is "best" is decided on validation mean class accuracy, never on a test set.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fersynth import __version__
from fersynth.atomic import atomic_open
from fersynth.compose import get_strategy
from fersynth.evaluate.compare import ALPHA, significant
from fersynth.experiment.config import ExperimentConfig, dump_config
from fersynth.faults import kill_point
from fersynth.labels import CLASSES


# ---------------------------------------------------------------------- blocks
@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Doc:
    blocks: list = field(default_factory=list)

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def table(self, header, rows, caption=""):
        self.blocks.append(("table", Table([str(h) for h in header], [[str(c) for c in r] for r in rows], caption)))

    def fig(self, path, caption):
        self.blocks.append(("fig", Figure(Path(path), caption)))

    def code(self, text: str):
        self.blocks.append(("code", text))


def _md(doc: Doc, root: Path) -> str:
    out = []
    for b in doc.blocks:
        if b[0] == "h":
            out.append("#" * b[1] + " " + b[2])
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "table":
            t = b[1]
            if t.caption:
                out.append(f"*{t.caption}*\n")
            out.append("| " + " | ".join(t.header) + " |")
            out.append("|" + "|".join("---" for _ in t.header) + "|")
            out.extend("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in t.rows)
        elif b[0] == "fig":
            f = b[1]
            out.append(f"![{f.caption}]({os.path.relpath(f.path, root)})\n\n*{f.caption}*")
        elif b[0] == "code":
            out.append("```yaml\n" + b[1].rstrip() + "\n```")
        out.append("")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1b1b1b;line-height:1.45}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left}caption{caption-side:top;text-align:left;font-style:italic;padding:.2em 0}
figure{margin:1em 0;display:inline-block;vertical-align:top;margin-right:1em}
figcaption{font-size:.85em;color:#555;max-width:520px}img{max-width:520px;border:1px solid #ddd}
pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:.85em}.sig{color:#0a6b0a;font-weight:600}
"""

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title><style>{{ css }}</style></head>
<body>
{% for b in blocks %}{{ b }}
{% endfor %}
<p style="color:#777;font-size:.8em">fersynth {{ version }}</p>
</body></html>
"""


def _html(doc: Doc, title: str) -> str:
    from jinja2 import Environment

    parts = []
    for b in doc.blocks:
        if b[0] == "h":
            parts.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            parts.append(f"<p>{_inline(b[1])}</p>")
        elif b[0] == "table":
            t = b[1]
            cap = f"<caption>{_inline(t.caption)}</caption>" if t.caption else ""
            head = "".join(f"<th>{_inline(h)}</th>" for h in t.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in t.rows)
            parts.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b[0] == "fig":
            f = b[1]
            data = base64.b64encode(f.path.read_bytes()).decode() if f.path.is_file() else ""
            parts.append(f'<figure><img alt="{html.escape(f.caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
        elif b[0] == "code":
            parts.append(f"<pre>{html.escape(b[1])}</pre>")
    env = Environment(autoescape=False)
    return env.from_string(_TEMPLATE).render(title=html.escape(title), css=_CSS, blocks=parts, version=__version__)


def _inline(s: str) -> str:
    """Markdown-lite for table cells and paragraphs: **bold**, `code`."""
    import re

    s = html.escape(s)
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


# ---------------------------------------------------------------------- numbers
def _pct(v, signed=False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:+.2f}" if signed else f"{100 * v:.2f}"


def _ci(ci, signed=False) -> str:
    if not ci or ci[0] is None:
        return ""
    lo, hi = ci
    if not signed:  # a share: a t-interval over few seeds can leave [0, 1]
        lo, hi = max(0.0, lo), min(1.0, hi)
    return f"[{_pct(lo, signed)}, {_pct(hi, signed)}]"


def _p(p) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _ms(vals) -> str:
    v = [x for x in vals if x is not None]
    if not v:
        return "–"
    if len(v) == 1:
        return _pct(v[0])
    return f"{_pct(float(np.mean(v)))} ± {_pct(float(np.std(v, ddof=1)))}"


# ---------------------------------------------------------------------- collection
def _load_evals(state) -> list[dict]:
    out = []
    for e in state.evals:
        m = json.loads((Path(e["dir"]) / "metrics.json").read_text())
        out.append({**e, "metrics": m})
    return out


def _val_metrics(train_dir: Path) -> dict:
    f = Path(train_dir) / "best.json"
    if not f.is_file():
        return {}
    return json.loads(f.read_text()).get("val_metrics") or {}


def _train_seconds(train_dir: Path) -> float | None:
    f = Path(train_dir) / "train_summary.json"
    return round(json.loads(f.read_text())["train_seconds"], 1) if f.is_file() else None


def results_rows(cfg: ExperimentConfig, state, evals: list[dict]) -> list[dict]:
    rows = []
    for e in evals:
        m, arm = e["metrics"], cfg.arm(e["arm"])
        tdir = state.trains.get((e["arm"], e["seed"]))
        val = _val_metrics(tdir) if tdir else {}
        comp = state.composes.get((e["arm"], e["seed"]), {})
        ci = m.get("ci95") or {}
        rows.append({
            "experiment": cfg.name, "arm": e["arm"], "strategy": arm.strategy, "generator": arm.generator or "",
            "seed": e["seed"], "test_set": e["test_set"], "n": m.get("n"),
            "accuracy": m.get("accuracy"), "accuracy_ci_lo": (ci.get("accuracy") or [None, None])[0],
            "accuracy_ci_hi": (ci.get("accuracy") or [None, None])[1],
            "mean_class_accuracy": m.get("mean_class_accuracy"),
            "mean_class_accuracy_ci_lo": (ci.get("mean_class_accuracy") or [None, None])[0],
            "mean_class_accuracy_ci_hi": (ci.get("mean_class_accuracy") or [None, None])[1],
            "macro_f1": m.get("macro_f1"), "top2_accuracy": m.get("top2_accuracy"),
            "val_accuracy": val.get("accuracy"), "val_mean_class_accuracy": val.get("mean_class_accuracy"),
            "train_rows": comp.get("train_rows"), "train_synthetic": comp.get("train_synthetic"),
            "train_seconds": _train_seconds(tdir) if tdir else None,
        })
    return rows


def _write_csv(rows: list[dict], path: Path) -> None:
    with atomic_open(path, "w", newline="") as f:
        if rows:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            f.flush()
            kill_point("report-csv")
            for r in rows:
                w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})


def arm_comparison(evals, a: str, b: str, test_set: str, num_classes: int, n_boot: int) -> dict | None:
    """b minus a on one test set, by `fersynth compare`'s engine (`evaluate.compare.compare_arms`)."""
    from fersynth.evaluate.compare import compare_arms

    ra = [e["metrics"] for e in sorted(evals, key=lambda e: e["seed"]) if e["arm"] == a and e["test_set"] == test_set]
    rb = [e["metrics"] for e in sorted(evals, key=lambda e: e["seed"]) if e["arm"] == b and e["test_set"] == test_set]
    if not ra or not rb:
        return None
    c = compare_arms(ra, rb, num_classes, n_boot=n_boot, metrics=("accuracy", "mean_class_accuracy", "macro_f1"))
    return c if c["paired"] else None


# ---------------------------------------------------------------------- the report
def _verify_report(cfg: ExperimentConfig, gen_state: dict | None) -> dict | None:
    if not cfg.verify.enabled or not gen_state or "pool" not in gen_state:
        return None
    vf = Path(gen_state["pool"]).parent / "verify.json"
    return json.loads(vf.read_text()) if vf.is_file() else None


def _mean(vals) -> float | None:
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def nothing_added(acceptance: dict) -> str:
    """The reading of a class the arm added no synthetic rows to, from its verifier acceptance row."""
    if acceptance.get("intended") and not acceptance.get("kept"):
        return f"nothing added: the verifier kept 0 of {acceptance['intended']}"
    if acceptance.get("kept"):
        return f"nothing added: the arm needed none of the {acceptance['kept']} kept"
    return "nothing added"


def _why_per_class(doc: Doc, cfg: ExperimentConfig, state, evals: list[dict], best, outcome: dict,
                   classes: list[str], base: str, ctrl: str | None, goal: bool) -> None:
    """Per class, what the best synthetic arm's images were and what they did to test recall."""
    comp = state.composes.get((best.name, cfg.seeds[0])) or {}
    added = comp.get("synthetic_added") or {}
    real_rows = state.composes.get((base, cfg.seeds[0]), {}).get("train_counts") or {}
    v = _verify_report(cfg, state.generators.get(best.generator))  # the experts' view, even for an unverified arm
    acc = {r["class"]: r for r in (v or {}).get("acceptance", [])} if best.verified else {}
    agree = (v or {}).get("ensemble_agreement_per_class") or {}
    each = (v or {}).get("expert_agreement_per_class") or {}

    def recall(arm, c):
        return _mean([e["metrics"]["per_class"].get(c, {}).get("recall") for e in evals
                      if e["arm"] == arm and e["test_set"] == "test"])

    doc.h(3, "Per class: " + ("where the gain comes from" if goal else "why"))
    hdr = ["class", "real train rows", "synthetic added", "ensemble names the class %",
           "each expert names it %", "verifier kept %",
           f"recall {base} %"] + ([f"recall {ctrl} %"] if ctrl in outcome else []) + [f"recall {best.name} %",
                                                                                       "reading"]
    trs = []
    for c in classes:
        n_add = int(added.get(c, 0) or 0)
        a = acc.get(c, {})
        ag = agree.get(c)
        # the best single expert's recognition (uncalibrated), else the ensemble's
        seen = max([e[c] for e in each.values() if e.get(c) is not None], default=ag)
        db = (outcome.get(base) or {}).get("per_class", {}).get(c, {}).get("recall")
        dc = (outcome.get(ctrl) or {}).get("per_class", {}).get(c, {}).get("recall") if ctrl else None
        if n_add == 0:
            why = nothing_added(a)
        elif db and significant(db) and db["delta"] > 0:
            why = f"recall up {_pct(db['delta'], True)} pts on the baseline"
            if dc and dc["delta"] < 0:
                why += f", but {_pct(-dc['delta'])} pts below the control" + (" (significant)" if significant(dc) else "")
        elif db and significant(db) and db["delta"] < 0:
            why = f"recall down {_pct(db['delta'], True)} pts on the baseline"
        elif seen is not None and seen < 0.5:
            why = f"recall unchanged: no expert names the class in more than {_pct(seen)}% of its generated images"
        else:
            why = f"recall unchanged: {n_add} images beside {real_rows.get(c, '?')} real ones change little"
        row = [c, real_rows.get(c, "–"), n_add, _pct(ag), " / ".join(_pct(e.get(c)) for e in each.values()) or "–",
               _pct(a.get("accepted_share")), _pct(recall(base, c))]
        if ctrl in outcome:
            row.append(_pct(recall(ctrl, c)))
        trs.append(row + [_pct(recall(best.name, c)), why])
    doc.table(hdr, trs, caption=f"{best.name}: its synthetic images per class (seed {cfg.seeds[0]}'s training set) "
                                "and test recall, mean over seeds. 'Names the class': the share of the class's generated images "
                                "assigned to it, by the experts' mean (calibrated, where the study calibrates) and by each "
                                f"expert alone ({' / '.join(each) or 'none'}), before the policy's thresholds")


def _transfer(out: Path, cfg: ExperimentConfig, state, arm: str, pool, pool_key: str) -> dict | None:
    """What arm `arm`'s first-seed model calls the pool's images per intended class, cached in
    `out/transfer/` under the train and pool stage keys (the report is rewritten on every run).
    `pool()` gives the pool's Manifest, read only on a cache miss."""
    from fersynth.atomic import write_json_atomic
    from fersynth.errors import FersynthError
    from fersynth.evaluate.transfer import transfer_matrix

    s0 = cfg.seeds[0]
    ckpt, tkey = state.trains.get((arm, s0)), state.keys.get(f"train-{arm}-s{s0}")
    if ckpt is None or tkey is None:
        return None
    key = {"train": tkey, "pool": pool_key}
    f = out / "transfer" / f"{arm}-s{s0}-{pool_key}.json"
    if f.is_file():
        got = json.loads(f.read_text())
        if got.get("key") == key:
            return got["called"]
    try:
        called = transfer_matrix(pool(), ckpt)
    except (FersynthError, OSError, ValueError):
        return None
    f.parent.mkdir(exist_ok=True)
    write_json_atomic({"key": key, "called": called}, f)
    return called


def shortcut_paragraph(flags: list[dict], base: str) -> str:
    """The report's reading of `shortcut_readings` flags: one sentence per arm and the class it
    names other classes' generated images by."""
    lines, groups = [], {}
    for f in flags:
        groups.setdefault((f["arm"], f["named"]), []).append(f)
    for (arm, named), fs in groups.items():
        each = ", ".join(f"{f['generated']} {_pct(f['share'])}% ({_pct(f['reference_share'])}%)" for f in fs)
        lines.append(f"**{arm}** calls generated images of other classes {named}: {each}, in brackets {base}'s "
                     f"share; {named} is {_pct(fs[0]['named_share_of_synthetic_rows'])}% of its generated "
                     f"training rows.")
    return ("A shortcut: these arms' models call generated faces of another class by a class they were given "
            "generated rows of. They learnt what generated faces look like as that class, not its expression "
            "(their recall of the real faces of that class: per-class results below). " + " ".join(lines))


def _transfer_section(doc: Doc, out: Path, cfg: ExperimentConfig, state, best, ran_arms: list, base: str,
                      classes: list[str]) -> None:
    """What every arm's model calls the best synthetic arm's generated images, and where an arm
    learnt the generated look as a class (a shortcut) rather than the expression."""
    from functools import cache

    from fersynth.data.manifest import Manifest
    from fersynth.evaluate.transfer import shortcut_readings

    g = state.generators.get(best.generator) or {}
    pool, pool_key = (g.get("pool"), g.get("pool_key")) if best.verified else (g.get("raw_pool"), g.get("raw_key"))
    if not pool or not pool_key:
        return
    shown = [a for a in ran_arms if not get_strategy(a.strategy).synthetic
             or (a.generator == best.generator and a.verified == best.verified)]
    read_pool = cache(lambda: Manifest.load(pool))  # decoded once for all the arms, and only if one needs it
    called = {}
    for a in shown:
        c = _transfer(out, cfg, state, a.name, read_pool, pool_key)
        if c:
            called[a.name] = c
    if base not in called or len(called) < 2:
        return
    s0 = cfg.seeds[0]
    added = {a: (state.composes.get((a, s0)) or {}).get("synthetic_added") or {} for a in called}
    doc.h(3, "What the models learnt from the generated images")
    names = list(called)
    gen = [c for c in classes if c in called[base]]
    doc.table(["generated class"] + [f"{a} names it %" for a in names],
              [[c] + [_pct(called[a][c].get(c)) for a in names] for c in gen],
              caption=f"Each arm's seed-{s0} model on the generated images of generator `{best.generator}`"
                      f"{'' if best.verified else ' (unverified)'}, per intended class: the share it names as "
                      f"intended. {base} never saw a generated image")
    flags = shortcut_readings(called, base, added)
    if not flags:
        doc.p(f"No arm's model names the generated images of one class by a class it added generated rows to "
              f"20 points more often than {base}'s model does: no sign that an arm learnt what generated faces "
              f"look like in place of the expression.")
        return
    doc.p(shortcut_paragraph(flags, base))


def write_report(out: str | os.PathLike, cfg: ExperimentConfig, state, seconds: float) -> dict:
    from fersynth.evaluate.plots import (
        plot_class_distribution,
        plot_confusion,
        plot_per_class_deltas,
    )

    out = Path(out)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    evals = _load_evals(state)
    rows = results_rows(cfg, state, evals)
    _write_csv(rows, out / "results.csv")
    prof_f = out / "stages" / "data" / "profile.json"
    prof = json.loads(prof_f.read_text()) if prof_f.is_file() else {}
    k = len(prof.get("split_counts", {}).get("train", {})) or 7
    classes = list(CLASSES[:k])
    ran_arms = [a for a in cfg.arms if any(r["arm"] == a.name for r in rows)]
    base, ctrl = cfg.baseline_arm, cfg.control_arm
    doc = Doc()
    doc.h(1, f"fersynth study: {cfg.name}")
    if cfg.description:
        doc.p(cfg.description)
    budget = f" (stated budget {cfg.budget_minutes:.0f} min)" if cfg.budget_minutes else ""
    doc.p(f"Data `{cfg.data.path}`; {len(cfg.arms)} arms x {len(cfg.seeds)} seeds ({', '.join(map(str, cfg.seeds))}); "
          f"training preset `{cfg.train.preset or 'none (train.set only)'}`. Wall time of this invocation {seconds / 60:.1f} min{budget}; "
          f"written {time.strftime('%Y-%m-%d %H:%M')} by fersynth {__version__}.")
    doc.p("Validation is carved once from the real training rows (stratified, seeded, duplicate groups kept "
          "together) and shared by all arms; checkpoints and the 'best synthetic arm' are chosen on it. "
          "Test sets are only evaluated.")

    # ---- outcome
    doc.h(2, "Outcome")
    syn_arms = [a for a in ran_arms if get_strategy(a.strategy).synthetic]
    best = None
    if syn_arms:
        def val_mca(a):
            v = [r["val_mean_class_accuracy"] for r in rows if r["arm"] == a.name and r["test_set"] == "test"]
            v = [x for x in v if x is not None]
            return float(np.mean(v)) if v else -1.0

        best = max(syn_arms, key=val_mca)
    outcome = {}
    if best is None:
        doc.p("No synthetic arm ran, so there is no synthetic result to compare.")
    elif not any(r["arm"] == base for r in rows):
        doc.p("The baseline arm did not run; nothing to compare against.")
    else:
        lines = []
        verdicts = []
        for ref in [base] + ([ctrl] if ctrl and any(r["arm"] == ctrl for r in rows) else []):
            c = arm_comparison(evals, ref, best.name, "test", k, cfg.n_boot)
            if c is None:
                continue
            m, acc = c["mean_class_accuracy"], c["accuracy"]
            sig_m = significant(m) and m["delta"] > 0
            no_loss = acc["delta"] >= 0 or not significant(acc)
            verdicts.append(sig_m and no_loss)
            outcome[ref] = c
            lines.append([ref, _pct(m["delta"], True), _ci(m["ci95"], True), _p(m["p_value"]),
                          _p(m["welch"]["p_value"]), _pct(acc["delta"], True), _ci(acc["ci95"], True),
                          _p(acc["p_value"]), _p(acc["welch"]["p_value"]),
                          "yes" if sig_m else "no", "yes" if no_loss else "no"])
        doc.p(f"Best synthetic arm by validation mean class accuracy: **{best.name}** "
              f"({best.strategy}, generator `{best.generator}`{'' if best.verified else ', unverified'}).")
        doc.table(["vs", "Δ MCA (pts)", "95% CI", "p (bootstrap)", "p (Welch, seeds)", "Δ acc (pts)", "95% CI",
                   "p (bootstrap)", "p (Welch, seeds)", "MCA gain significant", "accuracy kept"], lines,
                  caption=f"{best.name} minus the reference on the in-domain test set; significant = both p < {ALPHA}")
        goal = bool(verdicts) and all(verdicts) and len(verdicts) == (2 if ctrl else 1)
        doc.p("**Goal met**: the best synthetic arm beats " + ("the baseline and the rebalancing control" if ctrl else "the baseline")
              + " on mean class accuracy by a significant margin without losing accuracy." if goal else
              "**Goal not met**: the best synthetic arm does not beat "
              + ("both the baseline and the rebalancing control" if ctrl else "the baseline")
              + " on mean class accuracy by a significant margin without losing accuracy (see the table).")
        _why_per_class(doc, cfg, state, evals, best, outcome, classes, base, ctrl, goal)
        _transfer_section(doc, out, cfg, state, best, ran_arms, base, classes)

    # ---- data
    doc.h(2, "Dataset")
    sc = prof.get("split_counts") or {}
    if sc:
        hdr = ["split"] + classes + ["total", "max/min"]
        trs = []
        for s in ("train", "val", "test"):
            if s in sc:
                c = sc[s]
                vals = [c.get(x, 0) for x in classes]
                ratio = (max(vals) / min(vals)) if vals and min(vals) > 0 else float("inf")
                trs.append([s] + vals + [sum(vals), f"{ratio:.1f}"])
        doc.table(hdr, trs, caption="Rows per split and class after the validation carve")
        p = plot_class_distribution({s: sc[s] for s in ("train", "val", "test") if s in sc}, figs / "classes.png",
                                    title="Class distribution")
        doc.fig(p, "Class distribution per split")
    dup = prof.get("duplicates") or {}
    if dup.get("exact") is not None:
        keys = [k for k, v in dup["near"].items() if not isinstance(v, dict)]
        doc.table(["duplicates", "exact (identical pixels)", "near (pHash radius 4, incl. exact)"],
                  [[k.replace("_", " "), dup["exact"].get(k, "–"), dup["near"].get(k, "–")] for k in keys],
                  caption="Duplicate groups and cross-split leakage in the data as given")
    doc.p(f"Training rows left out because an exact or near duplicate of them is in the test split: "
          f"{prof.get('train_rows_tied_to_test', 0)}.")
    q = prof.get("quality") or {}
    if q.get("flags"):
        doc.table(["quality flag", "images"], [[k, v] for k, v in q["flags"].items()], caption="Quality flags")

    # ---- synthetic data
    if cfg.generators:
        doc.h(2, "Synthetic images")
    for name, g in cfg.generators.items():
        st = state.generators.get(name)
        doc.h(3, f"Generator {name} ({g.kind}, mode {g.mode})")
        if st is None:
            doc.p("Not used by any arm that ran.")
            continue
        if "error" in st:
            doc.p(f"**Not run**: stage {st['stage']} failed: {st['error']}")
            continue
        summ = Path(st["images"]) / "summary.json"
        if summ.is_file():
            s = json.loads(summ.read_text())
            doc.p(f"{s.get('written')} of {s.get('requested')} images written "
                  f"({s.get('dropped_no_face', 0)} dropped without a face)"
                  + (f", {s['images_per_second']:.2f} images/s" if s.get("images_per_second") else "") + ".")
        grid = Path(st["images"]) / "grid.png"
        if grid.is_file():
            doc.fig(grid, f"{name}: 10 samples per class (rows in class order: {', '.join(classes)})")
        v = _verify_report(cfg, st)
        if v:
            acc_rows = []
            for r in v.get("acceptance", []):
                if not r.get("intended") and r.get("class") != "total":
                    continue
                acc_rows.append([r.get("class"), r.get("intended"), r.get("kept"), r.get("relabelled"),
                                 r.get("dropped"), _pct(r.get("accepted_share")), r.get("after")])
            if acc_rows:
                doc.table(["intended class", "images", "kept", "relabelled away", "dropped", "accepted %", "in class after"],
                          acc_rows,
                          caption=f"Verification by {', '.join(v.get('experts', []))}")
            ag = v.get("expert_agreement") or {}
            if ag:
                doc.p("FER accuracy of the generated images (share of images each expert assigns to the intended "
                      "class): " + ", ".join(f"{n} {_pct(a)}%" for n, a in ag.items())
                      + f"; ensemble {_pct(v.get('ensemble_agreement'))}%.")
            rc = v.get("real_check") or {}
            checks = [(n, rc[n]) for n in ("uncalibrated", "calibrated") if rc.get(n)]
            if checks:
                hdr = ["verifier on real validation images"] + classes + ["overall"]
                trs = []
                for n, r in checks:
                    trs.append([f"{n}: real labels kept %"] + [_pct(r["real_keep_rate"].get(c)) for c in classes]
                               + [_pct(r["real_keep_rate"].get("overall"))])
                    trs.append([f"{n}: shuffled labels kept %"] + [_pct(r["shuffled_keep_rate"].get(c)) for c in classes]
                               + [_pct(r["shuffled_keep_rate"].get("overall"))])
                doc.table(hdr, trs, caption=f"The same policy on the {rc.get('check_rows')} validation images the "
                                            f"calibration ({rc.get('method')}) was not fit on: a trustworthy verifier "
                                            "keeps most real images of every class and few with shuffled labels")

    # ---- training sets
    doc.h(2, "Training sets")
    comp_rows = []
    for a in cfg.arms:
        c = state.composes.get((a.name, cfg.seeds[0]))
        if c is None:
            continue
        tc = c.get("train_counts", {})
        vals = [tc.get(x, 0) for x in classes]
        ratio = (max(vals) / min(vals)) if vals and min(vals) > 0 else float("inf")
        short = c.get("shortfall") or {}
        comp_rows.append([a.name, a.strategy + ("" if a.verified else " (unverified)"), c.get("train_rows"), c.get("train_synthetic")] + vals
                         + [f"{ratio:.1f}", sum(short.values()) if isinstance(short, dict) else short or 0])
    doc.table(["arm", "strategy", "train rows", "synthetic"] + classes + ["max/min", "shortfall"], comp_rows,
              caption=f"Training rows per arm (seed {cfg.seeds[0]}); validation rows are the same for every arm")

    # ---- results
    test_sets = ["test"] + [t.name for t in cfg.test_sets]
    doc.h(2, "Results on the in-domain test set")
    res_rows = []
    for a in ran_arms:
        rs = [r for r in rows if r["arm"] == a.name and r["test_set"] == "test"]
        from fersynth.evaluate.stats import t_interval

        accs = [r["accuracy"] for r in rs]
        mcas = [r["mean_class_accuracy"] for r in rs]
        res_rows.append([a.name, len(rs), _ms(accs), _ci(t_interval(accs)), _ms(mcas), _ci(t_interval(mcas)),
                         _ms([r["macro_f1"] for r in rs]), _ms([r["val_accuracy"] for r in rs]),
                         _ms([r["val_mean_class_accuracy"] for r in rs])])
    subsets = ", ".join(cfg.data.test_subsets) if cfg.data.test_subsets else "all test rows"
    doc.table(["arm", "seeds", "accuracy %", "95% CI (t, seeds)", "mean class acc. %", "95% CI (t, seeds)",
               "macro F1 %", "val acc. %", "val MCA %"], res_rows,
              caption=f"Mean ± std over seeds; test rows: {subsets}. Per-seed bootstrap CIs are in results.csv")

    doc.h(3, "Per-class precision, recall and F1")
    for a in ran_arms:
        runs = [e for e in evals if e["arm"] == a.name and e["test_set"] == "test"]
        trs = []
        for c in classes:
            pcs = [e["metrics"]["per_class"].get(c) for e in runs if e["metrics"].get("per_class", {}).get(c)]
            if not pcs:
                continue
            trs.append([c, _ms([x["precision"] for x in pcs]), _ms([x["recall"] for x in pcs]),
                        _ms([x["f1"] for x in pcs]), pcs[0].get("support", "")])
        doc.table(["class", "precision %", "recall %", "F1 %", "support"], trs, caption=f"{a.name} (mean ± std over seeds)")

    doc.h(3, "Confusion matrices")
    for a in ran_arms:
        runs = [e for e in evals if e["arm"] == a.name and e["test_set"] == "test"]
        cms = [e["metrics"].get("confusion_matrix") for e in runs if e["metrics"].get("confusion_matrix")]
        if not cms:
            continue
        total = np.sum([np.asarray(c["counts"], dtype=float) for c in cms], axis=0)
        cm = {"labels": cms[0]["labels"], "columns": cms[0]["columns"], "counts": total.tolist()}
        p = plot_confusion(cm, path=figs / f"confusion_{a.name}.png", normalized=True,
                           title=f"{a.name}: row-normalised, {len(cms)} seed(s) summed")
        doc.fig(p, f"{a.name}: confusion matrix on the in-domain test set")

    # ---- deltas
    doc.h(2, "Per-class changes against the baseline and the control")
    doc.p("Δ is the arm minus the reference in percentage points. CIs and p come from a paired bootstrap over test "
          "images of seed-averaged metrics; 'Welch' tests the per-seed values. Both must be below "
          f"{ALPHA} for a change to count as significant (marked **).")
    for ref in [base] + ([ctrl] if ctrl else []):
        if not any(r["arm"] == ref for r in rows):
            continue
        for a in ran_arms:
            if a.name in (ref, base) or (ref == ctrl and get_strategy(a.strategy).control):
                continue
            c = outcome.get(ref) if best is not None and a.name == best.name and ref in outcome else \
                arm_comparison(evals, ref, a.name, "test", k, cfg.n_boot)
            if c is None:
                continue
            summ = []
            for m in ("accuracy", "mean_class_accuracy", "macro_f1"):
                e = c[m]
                mark = " **" if significant(e) else ""
                summ.append(f"{m.replace('_', ' ')} {_pct(e['delta'], True)}{mark} {_ci(e['ci95'], True)} "
                            f"(p {_p(e['p_value'])}, Welch {_p(e['welch']['p_value'])})")
            doc.p(f"**{a.name} vs {ref}**: " + "; ".join(summ) + ".")
            trs = []
            for cls, v in c["per_class"].items():
                trs.append([cls, v["support"], _pct(v["recall"]["delta"], True) + (" **" if significant(v["recall"]) else ""),
                            _ci(v["recall"]["ci95"], True), _p(v["recall"]["p_value"]),
                            _pct(v["f1"]["delta"], True) + (" **" if significant(v["f1"]) else ""),
                            _ci(v["f1"]["ci95"], True), _p(v["f1"]["p_value"])])
            doc.table(["class", "support", "Δ recall", "95% CI", "p", "Δ F1", "95% CI", "p"], trs,
                      caption=f"{a.name} minus {ref}, per class (bootstrap)")
            if best is not None and a.name == best.name:
                deltas = {cls: (v["recall"]["delta"], *v["recall"]["ci95"]) for cls, v in c["per_class"].items()}
                p = plot_per_class_deltas(deltas, figs / f"deltas_{a.name}_vs_{ref}.png",
                                          title=f"{a.name} vs {ref}: recall", xlabel="Δ recall (95% CI)")
                doc.fig(p, f"{a.name} minus {ref}: per-class recall")

    # ---- cross-dataset
    if len(test_sets) > 1:
        doc.h(2, "Cross-dataset evaluation")
        hdr = ["arm"] + [f"{t} acc. %" for t in test_sets] + [f"{t} MCA %" for t in test_sets]
        trs = []
        for a in ran_arms:
            accs = [_ms([r["accuracy"] for r in rows if r["arm"] == a.name and r["test_set"] == t]) for t in test_sets]
            mcas = [_ms([r["mean_class_accuracy"] for r in rows if r["arm"] == a.name and r["test_set"] == t])
                    for t in test_sets]
            trs.append([a.name] + accs + mcas)
        doc.table(hdr, trs, caption="Mean ± std over seeds")

    # ---- problems
    if state.not_run or state.failed:
        doc.h(2, "Not run")
        doc.table(["arm or stage", "reason"], [[k, v] for k, v in {**state.not_run, **state.failed}.items()])

    doc.h(2, "Resolved config")
    doc.code(dump_config(cfg))

    md = _md(doc, out)
    page = _html(doc, f"fersynth study: {cfg.name}")
    for name, text in (("report.md", md), ("report.html", page)):
        with atomic_open(out / name) as f:
            f.write(text)
    return {"md": out / "report.md", "html": out / "report.html", "csv": out / "results.csv"}
