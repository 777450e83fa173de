"""Prompt builder: action units per emotion, the attribute grid, seeded balanced / factorial sampling."""

from __future__ import annotations

import collections

import pytest

from fersynth.errors import FersynthError
from fersynth.generate.prompts import (
    ATTRIBUTES,
    EMOTIONS,
    au_text,
    build_prompt,
    grid_size,
    iter_grid,
    sample_prompts,
)
from fersynth.labels import CLASSES


def test_action_units_per_emotion():
    expected = {"happy": (6, 12), "sad": (1, 4, 15), "surprise": (1, 2, 5, 26), "fear": (1, 2, 4, 5, 7, 20, 26),
                "angry": (4, 5, 7, 23), "disgust": (9, 15, 16), "contempt": (12, 14), "neutral": ()}
    assert {k: v["aus"] for k, v in EMOTIONS.items()} == expected
    assert au_text("happiness") == "facial action units cheek raiser (AU6) + lip corner puller (AU12)"
    assert "one side of the face" in au_text("contempt") and "no facial action units" in au_text("neutral")


def test_build_prompt_reads_like_sultanov():
    p = build_prompt("angry", {"age": "child", "ethnicity": "Middle Eastern", "gender": "male", "lighting": "shadowy",
                               "angle": "side", "obstruction": "hair", "blur": "slight"}, include_aus=False)
    assert p == ("A close-up photo of a child, Middle Eastern male with a scowling expression with lowered brows,"
                 " glaring eyes and tight lips, captured in shadowy light, from a side angle, partly covered by hair,"
                 " with slight blur, expressing anger.")
    assert "AU4" in build_prompt("angry") and build_prompt("sad", {"obstruction": "none"}).count("covered") == 0
    assert build_prompt("happy", {"age": "elderly"}).startswith("A close-up photo of an elderly with a genuine smile")


def test_balanced_sampling_spreads_every_attribute_and_is_seeded():
    ps = sample_prompts([3, "sad"], 10, seed=4)
    assert [p.label for p in ps] == [3] * 10 + [4] * 10
    for label in (3, 4):
        rows = [p.attributes for p in ps if p.label == label]
        for key, vals in ATTRIBUTES.items():
            counts = collections.Counter(r[key] for r in rows)
            assert set(counts) <= set(vals) and max(counts.values()) - min(counts.get(v, 0) for v in vals) <= 1
    assert [p.prompt for p in ps] == [p.prompt for p in sample_prompts([3, 4], 10, seed=4)]
    assert [p.prompt for p in ps] != [p.prompt for p in sample_prompts([3, 4], 10, seed=5)]
    assert all(p.negative_prompt and p.action_units == list(EMOTIONS[p.emotion]["aus"]) for p in ps)


def test_factorial_sampling_covers_the_grid():
    grid = {"age": ["child", "elderly"], "gender": ["male", "female"], "lighting": ["bright", "low", "shadowy"]}
    ps = sample_prompts(["fear"], None, sampling="factorial", attributes=grid)
    assert len(ps) == 12 == grid_size(grid)
    assert sorted(map(str, (p.attributes for p in ps))) == sorted(map(str, iter_grid(grid)))
    some = sample_prompts(["fear"], 5, seed=1, sampling="factorial", attributes=grid)
    assert len({str(p.attributes) for p in some}) == 5
    with pytest.raises(FersynthError, match="only 12 cells"):
        sample_prompts(["fear"], 13, sampling="factorial", attributes=grid)
    assert grid_size() == 5 * 2 * 5 * 3 * 4 * 5 * 3 * 5


def test_random_and_bad_input():
    ps = sample_prompts(list(range(8)), 2, seed=0, sampling="random", attributes={"pose": ATTRIBUTES["pose"]})
    assert [p.emotion for p in ps][::2] == list(CLASSES) and all(set(p.attributes) == {"pose"} for p in ps)
    assert sample_prompts([6], 1, attributes={})[0].prompt.startswith("A close-up photo of a person with a relaxed")
    with pytest.raises(FersynthError, match="unknown prompt sampling"):
        sample_prompts([0], 1, sampling="grid")
    with pytest.raises(FersynthError, match="unknown prompt attribute 'hat'"):
        sample_prompts([0], 1, attributes={"hat": ["red"]})
    with pytest.raises(FersynthError, match="unknown class name"):
        sample_prompts(["bored"], 1)
    with pytest.raises(FersynthError, match="count per class"):
        sample_prompts([0], None)
