"""Cost of the full `fersynth data inspect` pass against a bare decode-and-hash pass.

Both passes decode the same files with the same parallel decoder in the same process; the
full pass adds the Manifest, quality scores and exact + near duplicate search. Target: the
full pass costs at most 2x the bare one. Writes benchmarks/results/data_fer2013.json.

    python benchmarks/bench_data.py [--data ../shared/data/fer2013] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

from fersynth.data.decode import decode_files, default_workers
from fersynth.data.formats import IngestOptions, detect_format
from fersynth.data.ingest import ingest
from fersynth.data.manifest import pixel_hashes
from fersynth.data.profile import profile

ROOT = Path(__file__).resolve().parents[1]


def bare_pass(path: Path) -> float:
    listing = detect_format(path).list(path, IngestOptions())
    files = [str(listing.root / r["path"]) for r in listing.rows]
    t = time.perf_counter()
    images, _ = decode_files(files)
    pixel_hashes(images)
    return time.perf_counter() - t


def full_pass(path: Path) -> tuple[float, dict]:
    t = time.perf_counter()
    m, _ = ingest(path)
    _, prof = profile(m)
    return time.perf_counter() - t, prof


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "fer2013")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "data_fer2013.json")
    a = ap.parse_args()
    bare, full, prof = [], [], None
    for _ in range(a.repeats):  # interleaved so drift hits both alike; best of N
        bare.append(bare_pass(a.data))
        t, prof = full_pass(a.data)
        full.append(t)
    ratio = min(full) / min(bare)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res = {
        "data": str(a.data), "images": prof["rows"], "workers": default_workers(),
        "bare_decode_hash_s": round(min(bare), 3), "full_inspect_s": round(min(full), 3), "ratio": round(ratio, 3),
        "target_ratio": 2.0, "pass": ratio <= 2.0, "peak_rss_mb": round(peak_mb, 1),
        "all_bare_s": [round(x, 3) for x in bare], "all_full_s": [round(x, 3) for x in full],
        "machine": f"{platform.processor() or platform.machine()}, {default_workers()} workers",
        "duplicates": prof["duplicates"], "quality_flags": prof["quality"]["flags"],
    }
    print(f"bare decode+hash {res['bare_decode_hash_s']:.2f} s | full inspect {res['full_inspect_s']:.2f} s | "
          f"ratio {ratio:.2f}x (target <= 2.0) | peak RSS {peak_mb:.0f} MB")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"-> {a.out}")


if __name__ == "__main__":
    main()
