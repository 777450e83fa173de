"""Options shared by several command groups."""

from __future__ import annotations

import json
import sys

import typer

from fersynth.atomic import json_default as _json_default
from fersynth.atomic import write_json_atomic  # noqa: F401  (re-exported for the CLI modules)
from fersynth.data.formats import IngestOptions
from fersynth.labels import parse_class_map

FormatOpt = typer.Option(None, "--format", "-f", help="Dataset format (default: detect). See `fersynth data formats`.")
SizeOpt = typer.Option(None, "--size", help="Resize every image to SIZE x SIZE.")
SkipBadOpt = typer.Option(False, "--skip-bad", help="Skip unreadable images / malformed rows and report them.")
ClassMapOpt = typer.Option(None, "--class-map", help="Map a folder name to a class: NAME=CLASS (repeatable).")
ModeOpt = typer.Option("auto", "--color", help="auto | gray | rgb")
ImagesOpt = typer.Option(None, "--images", help="FER+: the FER2013 images (folder or fer2013.csv).")
PhotosOpt = typer.Option("face", "--photos", help="Images not of the dataset's size: face (crop the largest face;"
                         " faceless ones are dropped and counted) | resize (whole image, with --size) | refuse.")


def ingest_options(size, skip_bad, class_map, mode, images=None, photos="face") -> IngestOptions:
    return IngestOptions(size=size, mode=mode, skip_bad=skip_bad,
                         class_map=parse_class_map(class_map or []), images=images, photos=photos)


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=_json_default)
    sys.stdout.write("\n")
