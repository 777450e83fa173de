"""`sd`: the Stable Diffusion family through diffusers (SD 1.x / 2.x, SDXL incl. Juggernaut XL, SD3).

Weights load from a local diffusers folder (`model_index.json`) or a single `.safetensors`
checkpoint (`from_single_file`, with `--config` naming a local diffusers folder of the same
architecture), always with `local_files_only=True`. Modes:

- sample:  text-to-image from the prompt builder (emotion + action units x attribute grid);
- expand:  image-to-image variants of each real training image, prompt of its own class;
- edit:    image-to-image of a real training image with the prompt of a target expression;
- guided:  text-to-image where, in the later steps, the prompt embedding moves along the
           normalised gradient of a FER classifier's cross-entropy on the decoded predicted
           clean image (SynFER's semantic guidance).
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fersynth.data.manifest import Manifest
from fersynth.errors import FersynthError
from fersynth.generate.base import Generator, WorkItem
from fersynth.generate.own import FerClassifier, plan_edit, plan_expand, resolve_device
from fersynth.generate.prompts import DEFAULT_NEGATIVE, PromptSpec, build_prompt, sample_prompts
from fersynth.generate.registry import GenerationSpec, plan_per_class, register_generator
from fersynth.labels import CLASSES

MODES = ("sample", "expand", "edit", "guided")
FAMILIES: dict[str, tuple[str, str]] = {
    "sd": ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"),
    "sdxl": ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"),
    "sd3": ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline"),
}
SCHEDULERS = {
    "ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "dpmsolver": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler", "euler_a": "EulerAncestralDiscreteScheduler", "pndm": "PNDMScheduler",
    "flow_euler": "FlowMatchEulerDiscreteScheduler",
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def family_of(class_name: str) -> str:
    if "XL" in class_name:
        return "sdxl"
    if "StableDiffusion3" in class_name:
        return "sd3"
    if class_name.startswith("StableDiffusion"):
        return "sd"
    raise FersynthError(f"unsupported pipeline '{class_name}'",
                        hint="use a Stable Diffusion 1.x/2.x, SDXL or SD3 diffusers folder")


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def load_pipeline(model: str | os.PathLike, arch: str | None = None, config: str | os.PathLike | None = None,
                  dtype: str = "float32"):
    """(text-to-image pipeline, family) from a local diffusers folder or single .safetensors file."""
    import diffusers

    p = Path(model)
    if dtype not in DTYPES:
        raise FersynthError(f"unknown dtype '{dtype}'", hint=f"choose one of {', '.join(DTYPES)}")
    if arch is not None and arch not in FAMILIES:
        close = difflib.get_close_matches(arch, list(FAMILIES), n=1)
        raise FersynthError(f"unknown architecture '{arch}'",
                            hint=f"did you mean {close[0]}?" if close else f"choose one of {', '.join(FAMILIES)}")
    kw = {"local_files_only": True, "torch_dtype": DTYPES[dtype]}
    if p.is_dir():
        index = p / "model_index.json"
        if not index.is_file():
            raise FersynthError(f"{p}: not a diffusers folder (no model_index.json)",
                                hint="pass a folder saved with save_pretrained, or a .safetensors file with --arch")
        try:
            spec = json.loads(index.read_text())
        except json.JSONDecodeError as e:
            raise FersynthError(f"{index}: unreadable ({e})") from None
        family = arch or family_of(spec.get("_class_name", ""))
        missing = [k for k, v in spec.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None
                   and not (p / k).is_dir()]
        if missing:
            raise FersynthError(f"{p}: incomplete diffusers folder ({', '.join(missing)} missing)",
                                hint="copy the whole model folder")
        cls = getattr(diffusers, FAMILIES[family][0])
        # Components a pipeline can run without (SD3 without T5, no safety checker) may be absent.
        optional = ("text_encoder_3", "tokenizer_3", "image_encoder", "feature_extractor", "safety_checker")
        params = inspect.signature(cls.__init__).parameters
        kw.update({k: None for k in optional if k in params and (spec.get(k) or [None])[0] is None})
        try:
            pipe = cls.from_pretrained(p, **kw)
        except (OSError, ValueError, RuntimeError, TypeError, KeyError) as e:
            raise FersynthError(f"{p}: cannot load the pipeline ({_first_line(e)})",
                                hint="the folder is damaged or of another architecture") from None
    elif p.is_file():
        if p.suffix != ".safetensors":
            raise FersynthError(f"{p}: only .safetensors single files are loaded (no pickled checkpoints)",
                                hint="convert the checkpoint to safetensors")
        if arch is None:
            raise FersynthError(f"{p}: a single-file checkpoint needs its architecture", hint="pass --arch sd|sdxl|sd3")
        family = arch
        cls = getattr(diffusers, FAMILIES[family][0])
        try:
            pipe = cls.from_single_file(str(p), config=str(config) if config else None, **kw)
        except (OSError, ValueError, RuntimeError, TypeError, KeyError) as e:
            raise FersynthError(f"{p}: cannot load the checkpoint ({_first_line(e)})",
                                hint="pass --config with a local diffusers folder of the same architecture") from None
    else:
        raise FersynthError(f"{p}: no model there", hint="pass a local diffusers folder or .safetensors file")
    return pipe, family


def set_scheduler(pipe, name: str | None, family: str):
    import diffusers

    if name is None:
        return
    if name not in SCHEDULERS:
        close = difflib.get_close_matches(name, list(SCHEDULERS), n=1)
        raise FersynthError(f"unknown scheduler '{name}'",
                            hint=f"did you mean {close[0]}?" if close else f"choose one of {', '.join(SCHEDULERS)}")
    if (family == "sd3") != (name == "flow_euler"):
        raise FersynthError(f"scheduler '{name}' does not fit a {family} model",
                            hint="SD3 uses flow_euler; SD 1.x/2.x and SDXL use the others")
    pipe.scheduler = getattr(diffusers, SCHEDULERS[name]).from_config(pipe.scheduler.config)


class SdGenerator(Generator):
    name = "sd"

    def __init__(self, model: str | os.PathLike, *, arch: str | None = None, config: str | os.PathLike | None = None,
                 scheduler: str | None = None, steps: int = 30, cfg_scale: float = 7.0, size: int | None = None,
                 device: str = "cpu", dtype: str = "float32", source: Manifest | None = None,
                 classifier: str | os.PathLike | None = None, guidance: float = 0.05, guidance_start: float = 0.5):
        self.device = resolve_device(device)
        self.pipe, self.family = load_pipeline(model, arch, config, dtype)
        set_scheduler(self.pipe, scheduler, self.family)
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.model_id = f"{self.family}:{Path(model).name}"
        if steps < 1:
            raise FersynthError(f"--steps must be >= 1, got {steps}")
        self.steps, self.cfg_scale = steps, cfg_scale
        vsf = self.pipe.vae_scale_factor
        if self.family == "sd3":
            tcfg = self.pipe.transformer.config
            native, factor = tcfg.sample_size * vsf, vsf * tcfg.patch_size
        else:
            ucfg = self.pipe.unet.config
            native, factor = ucfg.sample_size * vsf, vsf * 2 ** (len(ucfg.block_out_channels) - 1)
        self.size = int(size or native)
        if self.size % factor or self.size < factor:
            raise FersynthError(f"this model cannot make {self.size}x{self.size} images",
                                hint=f"use a multiple of {factor} (native {native})")
        self.source = source
        self.classifier = FerClassifier(classifier, self.device) if classifier else None
        self.guidance, self.guidance_start = guidance, guidance_start
        self._img2img = None

    @property
    def img2img(self):
        if self._img2img is None:
            import diffusers

            cls = getattr(diffusers, FAMILIES[self.family][1])
            self._img2img = cls(**self.pipe.components)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    def _source_images(self, items: list[WorkItem]):
        from PIL import Image

        if self.source is None:
            raise FersynthError("expand / edit need the real source images", hint="pass --data")
        out = []
        for it in items:
            px = np.asarray(self.source.pixels[it.parent_index])
            img = Image.fromarray(px).convert("RGB").resize((self.size, self.size), Image.BICUBIC)
            out.append(img)
        return out

    def generate(self, items: list[WorkItem]) -> np.ndarray:
        mode = self.batch_mode(items, MODES)
        gens = [torch.Generator(self.device).manual_seed(int(it.seed)) for it in items]
        kw = dict(prompt=[it.prompt for it in items],
                  negative_prompt=[it.params.get("negative_prompt", "") for it in items],
                  num_inference_steps=self.steps, guidance_scale=self.cfg_scale, generator=gens, output_type="np")
        if mode in ("expand", "edit"):
            out = self.img2img(image=self._source_images(items), strength=float(items[0].params["strength"]), **kw)
        else:
            kw.update(height=self.size, width=self.size)
            if mode == "guided":
                if self.classifier is None:
                    raise FersynthError("guided mode needs a FER classifier", hint="pass --classifier CHECKPOINT")
                targets = torch.tensor([self.classifier.output_index(it.label) for it in items], device=self.device)
                kw.update(callback_on_step_end=self._guidance_callback(targets),
                          callback_on_step_end_tensor_inputs=self._guided_inputs())
            out = self.pipe(**kw)
        return (np.clip(np.asarray(out.images), 0, 1) * 255).round().astype(np.uint8)

    # ---- semantic guidance -----------------------------------------------------------
    def _guided_inputs(self) -> list[str]:
        return {"sd": ["latents", "prompt_embeds"], "sdxl": ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids"],
                "sd3": ["latents", "prompt_embeds", "pooled_prompt_embeds"]}[self.family]

    def _guidance_callback(self, targets: torch.Tensor):
        def callback(pipe, i, t, kw):
            sched = pipe.scheduler
            n = len(sched.timesteps)
            if i + 1 >= n or (i + 1) < self.guidance_start * n:
                return {}
            lat = kw["latents"]
            b = lat.shape[0]
            pe = kw["prompt_embeds"]
            cfg = pe.shape[0] == 2 * b
            pos = pe[b:] if cfg else pe
            with torch.enable_grad():
                e = pos.detach().float().requires_grad_(True)
                x0 = self._predict_x0(pipe, lat.detach(), i + 1, e, kw, b, cfg)
                img = self._decode(pipe, x0)
                loss = F.cross_entropy(self.classifier.logits(img.float()), targets, reduction="sum")
                (g,) = torch.autograd.grad(loss, e)
            rms = lambda v: v.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12).view(-1, 1, 1)  # noqa: E731
            new = (pos.float() - self.guidance * rms(pos.float()) * g / rms(g)).to(pos.dtype)
            return {"prompt_embeds": torch.cat([pe[:b], new]) if cfg else new}

        return callback

    def _predict_x0(self, pipe, lat, j, e, kw, b, cfg):
        sched = pipe.scheduler
        t = sched.timesteps[j]
        if self.family == "sd3":
            pooled = kw["pooled_prompt_embeds"]
            pooled = pooled[b:] if cfg else pooled
            v = pipe.transformer(hidden_states=lat, timestep=t.expand(b).to(lat.device), encoder_hidden_states=e.to(lat.dtype),
                                 pooled_projections=pooled, return_dict=False)[0]
            return lat - sched.sigmas[j].to(lat.device) * v
        added = None
        if self.family == "sdxl":
            te, ti = kw["add_text_embeds"], kw["add_time_ids"]
            added = {"text_embeds": te[b:] if cfg else te, "time_ids": ti[b:] if cfg else ti}
        inp = sched.scale_model_input(lat, t)
        out = pipe.unet(inp, t, encoder_hidden_states=e.to(lat.dtype), added_cond_kwargs=added, return_dict=False)[0]
        if hasattr(sched, "sigmas") and getattr(sched, "init_noise_sigma", 1.0) != 1.0:  # Euler-type: x = x0 + sigma * eps
            return lat - sched.sigmas[j].to(lat.device) * out
        ab = sched.alphas_cumprod.to(lat.device)[int(t)]
        a, s = ab.sqrt(), (1 - ab).sqrt()
        if sched.config.prediction_type == "v_prediction":
            return a * lat - s * out
        return (lat - s * out) / a

    @staticmethod
    def _decode(pipe, x0):
        vae = pipe.vae
        z = x0 / vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        if shift:
            z = z + shift
        return vae.decode(z.to(vae.dtype), return_dict=False)[0].clamp(-1, 1)


def plan_prompts(classes: list[int], per_class: int | None, seed: int, mode: str = "sample", sampling: str = "balanced",
                 attributes: dict | None = None, negative_prompt: str = DEFAULT_NEGATIVE, include_aus: bool = True,
                 params: dict | None = None) -> list[WorkItem]:
    from fersynth.generate.own import item_seed

    specs: list[PromptSpec] = sample_prompts(classes, per_class, seed, sampling, attributes, negative_prompt, include_aus)
    items = []
    for i, s in enumerate(specs):
        items.append(WorkItem(i, s.label, item_seed(seed, i), mode, s.prompt,
                              params=dict(params or {}, negative_prompt=s.negative_prompt, attributes=s.attributes,
                                          action_units=s.action_units)))
    return items


def plan_img2img(source: Manifest, mode: str, seed: int, params: dict, k: int = 1, targets: list[int] | None = None,
                 num_classes: int = 7, negative_prompt: str = DEFAULT_NEGATIVE, include_aus: bool = True
                 ) -> list[WorkItem]:
    """expand (k variants, own class) or edit (each target class) items with the class's prompt."""
    items = (plan_expand(source, k, seed, params) if mode == "expand"
             else plan_edit(source, targets, seed, params, num_classes))
    for it in items:
        it.prompt = build_prompt(CLASSES[it.label], {}, include_aus)
        it.params["negative_prompt"] = negative_prompt
    return items


