"""`fersynth run --backend ray` on a real local Ray instance (2 CPUs): the same results.csv as the
local backend, a worker SIGKILLed mid-training is retried and the study still ends with the
uninterrupted results, generation through a Ray Data actor pool writes the same files as the
plain writer, and bad input is one line and exit 2. The local backend never imports Ray."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fersynth.cli.main import main
from fersynth.data.demo import write_demo_folder
from fersynth.faults import ENV, ONCE_ENV

TIMEOUT = 400  # seconds for one study; each takes well under a minute on 2 idle cores


def study(root: Path) -> Path:
    """A demo-like study shrunk to seconds: the demo's own generator with verification by the
    baseline, a control arm, a synthetic arm, two seeds, a cross-dataset test set, and an arm whose
    generator weights are missing (reported as not run by both backends)."""
    counts = {"angry": 10, "disgust": 4, "fear": 10, "happy": 14, "sad": 10, "surprise": 8, "neutral": 10}
    data = write_demo_folder(root / "data", counts, seed=3, test_per_class=4, size=24)
    cross = write_demo_folder(root / "cross", dict.fromkeys(counts, 1), seed=9, test_per_class=3, size=24)
    cfg = {
        "name": "raytiny",
        "data": {"path": str(data), "val_fraction": 0.2, "quality": False},
        "train": {"preset": None, "set": {"model": "mini_xception", "img_size": 24, "epochs": 2, "batch_size": 16,
                                          "num_threads": 1}},
        "generators": {
            "own": {"kind": "own", "per_class": 3, "steps": 2, "batch_size": 4,
                    "train": {"size": 16, "channels": [8, 16], "attention": False, "max_steps": 3,
                              "batch_size": 16, "num_threads": 1}},
            "sdx": {"kind": "sd", "weights": str(root / "no-such-model")}},
        "verify": {"experts": ["baseline"], "policy": {"mode": "mean", "threshold": 0.0, "dedup": False}},
        "arms": [{"name": "baseline", "strategy": "real"},
                 {"name": "oversample", "strategy": "oversample", "rho": 2},
                 {"name": "own-append", "strategy": "append", "generator": "own", "n": 2},
                 {"name": "sd-append", "strategy": "append", "generator": "sdx", "n": 2}],
        "test_sets": [{"name": "cross", "path": str(cross)}],
        "seeds": [0, 1],
        "n_boot": 20,
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def fersynth(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (ENV, ONCE_ENV)}
    env.update(env_extra or {})
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, "-m", "fersynth.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)


def results_without_timings(path: Path) -> str:
    """results.csv without its one timing column (train_seconds); every other byte kept."""
    rows = list(csv.reader(io.StringIO(path.read_text(), newline="")))
    drop = rows[0].index("train_seconds")
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\n").writerows([c for i, c in enumerate(r) if i != drop] for r in rows)
    return buf.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The study once with the local backend (in a process that must not import Ray) and once on Ray."""
    root = tmp_path_factory.mktemp("ray")
    config = study(root)
    probe = ("import sys; from fersynth.cli.main import main; "
             f"rc = main(['run', {str(config)!r}, '--out', {str(root / 'local')!r}, '-q']); "
             "print('RAY_IMPORTED' if 'ray' in sys.modules else 'NO_RAY'); sys.exit(rc)")
    env = {k: v for k, v in os.environ.items() if k not in (ENV, ONCE_ENV)}
    env.setdefault("OMP_NUM_THREADS", "1")
    local = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert local.returncode == 0, local.stderr[-3000:]
    on_ray = fersynth("run", str(config), "--out", str(root / "ray"), "-q", "--backend", "ray", "--num-cpus", "2",
                      "--resources", "*.num_cpus=1", "--resources", "generate.num_cpus=0.5")
    assert on_ray.returncode == 0, on_ray.stderr[-3000:] + on_ray.stdout[-3000:]
    return root, config, local, on_ray


@pytest.mark.slow
def test_local_backend_does_not_import_ray(runs):
    _, _, local, _ = runs
    assert local.stdout.strip().splitlines()[-1] == "NO_RAY"


