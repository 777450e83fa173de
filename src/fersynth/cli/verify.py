"""`fersynth verify` (expert checks of synthetic images) and `fersynth data audit` (label noise)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fersynth.cli import data as data_cli
from fersynth.cli.common import (
    ClassMapOpt,
    FormatOpt,
    ImagesOpt,
    ModeOpt,
    SizeOpt,
    SkipBadOpt,
    print_json,
)
from fersynth.errors import FersynthError

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)

ExpertsOpt = typer.Option(..., "--experts", "-e",
                          help="Expert model: fersynth run dir / .safetensors, .hdf5 mini-Xception or .tflite (repeatable).")
MapOpt = typer.Option(None, "--map", help="Map a class the experts lack onto one they know: FROM=TO (repeatable).")


def _experts(specs: list[str]):
    from fersynth.verify.experts import load_expert

    return [load_expert(s) for s in specs]


def _label_map(items: list[str] | None) -> dict[str, str]:
    from fersynth.labels import canonical_name, parse_class_map

    return {canonical_name(k): v for k, v in parse_class_map(items or []).items()}


def _validated(model, what: str, **kw):
    from fersynth.validation import validated

    return validated(model, {k: v for k, v in kw.items() if v is not None}, where=what,
                     hint="see `fersynth verify --help`")


def _policy(**kw):
    from fersynth.verify.policy import VerifyPolicy

    return _validated(VerifyPolicy, "policy", **kw)


def _print_real_check(rc: dict) -> None:
    """Keep rates on real validation images (true and shuffled labels), before / after calibration."""
    runs = [("uncalibrated", rc["uncalibrated"])] + ([("calibrated", rc["calibrated"])] if "calibrated" in rc else [])
    t = Table(title=f"keep rate on {rc['check_rows']} real validation images (calibration '{rc['method']}' fit on "
                    f"{rc['fit_rows']} others)")
    t.add_column("class")
    t.add_column("images", justify="right")
    for name, _ in runs:
        t.add_column(f"real, {name}", justify="right")
        t.add_column(f"shuffled, {name}", justify="right")
    first = runs[0][1]
    for c in [*first["rows_per_class"], "overall"]:
        cells = [c, str(first["rows_per_class"].get(c, first["rows"]))]
        for _, r in runs:
            cells += [f"{r['real_keep_rate'].get(c, 0):.2f}", f"{r['shuffled_keep_rate'].get(c, 0):.2f}"]
        t.add_row(*cells)
    console.print(t)


def verify(
    synth: Path = typer.Argument(..., help="Synthetic manifest (with intended_label) or dataset folder."),
    experts: list[str] = ExpertsOpt,
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the verified manifest, report.json, acceptance.csv, grid.png."),
    policy: str = typer.Option("vote", "--policy", help="vote (k experts agree) | mean (mean probability)."),
    k: int = typer.Option(None, "--k", help="vote: experts that must agree (default: a majority)."),
    threshold: float = typer.Option(0.5, "--threshold", help="Probability an agreeing expert (or the mean) must reach."),
    relabel_threshold: float = typer.Option(0.7, "--relabel-threshold",
                                            help="Mean probability of another class that relabels an image."),
    no_relabel: bool = typer.Option(False, "--no-relabel", help="Drop instead of relabelling on confident disagreement."),
    min_quality: float = typer.Option(None, "--min-quality", help="Drop images whose q_score is below this."),
    test_reference: Path = typer.Option(None, "--test-reference",
                                        help="Dataset/manifest whose test (and val) images synthetic ones must not duplicate."),
    radius: int = typer.Option(4, "--radius", help="pHash Hamming radius for near-duplicates."),
    no_dedup: bool = typer.Option(False, "--no-dedup", help="Keep near-duplicates of each other."),
    class_map: list[str] = MapOpt,
    real: Path = typer.Option(None, "--real", help="Real dataset/manifest: the policy's keep rate on its validation "
                                                   "images (carved from training when it has none), true and "
                                                   "shuffled labels."),
    calibrate: str = typer.Option("none", "--calibrate",
                                  help="none | prior (temperature + class bias per expert) | thresholds (per class) "
                                       "| both; fit on part of --real's validation images."),
    target_keep: float = typer.Option(None, "--target-keep",
                                      help="thresholds: share of each class's real images to keep (default 0.7)."),
    max_threshold: float = typer.Option(None, "--max-threshold",
                                        help="thresholds: highest per-class threshold (default 0.95; the policy's "
                                             "--threshold lets calibration only lower a class's bar)."),
    max_threshold_below_rows: int = typer.Option(None, "--max-threshold-below-rows",
                                                 help="thresholds: --max-threshold binds only classes with fewer "
                                                      "fit images than this (default: every class)."),
    fit_fraction: float = typer.Option(None, "--fit-fraction",
                                       help="Share of the validation images the calibration is fit on (default 0.5); "
                                            "keep rates are reported on the rest."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Score synthetic images with expert models: keep, relabel (soft label) or drop each one."""
    from fersynth.data.ingest import load_any
    from fersynth.verify.calibrate import CalibrationConfig
    from fersynth.verify.run import verify as run_verify

    pol = _policy(mode=policy, k=k, threshold=threshold, relabel=not no_relabel, relabel_threshold=relabel_threshold,
                  min_q_score=min_quality, dedup=not no_dedup, radius=radius)
    cal = _validated(CalibrationConfig, "calibration", method=calibrate, target_keep=target_keep,
                     fit_fraction=fit_fraction, max_threshold=max_threshold,
                     max_threshold_below_rows=max_threshold_below_rows)
    if cal.enabled and real is None:
        raise FersynthError(f"--calibrate {calibrate} needs real validation images", hint="add --real PATH")
    m, _ = load_any(synth)
    from fersynth.verify.run import intended_labels

    intended_labels(m)  # fail on missing intended labels before loading any model
    ref = load_any(test_reference)[0] if test_reference is not None else None
    real_m = load_any(real)[0] if real is not None else None
    _, report = run_verify(m, _experts(experts), pol, ref, label_map=_label_map(class_map), real=real_m,
                           calibration=cal, out_dir=out, progress=not json_out)
    if json_out:
        print_json(report)
        return
    t = Table(title=f"verified {report['rows']} images with {', '.join(report['experts'])}")
    cols = ["class", "intended", "kept", "relabelled", "dropped", "accepted_share", "after"]
    for c in cols:
        t.add_column(c, justify="left" if c == "class" else "right")
    for row in report["acceptance"]:
        if row["intended"] or row["after"]:
            t.add_row(*["-" if row[c] is None else str(row[c]) for c in cols])
    console.print(t)
    console.print("reasons: " + ", ".join(f"{r} {n}" for r, n in report["reasons"].items()))
    if report["test_reference"]:
        console.print(f"near-duplicates of test images: {report['test_reference']['near_duplicates']}")
    if report["real_check"]:
        _print_real_check(report["real_check"])
    console.print(f"-> {out} (manifest, report.json, acceptance.csv, grid.png)")


