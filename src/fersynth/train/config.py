"""Training configuration (pydantic): the resolved config is written next to every checkpoint."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class AugmentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hflip: bool = True
    rotation: float = Field(10.0, ge=0, le=180, description="max degrees")
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = Field(0.1, ge=0, le=0.5, description="fraction of the image size")
    blur_p: float = Field(0.0, ge=0, le=1)
    erase_p: float = Field(0.0, ge=0, le=1, description="random erasing (occlusion) probability")
    equalize: Literal["none", "equalize", "clahe"] = Field("none", description="histogram equalisation, applied to every image (train and eval)")


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    preset: str | None = None
    model: str = "fernet_s"
    img_size: int = Field(48, ge=16, le=512)
    in_chans: Literal[1, 3] = 1
    pretrained_path: str | None = None
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    scheduler: Literal["cosine", "step", "onecycle", "none"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    loss: Literal["ce", "soft"] = "ce"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weighted: bool = False
    class_weight_power: float = Field(
        1.0, gt=0, le=1,
        description="class weights proportional to 1/count^power: 1 is inverse frequency, 0.5 its square root (milder)",
    )
    augment: AugmentConfig = AugmentConfig()
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    seed: int = 0
    patience: int | None = Field(None, ge=1, description="early stopping on the monitored val metric")
    monitor: Literal["accuracy", "mean_class_accuracy"] = "accuracy"
    tta: bool = Field(False, description="average predictions over the image and its mirror at eval")
    amp: Literal["auto", "bf16", "no"] = Field(
        "auto",
        description="mixed precision: auto = bf16 on GPU, fp32 on CPU; bf16 = bf16 autocast on the CPU too "
        "(about 2x faster convolutions on CPUs with native bf16: AVX512-BF16 or AMX; fp32 elsewhere); no = fp32",
    )
    num_threads: int | None = None
    channels_last: bool = Field(True, description="NHWC memory layout (faster convolutions on CPU and GPU)")
    max_minutes: float | None = Field(None, gt=0, description="stop training after this wall time (epoch granularity)")

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_bool(cls, v):
        # configs written before the modes existed say `amp: true|false`
        return {True: "auto", False: "no"}.get(v, v) if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _check(self):
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})")
        return self
