"""`fersynth models ...`: list the registered architectures."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="FER architectures.", no_args_is_help=True)


@app.command("list")
def list_(
    pattern: str = typer.Argument("*", help="Wildcard filter, e.g. 'resnet*'."),
    flops: bool = typer.Option(False, "--flops", help="Also count parameters and GFLOPs (slower)."),
) -> None:
    """List registered models."""
    from fersynth.models import get_model_entry, list_models

    t = Table("name", "default input", "ImageNet init", "description")
    if flops:
        t.add_column("params (M)", justify="right")
        t.add_column("GFLOPs", justify="right")
    for name in list_models(pattern):
        e = get_model_entry(name)
        row = [name, f"{e.default_in_chans}x{e.default_img_size}x{e.default_img_size}", "yes" if e.pretrained else "-", e.description]
        if flops:
            from fersynth.models.flops import model_info

            info = model_info(name)
            row += [f"{info['params'] / 1e6:.2f}", f"{info['gflops']:.3f}"]
        t.add_row(*row)
    Console().print(t)
