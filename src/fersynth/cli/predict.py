"""`fersynth predict MODEL INPUT...` and `fersynth export MODEL --onnx OUT.onnx`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from fersynth.errors import FersynthError


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
    app.command("export")(export)


def predict(
    model: Path = typer.Argument(..., help="A fersynth run directory or checkpoint, or an exported .onnx file."),
    inputs: list[str] = typer.Argument(..., help="Images, folders (recursive), globs ('faces/**/*.jpg') and videos."),
    out: Path = typer.Option(None, "--out", "-o", help="Table to write: .csv, .parquet or .jsonl (default: CSV on stdout)."),
    fmt: str = typer.Option(None, "--format", help="csv | parquet | jsonl (default: from --out's extension)."),
    every: int = typer.Option(1, "--every", help="Videos: score every N-th frame."),
    all_faces: bool = typer.Option(False, "--all-faces", help="Score every detected face, not only the largest."),
    no_detect: bool = typer.Option(False, "--no-detect", help="Inputs are face crops: score the whole (centre-square) image."),
    margin: float = typer.Option(0.2, "--margin", help="Border added around a detected face, as a fraction of its side."),
    min_face: float = typer.Option(0.1, "--min-face", help="Smallest face searched for, as a fraction of the image side."),
    annotate: Path = typer.Option(None, "--annotate", help="Write copies with boxes and labels here (PNG per image, .avi per video)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Faces scored per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar (on a terminal, with --out)."),
) -> None:
    """Class probabilities for every face in images and videos: one row per face per frame
    (file, frame, time, face, box, p_<class>..., label, confidence). A frame without a face
    gives one row with face -1 and empty scores."""
    from fersynth.predict import output_format, predict_files, write_rows
    from fersynth.predictor import Predictor

    kind = output_format(out, fmt)
    if out is None and kind == "parquet":
        raise FersynthError("Parquet cannot go to stdout", hint="pass --out FILE.parquet")
    if not 0 <= margin <= 1:
        raise FersynthError(f"--margin {margin} out of range", hint="use 0..1")
    pred = Predictor.load(model, device=device)
    df = predict_files(pred, inputs, every=every, detect=not no_detect, all_faces=all_faces, margin=margin,
                       min_face=min_face, batch_size=batch_size, annotate=annotate,
                       progress=progress and out is not None and sys.stdout.isatty())  # the bar draws on stdout
    if out is None:
        if kind == "csv":
            df.to_csv(sys.stdout, index=False)
        else:
            df.to_json(sys.stdout, orient="records", lines=True)
            sys.stdout.write("\n")
        return
    write_rows(df, out, kind)
    faces = int((df["face"] >= 0).sum())
    print(f"{len(df)} rows ({faces} faces, {df['file'].nunique()} files) -> {out}", file=sys.stderr)


def export(
    model: Path = typer.Argument(..., help="A fersynth run directory or checkpoint."),
    onnx: Path = typer.Option(..., "--onnx", help="The .onnx file to write."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version."),
    atol: float = typer.Option(1e-4, "--atol", help="Largest allowed probability difference in the parity check."),
) -> None:
    """Export a checkpoint to ONNX (dynamic batch) and check it against PyTorch on demo faces."""
    from fersynth.export import export_onnx

    rep = export_onnx(model, onnx, opset=opset, atol=atol)
    print(f"{onnx}: parity on {rep['images']} demo faces (batches {rep['batch_sizes']}): "
          f"max |p_onnx - p_torch| = {rep['max_abs_diff']:.2e} (limit {atol:g})")