def audit(
    path: Path = typer.Argument(..., help="Dataset folder/file or manifest directory (e.g. the FER+ folder)."),
    experts: list[str] = ExpertsOpt,
    out: Path = typer.Option(None, "--out", "-o", help="Directory for audit.json and ranking.csv."),
    label_column: str = typer.Option(None, "--label-column",
                                     help="Label under audit (default: orig_label when present, else label)."),
    reference_column: str = typer.Option(None, "--reference-column",
                                         help="Reference labels (default: label when auditing orig_label; 'none' for none)."),
    split: str = typer.Option("train", "--split", help="train | val | test | all"),
    score: str = typer.Option("prob", "--score", help="prob (1 - p(label)) | margin (best other - p(label))."),
    top: list[float] = typer.Option(None, "--top", help="Top fractions to score (repeatable; default 0.01 0.05 0.1 0.2)."),
    show: int = typer.Option(15, "--show", help="Most suspicious images to print."),
    class_map: list[str] = MapOpt,
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    format: str = FormatOpt, size: int = SizeOpt, skip_bad: bool = SkipBadOpt,
    folder_map: list[str] = ClassMapOpt, color: str = ModeOpt, images: str = ImagesOpt,
) -> None:
    """Rank real images by how likely their label is wrong; precision/recall against reference labels.

    On the FER+ folder the FER2013 label (orig_label) is audited against the FER+ majority.
    """
    from fersynth.verify.audit import DEFAULT_FRACTIONS
    from fersynth.verify.audit import audit as run_audit

    m, _ = data_cli.load_data(path, format, size, skip_bad, folder_map, color, images, quiet=json_out)
    rank, report = run_audit(m, _experts(experts), label_column=label_column, reference_column=reference_column,
                             split=split, score=score, fractions=tuple(top) if top else DEFAULT_FRACTIONS,
                             label_map=_label_map(class_map), out_dir=out, progress=not json_out)
    if json_out:
        print_json(report)
        return
    t = Table(title=f"most suspicious of {report['rows']} '{split}' labels ({report['label_column']})")
    cols = ["rank", "path", "label", "predicted", "p_label"] + (["reference"] if "reference" in rank.columns else [])
    for c in cols:
        t.add_column(c)
    for _, r in rank.head(show).iterrows():
        t.add_row(*[str(r[c]) for c in cols])
    console.print(t)
    if report.get("reference_column"):
        e = report["ensemble"]
        console.print(f"reference '{report['reference_column']}': {e['mislabelled']} of {e['n']} labels disagree"
                      f" (base rate {e['base_rate']:.3f})")
        for key in sorted((k for k in e if k.startswith("precision_at_")), key=lambda k: e[k.replace("precision", "k", 1)]):
            pct = key.removeprefix("precision_at_")
            line = f"  top {pct}: precision {e[key]:.3f}, recall {e[f'recall_at_{pct}']:.3f}"
            alone = ", ".join(f"{n} {v[key]:.3f}" for n, v in report["per_expert"].items())
            console.print(line + f" (alone: {alone})")
    if out is not None:
        console.print(f"-> {out} (audit.json, ranking.csv)")


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
    data_cli.app.command("audit")(audit)
