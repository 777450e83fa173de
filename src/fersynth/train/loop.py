"""The training loop: one code path for CPU, one GPU and several (accelerate / torchrun).

Validation is carved from the real training rows (stratified, seeded, duplicate groups kept
together) and drives early stopping and model selection; test rows are never touched here.
Every epoch is seeded from (seed, epoch), so a run resumed from its last finished epoch
ends exactly where an uninterrupted one does.

A time budget (`max_minutes`) makes the schedule follow the fraction of the budget spent
(time-based annealing) or of the epochs done, whichever is further (`Budget`): a slow start
on a busy machine costs only the time it took, and the run ends annealed at its budget,
mid-epoch if need be, with a last validation.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from fersynth.atomic import atomic_open, write_json_atomic
from fersynth.checkpoint import save_checkpoint
from fersynth.data.manifest import Manifest
from fersynth.data.pixels import is_lazy, take
from fersynth.errors import FersynthError
from fersynth.faults import kill_point
from fersynth.predictor import Predictor, Preprocessing, equalize_pixels, to_model_input
from fersynth.train.augment import BatchAugment
from fersynth.train.config import TrainConfig

STATE_FILE = "last_state.pt"


class PixelDataset(Dataset):
    """Rows of a packed uint8 array; `__getitems__` hands whole batches to the loader."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, soft: np.ndarray | None = None):
        # Memory-mapped pixels stay on disk and are read a batch at a time (data.pixels).
        self.lazy = is_lazy(pixels)
        self.pixels = pixels if self.lazy else torch.from_numpy(np.ascontiguousarray(pixels))
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.soft = None if soft is None else torch.from_numpy(soft.astype(np.float32))

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.__getitems__([i])

    def __getitems__(self, idx):
        idx = torch.as_tensor(idx)
        x = torch.from_numpy(take(self.pixels, idx.numpy())) if self.lazy else self.pixels[idx]
        out = {"x": x, "y": self.labels[idx]}
        if self.soft is not None:
            out["soft"] = self.soft[idx]
        return out


def _collate(batch):
    return batch


def split_train_val(manifest: Manifest, val_fraction: float, seed: int) -> tuple[Manifest, Manifest, dict]:
    """Train rows and validation rows. Existing split=='val' rows are used as they are; otherwise
    validation is carved from the real train rows. Rows derived from a validation image are dropped."""
    from fersynth.data.splits import ensure_validation

    m = ensure_validation(manifest, val_fraction, seed)
    mdf = m.df
    val_mask = ((mdf["split"] == "val") & (mdf["label"] >= 0)).to_numpy()
    val_ids = set(mdf.loc[val_mask, "id"])
    derived = mdf["parent_id"].isin(val_ids).to_numpy() if "parent_id" in mdf.columns else np.zeros(len(mdf), bool)
    train_mask = ((mdf["split"] == "train") & (mdf["label"] >= 0)).to_numpy() & ~derived
    if val_mask.sum() == 0:
        raise FersynthError("validation split is empty", hint="raise --val-fraction or add labelled training images")
    if train_mask.sum() == 0:
        raise FersynthError("training split is empty after carving validation")
    info = {"train": int(train_mask.sum()), "val": int(val_mask.sum()), "dropped_derived_from_val": int(derived.sum())}
    return m.select(train_mask), m.select(val_mask), info


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _build_optimizer(model, cfg: TrainConfig):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or n.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


class Budget:
    """Progress of a run with a time budget: the fraction of the budget spent, or of the epochs
    done, whichever is further. The time left for a final validation (as long as the last one
    took) is kept out of the training budget, so that the run ends at its budget."""

    def __init__(self, seconds: float, total_steps: int, t_start: float, val_seconds: float = 0.0):
        self.seconds, self.total_steps, self.t_start, self.val_seconds = seconds, total_steps, t_start, val_seconds

    def spent(self) -> float:
        return time.perf_counter() - self.t_start

    def progress(self, step: int) -> float:
        train_budget = max(0.5 * self.seconds, self.seconds - self.val_seconds)
        return min(1.0, max(step / max(1, self.total_steps), self.spent() / train_budget))

    def estimate_epochs(self, done_steps: int, steps_per_epoch: int) -> int:
        """How many epochs the run will have at this pace (for the progress bar and the history)."""
        p = self.progress(done_steps)
        return max(1, math.ceil(done_steps / max(p, 1e-9) / steps_per_epoch)) if done_steps else 0


