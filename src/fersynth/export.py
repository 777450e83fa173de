"""`fersynth export RUN --onnx OUT.onnx`: a checkpoint as an ONNX graph with a dynamic batch axis.

The graph maps the model's float input (N, C, S, S) to logits; the checkpoint's metadata
(classes, size, channels, preprocessing) travels in the file's metadata, so `Predictor.load`
runs the same preprocessing, softmax and TTA around ONNX Runtime. Before the file is put in
place, a parity check scores demo faces with PyTorch and with ONNX Runtime (two batch sizes,
so the dynamic axis is exercised) and refuses a difference above the tolerance.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from fersynth.atomic import atomic_path
from fersynth.errors import FersynthError
from fersynth.predictor import ONNX_META_KEY, Predictor


def export_onnx(model_path: str | os.PathLike, out: str | os.PathLike, opset: int = 17, atol: float = 1e-4) -> dict:
    """Write `out` (atomically) and return the parity report."""
    try:
        import onnx
        import onnxruntime  # noqa: F401
    except ImportError:
        raise FersynthError("ONNX export needs onnx and onnxruntime", hint="pip install 'fersynth[onnx]'") from None
    from fersynth.checkpoint import load_checkpoint
    from fersynth.data.demo import make_demo_faces

    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise FersynthError(f"{out}: the output must be a .onnx file")
    ck = load_checkpoint(model_path)
    torch_pred = Predictor.from_checkpoint(ck, device="cpu")
    pre = torch_pred.pre
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        dummy = torch.zeros(2, pre.in_chans, pre.img_size, pre.img_size)
        torch.onnx.export(ck.model.eval(), (dummy,), str(tmp), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                          dynamo=False)
        graph = onnx.load(str(tmp))
        meta = {k: ck.meta[k] for k in ("architecture", "num_classes", "classes", "in_chans", "img_size")}
        meta["preprocessing"] = dict(ck.meta.get("preprocessing") or {}, **pre.to_dict())
        meta["source"] = str(model_path)
        entry = graph.metadata_props.add()
        entry.key, entry.value = ONNX_META_KEY, json.dumps(meta)
        onnx.save(graph, str(tmp))
        report = parity(torch_pred, Predictor._load_onnx(tmp, "cpu"), make_demo_faces(5, seed=123).pixels)
        if report["max_abs_diff"] > atol:
            raise FersynthError(f"{out}: ONNX Runtime differs from PyTorch by {report['max_abs_diff']:.2e} "
                                f"(> {atol:g}) in class probabilities", hint="try another --opset")
    return dict(report, out=str(out), opset=opset, tolerance=atol)


def parity(a: Predictor, b: Predictor, pixels: np.ndarray) -> dict:
    """Max |difference| of two predictors' probabilities, whole batch and in batches of 3."""
    pa = a.predict_proba(pixels)
    diff = max(float(np.abs(pa - b.predict_proba(pixels)).max()),
               float(np.abs(pa - b.predict_proba(pixels, batch_size=3)).max()))
    return {"images": len(pixels), "batch_sizes": [len(pixels), 3], "max_abs_diff": diff,
            "same_labels": bool((pa.argmax(1) == b.predict_proba(pixels).argmax(1)).all())}
