"""`fersynth run CONFIG`: the whole study from one YAML file; `fersynth demo`: the same offline."""

from __future__ import annotations

from pathlib import Path

import typer

SetOpt = typer.Option(None, "--set", help="Override a config key: KEY=VALUE (dotted, YAML value; repeatable).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars (stage lines are still printed).")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("demo")(demo)
    app.command("schema")(schema)


def run(
    config: Path = typer.Argument(..., help="Experiment YAML (see configs/)."),
    set_: list[str] = SetOpt,
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default runs/<name>)."),
    quiet: bool = QuietOpt,
) -> None:
    """Run a study: ingest, profile, baseline, generate, verify, compose, train arms x seeds, evaluate, report.

    Every stage is cached by a hash of its inputs and config; a rerun does only what changed."""
    from fersynth.experiment import load_config, run_experiment

    cfg = load_config(config, set_)
    res = run_experiment(cfg, out, progress=not quiet)
    _finish(res)


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Folder for the demo data and run."),
    steps: int = typer.Option(700, "--generator-steps", help="Training steps of the demo's diffusion model."),
    set_: list[str] = SetOpt,
    quiet: bool = QuietOpt,
) -> None:
    """The main job end to end on procedural demo faces: no downloads, no data, a few minutes on a CPU."""
    from fersynth.experiment import run_experiment
    from fersynth.experiment.demo import prepare_demo

    cfg, run_dir = prepare_demo(out, steps, sets=set_)
    res = run_experiment(cfg, run_dir, progress=not quiet)
    _finish(res)


def schema(out: Path = typer.Option(None, "--out", "-o", help="Write the JSON Schema here instead of printing it.")
           ) -> None:
    """JSON Schema of a study YAML, with every registered generator kind and compose strategy (for editors)."""
    import json

    from fersynth.atomic import write_json_atomic
    from fersynth.experiment.config import config_schema

    s = config_schema()
    if out is not None:
        write_json_atomic(s, out)
    else:
        print(json.dumps(s, indent=2))


def _finish(res: dict) -> None:
    from rich.console import Console

    c = Console(highlight=False)
    if res["not_run"]:
        c.print("[yellow]not run:[/] " + "; ".join(f"{k} ({v})" for k, v in res["not_run"].items()))
    c.print(f"report: {res['report']['html']}")
