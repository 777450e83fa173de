"""`own`: a class-conditional diffusion model trained on the real training split, no external weights.

A diffusers `UNet2DModel` takes the class through `num_class_embeds` (one extra "null" class
for classifier-free guidance, used for dropped labels during training); DDPM training, sampling
with DDIM / DDPM / DPM-Solver. Modes:

- sample:  N images per class from noise;
- expand:  K variants of each real training image, noised to `strength` then denoised with
           its own class (GIF-style expansion, Zhu 2024);
- edit:    a real training image noised to `strength`, denoised with a target class, so
           identity and pose survive while the expression changes;
- guided:  like sample, but in the later steps a FER classifier's cross-entropy on the
           predicted clean image x0 moves x0 toward the target class (SynFER's semantic
           guidance, applied to x0 because this model has no text embedding).

Training levers (OwnConfig; the defaults keep the original recipe): class-balanced batches
(`class_balance`), bf16 autocast where the hardware computes bf16 natively (`amp`),
v-prediction (`prediction`), min-SNR loss weighting (`snr_gamma`), EMA weights (`ema`).
Sampling takes a per-class guidance scale (`class_cfg`). Named recipes: `OWN_PRESETS`.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fersynth.atomic import atomic_dir, atomic_open, digest
from fersynth.data.manifest import Manifest
from fersynth.errors import FersynthError
from fersynth.faults import kill_point
from fersynth.generate.base import Generator, WorkItem
from fersynth.generate.registry import GenerationSpec, class_index, register_generator
from fersynth.labels import CLASSES

WEIGHTS_META = "fersynth_own.json"
MODES = ("sample", "expand", "edit", "guided")
# DDPM (stochastic, respaced to `steps`) is the default: with a briefly trained model the
# deterministic samplers leave about a third of the samples as unresolved noise (measured on
# the demo model: DDIM 20 steps 33%, DPM-Solver 20 steps 36%, DDPM 25 steps 0%).
SCHEDULERS = ("ddpm", "ddim", "dpmsolver")


class OwnConfig(BaseModel):
    """Architecture and training settings of the own generator (written into the weights folder)."""

    model_config = ConfigDict(extra="forbid")
    size: int = Field(32, ge=8, le=256, description="image side the model is trained at")
    in_channels: int = Field(1, description="1 grayscale, 3 RGB")
    channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = Field(1, ge=1, le=4)
    attention: bool = Field(True, description="self-attention at the lowest resolution")
    num_classes: int | None = Field(None, description="default: the manifest's class count")
    train_timesteps: int = Field(1000, ge=10)
    beta_schedule: str = "squaredcos_cap_v2"
    epochs: int = Field(20, ge=1)
    max_steps: int | None = Field(None, ge=1)
    max_minutes: float | None = Field(None, gt=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(100, ge=0)
    p_uncond: float = Field(0.1, ge=0, lt=1, description="label dropout (classifier-free guidance)")
    ema: float = Field(0.999, ge=0, lt=1, description="decay of the EMA weights that are saved")
    hflip: bool = True
    seed: int = 0
    num_threads: int | None = None
    class_balance: float = Field(0.0, ge=0, le=1, description="batches drawn with weight 1/count^p per class "
                                                              "(0: plain epochs; 1: every class equally often)")
    amp: Literal["no", "bf16", "auto"] = Field("no", description="bf16 autocast, as `fersynth train`'s amp")
    prediction: Literal["epsilon", "v_prediction"] = Field("epsilon", description="what the UNet predicts")
    snr_gamma: float | None = Field(None, gt=0, description="min-SNR-gamma loss weighting (Hang et al. 2023; "
                                                            "5 is usual); None: plain MSE")

    @model_validator(mode="after")
    def _check(self):
        if self.in_channels not in (1, 3):
            raise ValueError("in_channels must be 1 or 3")
        if not self.channels or any(c < 8 for c in self.channels):
            raise ValueError("channels must be a non-empty list of widths >= 8")
        f = 2 ** (len(self.channels) - 1)
        if self.size % f:
            raise ValueError(f"size {self.size} must be a multiple of {f} for {len(self.channels)} levels")
        return self

    def identity(self) -> dict:
        """The config as JSON, without the levers added later while they are at their defaults, so
        that caches and resume states of configs from before them stay valid."""
        d = self.model_dump(mode="json")
        for k, v in LATER_DEFAULTS.items():
            if d.get(k) == v:
                d.pop(k)
        return d


LATER_DEFAULTS = {"class_balance": 0.0, "amp": "no", "prediction": "epsilon", "snr_gamma": None}

# Named recipes for `fersynth generator train --preset NAME` and a study's `generators.<name>.train.preset`.
# Explicit keys override the preset's.
OWN_PRESETS: dict[str, dict] = {
    # FER2013 on a 2-core CPU: the issue-11 levers on top of the study's model (32 px, 32-64-64):
    # class-balanced batches (square-root weights, so disgust is drawn ~6x more often without
    # repeating its 436 faces 40x), bf16 autocast, v-prediction with min-SNR-5 weighting, EMA.
    # 5,305 steps: the length benchmarked (58 min on an idle 2-core Xeon with native bf16,
    # benchmarks/results/own_generator_fer2013_ferplus_agree*.json); the 120-minute budget stops
    # it earlier on a slower or busy machine.
    "fer2013-cpu": {"size": 32, "channels": (32, 64, 64), "batch_size": 64, "lr": 1e-3, "warmup_steps": 200,
                    "epochs": 1000, "max_steps": 5305, "max_minutes": 120.0, "class_balance": 0.5, "amp": "bf16",
                    "prediction": "v_prediction", "snr_gamma": 5.0, "ema": 0.999},
}


def own_config(values: dict | None = None, preset: str | None = None, where: str = "generator config") -> OwnConfig:
    """An OwnConfig from a preset (also given as values['preset']) and explicit values; a bad
    preset name or value is one FersynthError naming `where` and the key."""
    from fersynth.validation import validated

    values = dict(values or {})
    preset = values.pop("preset", None) or preset
    try:
        base = _preset_values(preset)
    except ValueError as e:
        msg, _, hint = str(e).partition(" (")
        raise FersynthError(f"{where} preset: {msg}", hint=hint.rstrip(")") or None) from None
    return validated(OwnConfig, {**base, **values}, where=where)


def _preset_values(preset: str | None) -> dict:
    if preset is None:
        return {}
    if preset not in OWN_PRESETS:
        close = difflib.get_close_matches(str(preset), list(OWN_PRESETS), n=1)
        raise ValueError(f"unknown generator preset '{preset}'"
                         + (f" (did you mean {close[0]}?)" if close else f" (presets: {', '.join(OWN_PRESETS)})"))
    return dict(OWN_PRESETS[preset])


class OwnSpec(GenerationSpec):
    """The own diffusion model in a study (`generators.<name>: {kind: own, ...}`) or from
    `fersynth generate own`: trained on the real training rows unless `weights` is given."""

    kind: Literal["own"] = "own"
    mode: Literal["sample", "expand", "edit", "guided"] = "sample"
    train: OwnConfig = Field(default_factory=OwnConfig,
                             description="OwnConfig fields (size, channels, max_minutes, ...), or `preset: NAME` "
                                         "(e.g. fer2013-cpu) plus overrides; `seed` defaults to the generator's")
    cfg_scale_per_class: dict[str, float] = Field(default_factory=dict,
                                                  description="guidance scale per class name (others: cfg_scale)")
    gen_size: int | None = Field(None, ge=8, description="side generated at (default: as trained)")
    agree_with: str | None = Field(None, description="train only on the rows whose label this labelled set of the same "
                                                     "images agrees with (e.g. the FER+ folder for FER2013)")

    @field_validator("train", mode="before")
    @classmethod
    def _train(cls, v, info):
        if isinstance(v, dict):
            v = dict(v)
            base = _preset_values(v.pop("preset", None))
            v = {**base, **v}
            v.setdefault("seed", info.data.get("seed", 0))
        return v

    @field_validator("cfg_scale_per_class")
    @classmethod
    def _class_cfg(cls, v):
        for name, scale in v.items():
            class_index(name, "cfg_scale_per_class")
            if scale < 0:
                raise ValueError(f"cfg_scale_per_class.{name} must be >= 0")
        return v

    def class_cfg(self) -> dict[int, float]:
        return {class_index(c): float(v) for c, v in self.cfg_scale_per_class.items()}

    def item_params(self, label: int) -> dict:
        p = super().item_params(label)
        p["scheduler"] = self.scheduler or "ddpm"
        p["cfg_scale"] = self.class_cfg().get(label, self.cfg_scale)
        return p

    def train_identity(self) -> dict | None:
        if self.weights:
            return None
        ident = self.train.identity()
        return {**ident, "agree_with": self.agree_with} if self.agree_with else ident

    def train_files(self) -> list[str]:
        return [self.agree_with] if self.agree_with and not self.weights else []


def _groups(channels) -> int:
    return min(32, math.gcd(*channels))


def build_unet(cfg: OwnConfig, num_classes: int):
    from diffusers import UNet2DModel

    n = len(cfg.channels)
    down, up = ["DownBlock2D"] * n, ["UpBlock2D"] * n
    if cfg.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=cfg.size, in_channels=cfg.in_channels, out_channels=cfg.in_channels,
        block_out_channels=tuple(cfg.channels), layers_per_block=cfg.layers_per_block,
        down_block_types=tuple(down), up_block_types=tuple(up), norm_num_groups=_groups(cfg.channels),
        attention_head_dim=min(8, cfg.channels[-1]), class_embed_type=None, num_class_embeds=num_classes + 1,
    )


def resolve_device(device: str) -> torch.device:
    """A torch device; plain `cuda` under torchrun means this process's own GPU (LOCAL_RANK)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FersynthError(f"--device {device}: no CUDA GPU is available here", hint="use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise FersynthError("--device mps: no Apple GPU is available here", hint="use --device cpu")
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    try:
        return torch.device(device)
    except RuntimeError:
        raise FersynthError(f"unknown device '{device}'", hint="use cpu, cuda or cuda:N") from None


