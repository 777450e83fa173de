"""`fersynth compose`: mix a real manifest with synthetic images by a named strategy."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fersynth.cli.common import print_json, write_json_atomic

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _strategies_help() -> str:
    from fersynth.compose import strategies

    return "; ".join(f"{e.name}: {e.description}" for e in strategies())


def compose(
    strategy: str = typer.Argument(..., help=_strategies_help()),
    real: Path = typer.Option(..., "--real", "-r", help="Real dataset folder or manifest directory."),
    synthetic: Path = typer.Option(None, "--synthetic", "-s", help="Synthetic manifest (verified or not)."),
    out: Path = typer.Option(..., "--out", "-o", help="Manifest directory to write (plus compose.json)."),
    n: int = typer.Option(None, "--n", help="append / synthetic-only: images per class; mix: training-set size."),
    rho: float = typer.Option(None, "--rho", help="balance / oversample: target imbalance ratio max/min (>= 1)."),
    k: int = typer.Option(None, "--k", help="expand: synthetic images per real training image."),
    fraction: float = typer.Option(None, "--fraction", help="mix: share of synthetic images in the training set."),
    seed: int = typer.Option(0, "--seed", help="Sampling (and validation-carving) seed."),
    allow_short: bool = typer.Option(False, "--allow-short", help="Use what the pool holds when it is short."),
    radius: int = typer.Option(4, "--radius", help="pHash radius for near-duplicates of test images."),
    val_fraction: float = typer.Option(0.1, "--val-fraction",
                                       help="Validation share carved from real train (synthetic-only, mix, oversample)."),
    param: list[str] = typer.Option(None, "--param", help="Another parameter of the strategy, KEY=VALUE (repeatable)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Build a training manifest: real rows plus synthetic rows chosen by STRATEGY (seeded)."""
    from fersynth.compose import compose as run_compose
    from fersynth.compose import get_strategy, strategy_config
    from fersynth.data.ingest import load_any
    from fersynth.errors import FersynthError
    from fersynth.validation import parse_sets

    params = {k_: v for k_, v in dict(n=n, rho=rho, k=k, fraction=fraction).items() if v is not None}
    params.update(parse_sets(param, example="--param n=300"))
    entry = get_strategy(strategy)
    cfg = strategy_config(strategy, dict(params, allow_short=allow_short), where=f"compose {strategy}")
    if entry.synthetic and synthetic is None:
        raise FersynthError(f"strategy '{strategy}' needs --synthetic PATH")
    real_m = load_any(real)[0]
    syn_m = load_any(synthetic)[0] if synthetic is not None else None
    m = run_compose(cfg, real_m, syn_m, seed=seed, radius=radius, val_fraction=val_fraction)
    m.save(out)
    report = m.meta["compose"]
    write_json_atomic(report, out / "compose.json")
    if json_out:
        print_json(report)
        return
    t = Table(title=f"compose {strategy} -> {out}")
    for c in ("class", "real train", "pool", "added", "train after"):
        t.add_column(c, justify="left" if c == "class" else "right")
    pool = report.get("pool_counts", {})
    for c, before in report["real_train_counts"].items():
        t.add_row(c, str(before), str(pool.get(c, "-")), str(report["synthetic_added"][c]), str(report["train_counts"][c]))
    console.print(t)
    ir_b, ir_a = report["imbalance_before"], report["imbalance_after"]
    console.print(f"imbalance ratio {ir_b:.2f} -> {ir_a:.2f}" if ir_b and ir_a else "imbalance ratio: -")
    if report.get("shortfall"):
        console.print("[yellow]pool short:[/] " + ", ".join(f"{c} {v}" for c, v in report["shortfall"].items()))


def register(app: typer.Typer) -> None:
    app.command("compose")(compose)
