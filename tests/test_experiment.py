"""`fersynth run`: config validation, the cached stage graph, failure isolation, the report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from fersynth.cli.main import main
from fersynth.data.demo import write_demo_folder
from fersynth.errors import FersynthError
from fersynth.experiment import config_from_dict, run_experiment
from fersynth.experiment.cache import StageCache, fingerprint
from fersynth.experiment.config import load_config


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("exp") / "faces"
    counts = {"angry": 10, "disgust": 4, "fear": 10, "happy": 14, "sad": 10, "surprise": 8, "neutral": 10}
    return write_demo_folder(d, counts, seed=3, test_per_class=4, size=24)


def tiny(data: Path, **extra) -> dict:
    cfg = {
        "name": "tiny",
        "data": {"path": str(data), "val_fraction": 0.2, "quality": False},
        "train": {"preset": None, "set": {"model": "mini_xception", "img_size": 24, "epochs": 1, "batch_size": 16,
                                          "num_threads": 1}},
        "generators": {"own": {"kind": "own", "per_class": 3, "steps": 2, "batch_size": 21,
                               "train": {"size": 16, "channels": [8, 16], "attention": False, "max_steps": 3,
                                         "batch_size": 16, "num_threads": 1}}},
        "verify": {"experts": ["baseline"], "policy": {"mode": "mean", "threshold": 0.0, "dedup": False}},
        "arms": [{"name": "baseline", "strategy": "real"},
                 {"name": "oversample", "strategy": "oversample", "rho": 2},
                 {"name": "own-append", "strategy": "append", "generator": "own", "n": 2}],
        "seeds": [0],
        "n_boot": 50,
    }
    cfg.update(extra)
    return cfg


@pytest.fixture(scope="module")
def first_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    cfg = config_from_dict(tiny(data))
    return out, run_experiment(cfg, out, progress=False)


def test_run_writes_report_csv_and_config(first_run):
    out, res = first_run
    assert not res["failed"] and not res["not_run"]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted((r["arm"], r["seed"], r["test_set"]) for r in rows) == [
        ("baseline", "0", "test"), ("oversample", "0", "test"), ("own-append", "0", "test")]
    for r in rows:
        assert 0 <= float(r["accuracy"]) <= 1 and r["val_mean_class_accuracy"] != ""
    by = {r["arm"]: r for r in rows}
    assert int(by["own-append"]["train_synthetic"]) == 14 and int(by["baseline"]["train_synthetic"]) == 0
    md = (out / "report.md").read_text()
    for section in ("## Outcome", "## Dataset", "## Synthetic images", "## Training sets",
                    "## Results on the in-domain test set", "Per-class precision", "## Resolved config"):
        assert section in md
    assert "Best synthetic arm by validation mean class accuracy: **own-append**" in md  # the only one here;
    # per class, what the synthetic images were and did; own-append adds 2 of each class
    why = md.split("### Per class: ", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    rows_why = {ln.split("|")[1].strip(): [x.strip() for x in ln.split("|")[2:-1]]
                for ln in why.splitlines() if ln.startswith("| ") and not ln.startswith("| class")}
    assert set(rows_why) == {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}
    assert all(r[1] == "2" for r in rows_why.values())  # synthetic added
    assert "real labels kept %" in md and "shuffled labels kept %" in md  # the verifier on real validation images
    # what each arm's model calls the generated images: one cached matrix per arm, shown in the report
    learnt = md.split("### What the models learnt from the generated images", 1)[1].split("\n## ", 1)[0]
    head = next(ln for ln in learnt.splitlines() if ln.startswith("| generated class"))
    assert [h.strip() for h in head.split("|")[2:-1]] == [f"{a} names it %" for a in ("baseline", "oversample",
                                                                                      "own-append")]
    cached = sorted(p.name.split("-s0-")[0] for p in (out / "transfer").glob("*.json"))
    assert cached == ["baseline", "oversample", "own-append"]
    m = json.loads(next((out / "transfer").glob("own-append-s0-*.json")).read_text())["called"]
    assert all(abs(sum(row.values()) - 1) < 1e-3 for row in m.values())
    shown = {ln.split("|")[1].strip(): ln.split("|")[4].strip() for ln in learnt.splitlines()
             if ln.startswith("| ") and not ln.startswith("| generated")}
    assert shown == {c: f"{100 * m[c][c]:.2f}" for c in m}
    # the choice between two is checked in test_an_unverified_arm_draws_from_the_raw_images
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "<table>" in page
    assert "data:image/png;base64,\"" not in page  # every figure has its bytes
    assert yaml.safe_load((out / "config.yaml").read_text())["name"] == "tiny"
    # validation is the same rows for every arm: carved once
    vals = {json.loads((out / "stages" / f"train-{a}-s0" / "best.json").read_text())["val_ids_sha"]
            for a in ("baseline", "oversample", "own-append")}
    assert len(vals) == 1


def test_synthetic_rows_provenance_and_no_test_parents(first_run):
    from fersynth.data.manifest import Manifest

    out, _ = first_run
    m = Manifest.load(out / "stages" / "compose-own-append-s0" / "manifest")
    syn = m.df[m.df["source"] == "synthetic"]
    assert len(syn) == 14 and (syn["split"] == "train").all() and (syn["generator"] == "own").all()
    real = Manifest.load(out / "stages" / "data" / "manifest")
    assert set(real.df["split"]) == {"train", "val", "test"}
    assert (m.df["split"] == "val").sum() == (real.df["split"] == "val").sum()


def test_rerun_with_an_arm_added_recomputes_only_that_arm(first_run, data):
    out, first = first_run
    cfg = tiny(data)
    cfg["arms"].append({"name": "weighted", "strategy": "class-weighted"})
    res = run_experiment(config_from_dict(cfg), out, progress=False)
    assert sorted(res["ran"]) == ["compose-weighted-s0", "eval-weighted-s0-test", "train-weighted-s0"]
    assert set(first["ran"]) <= set(res["cache_hits"])
    log = (out / "run.log").read_text()
    assert "cache hit   train-baseline-s0" in log and "cache hit   gen-own-images" in log


def test_an_unverified_arm_draws_from_the_raw_images(first_run, data):
    from fersynth.data.manifest import Manifest

    out, _ = first_run
    cfg = tiny(data)
    cfg["arms"].append({"name": "own-raw", "strategy": "append", "generator": "own", "n": 2, "verified": False})
    res = run_experiment(config_from_dict(cfg), out, progress=False)
    assert sorted(res["ran"]) == ["compose-own-raw-s0", "eval-own-raw-s0-test", "train-own-raw-s0"]
    verified = Manifest.load(out / "stages" / "compose-own-append-s0" / "manifest").df
    raw = Manifest.load(out / "stages" / "compose-own-raw-s0" / "manifest").df
    assert (verified.loc[verified.source == "synthetic", "verdict"] == "keep").all()
    syn = raw[raw.source == "synthetic"]
    assert len(syn) == 14 and ("verdict" not in syn or syn["verdict"].isna().all())
    md = (out / "report.md").read_text()
    assert "append (unverified)" in md
    # Two synthetic arms now: the report names the one with the higher validation MCA (test rows unused);
    # on a tie (likely after one epoch on this tiny data) the first in the config's order.
    rows = {r["arm"]: r for r in csv.DictReader(open(out / "results.csv"))}
    val = {a: float(rows[a]["val_mean_class_accuracy"]) for a in ("own-append", "own-raw")}
    best = "own-raw" if val["own-raw"] > val["own-append"] else "own-append"
    assert f"Best synthetic arm by validation mean class accuracy: **{best}**" in md


def test_missing_generator_weights_skip_only_that_arm(data, tmp_path):
    cfg = tiny(data, generators={"sdx": {"kind": "sd", "weights": str(tmp_path / "no-such-model")}})
    cfg["arms"] = [{"name": "baseline", "strategy": "real"},
                   {"name": "sd-append", "strategy": "append", "generator": "sdx", "n": 2}]
    res = run_experiment(config_from_dict(cfg), tmp_path / "run", progress=False)
    assert list(res["not_run"]) == ["sd-append"] and "weights not found" in res["not_run"]["sd-append"]
    md = (tmp_path / "run" / "report.md").read_text()
    assert "## Not run" in md and "sd-append" in md
    assert "baseline" in (tmp_path / "run" / "results.csv").read_text()


def test_failing_stage_keeps_earlier_stages_cached(data, tmp_path, monkeypatch):
    import fersynth.train.loop as loop

    cfg = tiny(data)
    cfg["arms"] = cfg["arms"][:2]
    real_train = loop.train

    def flaky(manifest, tcfg, out_dir, **kw):
        if "oversample" in str(out_dir):
            raise RuntimeError("disk on fire")
        return real_train(manifest, tcfg, out_dir, **kw)

    monkeypatch.setattr(loop, "train", flaky)
    res = run_experiment(config_from_dict(cfg), tmp_path / "run", progress=False)
    assert "train-oversample-s0" in res["failed"] and "RuntimeError: disk on fire" in res["failed"]["train-oversample-s0"]
    assert (tmp_path / "run" / "logs" / "train-oversample-s0.log").is_file()
    monkeypatch.setattr(loop, "train", real_train)
    res2 = run_experiment(config_from_dict(cfg), tmp_path / "run", progress=False)
    assert "train-baseline-s0" in res2["cache_hits"] and "compose-oversample-s0" in res2["cache_hits"]
    assert "train-oversample-s0" in res2["ran"] and not res2["failed"]


def test_stage_cache_resumes_unfinished_and_reruns_changed(tmp_path):
    logs = []
    c = StageCache(tmp_path, log=logs.append)
    calls = []

    def work(d):
        calls.append(sorted(p.name for p in d.iterdir()))
        (d / "partial").write_text("x")
        if len(calls) == 1:
            raise KeyboardInterrupt  # killed mid-stage

    with pytest.raises(KeyboardInterrupt):
        c.run("s", {"a": 1}, work)
    c.run("s", {"a": 1}, work)  # same key: resumed in place, the partial work is still there
    assert calls[1] == ["key.json", "partial"] and "resume" in logs[-1]
    c.run("s", {"a": 1}, work)
    assert len(calls) == 2 and logs[-1].startswith("cache hit")
    c.run("s", {"a": 2}, work)  # changed inputs: cleared and run again
    assert calls[2] == ["key.json"] and logs[-1].startswith("rerun")


def test_fingerprint_survives_a_copy_and_sees_a_moved_or_changed_file(data, tmp_path):
    import os
    import shutil

    def key(p):
        f = fingerprint(p)
        return {k: v for k, v in f.items() if k != "path"}

    copy = tmp_path / "copy"
    shutil.copytree(data, copy)  # a fresh copy: new mtimes, same content
    for root, _, names in os.walk(copy):
        for n in names:
            os.utime(os.path.join(root, n), (1, 1))
    assert key(copy) == key(data)
    one = next((copy / "train" / "disgust").iterdir())
    shutil.move(one, copy / "train" / "happy" / one.name)  # relabelled by moving class folders
    assert key(copy) != key(data)

    w = tmp_path / "w.bin"
    w.write_bytes(b"a" * (3 << 20))
    before = key(w)
    os.utime(w, (1, 1))
    assert key(w) == before
    w.write_bytes(b"a" * ((3 << 20) - 1) + b"b")  # same size, last byte changed
    assert key(w) != before


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["arms"][1].update(nn=3), "unknown key 'arms[1].nn'"),
    (lambda c: c["data"].update(pth="x"), "unknown key 'data.pth' (hint: did you mean 'path'?)"),
    (lambda c: c.update(baseline_arm="nope"), "baseline_arm 'nope' is not an arm"),
    (lambda c: c["arms"][2].update(generator="owm"), "unknown generator 'owm' (did you mean 'own'?)"),
    (lambda c: c["arms"][1].pop("rho"), "arms[1].rho: Field required"),
    (lambda c: c["arms"][0].update(strategy="rael"), "arms[0].strategy"),
    (lambda c: c.update(seeds=[]), "seeds"),
    (lambda c: c["generators"]["own"].update(kind="sd"), "generators.own"),
    (lambda c: c["arms"][0].update(verified=False), "no synthetic images to leave unverified"),
])
def test_config_errors_name_the_yaml_key(data, edit, message):
    cfg = tiny(data)
    edit(cfg)
    with pytest.raises(FersynthError) as e:
        config_from_dict(cfg)
    assert message in str(e.value)


def test_cli_bad_inputs_are_one_line_exit_2(data, tmp_path, capsys):
    def run(*argv):
        rc = main(list(argv))
        err = capsys.readouterr().err.strip()
        return rc, err

    rc, err = run("run", str(tmp_path / "missing.yaml"))
    assert rc == 2 and "no config file there" in err and len(err.splitlines()) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\narms: [\n")
    rc, err = run("run", str(bad))
    assert rc == 2 and "not valid YAML" in err and len(err.splitlines()) == 1
    cfg = tiny(data)
    cfg["data"]["path"] = "does/not/exist"
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    rc, err = run("run", str(p), "--out", str(tmp_path / "r"), "-q")
    assert rc == 2 and "nothing can run" in err and "does/not/exist" in err and len(err.splitlines()) == 1
    rc, err = run("run", str(p), "--set", "arms.9.n=3")
    assert rc == 2 and "--set arms.9.n" in err
    rc, err = run("run", str(p), "--set", "nokey")
    assert rc == 2 and "expected KEY=VALUE" in err


def test_relative_paths_resolve_against_the_config_file(data, tmp_path):
    cfg = tiny(data)
    cfg["data"]["path"] = "faces"
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    c = load_config(p, ["seeds=[1, 2]", "train.set.epochs=3"])
    assert c.data.path == str((tmp_path / "sub" / "faces").resolve())
    assert c.seeds == [1, 2] and c.train.set["epochs"] == 3


def test_set_paths_resolve_against_the_working_directory(data, tmp_path, monkeypatch):
    """A path given with --set is typed relative to where the command runs, not to the config's folder."""
    cfg = tiny(data)
    cfg["data"]["path"] = "faces"
    (tmp_path / "sub").mkdir()
    (tmp_path / "cwd").mkdir()
    p = tmp_path / "sub" / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path / "cwd")
    c = load_config(p, ["generators.own.weights=runs/w", "test_sets=[{name: t, path: other}]"])
    assert c.data.path == str((tmp_path / "sub" / "faces").resolve())  # from the file: its folder
    assert c.generators["own"].weights == str((tmp_path / "cwd" / "runs" / "w").resolve())
    assert c.test_sets[0].path == str((tmp_path / "cwd" / "other").resolve())
    c = config_from_dict(cfg, base=tmp_path / "sub", sets=["data.path=elsewhere"])
    assert c.data.path == str((tmp_path / "cwd" / "elsewhere").resolve())
    c = load_config(p, ["arms.3={name: weighted, strategy: class-weighted}"])  # index == length appends
    assert [a.name for a in c.arms][-1] == "weighted"


