"""The devices a job may spread over, read without importing torch (the server checks
requests with this, and must stay light)."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import LoraLabError


def visible_devices() -> tuple[int, str]:
    """How many devices a job may spread over, and what they are: the NVIDIA GPUs this
    process may use (read without importing torch), else the CPU cores (one process each)."""
    gpus = len(list(Path("/proc/driver/nvidia/gpus").glob("*")))
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None and gpus:
        gpus = min(gpus, len([d for d in listed.split(",") if d.strip()]))
    if gpus:
        return gpus, "GPU"
    return os.cpu_count() or 1, "CPU core"


def check_gpus(gpus: object) -> int:
    """``gpus`` as a job may ask for it: a whole number from 1 to the visible devices."""
    count, what = visible_devices()
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
        raise LoraLabError(f"gpus must be a whole number >= 1, not {gpus!r}")
    if gpus > count:
        raise LoraLabError(f"gpus = {gpus}, but this machine has {count} {what}"
                           f"{'s' if count > 1 else ''} to run on")
    return gpus
