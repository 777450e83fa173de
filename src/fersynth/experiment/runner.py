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
from fersynth.experiment.config import ArmConfig, ExperimentConfig, dump_config
from fersynth.generate.registry import GenerationSpec, get_generator_entry
from fersynth.labels import CLASSES

REAL_STAGE = "data"
# The strategy parameters every arm carried before strategies had their own configs: in the
# compose key, so that studies from then keep their compose, train and eval stages cached.
LEGACY_ARM_KEYS = {"generator": None, "n": None, "rho": None, "k": None, "fraction": None}


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


def generator_model_key(g: GenerationSpec, data_key: str) -> dict:
    """The cache key of a generator's training: kind, real data, training settings, device, and the
    fingerprints of any other files it learns from (`GenerationSpec.train_files`, e.g. `agree_with`)."""
    key = {"stage": f"{g.kind}-train/1", "data": data_key, "config": g.train_identity(), "device": g.device}
    if files := g.train_files():
        key["files"] = [fingerprint(f) for f in files]
    return key


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
        for arm in cfg.arm_order():
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
            from fersynth.data.profile import study_data

            m, prof = study_data(d.path, d.format, d.size, d.test_subsets, d.quality, d.val_fraction, d.split_seed,
                                 progress=self.progress)
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
               "arm": {**LEGACY_ARM_KEYS, **arm.model_dump(mode="json", exclude={"train", "name", "verified"})},
               "seed": seed}

        def fn(out: Path):
            from fersynth.compose import compose

            syn = Manifest.load(pool[0]) if pool else None
            m = compose(arm.strategy_config(), self.real, syn, seed=seed, val_fraction=self.cfg.data.val_fraction)
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
    def _arm_ckpt(self, why: str, arm: str | None = None) -> tuple[Path, str]:
        """The first-seed checkpoint of `arm` (default: the baseline) and its stage key."""
        name, s0 = arm or self.cfg.baseline_arm, self.cfg.seeds[0]
        sid = f"train-{name}-s{s0}"
        if (name, s0) not in self.state.trains:
            what = "the baseline" if name == self.cfg.baseline_arm else f"arm {name}'s"
            raise StageFailed(sid, f"{why} needs {what} checkpoint, which did not train")
        return self.state.trains[(name, s0)], self.state.keys[sid]

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

    def stage_generator_model(self, name: str, g: GenerationSpec) -> tuple[Path | None, str | None]:
        """The weights of generator `name`: the given `weights`, or trained on the real training rows
        (once for the generators that share its training settings: `ExperimentConfig.model_owner`)."""
        sid = f"gen-{self.cfg.model_owner(name)}-model"
        entry = get_generator_entry(g.kind)
        if g.weights:
            if not Path(g.weights).exists():
                self._fail(sid, f"{g.weights}: generator weights not found (generators.{name}.weights)")
            try:
                if entry.check_weights:
                    entry.check_weights(g.weights)
            except FersynthError as e:
                self._fail(sid, str(e))
            self.state.keys[sid] = f"weights:{json.dumps({'weights': fingerprint(g.weights)}, sort_keys=True)}"
            return Path(g.weights), self.state.keys[sid]
        if entry.train is None:  # a generator that brings its own model (procedural, or weights it knows)
            return None, None
        key = generator_model_key(g, self.state.keys[REAL_STAGE])

        def fn(out: Path):
            info = entry.train(g, self.real.where(split="train"), out / "weights", self.progress) or {}
            return {k: info[k] for k in ("train_seconds", "steps") if k in info}

        d = self._stage(sid, key, fn)
        return d / "weights", self.state.keys[sid]

    def stage_images(self, name: str) -> tuple[Path, str]:
        """The generator's images: `prepare_generation`, as `fersynth generate` runs it."""
        g = self.cfg.generators[name]
        sid = f"gen-{name}-images"
        real = self.real
        weights, wkey = self.stage_generator_model(name, g)
        guide = self.cfg.guide_arm(name)
        classifier, ckey = self._arm_ckpt(f"generator {name} (guided)", guide) if guide else (None, None)
        # the guide is in the key as its checkpoint's key (`classifier`)
        key = {"stage": "generate/2", "model": wkey, "data": self.state.keys[REAL_STAGE], "classifier": ckey,
               "gen": g.model_dump(mode="json", exclude={"train", "weights", "device", "guide"}),
               "shape": list(real.image_shape)}

        def fn(out: Path):
            from fersynth.faces.convert import DomainSpec
            from fersynth.generate.base import run_generation
            from fersynth.generate.metrics import class_grid
            from fersynth.generate.registry import prepare_generation

            gen, items = prepare_generation(g, real, weights, classifier)
            domain = DomainSpec(size=real.image_shape[0], gray=real.pixels.ndim == 3)
            s = run_generation(gen, items, out, domain=domain, dataset=f"synthetic-{name}",
                               settings={"generator": name, **g.model_dump(mode="json", exclude={"train"})},
                               batch_size=g.batch_size, shard_size=g.shard_size, progress=self.progress)
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
                p, k = self._arm_ckpt(f"verification of {name}")
                experts.append(str(p))
                ekeys.append(k)
            else:
                if not Path(e).exists():
                    self._fail(sid, f"{e}: expert model not found (verify.experts)")
                experts.append(e)
                ekeys.append(json.dumps(fingerprint(e), sort_keys=True))
        key = {"stage": "verify/1", "images": ikey, "experts": ekeys, "policy": v.policy.model_dump(exclude_unset=True),
               "test_reference": v.test_reference, "data": self.state.keys[REAL_STAGE]}
        if v.calibration.enabled:  # without calibration the verdicts, and so the key, stay as before
            key["calibration"] = v.calibration.model_dump()

        def fn(out: Path):
            from fersynth.verify.experts import load_expert
            from fersynth.verify.run import verify

            syn = Manifest.load(images / "manifest")
            ex = [load_expert(p) for p in experts]
            ref = self.real if v.test_reference else None
            _, rep = verify(syn, ex, v.policy, ref, real=self.real, calibration=v.calibration, out_dir=out / "verified",
                            progress=self.progress)
            (out / "verify.json").write_text(json.dumps(rep, indent=2, default=_json))
            return {"counts": rep["counts"]}

        d = self._stage(sid, key, fn)
        return d / "verified", self.state.keys[sid]


def run_experiment(cfg: ExperimentConfig, out: str | os.PathLike | None = None, progress: bool = True,
                   console=None) -> dict:
    return Runner(cfg, out, progress, console).run()
