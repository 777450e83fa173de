"""`fersynth run CONFIG`: the whole study from one YAML file; `fersynth demo`: the same offline."""

from __future__ import annotations

from pathlib import Path

import typer

SetOpt = typer.Option(None, "--set", help="Override a config key: KEY=VALUE (dotted, YAML value; repeatable).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars (stage lines are still printed).")
BACKENDS = ("local", "ray")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("demo")(demo)


def run(
    config: Path = typer.Argument(..., help="Experiment YAML (see configs/)."),
    set_: list[str] = SetOpt,
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default runs/<name>)."),
    quiet: bool = QuietOpt,
    backend: str = typer.Option("local", "--backend", help="local (in this process) or ray (stages as Ray tasks, "
                                                            "generation on a Ray Data actor pool)."),
    address: str = typer.Option(None, "--address", help="ray: an existing cluster (HOST:PORT, ray://HOST:PORT or "
                                                         "auto; default: $RAY_ADDRESS, else start a local Ray instance)."),
    num_cpus: float = typer.Option(None, "--num-cpus", help="ray: CPUs of the local instance (default: all cores)."),
    resources: list[str] = typer.Option(None, "--resources", help="ray: KIND.FIELD=VALUE per task kind (data, "
                                        "test_set, gen_model, images, generate, verify, train, eval; fields num_cpus, "
                                        "num_gpus, memory, threads, generate.concurrency); *.FIELD for all. Repeatable."),
    max_retries: int = typer.Option(3, "--max-retries", help="ray: retries of a task whose worker died."),
) -> None:
    """Run a study: ingest, profile, baseline, generate, verify, compose, train arms x seeds, evaluate, report.

    Every stage is cached by a hash of its inputs and config; a rerun does only what changed."""
    from fersynth.errors import FersynthError
    from fersynth.experiment import load_config, run_experiment

    if backend not in BACKENDS:
        raise FersynthError(f"--backend {backend}: unknown backend", hint=f"choose one of {', '.join(BACKENDS)}")
    if backend == "local" and (address or num_cpus is not None or resources):
        used = "--address" if address else "--num-cpus" if num_cpus is not None else "--resources"
        raise FersynthError(f"{used} is an option of the Ray backend", hint="add --backend ray")
    cfg = load_config(config, set_)
    if backend == "ray":  # imported only here: the local backend never imports Ray
        from fersynth.experiment.ray_backend import ray_options, run_on_ray

        opts = ray_options(address, num_cpus, resources, max_retries)
        res = run_on_ray(cfg, out, progress=not quiet, options=opts)
    else:
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


def _finish(res: dict) -> None:
    from rich.console import Console

    c = Console(highlight=False)
    if res["not_run"]:
        c.print("[yellow]not run:[/] " + "; ".join(f"{k} ({v})" for k, v in res["not_run"].items()))
    c.print(f"report: {res['report']['html']}")
