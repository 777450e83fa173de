"""`fersynth data ...`: ingest, inspect, quality, leakage, enhance, demo faces, formats."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fersynth.cli.common import (
    ClassMapOpt,
    FormatOpt,
    ImagesOpt,
    ModeOpt,
    PhotosOpt,
    SizeOpt,
    SkipBadOpt,
    ingest_options,
    print_json,
)
from fersynth.errors import FersynthError

app = typer.Typer(help="Load, profile and check datasets.", no_args_is_help=True)
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def load_data(path: Path, format, size, skip_bad, class_map, mode, images=None, quiet=False, photos="face", out=None):
    from fersynth.data.ingest import ingest, load_any

    opts = ingest_options(size, skip_bad, class_map, mode, images, photos)
    if out is not None:  # streamed straight into the manifest folder
        m, report = ingest(path, format, opts, progress=not quiet, out=out)
    else:
        m, report = load_any(path, format, opts, progress=not quiet)
    photo_counts = report.notes.get("photos") if report is not None else None
    if photo_counts and not quiet:
        console.print(f"photos: {photo_counts['converted']} face-cropped to the dataset's size,"
                      f" {photo_counts['no_face']} without a face dropped")
    if report is not None and report.skipped and not quiet:
        console.print(f"[yellow]skipped {len(report.skipped)} item(s):[/]")
        for where, why in report.skipped[:20]:
            console.print(f"  {where}: {why}")
        if len(report.skipped) > 20:
            console.print(f"  ... and {len(report.skipped) - 20} more")
    return m, report


@app.command("formats")
def formats() -> None:
    """List the supported dataset formats (in auto-detection order)."""
    from fersynth.data.formats import list_formats

    t = Table("format", "what", "layout")
    for f in list_formats():
        t.add_row(f.name, f.description, f.layout)
    console.print(t)


@app.command("ingest")
def ingest(
    path: Path = typer.Argument(..., help="Dataset folder or file."),
    out: Path = typer.Option(..., "--out", "-o", help="Manifest directory to write."),
    format: str = FormatOpt, size: int = SizeOpt, skip_bad: bool = SkipBadOpt,
    class_map: list[str] = ClassMapOpt, color: str = ModeOpt, images: str = ImagesOpt, photos: str = PhotosOpt,
) -> None:
    """Read a dataset into a Manifest (Parquet table + packed uint8 pixels). The source is never modified."""
    m, report = load_data(path, format, size, skip_bad, class_map, color, images, photos=photos, out=out)
    console.print(f"{report.format}: {len(m)} images {tuple(m.image_shape)} -> {out}")


@app.command("inspect")
def inspect(
    path: Path = typer.Argument(..., help="Dataset folder/file or manifest directory."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    plot: Path = typer.Option(None, "--plot", help="Write a class-distribution chart (PNG)."),
    no_quality: bool = typer.Option(False, "--no-quality", help="Skip quality scoring."),
    no_duplicates: bool = typer.Option(False, "--no-duplicates", help="Skip duplicate search."),
    radius: int = typer.Option(4, "--radius", help="Near-duplicate Hamming radius (64-bit pHash)."),
    format: str = FormatOpt, size: int = SizeOpt, skip_bad: bool = SkipBadOpt,
    class_map: list[str] = ClassMapOpt, color: str = ModeOpt, images: str = ImagesOpt, photos: str = PhotosOpt,
) -> None:
    """Counts and shares per subset and class, imbalance ratio, quality and duplicate/leakage summaries."""
    from fersynth.data.profile import profile

    m, _ = load_data(path, format, size, skip_bad, class_map, color, images, quiet=json_out, photos=photos)
    _, prof = profile(m, quality=not no_quality, duplicates=not no_duplicates, radius=radius)
    if plot is not None:
        from fersynth.evaluate.plots import plot_class_distribution

        plot_class_distribution(prof["counts"], plot, title=f"{prof['dataset']}: class distribution")
    if json_out:
        print_json(prof)
        return
    _print_profile(prof)
    if plot is not None:
        console.print(f"chart -> {plot}")


def _print_profile(prof: dict) -> None:
    counts = prof["counts"]
    classes = list(next(iter(counts.values())).keys()) if counts else []
    t = Table(title=f"{prof['dataset']}: {prof['rows']} images {tuple(prof['image_shape'])}")
    t.add_column("subset")
    for c in classes:
        t.add_column(c, justify="right")
    t.add_column("total", justify="right")
    t.add_column("imbalance", justify="right")
    for s, row in counts.items():
        tot = sum(row.values())
        cells = [f"{row.get(c, 0)} ({100 * row.get(c, 0) / max(tot, 1):.1f}%)" for c in classes]
        ir = prof["imbalance_ratio"][s]
        t.add_row(s, *cells, str(tot), f"{ir:.1f}" if ir else "-")
    console.print(t)
    q = prof.get("quality")
    if q:
        console.print(
            f"quality: score median {q['q_score']['median']:.3f} (p5 {q['q_score']['p5']:.3f});"
            f" flags: {', '.join(f'{k} {v}' for k, v in q['flags'].items()) or 'none'}"
        )
    d = prof.get("duplicates")
    if d:
        e, n = d["exact"], d["near"]
        console.print(
            f"exact duplicates: {e['groups']} groups ({e['files']} files), {e['groups_train_test']} span train and test,"
            f" {e['test_images_with_train_twin']} test images have a train twin,"
            f" {e['groups_conflicting_labels']} groups carry conflicting labels"
        )
        console.print(
            f"near duplicates: {n['groups']} groups ({n['files']} files), {n['groups_train_test']} span train and test;"
            f" beyond exact twins {n.get('test_images_with_train_near_twin_beyond_exact', 0)} more test images"
            " have a near twin in train"
        )


@app.command("quality")
def quality(
    path: Path = typer.Argument(..., help="Dataset folder/file or manifest directory."),
    out: Path = typer.Option(None, "--out", "-o", help="Manifest directory to write (default: update PATH when it is a manifest)."),
    format: str = FormatOpt, size: int = SizeOpt, skip_bad: bool = SkipBadOpt,
    class_map: list[str] = ClassMapOpt, color: str = ModeOpt,
) -> None:
    """Score every image (sharpness, Fourier detail, contrast, GLCM texture, entropy, combined) and flag bad ones."""
    import pandas as pd

    from fersynth.data.manifest import Manifest, is_manifest_dir
    from fersynth.data.profile import quality_summary
    from fersynth.quality import quality_scores

    if out is None and not is_manifest_dir(path):
        raise FersynthError(f"{path} is a dataset, not a manifest", hint="pass --out DIR to write a new manifest")
    m, _ = load_data(path, format, size, skip_bad, class_map, color)
    df = m.df.drop(columns=[c for c in m.df.columns if c.startswith("q_") or c == "flags"])
    scores = quality_scores(m.pixels)
    m = Manifest(pd.concat([df, scores.reset_index(drop=True)], axis=1), m.pixels, m.root, m.meta)
    target = out or path
    m.save(target)
    q = quality_summary(m.df)
    console.print(f"scored {len(m)} images -> {target}; flags: {q['flags'] or 'none'}")


@app.command("leakage")
def leakage(
    path: Path = typer.Argument(..., help="Dataset folder/file or manifest directory."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    radius: int = typer.Option(4, "--radius", help="Near-duplicate Hamming radius (64-bit pHash)."),
    limit: int = typer.Option(10, "--show", help="Groups to print per kind (tables only)."),
    format: str = FormatOpt, size: int = SizeOpt, skip_bad: bool = SkipBadOpt,
    class_map: list[str] = ClassMapOpt, color: str = ModeOpt,
) -> None:
    """Exact and near-duplicate groups that cross splits or carry conflicting labels."""
    from fersynth.data.duplicates import add_duplicate_columns, leakage_report
    from fersynth.labels import CLASSES

    m, _ = load_data(path, format, size, skip_bad, class_map, color, quiet=json_out)
    m = add_duplicate_columns(m, radius=radius)
    rep = leakage_report(m.df)
    for kind in ("exact_groups", "near_groups"):
        for group in rep[kind]:
            for item in group:
                lab = int(item["label"])
                item["label"] = CLASSES[lab] if lab >= 0 else "unlabelled"
    if json_out:
        print_json(rep)
        return
    s = rep["summary"]
    for kind in ("exact", "near"):
        t = Table(title=f"{kind} duplicates")
        t.add_column("measure")
        t.add_column("value", justify="right")
        for k, v in s[kind].items():
            t.add_row(k, str(v))
        console.print(t)
        for g in rep[f"{kind}_groups"][:limit]:
            console.print("  " + " | ".join(f"{i['path']} ({i['subset']}, {i['label']})" for i in g))


@app.command("enhance")
def enhance(
    path: Path = typer.Argument(..., help="Dataset folder/file or manifest directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Manifest directory to write."),
    method: str = typer.Option("clahe", "--method", help="equalize_hist | clahe | unsharp_mask | denoise | super_resolve"),
    below: float = typer.Option(None, "--below", help="Only enhance images whose q_score is below this."),
    sr_weights: Path = typer.Option(None, "--sr-weights", help="Local SwinIR / Real-ESRGAN weights (method super_resolve)."),
    format: str = FormatOpt, size: int = SizeOpt, skip_bad: bool = SkipBadOpt,
    class_map: list[str] = ClassMapOpt, color: str = ModeOpt,
) -> None:
    """Write a new manifest whose (low-quality) images are enhanced; rows keep parent_id to the original."""
    import numpy as np

    from fersynth.data.manifest import Manifest, pixel_hashes, stable_ids
    from fersynth.quality import enhance as run_enhance
    from fersynth.quality import quality_scores

    m, _ = load_data(path, format, size, skip_bad, class_map, color)
    mask = np.ones(len(m), dtype=bool)
    if below is not None:
        q = m.df["q_score"].to_numpy() if "q_score" in m.df.columns else quality_scores(m.pixels)["q_score"].to_numpy()
        mask = q < below
    kw = {"weights_path": str(sr_weights) if sr_weights else None} if method == "super_resolve" else {}
    new = np.array(m.pixels, copy=True)
    if mask.any():
        res = run_enhance(m.pixels[mask], method, **kw)
        if res.shape[1:] != new.shape[1:]:
            raise FersynthError(f"enhancement changed the image size to {res.shape[1:]}",
                                hint="enhance images at the size you train on, or re-ingest with --size")
        new[mask] = res
    df = m.df.copy()
    df["parent_id"] = df["id"]
    hashes = pixel_hashes(new)
    df["id"], df["pixel_hash"] = stable_ids(hashes), hashes
    df["enhanced"] = mask
    Manifest(df, new, m.root, dict(m.meta, enhanced_with=method)).save(out)
    console.print(f"enhanced {int(mask.sum())} of {len(m)} images with {method} -> {out}")


@app.command("demo")
def demo(
    out: Path = typer.Argument(..., help="Folder to create (image-folder layout)."),
    per_class: int = typer.Option(200, "--per-class", help="Training images per class."),
    test_per_class: int = typer.Option(None, "--test-per-class", help="Test images per class (default per-class/4)."),
    seed: int = typer.Option(0, "--seed"),
    label_noise: float = typer.Option(0.0, "--label-noise", help="Fraction of training labels flipped at random."),
) -> None:
    """Write seeded procedural 48x48 demo faces whose expression drives their geometry."""
    from fersynth.data.demo import write_demo_folder

    if per_class < 1:
        raise FersynthError(f"--per-class must be >= 1, got {per_class}")
    if not 0 <= label_noise < 1:
        raise FersynthError(f"--label-noise must lie in [0, 1), got {label_noise}")
    path = write_demo_folder(out, per_class, seed=seed, test_per_class=test_per_class, label_noise=label_noise)
    console.print(f"demo faces -> {path}")