def test_bundled_configs_validate():
    root = Path(__file__).resolve().parents[1] / "configs"
    names = sorted(p.name for p in root.glob("*.yaml"))
    assert {"fer2013-cpu.yaml", "sultanov2025.yaml", "zhu2024.yaml"} <= set(names)
    for p in root.glob("*.yaml"):
        c = load_config(p)
        assert c.arms and c.baseline_arm


@pytest.mark.slow
def test_demo_command_end_to_end(tmp_path, capsys, monkeypatch):
    """`fersynth demo` with its budgets cut down: the same code path, seconds instead of minutes."""
    monkeypatch.chdir(tmp_path)  # a relative --out, as a user would type it
    rc = main(["demo", "--out", "demo", "--generator-steps", "3", "-q",
               "--set", "seeds=[0]", "--set", "train.set.epochs=1",
               "--set", "generators.own.per_class=4", "--set", "generators.own.steps=2"])
    out = capsys.readouterr().out
    assert rc == 0 and "report:" in out
    assert (tmp_path / "demo" / "run" / "report.html").is_file()
    rows = list(csv.DictReader(open(tmp_path / "demo" / "run" / "results.csv")))
    assert {r["arm"] for r in rows} == {"baseline", "oversample", "own-append100", "own-balance"}


def test_generator_preset_per_class_guidance_and_calibrated_verifier_in_a_study(data, tmp_path):
    from fersynth.data.manifest import Manifest

    cfg = tiny(data)
    cfg["arms"] = [{"name": "baseline", "strategy": "real"},
                   {"name": "own-append", "strategy": "append", "generator": "own", "n": 2}]
    g = cfg["generators"]["own"]
    g["train"] = dict(g["train"], preset="fer2013-cpu", max_minutes=None)
    g["cfg_scale_per_class"] = {"disgust": 4.0}
    cfg["verify"]["calibration"] = {"method": "both", "target_keep": 0.5}
    out = tmp_path / "run"
    res = run_experiment(config_from_dict(cfg), out, progress=False)
    assert not res["failed"] and not res["not_run"]
    own = json.loads((out / "stages" / "gen-own-model" / "weights" / "fersynth_own.json").read_text())["config"]
    assert own["prediction"] == "v_prediction" and own["class_balance"] == 0.5 and own["size"] == 16
    images = Manifest.load(out / "stages" / "gen-own-images" / "manifest").df
    scale = {int(lab): json.loads(p)["cfg_scale"] for lab, p in zip(images["intended_label"], images["params"],
                                                                     strict=True)}
    assert scale[1] == 4.0 and scale[0] == 2.0
    rc = json.loads((out / "stages" / "verify-own" / "verify.json").read_text())["real_check"]
    assert rc["method"] == "both" and "calibrated" in rc and rc["check_rows"] > 0
    bad = dict(cfg, generators={"own": dict(g, train=dict(g["train"], preset="fer2013"))})
    with pytest.raises(FersynthError, match="generators.own.train: unknown generator preset 'fer2013'"):
        config_from_dict(bad)  # refused when the YAML loads, before any stage runs


