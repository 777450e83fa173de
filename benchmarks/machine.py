"""What a benchmark records about the machine it ran on: CPU flags that matter for speed
(AVX2, AVX-512, AVX512-BF16, AMX) and the load average, since the machine may be shared."""

from __future__ import annotations

import os
import platform
import subprocess

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_flags() -> dict:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    lines = out.splitlines()
    flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("Flags")), []))
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Model name")), "")
    return {"model": model, **{f: f in flags for f in FLAGS}}


def machine(load_start: tuple[float, float, float], note: str = "") -> dict:
    """The machine block of a result JSON; `load_start` is os.getloadavg() taken at the start."""
    out = {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu": cpu_flags(),
           "loadavg_start": [round(x, 2) for x in load_start],
           "loadavg_end": [round(x, 2) for x in os.getloadavg()]}
    if note:
        out["note"] = note
    return out
