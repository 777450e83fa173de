"""`fersynth generators list`, `fersynth generator train`, `fersynth generate own|sd|merge`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fersynth.cli.common import FormatOpt, SizeOpt
from fersynth.errors import FersynthError
from fersynth.labels import CLASSES

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)

generators_app = typer.Typer(help="List the registered image generators.", no_args_is_help=True)
generator_app = typer.Typer(help="Train a generator on a real training split.", no_args_is_help=True)
generate_app = typer.Typer(help="Generate synthetic expression images with provenance.", no_args_is_help=True)

# Options every generate command shares: where to write, target domain, work split.
OutOpt = typer.Option(..., "--out", "-o", help="Run directory (re-run the same command to resume).")
DomainSizeOpt = typer.Option(48, "--domain-size", help="Side of the written images (the target dataset's size).")
ColorOpt = typer.Option("gray", "--color", help="gray | rgb for the written images.")
DetectOpt = typer.Option(False, "--detect-face/--no-detect-face",
                         help="Detect a face (OpenCV Haar cascade), crop to it; images without one are dropped.")
SeedOpt = typer.Option(0, "--seed", help="Base seed; each image gets its own seed derived from it.")
BatchOpt = typer.Option(16, "--batch-size", help="Images per forward pass.")
ShardOpt = typer.Option(64, "--shard-size", help="Images per shard (the unit of resume and of work split).")
DeviceOpt = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N.")
DatasetOpt = typer.Option(None, "--dataset", help="Dataset name for the rows (default: the generator's name).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar.")


def register(app: typer.Typer) -> None:
    app.add_typer(generators_app, name="generators")
    app.add_typer(generator_app, name="generator")
    app.add_typer(generate_app, name="generate")


@generators_app.command("list")
def list_(pattern: str = typer.Argument("*", help="Wildcard filter, e.g. 's*'.")) -> None:
    """Registered generators, their modes and what they need."""
    from fersynth.generate import get_generator_entry, list_generators

    t = Table("generator", "modes", "needs", "description")
    for name in list_generators(pattern):
        e = get_generator_entry(name)
        t.add_row(name, ", ".join(e.modes), e.needs, e.description)
    console.print(t)


def _domain(size: int, color: str, detect: bool):
    from fersynth.faces.convert import DomainSpec

    if color not in ("gray", "rgb"):
        raise FersynthError(f"--color '{color}' is not gray or rgb")
    return DomainSpec(size=size, gray=color == "gray", detect_face=detect)


def _load(data: Path, format, size):
    from fersynth.cli.common import ingest_options
    from fersynth.data.ingest import load_any

    m, _ = load_any(data, format, ingest_options(size, False, None, "auto"), progress=True)
    return m


def _classes(names: list[str] | None, num_classes: int) -> list[int]:
    from fersynth.labels import CLASSES, canonical_name

    if not names:
        return list(range(num_classes))
    out = []
    for n in names:
        for part in n.split(","):
            c = CLASSES.index(canonical_name(part))
            if c >= num_classes:
                raise FersynthError(f"class '{part}' is outside the model's {num_classes} classes")
            out.append(c)
    return sorted(set(out))


def _report(summary: dict, out: Path) -> None:
    if summary["manifest"] is None:
        console.print(f"this process finished its shards ({summary['generated_now']} images); "
                      "the main process merges")
        return
    rate = summary.get("images_per_second")
    console.print(
        f"{summary['written']} of {summary['requested']} images written"
        f" ({summary['dropped_no_face']} dropped without a face; {summary['generated_now']} generated now"
        + (f", {rate:.2f} img/s" if rate else "") + f") -> {summary['manifest']}"
    )


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
    m = _load(data, format, size)
    info = train_own(m, cfg, out, progress=not quiet, device=device)
    if info.get("precision_note"):
        console.print(info["precision_note"])
    console.print(f"{info['steps']} steps on {info['train_images']} images in {info['train_seconds']:.0f} s"
                  f" (final loss {info['history'][-1]['loss']:.4f}) -> {out} [{info['model_id']}]"
                  if "model_id" in info else f"-> {out}")


def _class_cfg(items: list[str] | None, n: int) -> dict[int, float]:
    """--class-cfg CLASS=SCALE items as {class index: scale}."""
    from fersynth.labels import canonical_name

    out: dict[int, float] = {}
    for it in items or []:
        name, sep, val = it.partition("=")
        try:
            c = CLASSES.index(canonical_name(name.strip()))
            out[c] = float(val)
        except (ValueError, FersynthError):
            raise FersynthError(f"--class-cfg '{it}': expected CLASS=SCALE, e.g. disgust=4",
                                hint=f"classes: {', '.join(CLASSES[:n])}") from None
        if not sep or out[c] < 0:
            raise FersynthError(f"--class-cfg '{it}': expected CLASS=SCALE with a scale >= 0")
    return out


@generate_app.command("own")
def own(
    weights: Path = typer.Option(..., "--weights", "-w", help="Folder written by `fersynth generator train`."),
    mode: str = typer.Option("sample", "--mode", "-m", help="sample | expand | edit | guided"),
    out: Path = OutOpt,
    data: Path = typer.Option(None, "--data", "-d", help="Real images for expand / edit (train rows only)."),
    per_class: int = typer.Option(100, "--per-class", help="sample / guided: images per class."),
    classes: list[str] = typer.Option(None, "--class", help="Only these classes (repeatable or comma-separated)."),
    k: int = typer.Option(5, "--k", help="expand: variants per real image."),
    strength: float = typer.Option(0.5, "--strength", help="expand / edit: how far the real image is noised (0..1]."),
    target: list[str] = typer.Option(None, "--target", help="edit: target class(es); default every other class."),
    sources_per_class: int = typer.Option(None, "--sources-per-class", help="expand / edit: real images per class (seeded pick)."),
    classifier: Path = typer.Option(None, "--classifier", help="guided: fersynth FER checkpoint (run dir or .safetensors)."),
    guidance: float = typer.Option(0.1, "--guidance", help="guided: step size of the classifier's normalised gradient on x0."),
    guidance_start: float = typer.Option(0.5, "--guidance-start", help="guided: fraction of steps before guidance starts."),
    cfg_scale: float = typer.Option(2.0, "--cfg", help="Classifier-free guidance scale (1 = conditional only)."),
    class_cfg: list[str] = typer.Option(None, "--class-cfg",
                                        help="Per-class guidance scale CLASS=SCALE (repeatable), e.g. disgust=4."),
    scheduler: str = typer.Option("ddpm", "--scheduler", help="ddpm | ddim | dpmsolver"),
    steps: int = typer.Option(25, "--steps", help="Denoising steps."),
    gen_size: int = typer.Option(None, "--gen-size", help="Side the model generates at (default: as trained)."),
    domain_size: int = DomainSizeOpt, color: str = ColorOpt, detect: bool = DetectOpt,
    seed: int = SeedOpt, batch_size: int = BatchOpt, shard_size: int = ShardOpt, device: str = DeviceOpt,
    dataset: str = DatasetOpt, quiet: bool = QuietOpt,
    format: str = FormatOpt, size: int = SizeOpt,
) -> None:
    """Sample, expand, edit or classifier-guide images with the own diffusion model."""
    from fersynth.generate.base import run_generation
    from fersynth.generate.own import (
        MODES,
        OwnGenerator,
        plan_edit,
        plan_expand,
        plan_sample,
        source_rows,
    )

    if mode not in MODES:
        raise FersynthError(f"unknown mode '{mode}' for generator own", hint=f"choose one of {', '.join(MODES)}")
    if mode in ("expand", "edit") and not 0 < strength <= 1:
        raise FersynthError(f"--strength must lie in (0, 1], got {strength}")
    if mode == "guided" and classifier is None:
        raise FersynthError("guided mode needs a FER classifier", hint="pass --classifier CHECKPOINT")
    domain = _domain(domain_size, color, detect)
    src = None
    if mode in ("expand", "edit"):
        if data is None:
            raise FersynthError(f"{mode} needs real images", hint="pass --data with a train split")
    per_class_cfg = _class_cfg(class_cfg, len(CLASSES))
    gen = OwnGenerator(weights, scheduler=scheduler, steps=steps, cfg_scale=cfg_scale, size=gen_size,
                       device=device, classifier=classifier, guidance=guidance, guidance_start=guidance_start,
                       class_cfg=per_class_cfg)
    n = gen.num_classes
    settings = {"mode": mode, "scheduler": scheduler, "steps": steps, "cfg_scale": cfg_scale, "gen_size": gen.size}
    if per_class_cfg:
        settings["class_cfg"] = {CLASSES[c]: v for c, v in per_class_cfg.items()}
    if mode in ("sample", "guided"):
        params = {"cfg_scale": cfg_scale, "steps": steps, "scheduler": scheduler}
        if mode == "guided":
            params.update(guidance=guidance, guidance_start=guidance_start, classifier=str(classifier))
        items = plan_sample(_classes(classes, n), per_class, seed, mode, params)
    else:
        src = source_rows(_load(data, format, size), n, sources_per_class, seed)
        wanted = _classes(classes, n) if classes else None
        if wanted is not None:
            src = src.select(src.df["label"].isin(wanted).to_numpy())
        gen.source = src
        params = {"strength": strength, "cfg_scale": cfg_scale, "steps": steps, "scheduler": scheduler}
        items = (plan_expand(src, k, seed, params) if mode == "expand"
                 else plan_edit(src, _classes(target, n) if target else None, seed, params, n))
    for it in items:  # provenance: the scale each image was made with
        if it.label in per_class_cfg:
            it.params["cfg_scale"] = per_class_cfg[it.label]
    settings.update(per_class=per_class, k=k, strength=strength, seed=seed)
    summary = run_generation(gen, items, out, domain=domain, dataset=dataset or "own", settings=settings,
                             shard_size=shard_size, batch_size=batch_size, progress=not quiet)
    _report(summary, out)


@generate_app.command("merge")
def merge(out: Path = typer.Argument(..., help="Generation run directory.")) -> None:
    """Merge the finished shards of a (multi-process) generation run; refuses while any is unfinished."""
    from fersynth.generate.base import merge_shards

    m = merge_shards(out)
    console.print(f"{len(m)} images -> {out / 'manifest'}")


@generate_app.command("sd")
def sd(
    model: Path = typer.Option(..., "--model", help="Local diffusers folder or single .safetensors checkpoint."),
    mode: str = typer.Option("sample", "--mode", "-m", help="sample | expand | edit | guided"),
    out: Path = OutOpt,
    arch: str = typer.Option(None, "--arch", help="sd | sdxl | sd3 (needed for a single-file checkpoint)."),
    config: Path = typer.Option(None, "--config", help="Single file: local diffusers folder with the model's configs."),
    data: Path = typer.Option(None, "--data", "-d", help="Real images for expand / edit (train rows only)."),
    per_class: int = typer.Option(100, "--per-class", help="sample / guided: images per class."),
    classes: list[str] = typer.Option(None, "--class", help="Only these classes (repeatable or comma-separated)."),
    sampling: str = typer.Option("balanced", "--sampling", help="Prompt attributes: balanced | factorial | random."),
    no_attributes: bool = typer.Option(False, "--no-attributes", help="Emotion phrases only, no attribute grid."),
    no_aus: bool = typer.Option(False, "--no-aus", help="Leave the action units out of the prompts."),
    negative: str = typer.Option(None, "--negative", help="Negative prompt (default: the builder's)."),
    k: int = typer.Option(5, "--k", help="expand: variants per real image."),
    strength: float = typer.Option(0.5, "--strength", help="expand / edit: img2img strength (0..1]."),
    target: list[str] = typer.Option(None, "--target", help="edit: target class(es); default every other class."),
    sources_per_class: int = typer.Option(None, "--sources-per-class", help="expand / edit: real images per class."),
    classifier: Path = typer.Option(None, "--classifier", help="guided: fersynth FER checkpoint."),
    guidance: float = typer.Option(0.05, "--guidance", help="guided: step on the prompt embedding (RMS units)."),
    guidance_start: float = typer.Option(0.5, "--guidance-start", help="guided: fraction of steps before guidance."),
    cfg_scale: float = typer.Option(7.0, "--cfg", help="Classifier-free guidance scale."),
    scheduler: str = typer.Option(None, "--scheduler", help="ddim | ddpm | dpmsolver | euler | euler_a | pndm | flow_euler"),
    steps: int = typer.Option(30, "--steps"),
    gen_size: int = typer.Option(None, "--gen-size", help="Side generated at (default: the model's native size)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | float16 | bfloat16"),
    domain_size: int = DomainSizeOpt, color: str = ColorOpt,
    detect: bool = typer.Option(True, "--detect-face/--no-detect-face",
                                help="Detect and crop the face (OpenCV Haar); images without one are dropped."),
    seed: int = SeedOpt, batch_size: int = typer.Option(4, "--batch-size"), shard_size: int = ShardOpt,
    device: str = DeviceOpt, dataset: str = DatasetOpt, quiet: bool = QuietOpt,
    format: str = FormatOpt, size: int = SizeOpt,
) -> None:
    """Text-to-image, img2img expansion / editing, or classifier-guided generation with Stable Diffusion."""
    from fersynth.generate.base import run_generation
    from fersynth.generate.own import resolve_device, source_rows
    from fersynth.generate.prompts import DEFAULT_NEGATIVE
    from fersynth.generate.sd import MODES, SdGenerator, plan_img2img, plan_prompts

    if mode not in MODES:
        raise FersynthError(f"unknown mode '{mode}' for generator sd", hint=f"choose one of {', '.join(MODES)}")
    if mode in ("expand", "edit") and not 0 < strength <= 1:
        raise FersynthError(f"--strength must lie in (0, 1], got {strength}")
    if mode in ("expand", "edit") and data is None:
        raise FersynthError(f"{mode} needs real images", hint="pass --data with a train split")
    if mode == "guided" and classifier is None:
        raise FersynthError("guided mode needs a FER classifier", hint="pass --classifier CHECKPOINT")
    resolve_device(device)
    domain = _domain(domain_size, color, detect)
    gen = SdGenerator(model, arch=arch, config=config, scheduler=scheduler, steps=steps, cfg_scale=cfg_scale,
                      size=gen_size, device=device, dtype=dtype, classifier=classifier, guidance=guidance,
                      guidance_start=guidance_start)
    neg = DEFAULT_NEGATIVE if negative is None else negative
    n = 8 if classes and any("contempt" in c for c in classes) else 7
    params = {"cfg_scale": cfg_scale, "steps": steps, "scheduler": scheduler or "default"}
    if mode in ("sample", "guided"):
        if mode == "guided":
            params.update(guidance=guidance, guidance_start=guidance_start, classifier=str(classifier))
        items = plan_prompts(_classes(classes, n), per_class, seed, mode, sampling, {} if no_attributes else None,
                             neg, not no_aus, params)
    else:
        src = source_rows(_load(data, format, size), 8, sources_per_class, seed)
        if classes:
            src = src.select(src.df["label"].isin(_classes(classes, 8)).to_numpy())
        gen.source = src
        params["strength"] = strength
        items = plan_img2img(src, mode, seed, params, k=k, targets=_classes(target, 8) if target else None,
                             num_classes=src.num_classes, negative_prompt=neg, include_aus=not no_aus)
    settings = {"mode": mode, "family": gen.family, "size": gen.size, "sampling": sampling, "seed": seed, **params}
    summary = run_generation(gen, items, out, domain=domain, dataset=dataset or "sd", settings=settings,
                             shard_size=shard_size, batch_size=batch_size, progress=not quiet)
    _report(summary, out)


@generate_app.command("pseudolabel")
def pseudolabel(
    folder: Path = typer.Argument(..., help="Folder of unlabelled face images (searched recursively)."),
    teacher: list[Path] = typer.Option(..., "--teacher", "-t", help="fersynth checkpoint; repeat for an ensemble."),
    out: Path = typer.Option(..., "--out", "-o", help="Manifest directory to write."),
    threshold: float = typer.Option(0.8, "--threshold", help="Keep predictions at least this confident."),
    top_k: int = typer.Option(None, "--top-k", help="Then keep only the K most confident per class."),
    img: int = typer.Option(48, "--img-size", help="Decode images at this size."),
    color: str = ColorOpt,
) -> None:
    """Label an unlabelled face folder with a teacher (or ensemble); confident rows become source 'pseudo'."""
    from fersynth.generate.pseudolabel import load_unlabelled
    from fersynth.generate.pseudolabel import pseudolabel as run

    if color not in ("gray", "rgb"):
        raise FersynthError(f"--color '{color}' is not gray or rgb")
    m, bad = load_unlabelled(folder, img, "gray" if color == "gray" else "rgb")
    if bad:
        console.print(f"[yellow]skipped {len(bad)} unreadable file(s)[/], e.g. {bad[0][0]}: {bad[0][1]}")
    labelled, rep = run(m, [str(t) for t in teacher], threshold, top_k)
    if len(labelled) == 0:
        raise FersynthError(f"no image reached confidence {threshold}", hint="lower --threshold")
    labelled.save(out)
    console.print(f"kept {rep['kept']} of {rep['images']} images ({', '.join(f'{k} {v}' for k, v in rep['per_class'].items())})"
                  f" -> {out}")


@generate_app.command("metrics")
def metrics(
    synthetic: Path = typer.Argument(..., help="Generation run directory or manifest."),
    real: Path = typer.Option(..., "--real", help="Real dataset or manifest (train rows are the reference)."),
    classifier: Path = typer.Option(..., "--classifier", help="fersynth checkpoint that judges and embeds."),
    out: Path = typer.Option(None, "--out", "-o", help="Write metrics.json and one grid PNG per class here."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    format: str = FormatOpt, size: int = SizeOpt,
) -> None:
    """FER accuracy per class, diversity, Fréchet distance to the real set, sample grids."""
    from fersynth.cli.common import print_json, write_json_atomic
    from fersynth.data.manifest import Manifest, is_manifest_dir
    from fersynth.generate.metrics import synthetic_set_metrics

    path = synthetic / "manifest" if is_manifest_dir(synthetic / "manifest") else synthetic
    syn = Manifest.load(path)
    ref = _load(real, format, size).where(split="train")
    if ref.image_shape[:2] != syn.image_shape[:2]:
        raise FersynthError(f"real images are {ref.image_shape}, synthetic {syn.image_shape}",
                            hint="generate with --domain-size matching the real data, or ingest with --size")
    res = synthetic_set_metrics(syn, ref, classifier, out)
    if out is not None:
        write_json_atomic(res, out / "metrics.json")
    if json_out:
        print_json(res)
        return
    fa = res["fer_accuracy"]
    console.print(f"FER accuracy {fa['accuracy']:.3f} (mean class {fa['mean_class_accuracy']:.3f}); "
                  + ", ".join(f"{k} {v:.2f}" for k, v in fa["per_class"].items()))
    console.print(f"diversity {res['diversity']:.3f} (real {res['diversity_real']:.3f}); "
                  f"Fréchet distance {res['frechet_distance']:.3f}" + (f"; written -> {out}" if out else ""))