@pytest.mark.slow
def test_ray_backend_writes_the_local_results(runs):
    root, _, _, on_ray = runs
    a, b = root / "local", root / "ray"
    assert results_without_timings(b / "results.csv") == results_without_timings(a / "results.csv")
    rows = list(csv.DictReader(open(b / "results.csv")))
    assert sorted({(r["arm"], r["seed"], r["test_set"]) for r in rows}) == sorted(
        (arm, s, t) for arm in ("baseline", "oversample", "own-append") for s in "01" for t in ("test", "cross"))
    sa, sb = (json.loads((d / "state.json").read_text()) for d in (a, b))
    assert sb["failed"] == sa["failed"] and sb["not_run"] == sa["not_run"]
    assert list(sb["not_run"]) == ["sd-append"] and "weights not found" in sb["not_run"]["sd-append"]
    assert sb["keys"] == sa["keys"]  # every stage's content key: the same inputs all the way down
    # the stages ran in Ray tasks, and the final local pass only read them
    assert sorted(sb["ran"]) == sorted(sa["ran"]) and not sb["cache_hits"]
    log = (b / "run.log").read_text()
    assert "ray done    train:own-append:1" in log and "local instance, 2 CPU" in log
    assert "ray data    gen-own-images: 1 of 1 shard(s)" in log  # generated by the Ray Data actor pool
    for f in ("run.json", "manifest/manifest.parquet", "manifest/pixels.npy"):  # the same generation, byte for byte
        p = Path("stages/gen-own-images") / f
        assert (a / p).read_bytes() == (b / p).read_bytes(), p
    imgs = sorted(p.relative_to(a / "stages/gen-own-images") for p in (a / "stages/gen-own-images").rglob("*.png"))
    assert imgs and all((a / "stages/gen-own-images" / p).read_bytes() == (b / "stages/gen-own-images" / p).read_bytes()
                        for p in imgs)
    assert not (b / "run.lock").exists()
    rec = json.loads((b / "ray.json").read_text())
    assert sb["seconds"] >= rec["seconds"]  # the report's wall time is the whole invocation's, not the final pass's
    tasks = rec["tasks"]  # what ran where
    assert {t["job"] for t in tasks} >= {"data", "model:own", "images:own", "verify:own", "train:baseline:0"}


