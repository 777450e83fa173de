"""`fersynth run --backend ray`: the study's stage graph as Ray tasks, generation on Ray Data.

The run folder's stage cache (`stages/<id>/done.json` with a content key) stays the single source
of truth. Each Ray task builds its own `Runner` over the run folder (a shared filesystem on a
multi-node cluster) and calls the stage methods it owns; the upstream stages it passes through are
cache hits there. The driver holds the run folder's lock and submits tasks in dependency order:

    data ─┬▶ test set (each)
          ├▶ arms without a generator × seeds: train ─▶ eval (each test set)       concurrently
          ├▶ own generator model ─▶ images (Ray Data actor pool) ─▶ verify
          └▶ baseline × seeds ───────────┘ (verification needs its first seed; guided mode its guide
                                            arm's first seed, the baseline unless `guide` names another)
                                     pool ─▶ arms with that generator × seeds: train ─▶ eval

When every task is done the driver runs the ordinary local `Runner.run()` over the same folder:
every stage is a cache hit, and it writes `state.json`, `results.csv` and the report, so what the
Ray backend writes is the local backend's by construction. A stage that failed in a task
(FersynthError, or a bug: its traceback is in `logs/`) is not retried; the final pass reports it
exactly as a local run would (it is raised again there from the recorded reason, not rerun), and
the arms that needed it are reported as not run. A task whose worker dies (killed, out of memory)
is retried by Ray (`max_retries`) and resumes the stage it was in from the stage's own folder.

Ray is imported only here, and only when the Ray backend is asked for.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from fersynth.errors import FersynthError
from fersynth.experiment.cache import StageCache
from fersynth.experiment.config import ExperimentConfig
from fersynth.generate.registry import get_generator_entry

# The kinds of task, each with its own resource request (`--resources KIND.FIELD=VALUE`).
KINDS = ("data", "test_set", "gen_model", "images", "generate", "verify", "train", "eval")
FIELDS = ("num_cpus", "num_gpus", "memory", "threads", "concurrency")
_KIND_HELP = {
    "data": "ingest, profile and split the real data",
    "test_set": "ingest one cross-dataset test set",
    "gen_model": "train the own generator",
    "images": "plan the generation and merge its shards (the actors below do the work)",
    "generate": "each Ray Data actor that holds the generator (concurrency: how many)",
    "verify": "verify a generator's images",
    "train": "compose one arm x seed's training set and train it",
    "eval": "evaluate one checkpoint on one test set",
}


@dataclass
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int | None = None
    threads: int | None = None  # torch threads in the task (default: its CPUs, at least 1)
    concurrency: int | None = None  # generate only: actors in the pool (default: as many as the CPUs fit)

    def thread_count(self) -> int:
        return self.threads or max(1, math.floor(self.num_cpus))

    def remote_args(self) -> dict:
        out = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            out["num_gpus"] = self.num_gpus
        if self.memory:
            out["memory"] = self.memory
        return out


def _default_resources() -> dict[str, Resources]:
    r = {k: Resources() for k in KINDS}
    r["images"] = Resources(num_cpus=0.0, threads=1)  # it waits for the actors; it must not hold a CPU they need
    return r


@dataclass
class RayOptions:
    address: str | None = None  # an existing cluster; None starts a local instance
    num_cpus: float | None = None  # CPUs of a local instance (default: all cores)
    resources: dict[str, Resources] = field(default_factory=_default_resources)
    max_retries: int = 3  # of a task whose worker died
    ray_data: bool = True  # generation through a Ray Data actor pool (False: in the image task)

    def set(self, spec: str) -> None:
        """Apply one `KIND.FIELD=VALUE` (or `*.FIELD=VALUE` / `FIELD=VALUE` for every kind)."""
        if "=" not in spec:
            raise FersynthError(f"--resources '{spec}': expected KIND.FIELD=VALUE",
                                hint="e.g. --resources train.num_gpus=1 --resources '*.num_cpus=0.5'")
        lhs, value = (s.strip() for s in spec.split("=", 1))
        kind, _, name = lhs.rpartition(".")
        # `*` leaves the image task's CPUs, GPUs and memory alone: it waits for its actor pool, and a share of
        # the node held by it while it waits is a share its actors cannot have (on a small node: none at all)
        kinds = [k for k in KINDS if k != "images" or name in ("threads", "concurrency")] if kind in ("", "*") \
            else [kind]
        if kinds[0] not in KINDS:
            raise FersynthError(f"--resources {lhs}: unknown kind '{kind}'", hint=f"kinds: {', '.join(KINDS)}")
        if name not in FIELDS:
            raise FersynthError(f"--resources {lhs}: unknown field '{name}'", hint=f"fields: {', '.join(FIELDS)}")
        if name == "concurrency" and kinds != ["generate"]:
            raise FersynthError(f"--resources {lhs}: concurrency is a field of 'generate' (the actor pool)")
        try:
            v = _parse_value(name, value)
        except ValueError:
            raise FersynthError(f"--resources {lhs}: '{value}' is not a valid {name}",
                                hint="num_cpus / num_gpus: a number >= 0 (fractions allowed); memory: bytes or "
                                     "e.g. 4G; threads / concurrency: an integer >= 1") from None
        for k in kinds:
            setattr(self.resources[k], name, v)


def _parse_value(name: str, value: str):
    if name in ("num_cpus", "num_gpus"):
        v = float(value)
        if not v >= 0 or math.isinf(v):
            raise ValueError
        return v
    if name == "memory":
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?", value.strip(), re.IGNORECASE)
        if not m:
            raise ValueError
        scale = 1024 ** "KMGT".find(m.group(2).upper()) * 1024 if m.group(2) else 1
        v = int(float(m.group(1)) * scale)
        if v < 1:
            raise ValueError
        return v
    v = int(value)
    if v < 1:
        raise ValueError
    return v


def ray_options(address: str | None = None, num_cpus: float | None = None, resources: list[str] | None = None,
                max_retries: int = 3, ray_data: bool = True) -> RayOptions:
    if num_cpus is not None and num_cpus <= 0:
        raise FersynthError(f"--num-cpus must be > 0, got {num_cpus}")
    if max_retries < 0:
        raise FersynthError(f"--max-retries must be >= 0, got {max_retries}")
    o = RayOptions(address=address or None, num_cpus=num_cpus, max_retries=max_retries, ray_data=ray_data)
    for spec in resources or []:
        o.set(spec)
    return o


# ---------------------------------------------------------------------------------------- connecting
def import_ray():
    try:
        import ray
    except ImportError:
        raise FersynthError("--backend ray needs Ray, which is not installed",
                            hint='pip install "fersynth[ray]" (or pip install "ray[data]")') from None
    return ray


def _check_reachable(address: str) -> None:
    """An address that no process answers on is one clear line now, not a long wait inside Ray."""
    if address == "auto" or address.startswith("local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise FersynthError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379, ray://HOST:10001 or auto)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise FersynthError(f"--address {address}: no Ray cluster answers there ({e.strerror or e})",
                            hint="start one with `ray start --head` on that machine, or check host and port") from None


def connect(opts: RayOptions):
    """ray.init for the study; returns (ray, whether this call started or connected it)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    import logging

    # Ray's own start-up lines stay in its logs (/tmp/ray); the driver prints one line about the cluster.
    kwargs = {"log_to_driver": False, "include_dashboard": False, "logging_level": logging.ERROR}
    if opts.address:
        _check_reachable(opts.address)
        kwargs.pop("include_dashboard")
        try:
            ray.init(address=opts.address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise FersynthError(f"--address {opts.address}: cannot connect to Ray ({first})",
                                hint="is it a Ray cluster (`ray start --head`)? with token auth, set RAY_AUTH_TOKEN "
                                     "or start the cluster with RAY_AUTH_MODE=disabled") from None
    else:
        ray.init(num_cpus=opts.num_cpus, **kwargs)
    return ray, True


# ---------------------------------------------------------------------------------------- the cache
class _KnownFailures(StageCache):
    """The stage cache of a Ray task or of the final pass: a stage that already failed in this run is
    raised again with its recorded reason instead of being run again, and (final pass) the stages that
    Ray tasks ran count as run, not as cache hits."""

    def __init__(self, root, log, failed: dict[str, str], ran_elsewhere: set[str] | None = None):
        super().__init__(root, log=log)
        self.failed = dict(failed)
        self.ran_elsewhere = set(ran_elsewhere or ())

    def run(self, stage_id, key_obj, fn):
        if stage_id in self.failed:
            raise FersynthError(self.failed[stage_id])
        if stage_id in self.ran_elsewhere:
            from fersynth.atomic import digest

            key = digest(key_obj)
            if self.done(stage_id, key):
                self.ran.append(stage_id)
                return self.path(stage_id), key
        return super().run(stage_id, key_obj, fn)


# ---------------------------------------------------------------------------------------- the graph
def _needed_arms(cfg: ExperimentConfig, gen: str) -> dict[str, str | None]:
    """The arm whose first seed generator `gen`'s images (its guide) and its verification (the
    baseline, when it is an expert) need trained first; None where nothing is needed."""
    base = cfg.arm(cfg.baseline_arm)
    guide = cfg.guide_arm(gen)
    # an arm that itself draws from a generator cannot feed one: the stages say so
    return {"images": guide if guide and not cfg.arm(guide).generator else None,
            "verify": base.name if not base.generator and cfg.verify.enabled and "baseline" in cfg.verify.experts
            else None}


def build_graph(cfg: ExperimentConfig) -> dict[str, tuple[tuple, list[str], list[str]]]:
    """{job name: (job, dependencies, stage ids it owns)}, in a topological order."""
    g: dict[str, tuple[tuple, list[str], list[str]]] = {"data": (("data",), [], ["data"])}
    for t in cfg.test_sets:
        g[f"test:{t.name}"] = (("test_set", t.name), ["data"], [f"test-{t.name}"])
    base0 = f"train:{cfg.baseline_arm}:{cfg.seeds[0]}"
    arms = cfg.arm_order()
    pool_job: dict[str, str] = {}
    for a in arms:
        name = a.generator
        if not name or name in pool_job:
            continue
        gc = cfg.generators[name]
        need = _needed_arms(cfg, name)
        deps = ["data"]
        if get_generator_entry(gc.kind).train is not None and not gc.weights:  # it trains first
            owner = cfg.model_owner(name)  # one model for the generators that share its training settings
            g[f"model:{owner}"] = (("gen_model", owner), ["data"], [f"gen-{owner}-model"])
            deps.append(f"model:{owner}")
        guide = [f"train:{need['images']}:{cfg.seeds[0]}"] if need["images"] else []
        g[f"images:{name}"] = (("images", name), deps + guide, [f"gen-{name}-images"])
        pool_job[name] = f"images:{name}"
        if cfg.verify.enabled:
            g[f"verify:{name}"] = (("verify", name), [f"images:{name}"] + ([base0] if need["verify"] else []),
                                   [f"verify-{name}"])
            pool_job[name] = f"verify:{name}"
    for a in arms:
        for s in cfg.seeds:
            deps = ["data"] + ([pool_job[a.generator]] if a.generator else [])
            g[f"train:{a.name}:{s}"] = (("train", a.name, s), deps, [f"compose-{a.name}-s{s}", f"train-{a.name}-s{s}"])
            g[f"eval:{a.name}:{s}:test"] = (("eval", a.name, s, "test"), [f"train:{a.name}:{s}"],
                                            [f"eval-{a.name}-s{s}-test"])
            for t in cfg.test_sets:
                g[f"eval:{a.name}:{s}:{t.name}"] = (("eval", a.name, s, t.name),
                                                    [f"train:{a.name}:{s}", f"test:{t.name}"],
                                                    [f"eval-{a.name}-s{s}-{t.name}"])
    # jobs are in dependency order except that a pool may wait for the baseline's first training
    order, seen = [], set()

    def visit(n):
        if n in seen:
            return
        seen.add(n)
        for d in g[n][1]:
            visit(d)
        order.append(n)

    for n in list(g):
        visit(n)
    return {n: g[n] for n in order}


# ---------------------------------------------------------------------------------------- the task
def _replay_arm(r, arm, seed: int) -> Path:
    """The arm's training as the local runner reaches it: pool (cache hits), compose, train."""
    cfg = r.cfg
    pool = None
    if arm.generator:
        for needed in _needed_arms(cfg, arm.generator).values():
            if needed:
                _replay_arm(r, cfg.arm(needed), cfg.seeds[0])
        pool = r.stage_pool(arm.generator, verified=arm.verified)
    m, ck = r.stage_compose(arm, seed, pool)
    return r.stage_train(arm, seed, m, ck)


def execute(cfg: ExperimentConfig, out: str, job: tuple, failed: dict[str, str], res: dict,
            ray_data: bool = True) -> dict:
    """One job of the graph, in this process (a Ray worker): returns what it ran and how it ended."""
    from rich.console import Console

    from fersynth.experiment.runner import Runner, StageFailed

    started = time.time()
    kind = job[0]
    own = Resources(**res[kind])
    import torch

    torch.set_num_threads(own.thread_count())
    r = Runner(cfg, out, progress=False, console=Console(file=io.StringIO()))
    log = r.log

    def quiet_hits(msg: str) -> None:  # the upstream stages a task passes through are not news in run.log
        if not msg.startswith("cache hit"):
            log(msg)

    r.log = quiet_hits
    r.cache = _KnownFailures(r.out, r.log, failed)
    stopped = None
    generated = []
    try:
        r.stage_data()
        if kind == "data":
            pass
        elif kind == "test_set":
            r.stage_test_set(next(t for t in cfg.test_sets if t.name == job[1]))
        elif kind == "gen_model":
            r.stage_generator_model(job[1], cfg.generators[job[1]])
        elif kind == "images":
            if guide := _needed_arms(cfg, job[1])["images"]:
                _replay_arm(r, cfg.arm(guide), cfg.seeds[0])
            if ray_data:
                from fersynth.generate import ray_data as rd

                gen = Resources(**res["generate"])
                n0 = len(rd.RUNS)
                with rd.generation_on_ray_data(concurrency=gen.concurrency, num_cpus=gen.num_cpus,
                                               num_gpus=gen.num_gpus, memory=gen.memory,
                                               threads=gen.thread_count()):
                    r.stage_images(job[1])
                generated = rd.RUNS[n0:]
                for g in generated:
                    r.log(f"ray data    gen-{job[1]}-images: {g['shards_now']} of {g['shards']} shard(s) on "
                          f"{g['actors']} actor(s), {g['generated_now']} images in {g['seconds']:.1f} s")
            else:
                r.stage_images(job[1])
        elif kind == "verify":
            for needed in _needed_arms(cfg, job[1]).values():  # the images' key names the guide's checkpoint
                if needed:
                    _replay_arm(r, cfg.arm(needed), cfg.seeds[0])
            r.stage_pool(job[1])
        elif kind == "train":
            _replay_arm(r, cfg.arm(job[1]), job[2])
        elif kind == "eval":
            arm, seed, test_set = cfg.arm(job[1]), job[2], job[3]
            if test_set != "test":
                r.stage_test_set(next(t for t in cfg.test_sets if t.name == test_set))
            ck = _replay_arm(r, arm, seed)
            r.stage_eval(arm, seed, ck, test_set)
        else:
            raise ValueError(f"unknown job {job}")
    except StageFailed as e:
        stopped = [e.stage, e.reason]
    stage_seconds = {}
    for sid in r.cache.ran:
        try:
            stage_seconds[sid] = json.loads((r.cache.path(sid) / "done.json").read_text()).get("seconds")
        except (OSError, ValueError):
            stage_seconds[sid] = None
    return {"ran": list(r.cache.ran), "failed": dict(r.state.failed), "stopped": stopped, "pid": os.getpid(),
            "node": socket.gethostname(), "started": started, "finished": time.time(),
            "stage_seconds": stage_seconds, "generated": generated}


# ---------------------------------------------------------------------------------------- the driver
def run_on_ray(cfg: ExperimentConfig, out: str | os.PathLike | None = None, progress: bool = True, console=None,
               options: RayOptions | None = None) -> dict:
    """Run the study on Ray (a local instance, or `options.address`), then write its report locally."""
    from dataclasses import asdict

    from fersynth.atomic import sweep_temporaries
    from fersynth.experiment.lock import RunLock, describe
    from fersynth.experiment.runner import Runner

    opts = options or RayOptions()
    if not opts.address and os.environ.get("RAY_ADDRESS"):  # Ray's own way to name the cluster to join
        opts.address = os.environ["RAY_ADDRESS"]
    import_ray()  # a missing Ray or an address nobody answers on: one clear line before anything is written
    if opts.address:
        _check_reachable(opts.address)
    driver = Runner(cfg, out, progress, console)
    res = {k: asdict(v) for k, v in opts.resources.items()}
    t0 = time.perf_counter()
    with RunLock(driver.out) as lock:
        if lock.previous:
            driver.log(f"took over the lock of a run that is gone ({describe(lock.previous)})")
        swept = sweep_temporaries(driver.out)
        if swept:
            driver.log(f"removed {len(swept)} temporary file(s) left by an interrupted run")
        ray, started = connect(opts)
        try:
            cluster = ray.cluster_resources()
            driver.log(f"ray {ray.__version__}: {'connected to ' + opts.address if opts.address else 'local instance'}"
                       f", {cluster.get('CPU', 0):g} CPU, {cluster.get('GPU', 0):g} GPU, "
                       f"{len(ray.nodes())} node(s)")
            _check_fits(ray, cfg, opts, driver.log)
            tasks, failed = _drive(ray, cfg, str(driver.out.resolve()), opts, res, driver.log)
        finally:
            if started:
                ray.shutdown()
    ray_seconds = time.perf_counter() - t0
    from fersynth.atomic import write_json_atomic

    # What ran where and when (node, pid, submitted / started / finished), for the record and the benchmark.
    write_json_atomic({"seconds": round(ray_seconds, 3), "cluster": cluster, "options": {
        "address": opts.address, "num_cpus": opts.num_cpus, "max_retries": opts.max_retries, "resources": res},
        "tasks": tasks}, driver.out / "ray.json")
    # The final pass: the local runner over the same folder; every stage is a cache hit (or a failure
    # recorded above), and it writes the state, results.csv and the report.
    ran = {sid for t in tasks for sid in t.get("ran", [])}
    driver.cache = _KnownFailures(driver.out, driver.log, failed, ran_elsewhere=ran)
    with _whole_wall_time(lambda: time.perf_counter() - t0):
        result = driver.run()
    result["seconds"] = time.perf_counter() - t0
    state_f = driver.out / "state.json"
    write_json_atomic(dict(json.loads(state_f.read_text()), seconds=round(result["seconds"], 1)), state_f)
    driver.log(f"ray backend: {result['seconds'] / 60:.1f} min in all, {ray_seconds / 60:.1f} min of it on Ray")
    result["backend"] = "ray"
    result["ray"] = {"seconds": round(ray_seconds, 3), "tasks": tasks, "cluster": cluster}
    return result


def _check_fits(ray, cfg: ExperimentConfig, opts: RayOptions, log) -> None:
    """A request no node can grant would wait forever: one clear line on a local instance, a warning on a
    cluster (whose autoscaler may yet add such a node)."""
    kinds = {job[0] for job, _, _ in build_graph(cfg).values()}
    if opts.ray_data and "images" in kinds:
        kinds.add("generate")
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for kind in sorted(kinds):
        r = opts.resources[kind]
        for what, need in (("CPU", r.num_cpus), ("GPU", r.num_gpus), ("memory", r.memory or 0)):
            have = max((n.get(what, 0) for n in nodes), default=0)
            if need > have:
                field_ = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory"}[what]
                msg = f"--resources {kind}.{field_}={need:g}: no node of the cluster has that much {what} (largest: {have:g})"
                if not opts.address:
                    raise FersynthError(msg, hint="ask for less, or --num-cpus for a larger local instance")
                log(f"warning     {msg}; its tasks wait until the cluster has such a node")


@contextlib.contextmanager
def _whole_wall_time(since):
    """The report states the wall time of the invocation: the final pass's own would be its few seconds of
    cache hits, so within this block the report is written with the time since the Ray backend started."""
    import fersynth.experiment.report as report

    original = report.write_report

    def write_report(out, cfg, state, seconds):
        return original(out, cfg, state, since())

    report.write_report = write_report
    try:
        yield
    finally:
        report.write_report = original


def _drive(ray, cfg, out: str, opts: RayOptions, res: dict, log) -> tuple[list[dict], dict[str, str]]:
    graph = build_graph(cfg)
    remote = ray.remote(execute)
    state: dict[str, str] = {}  # job -> "ok" | "failed" | "skipped"
    failed: dict[str, str] = {}  # stage id -> reason, as the local runner records it
    pending: dict = {}  # object ref -> (job name, submitted at)
    records: list[dict] = []

    def submit_ready():
        for name, (job, deps, _) in graph.items():
            if name in state or any(pending[r][0] == name for r in pending):
                continue
            if any(state.get(d) in ("failed", "skipped") for d in deps):
                state[name] = "skipped"
                continue
            if all(state.get(d) == "ok" for d in deps):
                kind = job[0]
                ref = remote.options(name=name, max_retries=opts.max_retries, retry_exceptions=False,
                                     **opts.resources[kind].remote_args()).remote(
                    cfg, out, job, dict(failed), res, opts.ray_data)
                pending[ref] = (name, time.time())

    submit_ready()
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        ref = done[0]
        name, submitted = pending.pop(ref)
        job, _, owned = graph[name]
        rec = {"job": name, "kind": job[0], "submitted": submitted, "returned": time.time()}
        try:
            r = ray.get(ref)
        except Exception as e:  # the worker died more often than max_retries, or a bug outside the stages
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            reason = f"Ray task {name} failed: {type(e).__name__}: {first}"
            sid = next((s for s in owned if not (Path(out) / "stages" / s / "done.json").is_file()), None)
            rec.update(error=reason)
            if sid:  # the stage it was in is failed; the final pass reports it, and what needs it, as not run
                failed[sid] = reason
                state[name] = "failed"
                log(f"ray failed  {name}: {reason}")
            else:  # every stage it owns had finished: what depends on it can go on
                state[name] = "ok"
                log(f"ray error   {name} after its stages finished: {reason}")
        else:
            failed.update(r["failed"])
            state[name] = "failed" if r["stopped"] else "ok"
            rec.update(r)
            spent = sum(v or 0 for v in r["stage_seconds"].values())
            what = ", ".join(r["ran"]) or "cache hits only"
            log(f"ray done    {name} ({rec['returned'] - submitted:.1f} s; ran {what}; stages {spent:.1f} s)"
                + (f": stopped at {r['stopped'][0]}" if r["stopped"] else ""))
        records.append(rec)
        submit_ready()
    return records, failed