def test_generators_with_the_same_training_settings_train_one_model(data, tmp_path):
    """A `sample` and an `expand` generator of the same model (the fer2013-cpu config's pair) train it
    once; the expanded images are variants of the chosen class's real training faces."""
    from fersynth.data.manifest import Manifest

    cfg = tiny(data)
    own = cfg["generators"]["own"]
    cfg["generators"]["own-expand"] = {**own, "mode": "expand", "classes": ["disgust"], "k": 2, "strength": 0.5}
    cfg["generators"]["other"] = {**own, "train": {**own["train"], "channels": [8, 8]}}
    cfg["arms"] = [{"name": "baseline", "strategy": "real"},
                   {"name": "own-append", "strategy": "append", "generator": "own", "n": 2},
                   {"name": "expand-balance", "strategy": "balance", "generator": "own-expand", "rho": 1.5}]
    c = config_from_dict(cfg)
    assert [c.model_owner(n) for n in ("own", "own-expand", "other")] == ["own", "own", "other"]
    with_weights = config_from_dict({**cfg, "generators": {**cfg["generators"],
                                                           "own-expand": {**cfg["generators"]["own-expand"],
                                                                          "weights": str(tmp_path)}}})
    assert with_weights.model_owner("own-expand") == "own-expand"
    out = tmp_path / "run"
    res = run_experiment(c, out, progress=False)
    assert not res["failed"] and not res["not_run"]
    stages = {p.name for p in (out / "stages").iterdir()}
    assert "gen-own-model" in stages and not any(s.startswith("gen-own-expand-model") for s in stages)
    images = Manifest.load(out / "stages" / "gen-own-expand-images" / "manifest").df
    real = Manifest.load(out / "stages" / "data" / "manifest").df
    parents = real.set_index("id").loc[images["parent_id"].astype(str)]
    assert len(images) == 2 * (parents.index.nunique()) and set(images["intended_label"]) == {1}
    assert set(parents["label"]) == {1} and set(parents["split"]) == {"train"}


