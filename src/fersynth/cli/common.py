"""Options shared by several command groups."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import typer

from fersynth.data.formats import IngestOptions
from fersynth.labels import parse_class_map

FormatOpt = typer.Option(None, "--format", "-f", help="Dataset format (default: detect). See `fersynth data formats`.")
SizeOpt = typer.Option(None, "--size", help="Resize every image to SIZE x SIZE.")
SkipBadOpt = typer.Option(False, "--skip-bad", help="Skip unreadable images / malformed rows and report them.")
ClassMapOpt = typer.Option(None, "--class-map", help="Map a folder name to a class: NAME=CLASS (repeatable).")
ModeOpt = typer.Option("auto", "--color", help="auto | gray | rgb")
ImagesOpt = typer.Option(None, "--images", help="FER+: the FER2013 images (folder or fer2013.csv).")


def ingest_options(size, skip_bad, class_map, mode, images=None) -> IngestOptions:
    return IngestOptions(size=size, mode=mode, skip_bad=skip_bad,
                         class_map=parse_class_map(class_map or []), images=images)


def write_json_atomic(obj, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)
    return path


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=_json_default)
    sys.stdout.write("\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
