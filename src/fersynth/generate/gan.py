"""`gan`: a class-conditional GAN trained on the real training split, no external weights.

The second own generator, for CPUs: a pixel diffusion model needs 25 network passes per image,
a GAN one, so it samples about a hundred times faster and sees several times more training
images per CPU-hour at the same width. The recipe is the one known to train small conditional
GANs on little data (SNGAN / BigGAN family):

- generator: residual up-sampling blocks with class-conditional batch norm (a per-class gain
  and bias), tanh output at the dataset's side (48 px native for FER2013);
- discriminator: residual down-sampling blocks, spectral norm on every layer, projection of a
  class embedding onto its pooled features (Miyato & Koyama 2018);
- hinge loss, Adam (0, 0.999) with a faster discriminator (TTUR);
- DiffAugment (Zhao et al. 2020): the same random translation, cutout, brightness and contrast
  on real and generated images before the discriminator, which keeps it from memorising a
  class of 436 faces;
- class-balanced batches (`class_balance`, as the diffusion model), horizontal flips, bf16
  autocast where the CPU computes bf16 natively, and an EMA generator whose batch-norm
  statistics are re-estimated at the end ("standing statistics"), so sampling runs in eval
  mode and each image depends on its own seed only, never on its batch.

Mode: `sample` (N images per class). Named recipes: `GAN_PRESETS`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn
from torch.nn.utils import spectral_norm

from fersynth.atomic import atomic_dir, atomic_open, digest
from fersynth.data.manifest import Manifest
from fersynth.errors import FersynthError
from fersynth.generate.base import Generator, WorkItem
from fersynth.generate.own import (
    config_from_preset,
    epoch_order,
    load_resume_state,
    preset_values,
    resolve_device,
    resume_path,
    to_uint8,
    to_unit,
    training_rows,
)
from fersynth.generate.registry import GenerationSpec, register_generator
from fersynth.labels import CLASSES

WEIGHTS_META = "fersynth_gan.json"
WEIGHTS_FILE = "generator.safetensors"
MODES = ("sample",)
AUGMENTS = ("translation", "cutout", "color")


class GanConfig(BaseModel):
    """Architecture and training settings of the GAN (written into the weights folder)."""

    model_config = ConfigDict(extra="forbid")
    size: int = Field(48, ge=8, le=256, description="image side the GAN works at")
    in_channels: int = Field(1, description="1 grayscale, 3 RGB")
    channels: tuple[int, ...] = Field((256, 128, 64, 32), description="generator widths from the smallest "
                                      "resolution up (one up-sampling block between each); the discriminator "
                                      "mirrors them")
    d_channels: tuple[int, ...] | None = Field(None, description="discriminator widths from the full resolution "
                                               "down (default: the generator's, reversed)")
    d_steps: int = Field(1, ge=1, description="discriminator updates per generator update")
    g_spectral_norm: bool = Field(False, description="spectral norm on the generator's layers too (SAGAN / BigGAN)")
    z_dim: int = Field(128, ge=8)
    num_classes: int | None = Field(None, description="default: the manifest's class count")
    epochs: int = Field(1000, ge=1)
    max_steps: int | None = Field(None, ge=1)
    max_minutes: float | None = Field(None, gt=0)
    batch_size: int = Field(64, ge=2)
    lr_g: float = Field(1e-4, gt=0)
    lr_d: float = Field(4e-4, gt=0)
    beta1: float = Field(0.0, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    augment: tuple[str, ...] = Field(AUGMENTS, description="DiffAugment policies: translation, cutout, color")
    ema: float = Field(0.999, ge=0, lt=1, description="decay of the EMA generator that is saved")
    class_balance: float = Field(0.5, ge=0, le=1, description="batches drawn with weight 1/count^p per class")
    hflip: bool = True
    amp: Literal["no", "bf16", "auto"] = Field("no", description="bf16 autocast, as `fersynth train`'s amp")
    standing_batches: int = Field(40, ge=1, description="batches that re-estimate the EMA generator's BN statistics")
    seed: int = 0
    num_threads: int | None = None

    @field_validator("augment")
    @classmethod
    def _augment(cls, v):
        bad = [a for a in v if a not in AUGMENTS]
        if bad:
            raise ValueError(f"unknown augment '{bad[0]}' (choose from {', '.join(AUGMENTS)})")
        return tuple(v)

    @model_validator(mode="after")
    def _check(self):
        if self.in_channels not in (1, 3):
            raise ValueError("in_channels must be 1 or 3")
        if len(self.channels) < 2 or any(c < 8 for c in self.channels):
            raise ValueError("channels must list at least 2 widths >= 8")
        if self.d_channels is not None and len(self.d_channels) != len(self.channels):
            raise ValueError(f"d_channels must list {len(self.channels)} widths, as channels does")
        f = 2 ** (len(self.channels) - 1)
        if self.size % f or self.size // f < 2:
            raise ValueError(f"size {self.size} must be a multiple of {f} (and at least {2 * f}) "
                             f"for {len(self.channels)} levels")
        return self


# Named recipes (`fersynth generator train --kind gan --preset NAME`, a study's `train: {preset: NAME}`).
GAN_PRESETS: dict[str, dict] = {
    # FER2013 on a 2-core CPU: 48 px native, thin (0.76M + 0.31M parameters) so that it takes
    # ~15k steps in the budget (2.4x the steps of the 256-wide default per minute), bf16 where native.
    "fer2013-cpu": {"size": 48, "channels": (128, 64, 32, 16), "batch_size": 64, "max_minutes": 75.0, "lr_g": 2e-4,
                    "class_balance": 0.5, "amp": "bf16", "ema": 0.999},
}


def gan_config(values: dict | None = None, preset: str | None = None, where: str = "generator config") -> GanConfig:
    """A GanConfig from a preset (also values['preset']) and explicit values; one FersynthError otherwise."""
    return config_from_preset(GanConfig, GAN_PRESETS, values, preset, where, what="gan")


# ---------------------------------------------------------------------- networks
class CondBatchNorm(nn.Module):
    """Batch norm whose gain and bias come from the class (BigGAN's conditional BN)."""

    def __init__(self, ch: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(ch, affine=False)
        self.gain = nn.Embedding(num_classes, ch)
        self.bias = nn.Embedding(num_classes, ch)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x, y):
        return self.bn(x) * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


def _sn(layer: nn.Module, on: bool) -> nn.Module:
    return spectral_norm(layer) if on else layer


class GBlock(nn.Module):
    def __init__(self, cin: int, cout: int, num_classes: int, sn: bool = False):
        super().__init__()
        self.bn1, self.bn2 = CondBatchNorm(cin, num_classes), CondBatchNorm(cout, num_classes)
        self.conv1 = _sn(nn.Conv2d(cin, cout, 3, padding=1), sn)
        self.conv2 = _sn(nn.Conv2d(cout, cout, 3, padding=1), sn)
        self.skip = _sn(nn.Conv2d(cin, cout, 1), sn)

    def forward(self, x, y):
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + self.skip(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class GanGeneratorNet(nn.Module):
    def __init__(self, cfg: GanConfig, num_classes: int):
        super().__init__()
        ch = cfg.channels
        self.base = cfg.size // 2 ** (len(ch) - 1)
        sn = cfg.g_spectral_norm
        self.fc = _sn(nn.Linear(cfg.z_dim, ch[0] * self.base * self.base), sn)
        self.blocks = nn.ModuleList(GBlock(a, b, num_classes, sn) for a, b in zip(ch[:-1], ch[1:], strict=True))
        self.out_bn = nn.BatchNorm2d(ch[-1])
        self.out = _sn(nn.Conv2d(ch[-1], cfg.in_channels, 3, padding=1), sn)

    def forward(self, z, y):
        h = self.fc(z).view(len(z), -1, self.base, self.base)
        for b in self.blocks:
            h = b(h, y)
        return torch.tanh(self.out(F.relu(self.out_bn(h))))


class DBlock(nn.Module):
    def __init__(self, cin: int, cout: int, down: bool, first: bool):
        super().__init__()
        self.first, self.down = first, down
        self.conv1 = spectral_norm(nn.Conv2d(cin, cout, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = spectral_norm(nn.Conv2d(cin, cout, 1))

    def forward(self, x):
        h = self.conv2(F.leaky_relu(self.conv1(x if self.first else F.leaky_relu(x, 0.2)), 0.2))
        s = self.skip(x)
        if self.down:
            h, s = F.avg_pool2d(h, 2), F.avg_pool2d(s, 2)
        return h + s


class GanDiscriminatorNet(nn.Module):
    def __init__(self, cfg: GanConfig, num_classes: int):
        super().__init__()
        ch = tuple(cfg.d_channels or reversed(cfg.channels))
        widths = (cfg.in_channels, *ch)
        n = len(ch)
        self.blocks = nn.Sequential(*(DBlock(widths[i], widths[i + 1], down=i < n - 1, first=i == 0)
                                      for i in range(n)))
        self.linear = spectral_norm(nn.Linear(ch[-1], 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, ch[-1]))

    def forward(self, x, y):
        h = F.leaky_relu(self.blocks(x), 0.2).sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(1)


def diff_augment(x: torch.Tensor, policies: tuple[str, ...], gen: torch.Generator) -> torch.Tensor:
    """DiffAugment: differentiable augmentations applied alike to real and generated batches."""
    n, _, h, w = x.shape
    dev = x.device
    if "color" in policies:
        x = x + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5).to(dev)  # brightness (on [-1, 1])
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (torch.rand(n, 1, 1, 1, generator=gen) + 0.5).to(dev) + mean  # contrast
    if "translation" in policies:
        sh, sw = h // 8, w // 8
        dy = torch.randint(-sh, sh + 1, (n,), generator=gen).to(dev)
        dx = torch.randint(-sw, sw + 1, (n,), generator=gen).to(dev)
        ys = (torch.arange(h, device=dev)[None, :] - dy[:, None])  # source row of each output row
        xs = (torch.arange(w, device=dev)[None, :] - dx[:, None])
        valid = ((ys >= 0) & (ys < h))[:, :, None] & ((xs >= 0) & (xs < w))[:, None, :]
        idx = ys.clamp(0, h - 1)[:, :, None] * w + xs.clamp(0, w - 1)[:, None, :]
        flat = x.flatten(2).gather(2, idx.flatten(1)[:, None, :].expand(-1, x.shape[1], -1))
        x = flat.view_as(x) * valid[:, None].to(x.dtype)
    if "cutout" in policies:
        ch, cw = h // 2, w // 2
        cy = torch.randint(0, h + 1 - ch % 2, (n,), generator=gen).to(dev)
        cx = torch.randint(0, w + 1 - cw % 2, (n,), generator=gen).to(dev)
        ry = (torch.arange(h, device=dev)[None, :] - cy[:, None] + ch // 2)
        rx = (torch.arange(w, device=dev)[None, :] - cx[:, None] + cw // 2)
        cut = ((ry >= 0) & (ry < ch))[:, :, None] & ((rx >= 0) & (rx < cw))[:, None, :]
        x = x * (~cut)[:, None].to(x.dtype)
    return x


def hinge_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


@torch.no_grad()
def standing_stats(g: GanGeneratorNet, cfg: GanConfig, num_classes: int, gen: torch.Generator,
                   dev: torch.device) -> None:
    """Re-estimate every batch-norm's statistics as a plain average over fresh batches of all
    classes (the EMA generator's weights never produced the running averages it carries)."""
    bns = [m for m in g.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    g.train()
    for _ in range(cfg.standing_batches):
        y = torch.randint(0, num_classes, (cfg.batch_size,), generator=gen)
        g(torch.randn(cfg.batch_size, cfg.z_dim, generator=gen).to(dev), y.to(dev))
    for m in bns:
        m.momentum = 0.1
    g.eval()


# ---------------------------------------------------------------------- training
def train_gan(manifest: Manifest, cfg: GanConfig, out_dir: str | os.PathLike, progress: bool = True,
              device: str = "cpu", resume: bool = True, checkpoint_seconds: float = 300.0,
              stop_after_steps: int | None = None) -> dict | None:
    """Train the conditional GAN on the real training rows; write a weights folder (safetensors).

    Like `train_own`, the whole state (both networks, optimisers, EMA, the position in the
    epoch's order, the random generator) is written beside `out_dir` every `checkpoint_seconds`
    and when `stop_after_steps` interrupts it; a later call with the same config and data
    continues from there to the same weights. Returns None when interrupted."""
    from fersynth.train.loop import resolve_precision

    dev = resolve_device(device)
    precision, precision_note = resolve_precision(cfg.amp)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    num_classes = cfg.num_classes or manifest.num_classes
    rows = training_rows(manifest, num_classes)
    x_all = to_unit(rows.pixels, cfg.size, cfg.in_channels)
    y_all = torch.from_numpy(rows.labels.copy()).long()
    torch.manual_seed(cfg.seed)
    g, d = GanGeneratorNet(cfg, num_classes).to(dev), GanDiscriminatorNet(cfg, num_classes).to(dev)
    ema = GanGeneratorNet(cfg, num_classes).to(dev)
    ema.load_state_dict(g.state_dict())
    ema.requires_grad_(False)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
    steps_per_epoch = len(rows) // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, history, stopped = 0, [], "steps"
    perm, b0, sums, elapsed = None, 0, [0.0, 0.0, 0], 0.0
    state_file = resume_path(out_dir)
    ident = {"kind": "gan", "config": cfg.model_dump(mode="json"), "num_classes": num_classes, "rows": len(rows),
             "data": digest([rows.df["id"].astype(str).tolist(), rows.labels.tolist()])}
    nets = {"g": g, "d": d, "ema": ema, "opt_g": opt_g, "opt_d": opt_d}
    if resume and state_file.is_file():
        st = load_resume_state(state_file, ident)
        for k, obj in nets.items():
            obj.load_state_dict(st[k])
        gen.set_state(st["gen"])
        step, history, perm, b0, sums, elapsed, total = (st[k] for k in
                                                          ("step", "history", "perm", "b0", "sums", "elapsed", "total"))
    t0 = time.perf_counter() - elapsed
    last_ckpt = time.perf_counter()

    def save_state(b_next):
        state = {"ident": ident, **{k: obj.state_dict() for k, obj in nets.items()}, "gen": gen.get_state(),
                 "step": step, "history": history, "perm": perm, "b0": b_next, "sums": sums, "total": total,
                 "elapsed": time.perf_counter() - t0}
        with atomic_open(state_file, "wb") as f:
            torch.save(state, f)

    def amp():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    from fersynth.progress import progress_bar

    aug = cfg.augment
    with progress_bar(progress, rate=True) as bar:
        task = bar.add_task("gan: training", total=total, completed=step, unit="step")
        while step < total:
            if perm is None:
                perm = epoch_order(y_all, cfg.class_balance, gen)
                b0, sums = 0, [0.0, 0.0, 0]
            for b in range(b0, len(perm) - cfg.batch_size + 1, cfg.batch_size):
                if step >= total:
                    break
                if stop_after_steps is not None and step >= stop_after_steps:
                    save_state(b)
                    return None
                if time.perf_counter() - last_ckpt > checkpoint_seconds:
                    save_state(b)
                    last_ckpt = time.perf_counter()
                idx = perm[b : b + cfg.batch_size]
                x, y = x_all[idx], y_all[idx]
                if cfg.hflip:
                    flip = torch.rand(len(idx), generator=gen) < 0.5
                    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                x, y = x.to(dev), y.to(dev)
                z = torch.randn(len(idx), cfg.z_dim, generator=gen).to(dev)
                g.train()
                with amp():
                    with torch.no_grad():
                        fake = g(z, y)
                    both = diff_augment(torch.cat([x, fake.float()]), aug, gen)
                    out = d(both, torch.cat([y, y])).float()
                loss_d = hinge_d(out[: len(idx)], out[len(idx):])
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
                z = torch.randn(len(idx), cfg.z_dim, generator=gen).to(dev)
                with amp():
                    loss_g = -d(diff_augment(g(z, y).float(), aug, gen), y).float().mean()
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()
                decay = min(cfg.ema, (1 + step) / (10 + step))
                with torch.no_grad():
                    for pe, p in zip(ema.parameters(), g.parameters(), strict=True):
                        pe.lerp_(p, 1 - decay)
                step += 1
                sums = [sums[0] + float(loss_d.detach()), sums[1] + float(loss_g.detach()), sums[2] + 1]
                bar.update(task, advance=1)
                if cfg.max_minutes and time.perf_counter() - t0 > cfg.max_minutes * 60:
                    stopped, total = "max_minutes", step
                    break
            history.append({"epoch": len(history) + 1, "loss_d": sums[0] / max(sums[2], 1),
                            "loss_g": sums[1] / max(sums[2], 1), "steps": step})
            perm = None
    standing_stats(ema, cfg, num_classes, gen, dev)
    seconds = time.perf_counter() - t0
    info = {
        "format": "fersynth-gan/1",
        "config": cfg.model_dump(mode="json"),
        "num_classes": num_classes,
        "classes": list(CLASSES[:num_classes]),
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
    _save(ema, info, Path(out_dir))
    state_file.unlink(missing_ok=True)
    return info


def _save(g: GanGeneratorNet, info: dict, out: Path) -> None:
    import hashlib

    from safetensors.torch import save_file

    with atomic_dir(out) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in g.state_dict().items()}, str(tmp / WEIGHTS_FILE))
        h = hashlib.blake2b((tmp / WEIGHTS_FILE).read_bytes(), digest_size=6).hexdigest()
        info = dict(info, model_id=f"gan-{h}")
        (tmp / WEIGHTS_META).write_text(json.dumps(info, indent=2))


def check_gan_weights(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_dir():
        raise FersynthError(f"{p}: no weights folder there", hint="train one with `fersynth generator train --kind gan`")
    for name in (WEIGHTS_META, WEIGHTS_FILE):
        if not (p / name).is_file():
            raise FersynthError(f"{p}: not a gan weights folder ({name} is missing)",
                                hint="pass the --out folder of `fersynth generator train --kind gan`")
    try:
        info = json.loads((p / WEIGHTS_META).read_text())
        GanConfig(**info["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise FersynthError(f"{p / WEIGHTS_META}: unreadable ({str(e).splitlines()[0][:120]})") from None
    return info


# ---------------------------------------------------------------------- sampling
class GanGenerator(Generator):
    name = "gan"

    def __init__(self, weights: str | os.PathLike, *, device: str = "cpu", truncation: float | None = None):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        self.device = resolve_device(device)
        self.info = check_gan_weights(weights)
        self.weights = Path(weights)
        self.model_id = self.info.get("model_id", self.weights.name)
        self.cfg = GanConfig(**self.info["config"])
        self.num_classes = int(self.info["num_classes"])
        self.net = GanGeneratorNet(self.cfg, self.num_classes)
        try:
            self.net.load_state_dict(load_file(str(self.weights / WEIGHTS_FILE)))
        except (OSError, RuntimeError, ValueError, SafetensorError) as e:
            raise FersynthError(f"{self.weights}: cannot load the generator ({str(e).splitlines()[0][:160]})",
                                hint="the weights folder is damaged; train again") from None
        self.net = self.net.to(self.device).eval().requires_grad_(False)
        self.truncation = truncation

    def check_label(self, label: int) -> None:
        if not 0 <= label < self.num_classes:
            raise FersynthError(f"class {label} is outside this model's {self.num_classes} classes",
                                hint=f"its classes: {', '.join(self.info['classes'])}")

    def noise(self, seed: int) -> torch.Tensor:
        z = torch.randn(self.cfg.z_dim, generator=torch.Generator().manual_seed(int(seed)))
        if self.truncation:  # resample the entries beyond +-truncation (BigGAN's truncation trick)
            g = torch.Generator().manual_seed(int(seed) + 1)
            while bool((bad := z.abs() > self.truncation).any()):
                z = torch.where(bad, torch.randn(self.cfg.z_dim, generator=g), z)
        return z

    @torch.no_grad()
    def generate(self, items: list[WorkItem]) -> np.ndarray:
        self.batch_mode(items, MODES)
        for it in items:
            self.check_label(it.label)
        z = torch.stack([self.noise(it.seed) for it in items]).to(self.device)
        y = torch.tensor([it.label for it in items], device=self.device)
        return to_uint8(self.net(z, y))


class GanSpec(GenerationSpec):
    """The conditional GAN in a study (`generators.<name>: {kind: gan, ...}`) or from
    `fersynth generate gan`: trained on the real training rows unless `weights` is given."""

    kind: Literal["gan"] = "gan"
    mode: Literal["sample"] = "sample"
    train: GanConfig = Field(default_factory=GanConfig,
                             description="GanConfig fields (size, channels, max_minutes, ...), or `preset: NAME` "
                                         "(e.g. fer2013-cpu) plus overrides; `seed` defaults to the generator's")
    truncation: float | None = Field(None, gt=0, description="resample noise entries beyond +-T (fidelity over variety)")

    @field_validator("train", mode="before")
    @classmethod
    def _train(cls, v, info):
        if isinstance(v, dict):
            v = dict(v)
            v = {**preset_values(GAN_PRESETS, v.pop("preset", None), "gan"), **v}
            v.setdefault("seed", info.data.get("seed", 0))
        return v

    def item_params(self, label: int) -> dict:
        return {"truncation": self.truncation} if self.truncation else {}

    def train_identity(self) -> dict | None:
        return None if self.weights else {"kind": "gan", **self.train.model_dump(mode="json")}


def _train_spec(spec: GanSpec, real_train: Manifest, out: Path, progress: bool = True) -> dict:
    return train_gan(real_train, spec.train, out, progress=progress, device=spec.device)


@register_generator("gan", config=GanSpec, train=_train_spec, check_weights=check_gan_weights, modes=MODES,
                    needs="weights from `fersynth generator train --kind gan` (no downloads)",
                    description="class-conditional GAN (projection discriminator, hinge, spectral norm, "
                                "DiffAugment, EMA) trained on your real train split")
def create_gan(spec: GanSpec, weights=None, classifier=None) -> GanGenerator:
    if weights is None:
        raise FersynthError("the gan generator needs trained weights",
                            hint="train them with `fersynth generator train --kind gan`, then pass --weights")
    return GanGenerator(weights, device=spec.device, truncation=spec.truncation)
