"""One inference path: uint8 images -> class probabilities, with a checkpoint's recorded preprocessing.

Evaluation, verification experts, pseudo-labelling, synthetic-set metrics, `fersynth predict`, the
app and the benchmarks all score images through `Predictor`, so a model trained with histogram
equalisation and mirror TTA is always judged with them. The steps, as recorded in the checkpoint's
JSON (`preprocessing`):

1. bring the image into the training data's domain (`source_shape`: the packed cache's size and
   colour; OpenCV BT.601 grey, area / bilinear resize) when it is not already there;
2. histogram equalisation or CLAHE (`equalize`);
3. scale to [-1, 1] (`normalize`: x/127.5-1), resize to the model's `img_size`, `in_chans` channels;
4. softmax; with `tta`, the mean over the image and its mirror.

A fersynth checkpoint runs in PyTorch; an exported `.onnx` file (`fersynth export`, the same
metadata in the file) runs in ONNX Runtime with the same steps around it. Training code is not
imported here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from fersynth.data.pixels import batches
from fersynth.errors import FersynthError

if TYPE_CHECKING:
    import pandas as pd

ONNX_META_KEY = "fersynth"


# --------------------------------------------------------------------------- preprocessing
def equalize_pixels(pixels: np.ndarray, method: str) -> np.ndarray:
    """Histogram equalisation applied once to packed uint8 pixels (train and inference alike); for
    memory-mapped pixels it is applied to each batch as it is read (the same result)."""
    if method == "none":
        return pixels
    from fersynth.data.pixels import MapRows, is_lazy
    from fersynth.quality.enhance import clahe, equalize_hist

    fn = equalize_hist if method == "equalize" else clahe
    return MapRows(pixels, fn) if is_lazy(pixels) else fn(pixels)


def to_model_input(batch_u8: torch.Tensor, img_size: int, in_chans: int) -> torch.Tensor:
    """uint8 (N,H,W) or (N,H,W,3) -> float (N,C,S,S) normalised to [-1, 1]."""
    x = batch_u8
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    x = x.float().div_(127.5).sub_(1.0)
    if x.shape[1] != in_chans:
        x = x.mean(1, keepdim=True) if in_chans == 1 else x.expand(-1, in_chans, -1, -1)
    if x.shape[-1] != img_size or x.shape[-2] != img_size:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > img_size)
    return x.contiguous()


def to_domain(pixels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """uint8 (N,H,W[,3]) -> (N,*shape): OpenCV grey or grey-to-RGB, area (shrink) or bilinear resize.
    Pixels already in that shape are returned untouched."""
    shape = tuple(int(s) for s in shape)
    if tuple(pixels.shape[1:]) == shape:
        return pixels
    gray, (h, w) = len(shape) == 2, shape[:2]
    out = np.empty((len(pixels), *shape), np.uint8)
    for i, im in enumerate(pixels):
        if gray and im.ndim == 3:
            im = cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2GRAY)
        elif not gray and im.ndim == 2:
            im = np.repeat(im[..., None], 3, axis=2)
        if im.shape[:2] != (h, w):
            shrink = im.shape[0] > h or im.shape[1] > w
            im = cv2.resize(np.ascontiguousarray(im), (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        out[i] = im
    return out


@dataclass(frozen=True)
class Preprocessing:
    """What a checkpoint's training did to an image before the model saw it."""

    img_size: int
    in_chans: int
    equalize: str = "none"  # none | equalize | clahe
    tta: bool = False  # mean over the image and its mirror
    source_shape: tuple[int, ...] | None = None  # (H, W) grey or (H, W, 3): the packed cache trained on

    @classmethod
    def from_meta(cls, meta: dict) -> Preprocessing:
        """From a checkpoint's JSON; checkpoints older than `preprocessing` fall back to their config."""
        pre = meta.get("preprocessing") or {}
        cfg = meta.get("config") or {}
        eq = pre.get("equalize", (cfg.get("augment") or {}).get("equalize", "none"))
        if eq not in ("none", "equalize", "clahe"):
            raise FersynthError(f"checkpoint preprocessing: unknown equalize '{eq}'", hint="none, equalize or clahe")
        shape = pre.get("source_shape")
        return cls(int(meta["img_size"]), int(meta["in_chans"]), eq, bool(pre.get("tta", cfg.get("tta", False))),
                   tuple(int(s) for s in shape) if shape else None)

    def to_dict(self) -> dict:
        return {"equalize": self.equalize, "normalize": "x/127.5-1", "tta": self.tta,
                "source_shape": list(self.source_shape) if self.source_shape else None}

    def prepare(self, pixels: np.ndarray) -> np.ndarray:
        """Steps 1-2: uint8 pixels in the training data's domain, equalised as in training."""
        x = np.ascontiguousarray(pixels)
        if self.source_shape:
            x = to_domain(x, self.source_shape)
        return np.ascontiguousarray(equalize_pixels(x, self.equalize))

    def prepare_one(self, img: np.ndarray) -> np.ndarray:
        """One image of any size and colour -> a (1, *domain) batch, so mixed files can be stacked."""
        img = np.asarray(img)
        if img.dtype != np.uint8 or img.ndim not in (2, 3):
            raise FersynthError(f"an image must be uint8 (H,W) or (H,W,3), got {img.dtype} {img.shape}")
        if img.ndim == 3 and img.shape[2] == 4:
            img = img[..., :3]
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[..., 0]
        shape = self.source_shape or ((self.img_size, self.img_size) if self.in_chans == 1 else (self.img_size,) * 2 + (3,))
        return to_domain(img[None], shape)

    def tensor(self, pixels: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
        """Steps 1-3: the model's float input (N, in_chans, img_size, img_size)."""
        return to_model_input(torch.from_numpy(self.prepare(pixels)).to(device), self.img_size, self.in_chans)


# --------------------------------------------------------------------------- the predictor
def check_pixels(pixels) -> np.ndarray:
    """The images as given when they are a uint8 batch; memory-mapped sets stay on disk."""
    from fersynth.data.pixels import is_lazy

    x = pixels if is_lazy(pixels) else np.asarray(pixels)
    if x.dtype != np.uint8:
        raise FersynthError(f"images must be uint8 pixels, got {x.dtype}", hint="pass the packed uint8 array")
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 3)):
        raise FersynthError(f"images must be (N,H,W) or (N,H,W,3), got shape {x.shape}",
                            hint="add a batch axis for a single image: pixels[None]")
    return x


