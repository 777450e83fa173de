"""Generation on Ray Data: the shards of a plan become a Ray Dataset processed by an actor pool.

`run_generation_ray` takes the same arguments as `generate.base.run_generation` and writes the
same run folder, byte for byte: `run.json`, `images/`, `shards/shard-NNNNN/`, the merged
`manifest/` and `summary.json`. The plan's work items are cut into the same shards; each row of
the Dataset is one unfinished shard (its index; the items themselves travel once through the
object store), and an actor of the pool holds the generator (the model loaded once per actor,
on a GPU where the actor asks for one) and writes the shard with the very code a local run uses.
So a shard finished by either path is skipped by both (resume), a shard cut short by a dead
actor is resumed from its rows file when Ray retries it (nothing generated twice), and the
merge is the local one.

`generation_on_ray_data(...)` swaps this in for `run_generation` inside a Ray task, so that the
study runner's image stage (which calls `run_generation`) generates through the actor pool.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from fersynth.atomic import write_json_atomic
from fersynth.generate.base import (
    MERGED,
    SHARDS,
    Generator,
    WorkItem,
    _run_shard,
    _shard_done,
    merge_shards,
    open_run,
    shard_name,
)

# What the last calls in this process did (the Ray backend logs it after the image stage).
RUNS: list[dict] = []


class _ShardWriter:
    """A Ray Data actor: holds the generator and writes whole shards with the local shard code."""

    def __init__(self, refs: list, out: str, domain, dataset: str, batch_size: int, detector, threads: int | None):
        import ray

        if threads:
            import torch

            torch.set_num_threads(threads)
        gen_ref, shards_ref = refs  # wrapped in a list so that Ray hands the references over unresolved
        self.gen: Generator = ray.get(gen_ref)
        self.shards: list[list[WorkItem]] = ray.get(shards_ref)
        self.out, self.domain, self.dataset = Path(out), domain, dataset
        self.batch_size, self.detector = batch_size, detector

    def __call__(self, batch: dict) -> dict:
        made = []
        for k in batch["shard"]:
            k = int(k)
            made.append(_run_shard(self.gen, self.shards[k], k, self.out, self.domain, self.dataset,
                                   self.batch_size, self.detector, lambda n: None))
        return {"shard": np.asarray(batch["shard"], dtype=np.int64), "made": np.asarray(made, dtype=np.int64),
                "pid": np.full(len(made), os.getpid(), dtype=np.int64)}


def run_generation_ray(
    generator: Generator,
    items: list[WorkItem],
    out_dir: str | os.PathLike,
    *,
    domain=None,
    dataset: str = "synthetic",
    settings: dict | None = None,
    shard_size: int = 64,
    batch_size: int = 8,
    progress: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
    detector=None,
    concurrency: int | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    memory: float | None = None,
    threads: int | None = None,
) -> dict:
    """`run_generation` through a Ray Data actor pool of up to `concurrency` actors (default: as many
    as the cluster's CPUs fit at `num_cpus` each, at most one per unfinished shard). Needs a
    connected Ray (`ray.init`); `rank` / `world_size` are accepted for the same signature and ignored
    (the pool replaces torchrun's split)."""
    import ray

    out, run = open_run(generator, items, out_dir, settings=settings, domain=domain, dataset=dataset,
                        shard_size=shard_size, batch_size=batch_size)

    shards = [items[i : i + shard_size] for i in range(0, len(items), shard_size)]
    todo = [k for k in range(len(shards)) if not _shard_done(out / SHARDS / shard_name(k))]
    t0 = time.perf_counter()
    made, actors, pids = 0, 0, set()
    if todo:
        from ray.data import ActorPoolStrategy, DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = bool(progress)
        if concurrency is None:
            cpus = ray.cluster_resources().get("CPU", 1.0)
            concurrency = max(1, math.floor(cpus / num_cpus)) if num_cpus > 0 else 1
        actors = max(1, min(int(concurrency), len(todo)))
        refs = [ray.put(generator), ray.put(shards)]
        ds = ray.data.from_items([{"shard": k} for k in todo], override_num_blocks=len(todo))
        remote = {"num_cpus": num_cpus, "num_gpus": num_gpus or None}
        if memory:
            remote["memory"] = memory
        ds = ds.map_batches(
            _ShardWriter, batch_size=1, batch_format="numpy",
            fn_constructor_kwargs={"refs": refs, "out": str(out), "domain": domain, "dataset": dataset,
                                   "batch_size": batch_size, "detector": detector, "threads": threads},
            compute=ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
            **{k: v for k, v in remote.items() if v is not None},
        )
        for row in ds.take_all():
            made += int(row["made"])
            pids.add(int(row["pid"]))
    seconds = time.perf_counter() - t0
    merged = merge_shards(out, expected_shards=len(shards), allow_missing=False)
    summary = {"generated_now": made, "seconds": round(seconds, 3),
               "images_per_second": round(made / seconds, 4) if made and seconds > 0 else None}
    if merged is not None:
        summary = dict(json.loads((out / "summary.json").read_text()), **summary)
        write_json_atomic(summary, out / "summary.json")
    summary["manifest"] = str(out / MERGED) if merged is not None else None
    RUNS.append({"out": str(out), "shards": len(shards), "shards_now": len(todo), "actors": len(pids),
                 "max_actors": actors, "generated_now": made, "seconds": round(seconds, 3)})
    return summary


@contextlib.contextmanager
def generation_on_ray_data(**options):
    """Within the block, `fersynth.generate.base.run_generation` is `run_generation_ray` with
    `options` (concurrency, num_cpus, num_gpus, memory, threads): the study runner's image stage
    imports it at call time, so it generates through the actor pool. Restored on exit."""
    import fersynth.generate.base as base

    original = base.run_generation

    def run_generation(generator, items, out_dir, **kwargs):
        return run_generation_ray(generator, items, out_dir, **kwargs, **options)

    base.run_generation = run_generation
    try:
        yield
    finally:
        base.run_generation = original
