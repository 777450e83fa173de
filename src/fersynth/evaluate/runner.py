"""Evaluate a checkpoint on a manifest's rows: the `fersynth eval` entry point as a function."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from fersynth.data.manifest import Manifest
from fersynth.errors import FersynthError
from fersynth.faults import kill_point
from fersynth.labels import CLASSES


def select_rows(manifest: Manifest, split: str = "test", subsets: list[str] | None = None) -> Manifest:
    if split not in ("train", "val", "test", "all"):
        raise FersynthError(f"--split '{split}' is not train, val, test or all")
    m = manifest if split == "all" else manifest.where(split=split)
    if subsets:
        known = set(manifest.df["subset"].unique())
        missing = [s for s in subsets if s not in known]
        if missing:
            raise FersynthError(f"subset {missing[0]!r} is not in the data", hint=f"subsets: {', '.join(sorted(map(str, known)))}")
        m = m.where(subset=list(subsets))
    if len(m) == 0:
        raise FersynthError(f"no rows with split '{split}'" + (f" and subset {subsets}" if subsets else ""),
                            hint="choose --split / --subset that exist (see `fersynth data inspect`)")
    return m


def predict_manifest(ckpt, manifest: Manifest, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (model's class order) for every row, through the checkpoint's `Predictor`."""
    from fersynth.predictor import Predictor

    return Predictor.from_checkpoint(ckpt, device="auto").predict_proba(manifest.pixels, batch_size)


def evaluate_checkpoint(ckpt_path: str | os.PathLike, manifest: Manifest, split: str = "test",
                        subsets: list[str] | None = None, n_boot: int = 1000, seed: int = 0,
                        out_dir: str | os.PathLike | None = None, ferplus: bool = False,
                        label_map: dict[str, str] | None = None, report_unseen: bool = False) -> dict:
    """Score a checkpoint on `split`/`subsets` rows. Data classes the model lacks are an error unless
    they are mapped (`label_map`, e.g. {'contempt': 'neutral'}) or `report_unseen` lists them apart."""
    from fersynth.checkpoint import load_checkpoint
    from fersynth.evaluate.metrics import evaluate_predictions, fer_plus_metrics

    ckpt = load_checkpoint(ckpt_path)
    rows = select_rows(manifest, split, subsets)
    rows = rows.select(rows.df["label"].to_numpy() >= 0) if not ferplus else rows
    if label_map:
        lab = rows.labels.copy()
        for src, dst in label_map.items():
            lab[rows.labels == CLASSES.index(src)] = CLASSES.index(dst)
        rows = Manifest(rows.df.assign(label=lab), rows.pixels, rows.root, rows.meta)
    present = {CLASSES[i] for i in np.unique(rows.labels) if i >= 0}
    unseen = sorted(present - set(ckpt.classes), key=CLASSES.index)
    if unseen and not report_unseen:
        raise FersynthError(
            f"class-count mismatch: the data has {', '.join(unseen)} but the checkpoint knows only {len(ckpt.classes)} classes",
            hint=f"map them (--map {unseen[0]}=CLASS) or pass --report-unseen to score the rest and list them apart",
        )
    if len(rows) == 0:
        raise FersynthError("no labelled rows to evaluate")
    probs = predict_manifest(ckpt, rows)
    model_classes = ckpt.classes
    data_classes = list(CLASSES[: max(manifest.num_classes, len(model_classes))])
    labelled = rows.df["label"].to_numpy() >= 0
    res = evaluate_predictions(rows.labels[labelled], probs[labelled], data_classes, ids=rows.df["id"][labelled].tolist(),
                               n_boot=n_boot, seed=seed, model_classes=model_classes)
    res["checkpoint"] = str(ckpt_path)
    res["architecture"] = ckpt.meta["architecture"]
    res["data"] = {"dataset": str(rows.df["dataset"].iloc[0]), "split": split, "subsets": subsets, "rows": len(rows)}
    if ferplus:
        if "ferplus_votes" not in rows.df.columns:
            raise FersynthError("--ferplus needs FER+ votes in the data", hint="evaluate on the ingested ferplus folder")
        votes = np.stack(rows.df["ferplus_votes"].map(np.asarray).to_list())[:, :8]
        perm = [CLASSES.index(n) for n in ("neutral", "happy", "surprise", "sad", "angry", "disgust", "fear", "contempt")]
        canon = np.zeros_like(votes)
        canon[:, perm] = votes
        res["ferplus"] = fer_plus_metrics(canon, probs, model_classes=model_classes)
    if out_dir is not None:
        _write_outputs(Path(out_dir), res, rows, probs, model_classes)
    return res


def _write_outputs(out: Path, res: dict, rows: Manifest, probs: np.ndarray, model_classes: list[str]) -> None:
    from fersynth.atomic import atomic_open, write_json_atomic
    from fersynth.evaluate.plots import plot_confusion

    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(res, out / "metrics.json")
    kill_point("eval-outputs")
    pred = pd.DataFrame({"id": rows.df["id"], "path": rows.df["path"], "subset": rows.df["subset"],
                         "label": rows.df["label"], "pred": np.asarray(model_classes)[probs.argmax(1)]})
    pred["label"] = [CLASSES[i] if i >= 0 else "" for i in pred["label"]]
    for j, c in enumerate(model_classes):
        pred[f"p_{c}"] = probs[:, j].round(5)
    with atomic_open(out / "predictions.csv", "w", newline="") as f:
        pred.to_csv(f, index=False)
    cm = res["confusion_matrix"]
    plot_confusion(cm, cm["labels"], out / "confusion.png", normalized=True, title=f"{res['architecture']}: row-normalised")
    plot_confusion(cm, cm["labels"], out / "confusion_counts.png", normalized=False, title=f"{res['architecture']}: counts")