def test_guided_generator_is_guided_by_its_guide_arm(data, tmp_path):
    """`mode: guided` with `guide: oversample`: the oversample arm trains before the generation it
    guides (though listed after the generator's arm), and the images' key names its checkpoint."""
    from fersynth.data.manifest import Manifest

    cfg = tiny(data)
    cfg["generators"]["own"].update(mode="guided", guidance=0.5, guidance_start=0.0, guide="oversample")
    cfg["arms"] = [{"name": "baseline", "strategy": "real"},
                   {"name": "own-append", "strategy": "append", "generator": "own", "n": 2},
                   {"name": "oversample", "strategy": "oversample", "rho": 2}]
    c = config_from_dict(cfg)
    assert c.guide_arm("own") == "oversample"
    assert [a.name for a in c.arm_order()] == ["baseline", "oversample", "own-append"]
    out = tmp_path / "run"
    res = run_experiment(c, out, progress=False)
    assert not res["failed"] and not res["not_run"]
    inputs = json.loads((out / "stages" / "gen-own-images" / "key.json").read_text())["inputs"]
    keys = json.loads((out / "state.json").read_text())["keys"]
    assert inputs["classifier"] == keys["train-oversample-s0"] != keys["train-baseline-s0"]  # oversample guided
    images = Manifest.load(out / "stages" / "gen-own-images" / "manifest").df
    assert len(images) == 21
    # the default guide is the baseline; a guide must be a real-data arm and the generator guided
    del cfg["generators"]["own"]["guide"]
    assert config_from_dict(cfg).guide_arm("own") == "baseline"
    for bad, msg in (({"guide": "nope"}, "'nope' is not an arm"),
                     ({"guide": "own-append"}, "draws from a generator"),
                     ({"guide": "oversample", "mode": "sample"}, "only a generator in mode 'guided'")):
        with pytest.raises(FersynthError, match=msg):
            config_from_dict({**cfg, "generators": {"own": {**cfg["generators"]["own"], **bad}}})


