"""What models trained with synthetic rows make of the generated images: the expression, or the look?

A model that learnt a class from generated faces should name the generated faces of *other* classes
by their own class, as a model that never saw a generated face does. When the generated rows of a
training set are all (or mostly) of one class, a model can instead learn "looks generated" as that
class: it then names every generated face of the class correctly, calls generated faces of other
classes by it too, and misses the real ones. `transfer_matrix` measures what each model calls the
generated images of each intended class; `shortcut_readings` flags the rises of the second kind
against a reference model (the study's baseline, which never saw a generated face).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fersynth.data.manifest import Manifest
from fersynth.labels import CLASSES


def transfer_matrix(pool: Manifest, model: str | os.PathLike, batch_size: int = 256) -> dict[str, dict[str, float]]:
    """called[c][k]: the share of `pool`'s images of intended class c that the checkpoint at `model`
    assigns to class k (classes by name, only those present in the pool)."""
    from fersynth.predictor import Predictor

    pred = Predictor.load(Path(model))
    y = pool.labels
    present = [c for c in range(len(CLASSES)) if (y == c).any()]
    if not present:
        return {}
    names = np.array(pred.classes)[pred.predict_proba(pool.pixels, batch_size).argmax(1)]
    return {CLASSES[c]: {CLASSES[k]: round(float((names[y == c] == CLASSES[k]).mean()), 4) for k in present}
            for c in present}


def shortcut_readings(called: dict[str, dict[str, dict[str, float]]], reference: str,
                      added: dict[str, dict[str, int]], min_rise: float = 0.2) -> list[dict]:
    """Pairs (arm, generated class c, named class t != c) where the arm's model names the generated
    faces of c as t at least `min_rise` more often than the reference model does, for arms that added
    synthetic rows of class t (`added[arm][t] > 0`): the arm learnt the generated look as t."""
    ref = called.get(reference)
    if not ref:
        return []
    out = []
    for arm, m in called.items():
        if arm == reference:
            continue
        rows = added.get(arm) or {}
        total = sum(int(v or 0) for v in rows.values())
        for c, row in m.items():
            for t, share in row.items():
                if t == c or not int(rows.get(t, 0) or 0):
                    continue
                base = ref.get(c, {}).get(t, 0.0)
                if share - base >= min_rise:
                    out.append({"arm": arm, "generated": c, "named": t, "share": share, "reference_share": base,
                                "named_share_of_synthetic_rows": round(int(rows[t]) / total, 4)})
    return out