def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int, plan: dict, budget: Budget | None = None):
    """LR factor per step. Without a budget the schedule runs over `cfg.epochs` in steps; with one
    it runs over `Budget.progress` (onecycle and cosine anneal by time; step and none are by epoch)."""
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if budget is not None:
        return _budget_lambda(cfg, warm, plan, budget)

    def f(step):
        total = plan["epochs"] * steps_per_epoch
        if cfg.scheduler == "onecycle":
            peak = max(1, int(0.25 * total))
            if step < peak:
                return 0.04 + 0.96 * step / peak
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - peak) / max(1, total - peak)))) + 1e-3
        if step < warm:
            return (step + 1) / warm
        if cfg.scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
        if cfg.scheduler == "step":
            return cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)
        return 1.0

    return f


def _budget_lambda(cfg: TrainConfig, warm: int, plan: dict, budget: Budget):
    def f(step):
        p = budget.progress(step)
        if cfg.scheduler == "onecycle":
            if p < 0.25:
                return 0.04 + 0.96 * p / 0.25
            return 0.5 * (1 + math.cos(math.pi * (p - 0.25) / 0.75)) + 1e-3
        if step < warm:
            return (step + 1) / warm
        if cfg.scheduler == "cosine":
            p0 = plan.setdefault("warm_end", p if warm else 0.0)  # the progress at which warm-up ended
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (p - p0) / max(1e-9, 1 - p0))))
        if cfg.scheduler == "step":
            return cfg.gamma ** ((step // max(1, plan["steps_per_epoch"])) // cfg.step_size)
        return 1.0

    return f


def _class_weights(labels: np.ndarray, k: int, power: float = 1.0) -> torch.Tensor:
    """Per-class loss weights proportional to 1/count^power, scaled so that the average weight
    of a training image is 1 (power 1: n / (classes present * count), scikit-learn's "balanced")."""
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    w = np.where(counts > 0, np.maximum(counts, 1) ** -power, 0.0)
    w *= counts.sum() / (counts * w).sum()
    return torch.tensor(w, dtype=torch.float32)


def _quick_metrics(y: np.ndarray, probs: np.ndarray) -> dict:
    pred = probs.argmax(1)
    acc = float((pred == y).mean())
    present = np.unique(y)
    mca = float(np.mean([(pred[y == c] == c).mean() for c in present]))
    return {"accuracy": acc, "mean_class_accuracy": mca}


def train(
    manifest: Manifest,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    resume: bool = True,
    progress: bool = True,
    stop_after_epochs: int | None = None,
) -> dict:
    """Train on `manifest` (train rows; validation carved or given), write checkpoints into `out_dir`."""
    from accelerate import Accelerator

    from fersynth.models import create_model

    out = Path(out_dir)
    # Autocast is applied here rather than through accelerate's `mixed_precision`, whose
    # process-wide state can't change between the trainings of one process (a study runs many).
    precision, precision_note = resolve_precision(cfg.amp)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed)
    if manifest.meta.get("class_weighted") and not cfg.class_weighted:
        cfg = cfg.model_copy(update={"class_weighted": True})  # the `class-weighted` composition control
    num_classes = manifest.num_classes
    classes = manifest.class_names
    train_m, val_m, split_info = split_train_val(manifest, cfg.val_fraction, cfg.seed)

    tr_pix = equalize_pixels(train_m.pixels, cfg.augment.equalize)
    va_pix = equalize_pixels(val_m.pixels, cfg.augment.equalize)
    y_tr, y_va = train_m.labels, val_m.labels
    soft = None
    if cfg.loss == "soft":
        if "soft_label" not in train_m.df.columns:
            raise FersynthError("loss 'soft' needs a soft_label column", hint="ingest FER+ votes or use loss ce")
        soft = np.stack([_soft_row(s, y, num_classes) for s, y in zip(train_m.df["soft_label"], y_tr)])

    model = create_model(cfg.model, num_classes=num_classes, in_chans=cfg.in_chans, img_size=cfg.img_size,
                         pretrained_path=cfg.pretrained_path)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = _build_optimizer(model, cfg)
    ds = PixelDataset(tr_pix, y_tr, soft)
    world = acc.num_processes
    per_proc_bs = max(1, cfg.batch_size // world)
    sampler_gen = torch.Generator()
    loader = DataLoader(ds, batch_size=per_proc_bs, shuffle=True, drop_last=len(ds) > per_proc_bs * world,
                        collate_fn=_collate, generator=sampler_gen, num_workers=0)
    steps_per_epoch = math.ceil(len(ds) / (per_proc_bs * world)) if not loader.drop_last else len(ds) // (per_proc_bs * world)
    # `plan`: the epochs the schedule runs over; with a time budget, the budget's progress instead.
    plan = {"epochs": cfg.epochs, "steps_per_epoch": max(1, steps_per_epoch)}
    budget = None
    if cfg.max_minutes is not None:
        budget = Budget(cfg.max_minutes * 60, cfg.epochs * max(1, steps_per_epoch), time.perf_counter())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, max(1, steps_per_epoch), plan, budget))
    model, opt, loader, sched = acc.prepare(model, opt, loader, sched)
    weights = _class_weights(y_tr, num_classes, cfg.class_weight_power).to(acc.device) if cfg.class_weighted else None
    augment = BatchAugment(cfg.augment)

    meta_base = {
        "architecture": cfg.model, "num_classes": num_classes, "classes": classes, "in_chans": cfg.in_chans,
        "img_size": cfg.img_size, "model_kwargs": {},
        "preprocessing": {"equalize": cfg.augment.equalize, "normalize": "x/127.5-1", "tta": cfg.tta,
                          "source_shape": list(manifest.image_shape)},
        "config": cfg.model_dump(mode="json"), "split": split_info,
        "val_ids_sha": _ids_digest(val_m.df["id"]), "precision": precision,
    }
    history: list[dict] = []
    start_epoch, best, best_epoch, bad_epochs, elapsed = 0, -1.0, -1, 0, 0.0
    state_path = out / STATE_FILE
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cfg.model_dump(mode="json"), out / "config.json")
    if resume and state_path.is_file():
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        if st.get("config") != json.dumps(cfg.model_dump(mode="json"), sort_keys=True):
            raise FersynthError(f"{out}: holds a run with another config", hint="use a new --out or pass --no-resume")
        acc.unwrap_model(model).load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        start_epoch, best, best_epoch, bad_epochs = st["epoch"] + 1, st["best"], st["best_epoch"], st["bad_epochs"]
        elapsed = st["elapsed"]
        history = json.loads(st["history"])
        plan.update(json.loads(st.get("plan", "{}")))
    t_start = time.perf_counter() - elapsed
    if budget is not None:
        budget.t_start, budget.val_seconds = t_start, plan.get("val_seconds", 0.0)
    bar = _progress(progress and acc.is_main_process)
    stopped = "epochs"
    with bar:
        if precision_note and acc.is_main_process:
            bar.console.print(precision_note)
        task = bar.add_task("train", total=plan["epochs"] * steps_per_epoch, completed=start_epoch * steps_per_epoch)
        step = start_epoch * steps_per_epoch
        spent = False  # the budget ran out mid-epoch: this epoch's validation is the last
        for epoch in range(start_epoch, cfg.epochs):
            if budget is not None and (spent or budget.progress(step) >= 1.0):
                stopped = "time_budget"
                break
            if stop_after_epochs is not None and epoch >= stop_after_epochs:
                stopped = "interrupted"
                break
            torch.manual_seed(cfg.seed * 100_003 + epoch)
            sampler_gen.manual_seed(cfg.seed * 1_000_003 + epoch)
            aug_gen = torch.Generator().manual_seed(cfg.seed * 10_007 + epoch * 31 + acc.process_index)
            model.train()
            tot_loss, tot_correct, tot_n = 0.0, 0, 0
            for batch in loader:
                x = to_model_input(batch["x"].to(acc.device), cfg.img_size, cfg.in_chans)
                x = augment(x, aug_gen)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = batch["y"].to(acc.device)
                with torch.autocast(acc.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    logits = model(x)
                    if soft is not None:
                        target = batch["soft"].to(acc.device)
                        if cfg.label_smoothing:
                            target = target * (1 - cfg.label_smoothing) + cfg.label_smoothing / num_classes
                        loss = -(target * F.log_softmax(logits.float(), 1)).sum(1).mean()
                    else:
                        loss = F.cross_entropy(logits.float(), y, weight=weights, label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                acc.backward(loss)
                opt.step()
                sched.step()
                step += 1
                n = y.shape[0]
                tot_loss += loss.item() * n
                tot_correct += int((logits.argmax(1) == y).sum())
                tot_n += n
                bar.update(task, advance=1, description=f"epoch {epoch + 1}/{plan['epochs']} loss {tot_loss / tot_n:.3f} acc {tot_correct / tot_n:.3f}")
                if budget is not None and budget.progress(step) >= 1.0:
                    spent = True  # mid-epoch: validate and stop (a faster validation must not reopen the budget)
                    break
            model_eval = acc.unwrap_model(model)
            t_val = time.perf_counter()
            # va_pix is equalised already; the rest is the one inference path
            val_pre = Preprocessing(cfg.img_size, cfg.in_chans, "none", cfg.tta)
            probs = Predictor(model_eval, classes, val_pre, device=str(acc.device)).predict_proba(va_pix)
            vm = _quick_metrics(y_va, probs)
            plan["val_seconds"] = time.perf_counter() - t_val
            rec = {"epoch": epoch + 1, "train_loss": tot_loss / max(1, tot_n), "train_accuracy": tot_correct / max(1, tot_n),
                   "val_accuracy": vm["accuracy"], "val_mean_class_accuracy": vm["mean_class_accuracy"],
                   "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t_start}
            if budget is not None:
                budget.val_seconds = plan["val_seconds"]
                rec["budget_progress"] = 1.0 if spent else round(budget.progress(step), 4)
                plan["epochs"] = rec["planned_epochs"] = max(epoch + 1, budget.estimate_epochs(step, steps_per_epoch))
                bar.update(task, total=plan["epochs"] * steps_per_epoch)
            history.append(rec)
            score = vm[cfg.monitor]
            improved = score > best
            if improved:
                best, best_epoch, bad_epochs = score, epoch + 1, 0
            else:
                bad_epochs += 1
            if acc.is_main_process:
                bar.console.print(
                    f"epoch {epoch + 1}: loss {rec['train_loss']:.4f} train acc {rec['train_accuracy']:.4f} "
                    f"val acc {vm['accuracy']:.4f} val mca {vm['mean_class_accuracy']:.4f}" + (" *" if improved else "")
                )
                if improved:
                    save_checkpoint(model_eval, dict(meta_base, epoch=epoch + 1, val_metrics=vm), out / "best")
                _save_state(state_path, model_eval, opt, sched, cfg, epoch, best, best_epoch, bad_epochs,
                            time.perf_counter() - t_start, history, plan)
                kill_point("train-epoch")
            acc.wait_for_everyone()
            if cfg.patience is not None and bad_epochs >= cfg.patience:
                stopped = "early_stopping"
                break
    summary = {"best_epoch": best_epoch, f"best_val_{cfg.monitor}": best, "epochs_run": len(history),
               "stopped": stopped, "train_seconds": time.perf_counter() - t_start, "precision": precision,
               "split": split_info,
               "history": history, "checkpoint": str(out / "best.safetensors")}
    if acc.is_main_process:
        write_json_atomic(summary, out / "train_summary.json")
    return summary


def resolve_precision(amp: str) -> tuple[str, str | None]:
    """The autocast precision ("bf16" or "no") for a config's `amp`, and a note when a request can't be met.

    bf16 autocast is only worth it where the hardware computes in bf16: a CUDA GPU that supports
    it, or a CPU whose oneDNN reports native bf16 (AVX512-BF16, AMX). Elsewhere it is emulated
    and slower than fp32, so the run trains in fp32 and says so. bf16 needs no loss scaling.
    """
    if amp == "no":
        return "no", None
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "bf16", None
        return "no", "amp: this GPU has no bf16; training in fp32"
    if amp == "auto":
        return "no", None
    if cpu_has_native_bf16():
        return "bf16", None
    return "no", "amp bf16: this CPU has no native bf16 (AVX512-BF16 or AMX); training in fp32"


def cpu_has_native_bf16() -> bool:
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _soft_row(s, y, k):
    if s is None or (isinstance(s, float) and math.isnan(s)):
        v = np.zeros(k, np.float32)
        v[y] = 1
        return v
    v = np.asarray(s, dtype=np.float32)[:k]
    return v / v.sum() if v.sum() > 0 else np.eye(k, dtype=np.float32)[y]


def _ids_digest(ids) -> str:
    import hashlib

    return hashlib.sha1("\n".join(sorted(map(str, ids))).encode()).hexdigest()[:16]


def _save_state(path: Path, model, opt, sched, cfg, epoch, best, best_epoch, bad_epochs, elapsed, history,
                plan: dict):
    with atomic_open(path, "wb") as f:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "config": json.dumps(cfg.model_dump(mode="json"), sort_keys=True), "epoch": epoch, "best": best,
                    "best_epoch": best_epoch, "bad_epochs": bad_epochs, "elapsed": elapsed,
                    "history": json.dumps(history), "plan": json.dumps(plan)}, f)


def _progress(enabled: bool):
    from fersynth.progress import progress_bar

    return progress_bar(enabled)
