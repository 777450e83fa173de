"""`fersynth generate own|sd|merge|pseudolabel|metrics`: images from a registered generator's spec."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from fersynth.cli.common import FormatOpt, SizeOpt
from fersynth.errors import FersynthError

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)

generate_app = typer.Typer(help="Generate synthetic expression images with provenance.", no_args_is_help=True)

# Options every generate command shares: where to write, target domain, work split.
OutOpt = typer.Option(..., "--out", "-o", help="Run directory (re-run the same command to resume).")
DomainSizeOpt = typer.Option(48, "--domain-size", help="Side of the written images (the target dataset's size).")
ColorOpt = typer.Option("gray", "--color", help="gray | rgb for the written images.")
DetectOpt = typer.Option(False, "--detect-face/--no-detect-face",
                         help="Detect a face (OpenCV Haar cascade), crop to it; images without one are dropped.")
SeedOpt = typer.Option(0, "--seed", help="Base seed; each image gets its own seed derived from it.")
ShardOpt = typer.Option(None, "--shard-size", help="Images per shard (the unit of resume and of work split). [default: 64]")
DeviceOpt = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N.")
DatasetOpt = typer.Option(None, "--dataset", help="Dataset name for the rows (default: the generator's name).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar.")


def register(app: typer.Typer) -> None:
    from fersynth.cli import generator

    generator.register(app)
    app.add_typer(generate_app, name="generate")


def _domain(size: int, color: str, detect: bool):
    from fersynth.faces.convert import DomainSpec

    if color not in ("gray", "rgb"):
        raise FersynthError(f"--color '{color}' is not gray or rgb")
    return DomainSpec(size=size, gray=color == "gray", detect_face=detect)


def load_real(data: Path, format, size):
    from fersynth.cli.common import ingest_options
    from fersynth.data.ingest import load_any

    m, _ = load_any(data, format, ingest_options(size, False, None, "auto"), progress=True)
    return m


def _names(items: list[str] | None) -> list[str] | None:
    """Repeatable, comma-separated class options as one list (None when not given)."""
    return [p.strip() for it in items for p in it.split(",") if p.strip()] if items else None


def _report(summary: dict, out: Path) -> None:
    if summary["manifest"] is None:
        console.print(f"this process finished its shards ({summary['generated_now']} images); "
                      "the main process merges")
        return
    rate = summary.get("images_per_second")
    console.print(
        f"{summary['written']} of {summary['requested']} images written"
        f" ({summary['dropped_no_face']} dropped without a face; {summary['generated_now']} generated now"
        + (f", {rate:.2f} img/s" if rate else "") + f") -> {out}"
    )


def _class_cfg(items: list[str] | None) -> dict[str, float]:
    """--class-cfg CLASS=SCALE items as {class name: scale} (names are checked by the spec)."""
    out: dict[str, float] = {}
    for it in items or []:
        name, sep, val = it.partition("=")
        try:
            out[name.strip()] = float(val)
        except ValueError:
            raise FersynthError(f"--class-cfg '{it}': expected CLASS=SCALE, e.g. disgust=4") from None
    return out


def _generate(kind: str, values: dict, out: Path, data: Path | None, classifier: Path | None, domain,
              dataset: str | None, quiet: bool, format, size) -> None:
    """Validate the options as the generator's spec and run it as a study's image stage does."""
    from fersynth.generate.base import run_generation
    from fersynth.generate.registry import generation_spec, prepare_generation

    spec = generation_spec(kind, {k: v for k, v in values.items() if v is not None}, where=f"generate {kind}")
    real = load_real(data, format, size) if data is not None and spec.mode in ("expand", "edit") else None
    gen, items = prepare_generation(spec, real, classifier=classifier)
    summary = run_generation(gen, items, out, domain=domain, dataset=dataset or kind,
                             settings=spec.model_dump(mode="json", exclude={"train"}), shard_size=spec.shard_size,
                             batch_size=spec.batch_size, progress=not quiet)
    _report(summary, out)


# Options both generators share (the spec's fields; None leaves the spec's default).
ModeOpt = typer.Option("sample", "--mode", "-m", help="sample | expand | edit | guided")
DataOpt = typer.Option(None, "--data", "-d", help="Real images for expand / edit (train rows only).")
PerClassOpt = typer.Option(100, "--per-class", help="sample / guided: images per class.")
ClassOpt = typer.Option(None, "--class", help="Only these classes (repeatable or comma-separated).")
KOpt = typer.Option(5, "--k", help="expand: variants per real image.")
TargetOpt = typer.Option(None, "--target", help="edit: target class(es); default every other class.")
SourcesOpt = typer.Option(None, "--sources-per-class", help="expand / edit: real images per class (seeded pick).")
ClassifierOpt = typer.Option(None, "--classifier", help="guided: fersynth FER checkpoint (run dir or .safetensors).")
GuidanceStartOpt = typer.Option(0.5, "--guidance-start", help="guided: fraction of steps before guidance starts.")
GenSizeOpt = typer.Option(None, "--gen-size", help="Side the model generates at (default: its own).")
BatchOpt = typer.Option(None, "--batch-size", help="Images per forward pass. [default: the spec's, 50]")


@generate_app.command("own")
def own(
    weights: Path = typer.Option(..., "--weights", "-w", help="Folder written by `fersynth generator train`."),
    mode: str = ModeOpt, out: Path = OutOpt, data: Path = DataOpt, per_class: int = PerClassOpt,
    classes: list[str] = ClassOpt, k: int = KOpt,
    strength: float = typer.Option(0.5, "--strength", help="expand / edit: how far the real image is noised (0..1]."),
    target: list[str] = TargetOpt, sources_per_class: int = SourcesOpt, classifier: Path = ClassifierOpt,
    guidance: float = typer.Option(0.1, "--guidance", help="guided: step size of the classifier's normalised gradient on x0."),
    guidance_start: float = GuidanceStartOpt,
    cfg_scale: float = typer.Option(2.0, "--cfg", help="Classifier-free guidance scale (1 = conditional only)."),
    class_cfg: list[str] = typer.Option(None, "--class-cfg",
                                        help="Per-class guidance scale CLASS=SCALE (repeatable), e.g. disgust=4."),
    scheduler: str = typer.Option("ddpm", "--scheduler", help="ddpm | ddim | dpmsolver"),
    steps: int = typer.Option(25, "--steps", help="Denoising steps."),
    gen_size: int = GenSizeOpt,
    domain_size: int = DomainSizeOpt, color: str = ColorOpt, detect: bool = DetectOpt,
    seed: int = SeedOpt, batch_size: int = BatchOpt, shard_size: int = ShardOpt, device: str = DeviceOpt,
    dataset: str = DatasetOpt, quiet: bool = QuietOpt,
    format: str = FormatOpt, size: int = SizeOpt,
) -> None:
    """Sample, expand, edit or classifier-guide images with the own diffusion model."""
    values = dict(weights=str(weights), mode=mode, per_class=per_class, classes=_names(classes), k=k,
                  strength=strength, targets=_names(target), sources_per_class=sources_per_class, guidance=guidance,
                  guidance_start=guidance_start, cfg_scale=cfg_scale, cfg_scale_per_class=_class_cfg(class_cfg),
                  scheduler=scheduler, steps=steps, gen_size=gen_size, seed=seed, batch_size=batch_size,
                  shard_size=shard_size, device=device)
    _generate("own", values, out, data, classifier, _domain(domain_size, color, detect), dataset, quiet, format, size)


@generate_app.command("merge")
def merge(out: Path = typer.Argument(..., help="Generation run directory.")) -> None:
    """Merge the finished shards of a (multi-process) generation run; refuses while any is unfinished."""
    from fersynth.generate.base import merge_shards

    m = merge_shards(out)
    console.print(f"{len(m)} images -> {out / 'manifest'}")


@generate_app.command("sd")
def sd(
    model: Path = typer.Option(..., "--model", help="Local diffusers folder or single .safetensors checkpoint."),
    mode: str = ModeOpt, out: Path = OutOpt,
    arch: str = typer.Option(None, "--arch", help="sd | sdxl | sd3 (needed for a single-file checkpoint)."),
    config: Path = typer.Option(None, "--config", help="Single file: local diffusers folder with the model's configs."),
    data: Path = DataOpt, per_class: int = PerClassOpt, classes: list[str] = ClassOpt,
    sampling: str = typer.Option("balanced", "--sampling", help="Prompt attributes: balanced | factorial | random."),
    no_attributes: bool = typer.Option(False, "--no-attributes", help="Emotion phrases only, no attribute grid."),
    no_aus: bool = typer.Option(False, "--no-aus", help="Leave the action units out of the prompts."),
    negative: str = typer.Option(None, "--negative", help="Negative prompt (default: the builder's)."),
    k: int = KOpt, strength: float = typer.Option(0.5, "--strength", help="expand / edit: img2img strength (0..1]."),
    target: list[str] = TargetOpt, sources_per_class: int = SourcesOpt, classifier: Path = ClassifierOpt,
    guidance: float = typer.Option(0.05, "--guidance", help="guided: step on the prompt embedding (RMS units)."),
    guidance_start: float = GuidanceStartOpt,
    cfg_scale: float = typer.Option(7.0, "--cfg", help="Classifier-free guidance scale."),
    scheduler: str = typer.Option(None, "--scheduler", help="ddim | ddpm | dpmsolver | euler | euler_a | pndm | flow_euler"),
    steps: int = typer.Option(30, "--steps"), gen_size: int = GenSizeOpt,
    dtype: str = typer.Option("float32", "--dtype", help="float32 | float16 | bfloat16"),
    domain_size: int = DomainSizeOpt, color: str = ColorOpt,
    detect: bool = typer.Option(True, "--detect-face/--no-detect-face",
                                help="Detect and crop the face (OpenCV Haar); images without one are dropped."),
    seed: int = SeedOpt, batch_size: int = typer.Option(4, "--batch-size"), shard_size: int = ShardOpt,
    device: str = DeviceOpt, dataset: str = DatasetOpt, quiet: bool = QuietOpt,
    format: str = FormatOpt, size: int = SizeOpt,
) -> None:
    """Text-to-image, img2img expansion / editing, or classifier-guided generation with Stable Diffusion."""
    prompts = {"sampling": sampling, "attributes": not no_attributes, "aus": not no_aus, "negative": negative}
    values = dict(weights=str(model), mode=mode, arch=arch, config=str(config) if config else None, per_class=per_class,
                  classes=_names(classes), k=k, strength=strength, targets=_names(target),
                  sources_per_class=sources_per_class, guidance=guidance, guidance_start=guidance_start,
                  cfg_scale=cfg_scale, scheduler=scheduler, steps=steps, gen_size=gen_size, dtype=dtype, seed=seed,
                  batch_size=batch_size, shard_size=shard_size, device=device, prompts=prompts)
    _generate("sd", values, out, data, classifier, _domain(domain_size, color, detect), dataset, quiet, format, size)


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
    ref = load_real(real, format, size).where(split="train")
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
