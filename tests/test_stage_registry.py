"""One way into each stage: the CLI and `fersynth run` share the registries' specs and planners."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import yaml
from pydantic import Field

from fersynth.cli.main import main
from fersynth.compose import ComposeJob, StrategyConfig, register_strategy, unregister_strategy
from fersynth.data.demo import write_demo_folder
from fersynth.data.manifest import Manifest
from fersynth.experiment.config import config_schema
from fersynth.generate.base import Generator, WorkItem
from fersynth.generate.registry import GenerationSpec, register_generator, unregister_generator


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("reg") / "faces"
    counts = {"angry": 8, "disgust": 4, "fear": 8, "happy": 10, "sad": 8, "surprise": 6, "neutral": 8}
    return write_demo_folder(d, counts, seed=5, test_per_class=3, size=24)


@pytest.fixture(scope="module")
def weights(data, tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("w") / "own"
    assert main(["generator", "train", "--data", str(data), "--out", str(w), "--img-size", "16", "--channels", "8,16",
                 "--no-attention", "--max-steps", "3", "--batch-size", "16", "-q"]) == 0
    return w


def study(data: Path, **extra) -> dict:
    cfg = {
        "name": "reg",
        "data": {"path": str(data), "val_fraction": 0.2, "quality": False},
        "train": {"preset": None, "set": {"model": "mini_xception", "img_size": 24, "epochs": 1, "batch_size": 16,
                                          "num_threads": 1}},
        "verify": {"enabled": False},
        "arms": [{"name": "baseline", "strategy": "real"}],
        "seeds": [0],
        "n_boot": 20,
    }
    cfg.update(extra)
    return cfg


def write_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_and_study_write_the_same_pixels(data, weights, tmp_path):
    cli = tmp_path / "cli"
    assert main(["generate", "own", "-w", str(weights), "--mode", "sample", "--per-class", "3", "--seed", "11",
                 "--steps", "3", "--domain-size", "24", "--out", str(cli), "-q"]) == 0
    cfg = study(data, generators={"own": {"kind": "own", "weights": str(weights), "per_class": 3, "seed": 11,
                                          "steps": 3}},
                arms=[{"name": "baseline", "strategy": "real"},
                      {"name": "own-append", "strategy": "append", "generator": "own", "n": 2}])
    run = tmp_path / "run"
    assert main(["run", str(write_yaml(tmp_path / "s.yaml", cfg)), "--out", str(run), "-q"]) == 0
    a = Manifest.load(cli / "manifest")
    b = Manifest.load(run / "stages" / "gen-own-images" / "manifest")
    assert len(a) == 21 and a.pixels.shape == b.pixels.shape
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.df["seed"], b.df["seed"])
    assert np.array_equal(np.asarray(a.pixels), np.asarray(b.pixels))  # byte-identical
    assert a.pixels.std() > 0  # images, not a constant


@pytest.mark.parametrize("edit, path", [
    (lambda c: c["generators"]["own"]["train"].update(max_minuts=3), "generators.own.train.max_minuts"),
    (lambda c: c["verify"].update(policy={"treshold": 0.3}), "verify.policy.treshold"),
    (lambda c: c["arms"][1].update(nn=300), "arms[1].nn"),
    (lambda c: c["arms"][1].update(strategy="apend"), "arms[1].strategy"),
])
def test_typos_are_refused_at_load_with_their_yaml_path(data, tmp_path, capsys, edit, path):
    cfg = study(data, generators={"own": {"kind": "own", "train": {"max_steps": 3}}},
                arms=[{"name": "baseline", "strategy": "real"},
                      {"name": "own-append", "strategy": "append", "generator": "own", "n": 2}])
    cfg["verify"] = {"enabled": True}
    edit(cfg)
    out = tmp_path / "run"
    assert main(["run", str(write_yaml(tmp_path / "s.yaml", cfg)), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert path in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()  # refused before anything is written


# ---------------------------------------------------------------------- a toy generator and strategy
class ToySpec(GenerationSpec):
    kind: Literal["toy"] = "toy"
    level: int = Field(100, ge=0, le=255, description="mean grey level of the faces")


class ToyGenerator(Generator):
    name = "toy"
    model_id = "toy:procedural"
    num_classes = 7

    def __init__(self, spec: ToySpec):
        self.spec = spec

    def generate(self, items: list[WorkItem]) -> np.ndarray:
        out = []
        for it in items:
            rng = np.random.default_rng(it.seed)
            img = rng.normal(self.spec.level + 10 * it.label, 5, (24, 24))
            out.append(np.clip(img, 0, 255).astype(np.uint8))
        return np.stack(out)


class RareOnlyConfig(StrategyConfig):
    strategy: Literal["rare-only"] = "rare-only"
    n: int = Field(ge=0, description="synthetic images added to each class below the median count")


def _rare_only(cfg: RareOnlyConfig, job: ComposeJob) -> None:
    rare = job.train_counts < np.median(job.train_counts)
    job.add_pool_rows([job.take(c, cfg.n) for c in range(job.k) if rare[c]])


@pytest.fixture
def toys():
    register_generator("toy", config=ToySpec, modes=("sample",), needs="nothing",
                       description="procedural grey faces (test)")(lambda spec, weights=None, classifier=None:
                                                                    ToyGenerator(spec))
    register_strategy("rare-only", config=RareOnlyConfig, synthetic=True,
                      description="N synthetic images for each class below the median (test)")(_rare_only)
    yield
    unregister_generator("toy")
    unregister_strategy("rare-only")


def test_a_toy_generator_and_strategy_run_through_the_registries_only(data, tmp_path, toys, capsys):
    assert main(["generators", "list"]) == 0
    assert "toy" in capsys.readouterr().out
    schema = json.dumps(config_schema())
    assert "ToySpec" in schema and "rare-only" in schema
    cfg = study(data, generators={"toy": {"kind": "toy", "level": 90, "per_class": 4}},
                arms=[{"name": "baseline", "strategy": "real"},
                      {"name": "rare", "strategy": "rare-only", "generator": "toy", "n": 3}])
    run = tmp_path / "run"
    assert main(["run", str(write_yaml(tmp_path / "s.yaml", cfg)), "--out", str(run), "-q"]) == 0
    rows = {r["arm"]: r for r in csv.DictReader(open(run / "results.csv"))}
    assert rows["rare"]["strategy"] == "rare-only" and int(rows["rare"]["train_synthetic"]) > 0
    rep = json.loads((run / "stages" / "compose-rare-s0" / "compose.json").read_text())
    counts = rep["real_train_counts"]
    median = float(np.median(list(counts.values())))
    assert {c for c, n in rep["synthetic_added"].items() if n} == {c for c, n in counts.items() if n < median}
    pool = Manifest.load(run / "stages" / "gen-toy-images" / "manifest")
    assert len(pool) == 28 and abs(float(np.asarray(pool.pixels).mean()) - (90 + 30)) < 10
    # and the toy strategy from `fersynth compose`, with its own parameter
    out = tmp_path / "composed"
    assert main(["compose", "rare-only", "--real", str(data), "--synthetic", str(run / "stages" / "gen-toy-images"
                 / "manifest"), "--param", "n=2", "--out", str(out), "--json"]) == 0
    assert json.loads((out / "compose.json").read_text())["strategy"] == "rare-only"
    # a typo in the toy's own field is refused at load like any other
    bad = dict(cfg, generators={"toy": {"kind": "toy", "levl": 90}})
    assert main(["run", str(write_yaml(tmp_path / "b.yaml", bad)), "--out", str(tmp_path / "b"), "-q"]) == 2
    assert "generators.toy.levl" in capsys.readouterr().err