class PromptsConfig(BaseModel):
    """How the prompt builder draws prompts (see `fersynth.generate.prompts`)."""

    model_config = ConfigDict(extra="forbid")
    sampling: Literal["balanced", "factorial", "random"] = "balanced"
    attributes: bool = Field(True, description="false: emotion phrases only, no attribute grid")
    aus: bool = Field(True, description="name the expression's facial action units")
    negative: str | None = Field(None, description="negative prompt (default: the builder's)")


class SdSpec(GenerationSpec):
    """A Stable Diffusion model in a study (`{kind: sd, weights: MODEL, ...}`) or from `fersynth generate sd`."""

    kind: Literal["sd"] = "sd"
    mode: Literal["sample", "expand", "edit", "guided"] = "sample"
    arch: str | None = Field(None, description="single-file checkpoints: sd | sdxl | sd3")
    config: str | None = Field(None, description="single-file checkpoints: local diffusers config folder")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    gen_size: int | None = Field(None, ge=8, description="side generated at (default: the model's native size)")
    cfg_scale: float = Field(7.0, ge=0)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)

    @model_validator(mode="after")
    def _weights(self):
        if not self.weights:
            raise ValueError("an sd generator needs `weights` (a local diffusers folder or .safetensors file)")
        return self

    def item_params(self, label: int) -> dict:
        return dict(super().item_params(label), scheduler=self.scheduler or "default")


