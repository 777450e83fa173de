"""`fersynth run`: the whole study as a graph of cached stages.

    data ─▶ baseline arm (seeds) ─▶ generator model ─▶ images ─▶ verify ─▶ compose (arm, seed)
         └▶ cross-dataset test sets                                         └▶ train ─▶ evaluate

Validation is carved once from the real training rows (seeded, stratified, duplicate groups
kept together) and shared by every arm and seed, so arms differ only in what they add to the
training rows. Generators learn from the remaining training rows only; training rows with an
exact or near-duplicate in the test split are left out of training (counted in the profile).

Every stage is cached by a hash of its config and its inputs' hashes (`cache.StageCache`): a
rerun does only what changed, and an interrupted stage resumes. A stage that fails is
reported with its reason; the arms that needed it are reported as not run and the others go on.
One run at a time writes a run folder (`lock.RunLock`); it first sweeps the temporary files
that a killed run left there.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fersynth import __version__
from fersynth.atomic import DISK_ERRORS, atomic_open, write_json_atomic
from fersynth.atomic import json_default as _json
from fersynth.data.manifest import Manifest
from fersynth.errors import FersynthError
from fersynth.experiment.cache import StageCache, fingerprint
from fersynth.experiment.config import ArmConfig, ExperimentConfig, GeneratorConfig, dump_config
from fersynth.labels import CLASSES

REAL_STAGE = "data"


class StageFailed(Exception):
    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason = stage, reason


@dataclass
class RunState:
    """What the runner learnt: stage keys, failures, and the evaluations for the report."""

    out: Path
    keys: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # stage id -> reason
    not_run: dict[str, str] = field(default_factory=dict)  # arm -> reason
    evals: list[dict] = field(default_factory=list)  # {arm, seed, test_set, dir}
    trains: dict[tuple[str, int], Path] = field(default_factory=dict)
    composes: dict[tuple[str, int], dict] = field(default_factory=dict)
    generators: dict[str, dict] = field(default_factory=dict)


class Runner:
    def __init__(self, cfg: ExperimentConfig, out: str | os.PathLike | None = None, progress: bool = True,
                 console=None):
        from rich.console import Console

        self.cfg = cfg
        self.out = Path(out) if out is not None else Path("runs") / cfg.name
        self.progress = progress
        self.console = console or Console(highlight=False)
        self.out.mkdir(parents=True, exist_ok=True)
        self._log_file = self.out / "run.log"
        self.cache = StageCache(self.out, log=self.log)
        self.state = RunState(self.out)
        self._real: Manifest | None = None
        self._tests: dict[str, Manifest] = {}

    # ------------------------------------------------------------------ logging
    def log(self, msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        self.console.print(line, markup=False)
        with open(self._log_file, "a") as f:
            f.write(line + "\n")

    def _stage(self, stage_id: str, key_obj, fn) -> Path:
        """Run a cached stage; a failure is recorded and raised as StageFailed."""
        try:
            d, key = self.cache.run(stage_id, key_obj, fn)
        except FersynthError as e:
            self._fail(stage_id, str(e))
        except (KeyboardInterrupt, SystemExit):
            raise
        except OSError as e:
            if e.errno in DISK_ERRORS:  # a full disk or an unwritable folder stops every stage alike
                raise
            self._stage_bug(stage_id, e)
        except Exception as e:  # a bug or an environment problem: keep the others going, log the traceback
            self._stage_bug(stage_id, e)
        self.state.keys[stage_id] = key
        return d

    def _stage_bug(self, stage_id: str, e: Exception):
        logs = self.out / "logs"
        logs.mkdir(exist_ok=True)
        (logs / f"{stage_id}.log").write_text(traceback.format_exc())
        first = (str(e).strip().splitlines() or [""])[0][:200]
        self._fail(stage_id, f"{type(e).__name__}: {first} (traceback in logs/{stage_id}.log)")

    def _fail(self, stage_id: str, reason: str):
        self.state.failed[stage_id] = reason
        self.log(f"FAILED      {stage_id}: {reason}")
        raise StageFailed(stage_id, reason)

    # ------------------------------------------------------------------ the graph
    def run(self) -> dict:
        """Run the study while holding the run folder's lock (a second run there is refused)."""
        from fersynth.atomic import sweep_temporaries
        from fersynth.experiment.lock import RunLock, describe

        with RunLock(self.out) as lock:
            if lock.previous:
                self.log(f"took over the lock of a run that is gone ({describe(lock.previous)})")
            swept = sweep_temporaries(self.out)
            if swept:
                self.log(f"removed {len(swept)} temporary file(s) left by an interrupted run")
            return self._run()

    def _run(self) -> dict:
        t0 = time.perf_counter()
        cfg = self.cfg
        with atomic_open(self.out / "config.yaml") as f:
            f.write(dump_config(cfg))
        self.log(f"fersynth {__version__}: experiment '{cfg.name}' -> {self.out}")
        try:
            self.stage_data()
        except StageFailed as e:
            raise FersynthError(f"nothing can run: stage {e.stage} failed ({e.reason})") from None
        for t in cfg.test_sets:
            try:
                self.stage_test_set(t)
            except StageFailed:
                pass
        base = cfg.arm(cfg.baseline_arm)
        arms = [base] + [a for a in cfg.arms if a.name != base.name]
        for arm in arms:
            self.run_arm(arm)
        if all(a.name in self.state.not_run for a in cfg.arms):
            self._write_state(time.perf_counter() - t0)
            raise FersynthError("no arm could run: " + "; ".join(f"{k}: {v}" for k, v in self.state.not_run.items()))
        seconds = time.perf_counter() - t0
        self._write_state(seconds)
        from fersynth.experiment.report import write_report

        paths = write_report(self.out, cfg, self.state, seconds)
        self.log(f"report -> {paths['html']}")
        hits = len(self.cache.hits)
        self.log(f"done in {seconds / 60:.1f} min: {len(self.cache.ran)} stages run, {hits} cache hits, "
                 f"{len(self.state.failed)} failed")
        return {"seconds": seconds, "report": paths, "failed": dict(self.state.failed),
                "not_run": dict(self.state.not_run), "cache_hits": list(self.cache.hits),
                "ran": list(self.cache.ran)}

    def _write_state(self, seconds: float) -> None:
        s = self.state
        obj = {"seconds": round(seconds, 1), "failed": s.failed, "not_run": s.not_run,
               "cache_hits": self.cache.hits, "ran": self.cache.ran, "keys": s.keys}
        write_json_atomic(obj, self.out / "state.json")

    def run_arm(self, arm: ArmConfig) -> None:
        cfg = self.cfg
        try:
            pool = None
            if arm.generator:
                pool = self.stage_pool(arm.generator, verified=arm.verified)
            for seed in cfg.seeds:
                train_m, ckey = self.stage_compose(arm, seed, pool)
                ck = self.stage_train(arm, seed, train_m, ckey)
                self.stage_eval(arm, seed, ck, "test")
                for t in cfg.test_sets:
                    if f"test-{t.name}" in self.state.failed:
                        continue
                    try:
                        self.stage_eval(arm, seed, ck, t.name)
                    except StageFailed:
                        pass
        except StageFailed as e:
            self.state.not_run[arm.name] = f"stage {e.stage} failed: {e.reason}"
            self.log(f"not run     arm {arm.name}: {self.state.not_run[arm.name]}")

    # ------------------------------------------------------------------ data
    def stage_data(self) -> Manifest:
        d = self.cfg.data
        if not Path(d.path).exists():
            self._fail(REAL_STAGE, f"{d.path}: no dataset there (data.path)")
        key = {"stage": "data/1", "data": d.model_dump(mode="json"), "fingerprint": fingerprint(d.path)}

        def fn(out: Path):
            from fersynth.data.duplicates import leakage_report
            from fersynth.data.formats import IngestOptions
            from fersynth.data.ingest import load_any
            from fersynth.data.profile import profile
            from fersynth.data.splits import carve_validation

            m, _ = load_any(d.path, d.format, IngestOptions(size=d.size), progress=self.progress)
            if not (m.df["split"] == "train").any():
                raise FersynthError(f"{d.path}: no training rows", hint="the data needs a train split")
            if not (m.df["split"] == "test").any():
                raise FersynthError(f"{d.path}: no test rows", hint="the data needs a test split to evaluate on")
            if d.test_subsets:
                known = set(m.df.loc[m.df["split"] == "test", "subset"])
                bad = [s for s in d.test_subsets if s not in known]
                if bad:
                    raise FersynthError(f"data.test_subsets: '{bad[0]}' is not a test subset",
                                        hint=f"test subsets: {', '.join(sorted(map(str, known)))}")
            m, prof = profile(m, quality=d.quality, duplicates=True)
            prof["leakage"] = leakage_report(m.df)["summary"]
            # Training rows that share an exact / near-duplicate group with a test row are left out.
            df = m.df
            test_groups = set(df.loc[df["split"] == "test", "near_group"]) - {-1}
            tied = (df["split"] == "train") & df["near_group"].isin(test_groups) & (df["near_group"] >= 0)
            prof["train_rows_tied_to_test"] = int(tied.sum())
            m = m.select(~tied.to_numpy())
            m = carve_validation(m, d.val_fraction, d.split_seed)
            prof["split_rows"] = {s: int(n) for s, n in m.df["split"].value_counts().items()}
            from fersynth.data.profile import class_counts

            prof["split_counts"] = class_counts(m.df.assign(subset=m.df["split"]), m.num_classes)
            m.save(out / "manifest")
            (out / "profile.json").write_text(json.dumps(prof, indent=2, default=_json))
            return {"rows": len(m)}

        d_ = self._stage(REAL_STAGE, key, fn)
        self._real = Manifest.load(d_ / "manifest")
        return self._real

    @property
    def real(self) -> Manifest:
        if self._real is None:
            self._real = Manifest.load(self.cache.path(REAL_STAGE) / "manifest")
        return self._real

    def stage_test_set(self, t) -> Manifest:
        sid = f"test-{t.name}"
        path = t.path or self.cfg.data.path
        if not Path(path).exists():
            self._fail(sid, f"{path}: no dataset there (test_sets[{t.name}].path)")
        key = {"stage": "testset/1", "path": path, "format": t.format, "size": self.real.image_shape[0],
               "fingerprint": fingerprint(path)}

        def fn(out: Path):
            from fersynth.data.formats import IngestOptions
            from fersynth.data.ingest import load_any

            side = self.real.image_shape[0]
            mode = "gray" if self.real.pixels.ndim == 3 else "rgb"
            m, _ = load_any(path, t.format, IngestOptions(size=side, mode=mode), progress=self.progress)
            if not (m.df["split"] == "test").any():
                m = Manifest(m.df.assign(split="test"), m.pixels, m.root, m.meta)  # a folder of test images
            m.save(out / "manifest")
            return {"rows": len(m)}

        d = self._stage(sid, key, fn)
        self._tests[t.name] = Manifest.load(d / "manifest")
        return self._tests[t.name]

    # ------------------------------------------------------------------ training
    def train_config(self, arm: ArmConfig, seed: int):
        from fersynth.train import resolve_config

        over = dict(self.cfg.train.set)
        over.update(arm.train)
        over["seed"] = seed
        try:
            return resolve_config(self.cfg.train.preset, overrides=over)
        except FersynthError as e:
            raise FersynthError(f"arm {arm.name}: train: {e.message}", hint=e.hint) from None

    def stage_compose(self, arm: ArmConfig, seed: int, pool: tuple[Path, str] | None) -> tuple[Path, str]:
        sid = f"compose-{arm.name}-s{seed}"
        key = {"stage": "compose/1", "data": self.state.keys[REAL_STAGE], "pool": pool[1] if pool else None,
               "arm": arm.model_dump(mode="json", exclude={"train", "name", "verified"}), "seed": seed}

        def fn(out: Path):
            from fersynth.compose import compose

            real = self.real
            if arm.strategy == "real":
                m = Manifest(real.df, real.pixels, real.root, dict(real.meta, compose={"strategy": "real"}))
            else:
                syn = Manifest.load(pool[0]) if pool else None
                params = {k: getattr(arm, k) for k in ("n", "rho", "k", "fraction") if getattr(arm, k) is not None}
                m = compose(arm.strategy, real, syn, seed=seed, allow_short=arm.allow_short,
                            val_fraction=self.cfg.data.val_fraction, **params)
            m.save(out / "manifest")
            rep = dict(m.meta.get("compose") or {})
            df = m.df
            train = df["split"] == "train"
            rep["train_rows"] = int(train.sum())
            rep["train_synthetic"] = int((train & (df["source"] != "real")).sum())
            rep["train_counts"] = {CLASSES[c]: int(n) for c, n in
                                   zip(*np.unique(df.loc[train, "label"], return_counts=True), strict=True) if c >= 0}
            (out / "compose.json").write_text(json.dumps(rep, indent=2, default=_json))
            return {"train_rows": rep["train_rows"]}

        d = self._stage(sid, key, fn)
        self.state.composes[(arm.name, seed)] = json.loads((d / "compose.json").read_text())
        return d / "manifest", self.state.keys[sid]

    def stage_train(self, arm: ArmConfig, seed: int, manifest_dir: Path, compose_key: str) -> Path:
        sid = f"train-{arm.name}-s{seed}"
        tcfg = self.train_config(arm, seed)
        key = {"stage": "train/1", "compose": compose_key, "config": tcfg.model_dump(mode="json")}

        def fn(out: Path):
            from fersynth.train.loop import train

            m = Manifest.load(manifest_dir)
            s = train(m, tcfg, out, resume=True, progress=self.progress)
            return {"train_seconds": round(s["train_seconds"], 1), "best_epoch": s["best_epoch"]}

        d = self._stage(sid, key, fn)
        self.state.trains[(arm.name, seed)] = d
        return d

    def stage_eval(self, arm: ArmConfig, seed: int, ckpt_dir: Path, test_set: str) -> Path:
        sid = f"eval-{arm.name}-s{seed}-{test_set}"
        if test_set == "test":
            spec = {"subsets": self.cfg.data.test_subsets}
            data_key = self.state.keys[REAL_STAGE]
        else:
            t = next(t for t in self.cfg.test_sets if t.name == test_set)
            spec = t.model_dump(mode="json", exclude={"name"})
            data_key = self.state.keys[f"test-{test_set}"]
        key = {"stage": "eval/1", "train": self.state.keys[f"train-{arm.name}-s{seed}"], "data": data_key,
               "spec": spec, "n_boot": self.cfg.n_boot}

        def fn(out: Path):
            from fersynth.evaluate.runner import evaluate_checkpoint

            if test_set == "test":
                res = evaluate_checkpoint(ckpt_dir, self.real, split="test", subsets=self.cfg.data.test_subsets,
                                          n_boot=self.cfg.n_boot, out_dir=out)
            else:
                m = self._tests[test_set]
                res = evaluate_checkpoint(ckpt_dir, m, split="test", subsets=spec["subsets"], n_boot=self.cfg.n_boot,
                                          out_dir=out, ferplus=spec["ferplus"], label_map=spec["label_map"] or None,
                                          report_unseen=spec["report_unseen"])
            return {"accuracy": res["accuracy"], "mean_class_accuracy": res["mean_class_accuracy"]}

        d = self._stage(sid, key, fn)
        self.state.evals.append({"arm": arm.name, "seed": seed, "test_set": test_set, "dir": d})
        return d

    # ------------------------------------------------------------------ generators
    def _baseline_ckpt(self, why: str) -> tuple[Path, str]:
        base, s0 = self.cfg.baseline_arm, self.cfg.seeds[0]
        if (base, s0) not in self.state.trains:
            raise StageFailed(f"train-{base}-s{s0}", f"{why} needs the baseline checkpoint, which did not train")
        sid = f"train-{base}-s{s0}"
        return self.state.trains[(base, s0)], self.state.keys[sid]

    def stage_pool(self, name: str, verified: bool = True) -> tuple[Path, str]:
        """The synthetic pool of generator `name`: its images, verified when verification is on
        and the arm does not ask for them unverified (the pool's key tells the two apart)."""
        if name not in self.state.generators:
            try:
                images, ikey = self.stage_images(name)
                g = {"images": images, "raw_pool": images / "manifest", "raw_key": ikey}
                if self.cfg.verify.enabled:
                    g["pool"], g["pool_key"] = self.stage_verify(name, images, ikey)
                else:
                    g["pool"], g["pool_key"] = g["raw_pool"], ikey
            except StageFailed as e:
                self.state.generators[name] = {"stage": e.stage, "error": e.reason}
                raise
            self.state.generators[name] = g
        g = self.state.generators[name]
        if "error" in g:
            raise StageFailed(g["stage"], g["error"])
        return (g["pool"], g["pool_key"]) if verified else (g["raw_pool"], g["raw_key"])

    def stage_generator_model(self, name: str, g: GeneratorConfig) -> tuple[Path, str]:
        sid = f"gen-{name}-model"
        if g.weights:
            if not Path(g.weights).exists():
                self._fail(sid, f"{g.weights}: generator weights not found (generators.{name}.weights)")
            if g.kind == "own":
                from fersynth.generate.own import check_weights_dir

                try:
                    check_weights_dir(g.weights)
                except FersynthError as e:
                    self._fail(sid, str(e))
            key = {"weights": fingerprint(g.weights)}
            self.state.keys[sid] = f"weights:{json.dumps(key, sort_keys=True)}"
            return Path(g.weights), self.state.keys[sid]
        from fersynth.generate.own import own_config

        try:
            ocfg = own_config({"seed": g.seed, **g.train}, where=f"generators.{name}.train")
        except FersynthError as e:
            self._fail(sid, str(e))
        key = {"stage": "own-train/1", "data": self.state.keys[REAL_STAGE], "config": ocfg.identity(),
               "device": g.device}

        def fn(out: Path):
            from fersynth.generate.own import train_own

            info = train_own(self.real.where(split="train"), ocfg, out / "weights", progress=self.progress,
                             device=g.device)
            return {"train_seconds": info["train_seconds"], "steps": info["steps"]}

        d = self._stage(sid, key, fn)
        return d / "weights", self.state.keys[sid]

    def stage_images(self, name: str) -> tuple[Path, str]:
        g = self.cfg.generators[name]
        sid = f"gen-{name}-images"
        real = self.real
        if g.kind == "own":
            weights, wkey = self.stage_generator_model(name, g)
        else:
            if not Path(g.weights).exists():
                self._fail(sid, f"{g.weights}: Stable Diffusion weights not found (generators.{name}.weights)")
            weights, wkey = Path(g.weights), json.dumps(fingerprint(g.weights), sort_keys=True)
        classifier = None
        if g.mode == "guided":
            classifier, ckey = self._baseline_ckpt(f"generator {name} (guided)")
        else:
            ckey = None
        key = {"stage": "generate/1", "model": wkey, "data": self.state.keys[REAL_STAGE], "classifier": ckey,
               # cfg_scale_per_class joins the key only when set, so that older studies stay cached
               "gen": g.model_dump(mode="json", exclude={"train", "weights", "device", "batch_size"}
                                   | (set() if g.cfg_scale_per_class else {"cfg_scale_per_class"})),
               "shape": list(real.image_shape),
               "sampler": g.scheduler or ("ddpm" if g.kind == "own" else "pipeline default")}

        def fn(out: Path):
            from fersynth.faces.convert import DomainSpec
            from fersynth.generate.base import run_generation
            from fersynth.generate.own import plan_expand, plan_sample, source_rows

            k = real.num_classes
            domain = DomainSpec(size=real.image_shape[0], gray=real.pixels.ndim == 3)
            counts = _per_class(g.per_class, k)
            cfg_scale = g.cfg_scale if g.cfg_scale is not None else (2.0 if g.kind == "own" else 7.0)
            src = None
            if g.mode == "expand":
                src = source_rows(real, k, g.sources_per_class, g.seed)
            if g.kind == "own":
                from fersynth.generate.own import OwnGenerator

                class_cfg = {CLASSES.index(c): v for c, v in zip(_per_class_names(g.cfg_scale_per_class, k, "cfg_scale_per_class"),
                                                                   g.cfg_scale_per_class.values(), strict=True)}
                gen = OwnGenerator(weights, scheduler=g.scheduler or "ddpm", steps=g.steps, cfg_scale=cfg_scale,
                                   device=g.device, source=src, classifier=classifier, guidance=g.guidance,
                                   guidance_start=g.guidance_start, class_cfg=class_cfg)
                params = {"cfg_scale": cfg_scale, "steps": g.steps}
                if g.mode == "expand":
                    items = plan_expand(src, g.k, g.seed, dict(params, strength=g.strength))
                else:
                    items = _plan_counts(counts, lambda c, n: plan_sample(
                        [c], n, g.seed + 7919 * c, g.mode, dict(params, cfg_scale=class_cfg.get(c, cfg_scale))))
            else:
                from fersynth.generate.prompts import DEFAULT_NEGATIVE
                from fersynth.generate.sd import SdGenerator, plan_img2img, plan_prompts

                gen = SdGenerator(weights, arch=g.arch, config=g.config, scheduler=g.scheduler, steps=g.steps,
                                  cfg_scale=cfg_scale, device=g.device, source=src, classifier=classifier,
                                  guidance=g.guidance, guidance_start=g.guidance_start)
                pr = dict(g.prompts)
                neg = pr.get("negative", DEFAULT_NEGATIVE)
                params = {"cfg_scale": cfg_scale, "steps": g.steps}
                if g.mode == "expand":
                    items = plan_img2img(src, "expand", g.seed, dict(params, strength=g.strength), k=g.k,
                                         negative_prompt=neg, include_aus=pr.get("aus", True))
                else:
                    items = _plan_counts(counts, lambda c, n: plan_prompts(
                        [c], n, g.seed + 7919 * c, g.mode, pr.get("sampling", "balanced"), None, neg,
                        pr.get("aus", True), params))
            s = run_generation(gen, items, out, domain=domain, dataset=f"synthetic-{name}",
                               settings={"generator": name, **g.model_dump(mode="json", exclude={"train"})},
                               batch_size=g.batch_size, progress=self.progress)
            from fersynth.generate.metrics import class_grid

            class_grid(Manifest.load(out / "manifest"), out / "grid.png", per_class=10)
            return {"written": s.get("written"), "images_per_second": s.get("images_per_second")}

        d = self._stage(sid, key, fn)
        return d, self.state.keys[sid]

    def stage_verify(self, name: str, images: Path, ikey: str) -> tuple[Path, str]:
        sid = f"verify-{name}"
        v = self.cfg.verify
        experts, ekeys = [], []
        for e in v.experts:
            if e == "baseline":
                p, k = self._baseline_ckpt(f"verification of {name}")
                experts.append(str(p))
                ekeys.append(k)
            else:
                if not Path(e).exists():
                    self._fail(sid, f"{e}: expert model not found (verify.experts)")
                experts.append(e)
                ekeys.append(json.dumps(fingerprint(e), sort_keys=True))
        key = {"stage": "verify/1", "images": ikey, "experts": ekeys, "policy": v.policy,
               "test_reference": v.test_reference, "data": self.state.keys[REAL_STAGE]}
        if v.calibration.enabled:  # without calibration the verdicts, and so the key, stay as before
            key["calibration"] = v.calibration.model_dump()

        def fn(out: Path):
            from pydantic import ValidationError

            from fersynth.verify.experts import load_expert
            from fersynth.verify.policy import VerifyPolicy
            from fersynth.verify.run import verify

            try:
                policy = VerifyPolicy(**v.policy)
            except ValidationError as e:
                err = e.errors()[0]
                raise FersynthError(f"verify.policy.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
            syn = Manifest.load(images / "manifest")
            ex = [load_expert(p) for p in experts]
            ref = self.real if v.test_reference else None
            _, rep = verify(syn, ex, policy, ref, real=self.real, calibration=v.calibration, out_dir=out / "verified",
                            progress=self.progress)
            (out / "verify.json").write_text(json.dumps(rep, indent=2, default=_json))
            return {"counts": rep["counts"]}

        d = self._stage(sid, key, fn)
        return d / "verified", self.state.keys[sid]


def _per_class_names(names, k: int, what: str = "per_class") -> list[str]:
    """Canonical names of the class names of a per-class mapping; unknown ones are one clear error."""
    from fersynth.labels import canonical_name

    out = []
    for name in names:
        try:
            c = CLASSES.index(canonical_name(name))
        except (ValueError, FersynthError):
            raise FersynthError(f"{what}: unknown class '{name}'", hint=f"classes: {', '.join(CLASSES[:k])}") from None
        if c >= k:
            raise FersynthError(f"{what}: class '{name}' is not in the data")
        out.append(CLASSES[c])
    return out


def _per_class(spec, k: int) -> list[int]:
    if isinstance(spec, int):
        return [spec] * k
    out = [0] * k
    for name, n in zip(_per_class_names(spec, k), spec.values(), strict=True):
        out[CLASSES.index(name)] = int(n)
    return out


def _plan_counts(counts: list[int], plan_class):
    """Work items for `counts[c]` images of each class c, from `plan_class(c, n)`, indexed in order."""
    items = []
    for c, n in enumerate(counts):
        for it in plan_class(c, n) if n else []:
            it.index = len(items)
            items.append(it)
    return items


def run_experiment(cfg: ExperimentConfig, out: str | os.PathLike | None = None, progress: bool = True,
                   console=None) -> dict:
    return Runner(cfg, out, progress, console).run()
