"""`fersynth train`, `fersynth eval`, `fersynth compare`, `fersynth presets`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fersynth.cli.common import FormatOpt, SizeOpt, print_json, write_json_atomic
from fersynth.errors import FersynthError

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _parse_sets(items: list[str] | None) -> dict:
    from fersynth.validation import parse_sets

    return parse_sets(items, example="--set augment.rotation=15")


def _load_yaml(path: Path | None) -> dict:
    if path is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise FersynthError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise FersynthError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise FersynthError(f"{path}: expected a mapping of config keys")
    return data


def register(app: typer.Typer) -> None:
    @app.command("presets")
    def presets() -> None:
        """List training presets and what they set."""
        from fersynth.train import PRESETS

        t = Table("preset", "settings")
        for name, p in PRESETS.items():
            t.add_row(name, ", ".join(f"{k}={v}" for k, v in p.items() if k != "augment"))
        console.print(t)

    @app.command("train")
    def train(
        data: Path = typer.Option(..., "--data", "-d", help="Dataset folder/file or manifest directory (train rows are used)."),
        out: Path = typer.Option(..., "--out", "-o", help="Run directory for checkpoints and logs."),
        preset: str = typer.Option(None, "--preset", "-p", help="Recipe: sultanov2025, zhu2024, roy2024, cpu-fast."),
        config: Path = typer.Option(None, "--config", help="YAML file with training config keys."),
        model: str = typer.Option(None, "--model", "-m"),
        epochs: int = typer.Option(None, "--epochs"),
        batch_size: int = typer.Option(None, "--batch-size"),
        lr: float = typer.Option(None, "--lr"),
        optimizer: str = typer.Option(None, "--optimizer"),
        img_size: int = typer.Option(None, "--img-size"),
        seed: int = typer.Option(None, "--seed"),
        val_fraction: float = typer.Option(None, "--val-fraction"),
        pretrained: str = typer.Option(None, "--pretrained", help="Local ImageNet weights file."),
        set_: list[str] = typer.Option(None, "--set", help="Override any config key: KEY=VALUE (dotted for augment.*)."),
        no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if OUT holds an interrupted run."),
        format: str = FormatOpt, size: int = SizeOpt,
    ) -> None:
        """Train a FER model; validation is carved from the training split and selects the checkpoint."""
        from fersynth.cli.common import ingest_options
        from fersynth.data.ingest import load_any
        from fersynth.train import resolve_config
        from fersynth.train.loop import train as run_train

        flags = {"model": model, "epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
                 "img_size": img_size, "seed": seed, "val_fraction": val_fraction, "pretrained_path": pretrained}
        cfg = resolve_config(preset, flags, _parse_sets(set_), base=_load_yaml(config))
        from fersynth.models import get_model_entry

        get_model_entry(cfg.model)  # unknown model names fail before any data is read
        m, _ = load_any(data, format, ingest_options(size, False, None, "auto"), progress=True)
        summary = run_train(m, cfg, out, resume=not no_resume)
        console.print(
            f"best epoch {summary['best_epoch']} val {cfg.monitor} {summary[f'best_val_{cfg.monitor}']:.4f};"
            f" {summary['train_seconds']:.0f} s; stopped: {summary['stopped']} -> {summary['checkpoint']}"
        )

    @app.command("eval")
    def eval_(
        ckpt: Path = typer.Argument(..., help="Run directory or .safetensors checkpoint."),
        data: Path = typer.Option(..., "--data", "-d", help="Dataset folder/file or manifest directory."),
        split: str = typer.Option("test", "--split", help="Rows to evaluate: train, val, test or all."),
        subset: list[str] = typer.Option(None, "--subset", help="Only these subsets (e.g. PrivateTest)."),
        out: Path = typer.Option(None, "--out", "-o", help="Write metrics.json, predictions.csv and confusion PNGs here."),
        json_out: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
        n_boot: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% CIs."),
        votes: bool = typer.Option(False, "--ferplus", help="Also score against FER+ vote columns in the data."),
        label_map: list[str] = typer.Option(None, "--map", help="Cross-dataset: map a data class onto a model class, DATA=MODEL."),
        report_unseen: bool = typer.Option(False, "--report-unseen", help="Score rows of known classes; list the others apart."),
        format: str = FormatOpt, size: int = SizeOpt,
    ) -> None:
        """Accuracy, mean class accuracy, per-class P/R/F1, confusion matrix, top-2, bootstrap CIs."""
        from fersynth.cli.common import ingest_options
        from fersynth.data.ingest import load_any
        from fersynth.evaluate.runner import evaluate_checkpoint

        m, _ = load_any(data, format, ingest_options(size, False, None, "auto"), progress=not json_out)
        from fersynth.labels import parse_class_map

        res = evaluate_checkpoint(ckpt, m, split=split, subsets=subset or None, n_boot=n_boot, out_dir=out, ferplus=votes,
                                  label_map=parse_class_map(label_map or []), report_unseen=report_unseen)
        if json_out:
            print_json({k: v for k, v in res.items() if k != "predictions"})
            return
        _print_eval(res)
        if out is not None:
            console.print(f"written -> {out}")

    @app.command("compare")
    def compare(
        results: list[Path] = typer.Argument(..., help="metrics.json files from `fersynth eval --out` (first is the baseline)."),
        names: str = typer.Option(None, "--names", help="Comma-separated run names."),
        json_out: bool = typer.Option(False, "--json"),
        out: Path = typer.Option(None, "--out", "-o", help="Write the comparison JSON here."),
    ) -> None:
        """Per-metric and per-class deltas with CIs, McNemar on paired predictions, mean +- std over seeds."""
        from fersynth.evaluate.compare import compare_runs, format_compare_table

        loaded = []
        for p in results:
            try:
                loaded.append(json.loads(Path(p).read_text()))
            except OSError as e:
                raise FersynthError(f"{p}: cannot read ({e.strerror})") from None
            except json.JSONDecodeError as e:
                raise FersynthError(f"{p}: not JSON ({e.msg} at line {e.lineno})") from None
            if "accuracy" not in loaded[-1]:
                raise FersynthError(f"{p}: not a fersynth metrics file (no 'accuracy')", hint="use metrics.json from `fersynth eval --out`")
        nm = names.split(",") if names else [Path(p).parent.name or Path(p).stem for p in results]
        if len(nm) != len(loaded):
            raise FersynthError(f"--names has {len(nm)} names for {len(loaded)} files")
        cmp = compare_runs(loaded, names=nm)
        if out is not None:
            write_json_atomic(cmp, out)
        if json_out:
            print_json(cmp)
        else:
            console.print(format_compare_table(cmp))


def _print_eval(res: dict) -> None:
    ci = res.get("ci95", {})

    def fmt(k):
        lo_hi = ci.get(k)
        return f"{100 * res[k]:.2f}%" + (f" [{100 * lo_hi[0]:.2f}, {100 * lo_hi[1]:.2f}]" if lo_hi else "")

    console.print(f"n={res['n']}  accuracy {fmt('accuracy')}  mean class accuracy {fmt('mean_class_accuracy')}"
                  f"  top-2 {100 * res['top2_accuracy']:.2f}%  macro F1 {100 * res['macro_f1']:.2f}%")
    t = Table("class", "precision", "recall", "F1", "support")
    for name, r in res["per_class"].items():
        t.add_row(name, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
    console.print(t)
    if res.get("unseen_classes"):
        console.print(f"[yellow]rows of classes the model never saw (excluded from metrics): {res['unseen_classes']}[/]")
