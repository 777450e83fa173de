"""`fersynth generators list` (the registry) and `fersynth generator train` (the own model)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fersynth.cli.common import FormatOpt, SizeOpt
from fersynth.errors import FersynthError

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)

generators_app = typer.Typer(help="List the registered image generators.", no_args_is_help=True)
generator_app = typer.Typer(help="Train a generator on a real training split.", no_args_is_help=True)
DeviceOpt = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar.")


def register(app: typer.Typer) -> None:
    app.add_typer(generators_app, name="generators")
    app.add_typer(generator_app, name="generator")


@generators_app.command("list")
def list_(pattern: str = typer.Argument("*", help="Wildcard filter, e.g. 's*'.")) -> None:
    """Registered generators, their modes and what they need."""
    from fersynth.generate.registry import GenerationSpec, get_generator_entry, list_generators

    t = Table("generator", "modes", "needs", "own settings (study YAML / options)", "description")
    for name in list_generators(pattern):
        e = get_generator_entry(name)
        extra = [f for f in e.config.model_fields if f not in GenerationSpec.model_fields]
        t.add_row(name, ", ".join(e.modes), e.needs, ", ".join(extra), e.description)
    console.print(t)


@generator_app.command("train")
def train(
    data: Path = typer.Option(..., "--data", "-d", help="Dataset folder/file or manifest (real train rows are used)."),
    out: Path = typer.Option(..., "--out", "-o", help="Weights folder to write (diffusers layout, safetensors)."),
    preset: str = typer.Option(None, "--preset", help="Named recipe (e.g. fer2013-cpu); the options below override it."),
    epochs: int = typer.Option(None, "--epochs", help="[default: 20]"),
    batch_size: int = typer.Option(None, "--batch-size", help="[default: 64]"),
    img: int = typer.Option(None, "--img-size", help="Side the diffusion model works at. [default: 32]"),
    channels: str = typer.Option(None, "--channels", help="UNet widths per level, comma-separated. [default: 32,64,64]"),
    layers: int = typer.Option(None, "--layers-per-block", help="[default: 1]"),
    attention: bool = typer.Option(None, "--attention/--no-attention", help="Self-attention at the lowest level."),
    rgb: bool = typer.Option(False, "--rgb", help="Model RGB images (default grayscale)."),
    lr: float = typer.Option(None, "--lr", help="[default: 0.001]"),
    max_steps: int = typer.Option(None, "--max-steps"),
    max_minutes: float = typer.Option(None, "--max-minutes", help="Stop (and save) after this wall time."),
    p_uncond: float = typer.Option(None, "--p-uncond", help="Label dropout for classifier-free guidance. [default: 0.1]"),
    class_balance: float = typer.Option(None, "--class-balance",
                                        help="Draw batches with weight 1/count^P per class (0 plain, 1 balanced)."),
    amp: str = typer.Option(None, "--amp", help="no | bf16 | auto: bf16 autocast where computed natively."),
    prediction: str = typer.Option(None, "--prediction", help="epsilon | v_prediction"),
    snr_gamma: float = typer.Option(None, "--snr-gamma", help="min-SNR loss weighting (e.g. 5)."),
    ema: float = typer.Option(None, "--ema", help="EMA decay of the saved weights. [default: 0.999]"),
    agree_with: Path = typer.Option(None, "--agree-with",
                                    help="Train only on rows whose label this labelled set of the same images agrees "
                                         "with (e.g. the FER+ folder for FER2013)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = DeviceOpt,
    quiet: bool = QuietOpt,
    format: str = FormatOpt, size: int = SizeOpt,
) -> None:
    """Train the `own` class-conditional diffusion model on the real training split."""
    from fersynth.generate.own import own_config, resolve_device, train_own

    resolve_device(device)
    widths = None
    if channels is not None:
        try:
            widths = tuple(int(c) for c in channels.split(","))
        except ValueError:
            raise FersynthError(f"--channels '{channels}': expected comma-separated integers, e.g. 32,64,64") from None
    given = {"size": img, "in_channels": 3 if rgb else None, "channels": widths, "layers_per_block": layers,
             "attention": attention, "epochs": epochs, "batch_size": batch_size, "lr": lr, "max_steps": max_steps,
             "max_minutes": max_minutes, "p_uncond": p_uncond, "class_balance": class_balance, "amp": amp,
             "prediction": prediction, "snr_gamma": snr_gamma, "ema": ema, "seed": seed}
    cfg = own_config({k: v for k, v in given.items() if v is not None}, preset)
    from fersynth.cli.generate import load_real

    m = load_real(data, format, size)
    if agree_with is not None:
        from fersynth.generate.own import agreed_training_rows

        m, rep = agreed_training_rows(m, agree_with)
        console.print(f"training on the {rep['agreeing']} of {rep['train_rows']} labelled training rows whose label "
                      f"{agree_with} agrees with")
    info = train_own(m, cfg, out, progress=not quiet, device=device)
    if info.get("precision_note"):
        console.print(info["precision_note"])
    console.print(f"{info['steps']} steps on {info['train_images']} images in {info['train_seconds']:.0f} s"
                  f" (final loss {info['history'][-1]['loss']:.4f}) -> {out} [{info['model_id']}]"
                  if "model_id" in info else f"-> {out}")