def resolve_device(device: str | None) -> str:
    """`auto` / None: the GPU when there is one, else the CPU."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FersynthError(f"--device {device}: no CUDA GPU is available here", hint="use --device cpu or auto")
    try:
        torch.device(device)
    except RuntimeError:
        raise FersynthError(f"unknown device '{device}'", hint="use auto, cpu, cuda or cuda:N") from None
    return device


class Predictor:
    """A model plus its preprocessing: `predict_proba(pixels)` gives (N, K) probabilities in the
    model's class order (`classes`); `predict(images_or_paths)` a DataFrame."""

    def __init__(self, model, classes: Sequence[str], pre: Preprocessing, name: str = "model",
                 device: str | None = "cpu", meta: dict | None = None):
        self.model, self.classes, self.pre, self.name = model, list(classes), pre, name
        self.device = resolve_device(device)
        self.meta = meta or {}
        self.backend = "onnx" if not isinstance(model, torch.nn.Module) else "torch"
        if self.backend == "torch":
            self.model.to(self.device).eval()

    # ---- loading
    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> Predictor:
        """A fersynth run directory, a checkpoint (.safetensors / .json) or an exported .onnx file."""
        p = Path(path)
        if p.suffix.lower() == ".onnx":
            return cls._load_onnx(p, device)
        from fersynth.checkpoint import load_checkpoint, resolve_checkpoint_path

        ck = load_checkpoint(path, device="cpu")
        res = resolve_checkpoint_path(path)
        name = p.name if p.is_dir() else f"{res.parent.name}/{res.stem}"
        return cls.from_checkpoint(ck, device=device, name=name)

    @classmethod
    def from_checkpoint(cls, ckpt, device: str | None = None, name: str = "model") -> Predictor:
        return cls(ckpt.model, ckpt.classes, Preprocessing.from_meta(ckpt.meta), name, device, ckpt.meta)

    @classmethod
    def _load_onnx(cls, path: Path, device: str | None) -> Predictor:
        if not path.is_file():
            raise FersynthError(f"{path}: no such ONNX file", hint="write one with `fersynth export RUN --onnx FILE`")
        try:
            import onnxruntime as ort
        except ImportError:
            raise FersynthError("running .onnx models needs onnxruntime", hint="pip install 'fersynth[onnx]'") from None
        device = resolve_device(device)
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            sess = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for corrupt files
            raise FersynthError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0][:160]})") from None
        raw = sess.get_modelmeta().custom_metadata_map.get(ONNX_META_KEY)
        try:
            meta = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            meta = None
        if not meta or "classes" not in meta:
            raise FersynthError(f"{path}: no fersynth metadata in this ONNX file",
                                hint="export it with `fersynth export RUN --onnx FILE`")
        return cls(OnnxModel(sess), meta["classes"], Preprocessing.from_meta(meta), path.name, device, meta)

    # ---- inference
    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.model(x).float().softmax(1)
        if self.pre.tta:
            p = (p + self.model(x.flip(-1)).float().softmax(1)) / 2
        return p

    def predict_proba(self, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(N, K) float32 probabilities in `classes` order for uint8 (N,H,W) or (N,H,W,3) images."""
        x = check_pixels(pixels)
        out = [self._forward(self.pre.tensor(block, self.device)).cpu() for _, block in batches(x, max(1, batch_size))]
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.classes)), np.float32)

    @torch.inference_mode()
    def features(self, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Penultimate features (the input of the last Linear layer) of the preprocessed images."""
        if self.backend != "torch":
            raise FersynthError("features need the PyTorch checkpoint, not an ONNX file")
        last = [m for m in self.model.modules() if isinstance(m, torch.nn.Linear)]
        if not last:
            raise FersynthError(f"{self.name}: the model has no Linear layer to take features from")
        x, got = check_pixels(pixels), []
        h = last[-1].register_forward_hook(lambda mod, inp, out: got.append(inp[0].detach().float().flatten(1).cpu()))
        try:
            for _, block in batches(x, max(1, batch_size)):  # in-memory blocks, also of a memory-mapped set
                self.model(self.pre.tensor(block, self.device))
        finally:
            h.remove()
        return torch.cat(got).numpy().astype(np.float64) if got else np.zeros((0, 0))

    def predict(self, images, batch_size: int = 256) -> pd.DataFrame:
        """Images (a uint8 batch, or a list of file paths / uint8 arrays) -> one row each:
        `path` (for files), `p_<class>` per class, `label` and `confidence`."""
        import pandas as pd

        paths = None
        if isinstance(images, np.ndarray):
            pixels = check_pixels(images)
        else:
            items = list(images)
            paths = [str(i) if isinstance(i, (str, os.PathLike)) else None for i in items]
            arrays = [read_image(i) if p is not None else np.asarray(i) for i, p in zip(items, paths)]
            pixels = np.concatenate([self.pre.prepare_one(a) for a in arrays]) if arrays else None
        probs = self.predict_proba(pixels, batch_size) if pixels is not None else np.zeros((0, len(self.classes)))
        df = pd.DataFrame({f"p_{c}": probs[:, j] for j, c in enumerate(self.classes)})
        if paths is not None:
            df.insert(0, "path", paths)
        df["label"] = [self.classes[j] for j in probs.argmax(1)] if len(probs) else []
        df["confidence"] = probs.max(1) if len(probs) else []
        return df

    def __repr__(self) -> str:
        return f"Predictor({self.name!r}, backend={self.backend}, classes={self.classes}, {self.pre})"


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A file -> uint8 RGB or grey, or a FersynthError naming it."""
    from fersynth.data.decode import decode_one

    try:
        return decode_one(str(path))
    except (ValueError, FileNotFoundError) as e:
        raise FersynthError(f"{path}: {e}") from None


class OnnxModel:
    """An onnxruntime session called like a torch module: float (N,C,S,S) tensor in, logits out."""

    def __init__(self, session):
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(out)
