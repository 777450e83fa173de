"""The `fersynth` command: Typer groups per stage; bad input becomes one line and exit code 2."""

from __future__ import annotations

import sys

import click
import typer
from rich.console import Console

from fersynth import __version__
from fersynth.cli import app as app_cli
from fersynth.cli import compose as compose_cli
from fersynth.cli import data as data_cli
from fersynth.cli import generate as generate_cli
from fersynth.cli import models as models_cli
from fersynth.cli import predict as predict_cli
from fersynth.cli import run as run_cli
from fersynth.cli import train as train_cli
from fersynth.cli import verify as verify_cli
from fersynth.errors import FersynthError

app = typer.Typer(
    name="fersynth",
    help="Synthetic data for facial expression recognition, measured honestly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_cli.app, name="data")
app.add_typer(models_cli.app, name="models")
train_cli.register(app)
verify_cli.register(app)
compose_cli.register(app)
generate_cli.register(app)
run_cli.register(app)
app_cli.register(app)
predict_cli.register(app)


@app.command()
def version() -> None:
    """Print the fersynth version."""
    print(__version__)


def main(argv: list[str] | None = None) -> int:
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        app(args=argv, standalone_mode=False, prog_name="fersynth")
    except FersynthError as e:
        err.print(f"[bold red]error:[/] {e}", markup=True)
        return _exit(2, argv)
    except click.exceptions.Exit as e:
        return _exit(e.exit_code, argv)
    except click.ClickException as e:
        e.show()
        return _exit(2, argv)
    except click.exceptions.Abort:
        err.print("aborted")
        return _exit(130, argv)
    except KeyboardInterrupt:
        err.print("interrupted; finished stages are kept")
        return _exit(130, argv)
    return _exit(0, argv)


def _exit(code: int, argv) -> int:
    if argv is None:  # console script
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