def test_guided_generator_in_graph_jobs_each_in_its_own_runner(data, tmp_path):
    """The Ray backend's jobs, run in graph order without Ray (each job a fresh Runner, as in a
    worker): the images job of a generator guided by `oversample` replays that arm, not the baseline."""
    from dataclasses import asdict

    from fersynth.experiment.ray_backend import _default_resources, build_graph, execute

    cfg = tiny(data)
    cfg["generators"]["own"].update(mode="guided", guidance=0.5, guidance_start=0.0, guide="oversample")
    c = config_from_dict(cfg)
    res = {k: asdict(v) for k, v in _default_resources().items()}
    out = tmp_path / "run"
    for name, (job, _, _) in build_graph(c).items():
        done = execute(c, str(out), job, {}, res, ray_data=False)
        assert done["stopped"] is None and not done["failed"], (name, done)
    inputs = json.loads((out / "stages" / "gen-own-images" / "key.json").read_text())["inputs"]
    oversample = json.loads((out / "stages" / "train-oversample-s0" / "done.json").read_text())["key"]
    assert inputs["classifier"] == oversample


def test_nothing_added_says_why():
    from fersynth.experiment.report import nothing_added

    assert nothing_added({"intended": 400, "kept": 0}) == "nothing added: the verifier kept 0 of 400"
    assert nothing_added({"intended": 400, "kept": 204}) == "nothing added: the arm needed none of the 204 kept"
    assert nothing_added({}) == "nothing added"  # an unverified arm: no acceptance row
