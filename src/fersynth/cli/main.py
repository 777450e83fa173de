"""The `fersynth` command: Typer groups per stage; bad input becomes one line and exit code 2."""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from fersynth import __version__
from fersynth.atomic import DISK_ERRORS
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


def _click_exceptions() -> list:
    """Where usage errors come from: from typer 0.29 its own copy of click (`typer._click`, whose
    exceptions are not click's), before that click itself."""
    mods = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            pass
    return mods


_CLICK = _click_exceptions()
_EXIT = (typer.Exit, *(m.Exit for m in _CLICK if hasattr(m, "Exit")))
_ABORT = (typer.Abort, *(m.Abort for m in _CLICK if hasattr(m, "Abort")))
_USAGE = tuple(m.UsageError for m in _CLICK)
_CLICK_ERROR = tuple(m.ClickException for m in _CLICK)


def _flags_shown_as_flags() -> None:
    """typer 0.29's rich help prints a flag's type (`--quiet <bool>`) as if it took a value; show none."""
    opt = getattr(getattr(typer, "core", None), "TyperOption", None)
    shown = getattr(opt, "display_type_rich", None)
    if shown is None or getattr(shown, "_fersynth", False):
        return

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    display_type_rich._fersynth = True
    opt.display_type_rich = display_type_rich


_flags_shown_as_flags()


def usage_line(e) -> str:
    """A click / typer usage error as one line: what was wrong, and where to look."""
    ctx = getattr(e, "ctx", None)
    where = ctx.command_path if ctx is not None else "fersynth"
    msg = " ".join(e.format_message().split())
    return f"{where}: {msg} (hint: `{where} --help`)"


def _no_help_on_bare_groups(t: typer.Typer) -> None:
    """A bare `fersynth` or `fersynth data` is a usage error (one line, exit 2), not a help page."""
    t.info.no_args_is_help = False
    for g in t.registered_groups:
        g.no_args_is_help = False
        if g.typer_instance is not None:
            _no_help_on_bare_groups(g.typer_instance)


_no_help_on_bare_groups(app)


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
    except _EXIT as e:
        return _exit(e.exit_code, argv)
    except _USAGE as e:
        err.print(f"[bold red]error:[/] {usage_line(e)}", markup=True)
        return _exit(2, argv)
    except _CLICK_ERROR as e:
        err.print(f"[bold red]error:[/] {' '.join(e.format_message().split())}", markup=True)
        return _exit(2, argv)
    except _ABORT:
        err.print("aborted")
        return _exit(130, argv)
    except OSError as e:
        if e.errno not in DISK_ERRORS:
            raise
        where = e.filename or "output"
        err.print(f"[bold red]error:[/] {where}: cannot write: {DISK_ERRORS[e.errno]} "
                  "(hint: free space or choose a writable --out; finished files are kept)", markup=True)
        return _exit(2, argv)
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