def to_unit(pixels: np.ndarray, size: int, channels: int) -> torch.Tensor:
    """uint8 (N,H,W[,3]) -> float (N,C,size,size) in [-1, 1]."""
    from fersynth.data.pixels import batches
    from fersynth.predictor import to_model_input

    out = [to_model_input(torch.from_numpy(np.ascontiguousarray(block)), size, channels) for _, block in batches(pixels, 512)]
    return torch.cat(out)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N,C,H,W) in [-1, 1] -> uint8 (N,H,W) or (N,H,W,3)."""
    u = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    return (u[:, 0] if u.shape[1] == 1 else u.permute(0, 2, 3, 1)).numpy()


def training_rows(manifest: Manifest, num_classes: int) -> Manifest:
    """The real, labelled training rows a generator may learn from (never val or test)."""
    m = manifest.where(split="train")
    if "source" in m.df.columns:
        m = m.where(source="real")
    m = m.select((m.labels >= 0) & (m.labels < num_classes))
    if len(m) == 0:
        raise FersynthError("no labelled real training images to learn from",
                            hint="pass a manifest or dataset with a train split")
    return m


def resume_path(out_dir: str | os.PathLike) -> Path:
    """Where an unfinished `train_own` into `out_dir` keeps its state (beside the weights folder)."""
    out = Path(out_dir)
    return out.with_name(f".{out.name}.resume.pt")


def load_resume_state(state_file: Path, ident: dict) -> dict:
    """The training state saved at `state_file`, refused (one FersynthError) when it is unreadable
    or was saved by a training with another identity (config, data)."""
    try:
        st = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or not a torch file
        raise FersynthError(f"{state_file}: unreadable training state ({type(e).__name__})",
                            hint="delete it to start the training over") from None
    if not isinstance(st, dict) or st.get("ident") != ident:
        raise FersynthError(f"{state_file}: unfinished training with another config or data",
                            hint="train with the same settings to continue it, or delete the file to start over")
    return st


def epoch_order(labels: torch.Tensor, class_balance: float, gen: torch.Generator) -> torch.Tensor:
    """Row order of one epoch: a permutation, or with `class_balance` p > 0, len(labels) rows drawn
    with replacement with weight 1/count^p (p = 1: every class equally often)."""
    if class_balance <= 0:
        return torch.randperm(len(labels), generator=gen)
    counts = torch.bincount(labels).double()
    return torch.multinomial(counts[labels].pow(-class_balance), len(labels), replacement=True, generator=gen)


def snr_weights(alphas_cumprod: torch.Tensor, gamma: float, prediction: str = "epsilon") -> torch.Tensor:
    """min-SNR-gamma loss weight per timestep: min(SNR, gamma) / SNR for noise prediction,
    min(SNR, gamma) / (SNR + 1) for v-prediction (Hang et al. 2023)."""
    ab = alphas_cumprod.double()
    snr = ab / (1 - ab)
    return (snr.clamp(max=gamma) / (snr + 1 if prediction == "v_prediction" else snr)).float()


def train_own(manifest: Manifest, cfg: OwnConfig, out_dir: str | os.PathLike, progress: bool = True,
              device: str = "cpu", resume: bool = True, checkpoint_seconds: float = 300.0,
              stop_after_steps: int | None = None) -> dict | None:
    """Train the class-conditional UNet on the real training rows; write a diffusers weights folder.

    Every `checkpoint_seconds` (and when `stop_after_steps` interrupts it) the whole training
    state, the position in the epoch's permutation and the random generator included, is written
    beside `out_dir`; a later call with the same config and data continues from there and ends
    with the same weights as an uninterrupted run. Returns None when interrupted.
    """
    from diffusers import DDPMScheduler

    from fersynth.train.loop import resolve_precision

    dev = resolve_device(device)
    precision, precision_note = resolve_precision(cfg.amp)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    num_classes = cfg.num_classes or manifest.num_classes
    rows = training_rows(manifest, num_classes)
    x_all = to_unit(rows.pixels, cfg.size, cfg.in_channels)
    y_all = torch.from_numpy(rows.labels.copy())
    torch.manual_seed(cfg.seed)
    unet = build_unet(cfg, num_classes).to(dev)
    ema = build_unet(cfg, num_classes).to(dev)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    sched = DDPMScheduler(num_train_timesteps=cfg.train_timesteps, beta_schedule=cfg.beta_schedule,
                          prediction_type=cfg.prediction, clip_sample=True)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    lr_at = lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps))  # noqa: E731
    sch = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(cfg.seed)
    null = num_classes
    snr_w = snr_weights(sched.alphas_cumprod, cfg.snr_gamma, cfg.prediction) if cfg.snr_gamma else None
    step, history, stopped = 0, [], "steps"
    perm, b0, run_loss, n, elapsed = None, 0, 0.0, 0, 0.0
    state_file = resume_path(out_dir)
    ident = {"config": cfg.identity(), "num_classes": num_classes, "rows": len(rows),
             "data": digest([rows.df["id"].astype(str).tolist(), rows.labels.tolist()])}
    if resume and state_file.is_file():
        st = load_resume_state(state_file, ident)
        unet.load_state_dict(st["unet"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        sch.load_state_dict(st["sch"])
        gen.set_state(st["gen"])
        step, history, perm, b0 = st["step"], st["history"], st["perm"], st["b0"]
        run_loss, n, elapsed, total = st["run_loss"], st["n"], st["elapsed"], st["total"]
    t0 = time.perf_counter() - elapsed
    last_ckpt = time.perf_counter()

    def save_state(perm, b_next, run_loss, n):
        state = {"ident": ident, "unet": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                 "sch": sch.state_dict(), "gen": gen.get_state(), "step": step, "history": history,
                 "perm": perm, "b0": b_next, "run_loss": run_loss, "n": n, "total": total,
                 "elapsed": time.perf_counter() - t0}
        with atomic_open(state_file, "wb") as f:
            torch.save(state, f)

    from fersynth.progress import progress_bar

    with progress_bar(progress, rate=True) as bar:
        task = bar.add_task("own: training", total=total, completed=step, unit="step")
        while step < total:
            if perm is None:  # a new epoch (a resumed run continues the saved one)
                perm = epoch_order(y_all, cfg.class_balance, gen)
                b0, run_loss, n = 0, 0.0, 0
            for b in range(b0, len(perm), cfg.batch_size):
                if step >= total:
                    break
                if stop_after_steps is not None and step >= stop_after_steps:
                    save_state(perm, b, run_loss, n)
                    return None
                if time.perf_counter() - last_ckpt > checkpoint_seconds:
                    save_state(perm, b, run_loss, n)
                    last_ckpt = time.perf_counter()
                idx = perm[b : b + cfg.batch_size]
                x0, y = x_all[idx], y_all[idx].clone()
                if cfg.hflip:
                    flip = torch.rand(len(idx), generator=gen) < 0.5
                    x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
                y[torch.rand(len(idx), generator=gen) < cfg.p_uncond] = null
                noise = torch.randn(x0.shape, generator=gen)
                t = torch.randint(0, cfg.train_timesteps, (len(idx),), generator=gen)
                xt = sched.add_noise(x0, noise, t)
                unet.train()
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    pred = unet(xt.to(dev), t.to(dev), class_labels=y.to(dev)).sample
                target = noise if cfg.prediction == "epsilon" else sched.get_velocity(x0, noise, t)
                if snr_w is not None:
                    per = F.mse_loss(pred.float(), target.to(dev), reduction="none").mean(dim=(1, 2, 3))
                    loss = (per * snr_w[t].to(dev)).mean()
                else:
                    loss = F.mse_loss(pred.float(), target.to(dev))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
                opt.step()
                sch.step()
                d = min(cfg.ema, (1 + step) / (10 + step))
                with torch.no_grad():
                    for pe, p in zip(ema.parameters(), unet.parameters(), strict=True):
                        pe.lerp_(p, 1 - d)
                step += 1
                run_loss += float(loss.detach())
                n += 1
                kill_point("own-train-step")
                bar.update(task, advance=1)
                if cfg.max_minutes and time.perf_counter() - t0 > cfg.max_minutes * 60:
                    stopped = "max_minutes"
                    total = step
                    break
            history.append({"epoch": len(history) + 1, "loss": run_loss / max(n, 1), "steps": step})
            perm = None
    seconds = time.perf_counter() - t0
    info = {
        "format": "fersynth-own/1",
        "config": cfg.model_dump(mode="json"),
        "num_classes": num_classes,
        "classes": list(CLASSES[:num_classes]),
        "null_class": null,
        "train_images": len(rows),
        "train_dataset": str(rows.df["dataset"].iloc[0]),
        "steps": step,
        "stopped": stopped,
        "precision": precision,
        "precision_note": precision_note,
        "train_seconds": round(seconds, 2),
        "device": str(dev),
        "history": history,
    }
    _save_weights(ema, sched, info, Path(out_dir))
    state_file.unlink(missing_ok=True)
    return info


def _save_weights(unet, sched, info: dict, out: Path) -> None:
    import hashlib

    with atomic_dir(out) as tmp:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        sched.save_pretrained(tmp / "scheduler")
        wfile = tmp / "unet" / "diffusion_pytorch_model.safetensors"
        h = hashlib.blake2b(wfile.read_bytes(), digest_size=6).hexdigest()
        info = dict(info, model_id=f"own-{h}")
        (tmp / WEIGHTS_META).write_text(json.dumps(info, indent=2))


def check_weights_dir(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_dir():
        raise FersynthError(f"{p}: no weights folder there", hint="train one with `fersynth generator train`")
    if not (p / WEIGHTS_META).is_file():
        raise FersynthError(f"{p}: not an own-generator weights folder ({WEIGHTS_META} is missing)",
                            hint="pass the --out folder of `fersynth generator train`")
    need = ["unet/config.json", "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"]
    missing = [n for n in need if not (p / n).is_file()]
    if missing:
        raise FersynthError(f"{p}: incomplete weights folder ({', '.join(missing)} missing)",
                            hint="re-run `fersynth generator train` into a new folder")
    try:
        return json.loads((p / WEIGHTS_META).read_text())
    except json.JSONDecodeError as e:
        raise FersynthError(f"{p / WEIGHTS_META}: unreadable ({e})") from None


def make_scheduler(name: str, config: dict):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    table = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler, "dpmsolver": DPMSolverMultistepScheduler}
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=1)
        raise FersynthError(f"unknown scheduler '{name}'",
                            hint=f"did you mean {close[0]}?" if close else f"choose one of {', '.join(table)}")
    return table[name].from_config(config)


class FerClassifier:
    """A fersynth checkpoint used differentiably: [-1, 1] images in, logits over canonical classes out."""

    def __init__(self, path: str | os.PathLike, device: torch.device):
        from fersynth.checkpoint import load_checkpoint

        ck = load_checkpoint(path, device=str(device))
        self.model = ck.model.eval().requires_grad_(False)
        self.in_chans, self.img_size = int(ck.meta["in_chans"]), int(ck.meta["img_size"])
        self.classes = ck.classes
        self.path = str(path)

    def output_index(self, label: int) -> int:
        name = CLASSES[label]
        if name not in self.classes:
            raise FersynthError(f"classifier {self.path} has no class '{name}'",
                                hint=f"its classes: {', '.join(self.classes)}")
        return self.classes.index(name)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_chans:
            x = x.mean(1, keepdim=True) if self.in_chans == 1 else x.expand(-1, self.in_chans, -1, -1)
        if x.shape[-1] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        return self.model(x)


class OwnGenerator(Generator):
    name = "own"

    def __init__(self, weights: str | os.PathLike, *, scheduler: str = "ddpm", steps: int = 25,
                 cfg_scale: float = 2.0, size: int | None = None, device: str = "cpu",
                 source: Manifest | None = None, classifier: str | os.PathLike | None = None,
                 guidance: float = 0.1, guidance_start: float = 0.5, class_cfg: Mapping[int, float] | None = None):
        from diffusers import UNet2DModel

        self.device = resolve_device(device)
        self.info = check_weights_dir(weights)
        self.weights = Path(weights)
        self.model_id = self.info.get("model_id", self.weights.name)
        try:
            self.unet = UNet2DModel.from_pretrained(self.weights / "unet", local_files_only=True,
                                                    use_safetensors=True).to(self.device).eval()
        except (OSError, ValueError, RuntimeError) as e:
            raise FersynthError(f"{self.weights}: cannot load the UNet ({str(e).splitlines()[0][:160]})",
                                hint="the weights folder is damaged; train again") from None
        self.unet.requires_grad_(False)
        self.sched_config = json.loads((self.weights / "scheduler" / "scheduler_config.json").read_text())
        self.scheduler_name = scheduler
        make_scheduler(scheduler, self.sched_config)  # validates the name early
        if steps < 1:
            raise FersynthError(f"--steps must be >= 1, got {steps}")
        self.steps, self.cfg_scale = steps, cfg_scale
        self.class_cfg = {int(c): float(v) for c, v in (class_cfg or {}).items()}
        self.prediction = self.sched_config.get("prediction_type", "epsilon")
        cfg = self.info["config"]
        self.channels = int(cfg["in_channels"])
        factor = 2 ** (len(cfg["channels"]) - 1)
        self.size = int(size or cfg["size"])
        if self.size % factor or self.size < factor * 2:
            raise FersynthError(
                f"this model cannot make {self.size}x{self.size} images",
                hint=f"use a multiple of {factor} (it was trained at {cfg['size']}); "
                     "the output is resized to the target domain anyway",
            )
        self.num_classes = int(self.info["num_classes"])
        self.null = int(self.info["null_class"])
        self.source = source
        self._source_x = None
        self.classifier = FerClassifier(classifier, self.device) if classifier else None
        self.guidance, self.guidance_start = guidance, guidance_start
        for c in self.class_cfg:
            self.check_label(c)

    def check_label(self, label: int) -> None:
        if not 0 <= label < self.num_classes:
            raise FersynthError(f"class {label} is outside this model's {self.num_classes} classes",
                                hint=f"its classes: {', '.join(self.info['classes'])}")

    def _source_batch(self, items: list[WorkItem]) -> torch.Tensor:
        if self.source is None:
            raise FersynthError("expand / edit need the real source images", hint="pass --data")
        if self._source_x is None:
            self._source_x = {}
        idx = [it.parent_index for it in items]
        new = [i for i in set(idx) if i not in self._source_x]
        if new:
            xs = to_unit(self.source.pixels[new], self.size, self.channels)
            self._source_x.update(zip(new, xs, strict=True))
        return torch.stack([self._source_x[i] for i in idx]).to(self.device)

    @torch.no_grad()
    def generate(self, items: list[WorkItem]) -> np.ndarray:
        mode = self.batch_mode(items, MODES)
        for it in items:
            self.check_label(it.label)
        gens = [torch.Generator(self.device).manual_seed(int(it.seed)) for it in items]
        shape = (self.channels, self.size, self.size)
        noise = torch.stack([torch.randn(shape, generator=g, device=self.device) for g in gens])
        sched = make_scheduler(self.scheduler_name, self.sched_config)
        sched.set_timesteps(self.steps, device=self.device)
        timesteps = sched.timesteps
        if mode in ("expand", "edit"):
            strength = float(items[0].params["strength"])
            keep = min(max(int(round(self.steps * strength)), 1), self.steps)
            start = (self.steps - keep) * sched.order
            timesteps = timesteps[start:]
            if hasattr(sched, "set_begin_index"):
                sched.set_begin_index(start)
            x0 = self._source_batch(items)
            x = sched.add_noise(x0, noise, timesteps[:1].repeat(len(items)))
        else:
            x = noise * sched.init_noise_sigma
        labels = torch.tensor([it.label for it in items], device=self.device)
        guided = mode == "guided" and self.classifier is not None and self.guidance > 0
        if mode == "guided" and self.classifier is None:
            raise FersynthError("guided mode needs a FER classifier", hint="pass --classifier CHECKPOINT")
        targets = (torch.tensor([self.classifier.output_index(it.label) for it in items], device=self.device)
                   if guided else None)
        first_guided = int(math.ceil(self.guidance_start * len(timesteps)))
        for i, t in enumerate(timesteps):
            eps = self._eps(sched.scale_model_input(x, t), t, labels)
            if guided and i >= first_guided:
                eps = self._guide(x, eps, t, sched, targets)
            x = sched.step(eps, t, x, generator=gens).prev_sample
        return to_uint8(x)

    def _eps(self, x, t, labels):
        """The guided model output (noise, or velocity for a v-prediction model); the scale is
        `class_cfg[label]` where given, else `cfg_scale`."""
        if self.class_cfg:
            scale = torch.tensor([self.class_cfg.get(int(c), self.cfg_scale) for c in labels.tolist()],
                                 device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
            if bool((scale == 1.0).all()):
                return self.unet(x, t, class_labels=labels).sample
        elif self.cfg_scale == 1.0:
            return self.unet(x, t, class_labels=labels).sample
        else:
            scale = self.cfg_scale
        null = torch.full_like(labels, self.null)
        out = self.unet(torch.cat([x, x]), t, class_labels=torch.cat([labels, null])).sample
        cond, uncond = out.chunk(2)
        return uncond + scale * (cond - uncond)

    def _guide(self, x, out, t, sched, targets):
        ab = sched.alphas_cumprod.to(self.device)[int(t)]
        a, s = ab.sqrt(), (1 - ab).sqrt()
        v_pred = self.prediction == "v_prediction"
        eps = a * out + s * x if v_pred else out
        with torch.enable_grad():
            x0 = ((x - s * eps) / a).clamp(-1, 1).detach().requires_grad_(True)
            loss = F.cross_entropy(self.classifier.logits(x0), targets, reduction="sum")
            (g,) = torch.autograd.grad(loss, x0)
        rms = g.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12).view(-1, 1, 1, 1)
        x0 = (x0 - self.guidance * g / rms).detach()
        eps = (x - a * x0) / s
        return a * eps - s * x0 if v_pred else eps


def item_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def plan_sample(classes: list[int], per_class: int, seed: int, mode: str = "sample", params: dict | None = None
                ) -> list[WorkItem]:
    if per_class < 1:
        raise FersynthError(f"--per-class must be >= 1, got {per_class}")
    items = []
    for c in classes:
        for _ in range(per_class):
            i = len(items)
            items.append(WorkItem(i, c, item_seed(seed, i), mode, f"class={CLASSES[c]}", params=dict(params or {})))
    return items


def plan_expand(source: Manifest, k: int, seed: int, params: dict) -> list[WorkItem]:
    if k < 1:
        raise FersynthError(f"--k must be >= 1, got {k}")
    items = []
    for j, (rid, lab) in enumerate(zip(source.df["id"], source.labels, strict=True)):
        for v in range(k):
            i = len(items)
            items.append(WorkItem(i, int(lab), item_seed(seed, i), "expand", f"class={CLASSES[lab]}",
                                  str(rid), j, dict(params, variant=v)))
    return items


def plan_edit(source: Manifest, targets: list[int] | None, seed: int, params: dict, num_classes: int
              ) -> list[WorkItem]:
    items = []
    for j, (rid, lab) in enumerate(zip(source.df["id"], source.labels, strict=True)):
        for c in targets if targets is not None else range(num_classes):
            if c == lab:
                continue
            i = len(items)
            items.append(WorkItem(i, int(c), item_seed(seed, i), "edit", f"edit {CLASSES[lab]} -> {CLASSES[c]}",
                                  str(rid), j, dict(params, source_label=int(lab))))
    return items


def source_rows(manifest: Manifest, num_classes: int, per_class: int | None = None, seed: int = 0) -> Manifest:
    """Real training images to expand / edit; test and val rows never become parents."""
    rows = training_rows(manifest, num_classes)
    if per_class is not None:
        rng = np.random.default_rng(seed)
        pick = []
        for c in np.unique(rows.labels):
            idx = np.flatnonzero(rows.labels == c)
            pick.extend(sorted(rng.choice(idx, size=min(per_class, len(idx)), replace=False).tolist()))
        rows = rows.select(np.array(sorted(pick), dtype=np.int64))
    return rows


def agreed_training_rows(rows: Manifest, reference: str | os.PathLike) -> tuple[Manifest, dict]:
    """`rows` with the training rows kept only where the labelled dataset at `reference` agrees
    (`fersynth.verify.audit.agreeing_rows`)."""
    from fersynth.data.ingest import load_any
    from fersynth.verify.audit import agreeing_rows

    ref, _ = load_any(Path(reference), progress=False)
    return agreeing_rows(rows, ref)


def _train_spec(spec: OwnSpec, real_train: Manifest, out: Path, progress: bool = True) -> dict:
    if spec.agree_with:
        real_train, _ = agreed_training_rows(real_train, spec.agree_with)
    return train_own(real_train, spec.train, out, progress=progress, device=spec.device)


@register_generator("own", config=OwnSpec, train=_train_spec, check_weights=check_weights_dir, modes=MODES,
                    needs="weights from `fersynth generator train` (no downloads)",
                    description="class-conditional diffusion (diffusers UNet2DModel) trained on your real train split")
def create_own(spec: OwnSpec, weights=None, classifier=None) -> OwnGenerator:
    if weights is None:
        raise FersynthError("the own generator needs trained weights",
                            hint="train them with `fersynth generator train`, then pass --weights")
    return OwnGenerator(weights, scheduler=spec.scheduler or "ddpm", steps=spec.steps, cfg_scale=spec.cfg_scale,
                        size=spec.gen_size, device=spec.device, classifier=classifier, guidance=spec.guidance,
                        guidance_start=spec.guidance_start, class_cfg=spec.class_cfg())