@pytest.mark.slow
def test_rerun_on_ray_is_all_cache_hits_and_local_rerun_too(runs):
    root, config, _, _ = runs
    again = fersynth("run", str(config), "--out", str(root / "ray"), "-q", "--backend", "ray", "--num-cpus", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    state = json.loads((root / "ray" / "state.json").read_text())
    assert state["ran"] == [] and state["cache_hits"]
    local = fersynth("run", str(config), "--out", str(root / "ray"), "-q")  # a Ray-made folder, finished locally
    assert local.returncode == 0, local.stderr[-3000:]
    assert json.loads((root / "ray" / "state.json").read_text())["ran"] == []


@pytest.mark.slow
def test_a_worker_killed_mid_training_is_retried_to_the_same_results(runs):
    root, config, _, _ = runs
    out, marker = root / "killed", root / "killed.marker"
    p = fersynth("run", str(config), "--out", str(out), "-q", "--backend", "ray", "--num-cpus", "2",
                 env_extra={ENV: "train-epoch:1", ONCE_ENV: str(marker)})
    assert p.returncode == 0, p.stderr[-3000:] + p.stdout[-3000:]
    assert marker.exists()  # a worker did die at the end of a training epoch ...
    log = (out / "run.log").read_text()
    resumed = [line for line in log.splitlines() if " resume      train-" in line]
    assert len(resumed) == 1, log  # ... and its retried task resumed that training from its last epoch
    assert results_without_timings(out / "results.csv") == results_without_timings(root / "local" / "results.csv")
    trains = sorted(p.relative_to(out) for p in out.glob("stages/train-*/train_summary.json"))
    assert len(trains) == 6
    for rel in trains:
        a, b = (json.loads((d / rel).read_text())["history"] for d in (out, root / "local"))
        assert [{k: v for k, v in e.items() if k != "seconds"} for e in a] == \
               [{k: v for k, v in e.items() if k != "seconds"} for e in b], rel


@pytest.mark.slow
def test_on_a_running_cluster_a_task_out_of_retries_fails_its_stage_and_a_local_rerun_finishes(runs, monkeypatch):
    """`--address` of a running cluster (started here). With no retries, the killed training is a failed
    stage, reported as the local runner reports a failure (its arm, and the arms that need it, not run);
    the same command with the local backend then resumes that training and finishes the study."""
    ray = pytest.importorskip("ray")
    root, config, _, _ = runs
    out, marker = root / "noretry", root / "noretry.marker"
    kill = {ENV: "train-epoch:1", ONCE_ENV: str(marker), "RAY_AUTH_MODE": "disabled"}
    for k, v in kill.items():  # the cluster's workers inherit them
        monkeypatch.setenv(k, v)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        address = ray.get_runtime_context().gcs_address
        p = fersynth("run", str(config), "--out", str(out), "-q", "--backend", "ray", "--address", address,
                     "--max-retries", "0", env_extra=kill)
    finally:
        ray.shutdown()
    state = json.loads((out / "state.json").read_text())
    assert marker.exists()
    assert f"connected to {address}" in (out / "run.log").read_text()
    failed = {k: v for k, v in state["failed"].items() if not k.startswith("gen-sdx")}
    assert len(failed) == 1, state["failed"]
    (stage, reason), = failed.items()
    assert stage.startswith("train-") and reason.startswith("Ray task train:") and "died" in reason.lower(), reason
    arm = stage.removeprefix("train-").rsplit("-s", 1)[0]
    assert arm in state["not_run"] and stage in state["not_run"][arm]
    assert p.returncode == 0 or "no arm could run" in p.stderr
    again = fersynth("run", str(config), "--out", str(out), "-q")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resume      {stage} " in (out / "run.log").read_text()
    assert results_without_timings(out / "results.csv") == results_without_timings(root / "local" / "results.csv")


def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    root = tmp_path
    config = study(tmp_path)

    def one_line(*args):
        capsys.readouterr()
        assert main(["run", str(config), "--out", str(root / "bad"), "-q", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error:"), err
        return err

    assert "no Ray cluster answers there" in one_line("--backend", "ray", "--address", "127.0.0.1:1")
    assert "expected HOST:PORT" in one_line("--backend", "ray", "--address", "nowhere")
    assert "unknown backend" in one_line("--backend", "spark")
    assert "option of the Ray backend" in one_line("--address", "127.0.0.1:6379")
    assert "unknown kind 'trian'" in one_line("--backend", "ray", "--resources", "trian.num_cpus=1")
    assert "not a valid num_cpus" in one_line("--backend", "ray", "--resources", "train.num_cpus=-1")
    assert "concurrency is a field of 'generate'" in one_line("--backend", "ray", "--resources", "train.concurrency=2")
    assert "no node of the cluster has that much GPU" in one_line("--backend", "ray", "--num-cpus", "1", "--resources",
                                                                  "train.num_gpus=1")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert "needs Ray, which is not installed" in one_line("--backend", "ray")
    assert not list((root / "bad").glob("stages/*"))  # nothing ran


def test_ray_data_generation_writes_the_plain_writers_files(tmp_path, monkeypatch):
    """The generation module alone: the same plan through the actor pool and through run_generation
    gives byte-identical shards, images and manifest, even though an actor is SIGKILLed after its first
    batch (Ray restarts it and retries the shard, which resumes from its rows); a rerun skips every
    finished shard."""
    ray = pytest.importorskip("ray")
    from fersynth.data.demo import make_demo_faces
    from fersynth.data.manifest import Manifest
    from fersynth.faces.convert import DomainSpec
    from fersynth.generate.base import run_generation
    from fersynth.generate.own import OwnConfig, OwnGenerator, plan_sample, train_own
    from fersynth.generate.ray_data import run_generation_ray

    d = make_demo_faces(2, seed=1, difficulty=0.3, size=24)
    real = Manifest.from_arrays(d.pixels, d.labels, split="train", dataset="demo")
    w = tmp_path / "w"
    train_own(real, OwnConfig(size=16, channels=(8, 16), attention=False, epochs=1, batch_size=16, warmup_steps=1,
                              num_threads=1), w, progress=False)
    gen = OwnGenerator(w, steps=2)
    items = plan_sample(list(range(7)), 3, 5, "sample", {"steps": 2})
    dom = DomainSpec(size=24, gray=True)
    kw = {"domain": dom, "dataset": "synthetic-own", "settings": {"x": 1}, "shard_size": 5, "batch_size": 2,
          "progress": False}
    run_generation(gen, items, tmp_path / "plain", **kw)
    marker = tmp_path / "killed.marker"
    monkeypatch.setenv(ENV, "generate-batch:1")  # the actors inherit them from the instance started here
    monkeypatch.setenv(ONCE_ENV, str(marker))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        s = run_generation_ray(gen, items, tmp_path / "ray", concurrency=2, num_cpus=0.5, threads=1, **kw)
        assert s["written"] == 21  # (generated_now leaves out the batch the killed actor wrote before dying)
        again = run_generation_ray(gen, items, tmp_path / "ray", concurrency=2, num_cpus=0.5, threads=1, **kw)
        assert again["generated_now"] == 0 and again["written"] == 21
    finally:
        ray.shutdown()
    assert marker.exists()  # an actor did die mid-shard
    files = sorted(p.relative_to(tmp_path / "plain") for p in (tmp_path / "plain").rglob("*")
                   if p.is_file() and p.name != "summary.json")
    assert len([f for f in files if f.suffix == ".png"]) == 21 and any("shard-00004" in str(f) for f in files)
    for f in files:  # the manifests name their own folder as their root; every other byte is the same
        a = (tmp_path / "plain" / f).read_bytes().replace(str(tmp_path / "plain").encode(), b"ROOT")
        assert a == (tmp_path / "ray" / f).read_bytes().replace(str(tmp_path / "ray").encode(), b"ROOT"), f
    assert not list((tmp_path / "ray").rglob("*.rows.jsonl"))


def test_resources_per_kind():
    from fersynth.experiment.ray_backend import ray_options

    o = ray_options(resources=["*.num_cpus=0.5", "*.threads=1", "train.num_gpus=1", "train.memory=2G",
                               "generate.concurrency=3"])
    r = o.resources
    assert r["train"].remote_args() == {"num_cpus": 0.5, "num_gpus": 1.0, "memory": 2 * 1024**3}
    assert r["eval"].remote_args() == {"num_cpus": 0.5} and r["eval"].thread_count() == 1
    assert r["images"].num_cpus == 0  # `*` leaves the image task's share alone: its actors need it
    assert r["generate"].concurrency == 3 and ray_options().resources["train"].thread_count() == 1


def test_graph_order_and_dependencies(tmp_path):
    from fersynth.experiment import config_from_dict
    from fersynth.experiment.ray_backend import build_graph

    cfg = config_from_dict(yaml.safe_load(study(tmp_path).read_text()))
    g = build_graph(cfg)
    names = list(g)
    for n, (_, deps, _) in g.items():  # every job comes after what it needs
        assert all(names.index(d) < names.index(n) for d in deps), n
    assert g["verify:own"][1] == ["images:own", "train:baseline:0"]  # verification by the baseline's first seed
    assert g["images:own"][1] == ["data", "model:own"] and g["train:oversample:1"][1] == ["data"]
    assert g["train:own-append:0"][1] == ["data", "verify:own"]
    assert g["eval:own-append:1:cross"][1] == ["train:own-append:1", "test:cross"]
    assert "model:sdx" not in g and g["images:sdx"][2] == ["gen-sdx-images"]
    data = cfg.model_dump(mode="json")  # a second generator of the same model: trained once
    data["generators"]["own-expand"] = dict(data["generators"]["own"], mode="expand", classes=["disgust"])
    data["arms"].append({"name": "expand-balance", "strategy": "balance", "generator": "own-expand", "rho": 2})
    g = build_graph(config_from_dict(data))
    assert g["images:own-expand"][1] == ["data", "model:own"] and "model:own-expand" not in g
    data["generators"]["own"].update(mode="guided", guide="oversample")  # guided: after its guide's first seed
    g = build_graph(config_from_dict(data))
    assert g["images:own"][1] == ["data", "model:own", "train:oversample:0"]
    assert g["verify:own"][1] == ["images:own", "train:baseline:0"]