def plan_sd(spec: SdSpec, source: Manifest | None, num_classes: int) -> list[WorkItem]:
    pr = spec.prompts
    neg = DEFAULT_NEGATIVE if pr.negative is None else pr.negative
    if spec.mode in ("expand", "edit"):
        return plan_img2img(source, spec.mode, spec.seed, spec.item_params(-1), k=spec.k,
                            targets=spec.class_list(spec.targets, num_classes), num_classes=num_classes,
                            negative_prompt=neg, include_aus=pr.aus)
    return plan_per_class(spec.counts(num_classes), spec.seed, lambda c, n, s: plan_prompts(
        [c], n, s, spec.mode, pr.sampling, None if pr.attributes else {}, neg, pr.aus, spec.item_params(c)))


@register_generator("sd", config=SdSpec, plan=plan_sd, modes=MODES,
                    needs="a local SD 1.x/2.x, SDXL or SD3 model (diffusers folder or .safetensors)",
                    description="Stable Diffusion family via diffusers: prompts with action units, img2img, guidance")
def create_sd(spec: SdSpec, weights=None, classifier=None) -> SdGenerator:
    if weights is None or not Path(weights).exists():
        raise FersynthError(f"{weights}: Stable Diffusion weights not found", hint="pass a local diffusers folder "
                            "or .safetensors file")
    return SdGenerator(weights, arch=spec.arch, config=spec.config, scheduler=spec.scheduler, steps=spec.steps,
                       cfg_scale=spec.cfg_scale, size=spec.gen_size, device=spec.device, dtype=spec.dtype,
                       classifier=classifier, guidance=spec.guidance, guidance_start=spec.guidance_start)
