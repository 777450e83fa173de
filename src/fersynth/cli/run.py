"""`fersynth run CONFIG`: the whole study from one YAML file; `fersynth demo`: the same offline."""

from __future__ import annotations

from pathlib import Path

import typer

SetOpt = typer.Option(None, "--set", help="Override a config key: KEY=VALUE (dotted, YAML value; repeatable).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars (stage lines are still printed).")
BACKENDS = ("local", "ray")
BackendOpt = typer.Option("local", "--backend", help="local (in this process) or ray (stages as Ray tasks, "
                                                     "generation on a Ray Data actor pool).")
AddressOpt = typer.Option(None, "--address", help="ray: an existing cluster (HOST:PORT, ray://HOST:PORT or auto; "
                                                  "default: $RAY_ADDRESS, else start a local Ray instance).")
NumCpusOpt = typer.Option(None, "--num-cpus", help="ray: CPUs of the local instance (default: all cores).")
ResourcesOpt = typer.Option(None, "--resources", help="ray: KIND.FIELD=VALUE per task kind (data, test_set, gen_model, "
                            "images, generate, verify, train, eval; fields num_cpus, num_gpus, memory, threads, "
                            "generate.concurrency); *.FIELD for all. Repeatable.")
RetriesOpt = typer.Option(3, "--max-retries", help="ray: retries of a task whose worker died.")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("demo")(demo)
    app.command("schema")(schema)


def run(
    config: Path = typer.Argument(..., help="Experiment YAML (see configs/)."),
    set_: list[str] = SetOpt,
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default runs/<name>)."),
    quiet: bool = QuietOpt,
    backend: str = BackendOpt,
    address: str = AddressOpt,
    num_cpus: float = NumCpusOpt,
    resources: list[str] = ResourcesOpt,
    max_retries: int = RetriesOpt,
) -> None:
    """Run a study: ingest, profile, baseline, generate, verify, compose, train arms x seeds, evaluate, report.

    Every stage is cached by a hash of its inputs and config; a rerun does only what changed."""
    from fersynth.experiment import load_config

    _check_backend(backend, address, num_cpus, resources)
    cfg = load_config(config, set_)
    _finish(_run(cfg, out, quiet, backend, address, num_cpus, resources, max_retries))


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Folder for the demo data and run."),
    steps: int = typer.Option(700, "--generator-steps", help="Training steps of the demo's diffusion model."),
    set_: list[str] = SetOpt,
    quiet: bool = QuietOpt,
    backend: str = BackendOpt,
    address: str = AddressOpt,
    num_cpus: float = NumCpusOpt,
    resources: list[str] = ResourcesOpt,
    max_retries: int = RetriesOpt,
) -> None:
    """The main job end to end on procedural demo faces: no downloads, no data, a few minutes on a CPU."""
    from fersynth.experiment.demo import prepare_demo

    _check_backend(backend, address, num_cpus, resources)
    cfg, run_dir = prepare_demo(out, steps, sets=set_)
    _finish(_run(cfg, run_dir, quiet, backend, address, num_cpus, resources, max_retries))


def _check_backend(backend: str, address, num_cpus, resources) -> None:
    from fersynth.errors import FersynthError

    if backend not in BACKENDS:
        raise FersynthError(f"--backend {backend}: unknown backend", hint=f"choose one of {', '.join(BACKENDS)}")
    if backend == "local" and (address or num_cpus is not None or resources):
        used = "--address" if address else "--num-cpus" if num_cpus is not None else "--resources"
        raise FersynthError(f"{used} is an option of the Ray backend", hint="add --backend ray")


def _run(cfg, out, quiet: bool, backend: str, address, num_cpus, resources, max_retries: int) -> dict:
    if backend == "ray":  # imported only here: the local backend never imports Ray
        from fersynth.experiment.ray_backend import ray_options, run_on_ray

        opts = ray_options(address, num_cpus, resources, max_retries)
        return run_on_ray(cfg, out, progress=not quiet, options=opts)
    from fersynth.experiment import run_experiment

    return run_experiment(cfg, out, progress=not quiet)


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
