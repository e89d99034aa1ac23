"""The devices a job may spread over, read without importing torch (the server checks
requests with this, and must stay light)."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import LoraLabError

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one entry for each GPU the driver sees


def gpu_ids() -> list[str]:
    """The CUDA device ids this process may use, read without importing torch:
    ``$CUDA_VISIBLE_DEVICES``'s, else one for each GPU the driver sees; none without a GPU."""
    count = len(list(NVIDIA_GPUS.iterdir())) if NVIDIA_GPUS.is_dir() else 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [d.strip() for d in listed.split(",") if d.strip()][:count]


def visible_devices() -> tuple[int, str]:
    """How many devices a job may spread over, and what they are: the GPUs this process may
    use, else the CPU cores (one process each)."""
    ids = gpu_ids()
    return (len(ids), "GPU") if ids else (os.cpu_count() or 1, "CPU core")


def check_gpus(gpus: object) -> int:
    """``gpus`` as a job may ask for it: a whole number from 1 to the visible devices."""
    count, what = visible_devices()
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
        raise LoraLabError(f"gpus must be a whole number >= 1, not {gpus!r}")
    if gpus > count:
        raise LoraLabError(f"gpus = {gpus}, but this machine has {count} {what}"
                           f"{'s' if count > 1 else ''} to run on")
    return gpus
