"""Where a run trains (``train.device``) and what it tells about the GPU: the first log line
says where, loudly when a run falls back to the CPU, and each progress event carries the GPU's
memory and utilisation (nothing at all on a CPU run)."""
from __future__ import annotations

import time
from typing import Any

import torch

from ..devices import gpu_ids
from ..errors import LoraLabError

READ_EVERY_S = 1.0  # the GPU's memory in use and utilisation are read at most this often


def cuda_problem() -> str | None:
    """Why torch cannot train on a CUDA GPU here; None when it can."""
    if torch.cuda.is_available():
        return None
    if not gpu_ids():
        return "no GPU is visible here (no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides them)"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA (install a CUDA build of torch)"
    return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use the GPU the driver "
            "shows (a driver older than torch's CUDA?)")


def pick_device(setting: str) -> tuple[bool, str | None]:
    """(whether to train on the GPU, why not when ``auto`` falls back to the CPU) for
    train.device ``setting``; "cuda" without a usable GPU is refused."""
    problem = None if setting == "cpu" else cuda_problem()
    if setting == "cuda" and problem:
        raise LoraLabError(f'train.device = "cuda", but {problem}; `lora-lab doctor` says what this '
                           'box lacks, or set train.device = "auto" to train on the CPU')
    return setting != "cpu" and problem is None, problem


def device_line(setting: str, device: torch.device, problem: str | None) -> dict[str, Any]:
    """The run's first log event: where it trains. A fallback to the CPU is a warning with
    ``fallback`` set, which the monitor shows beside the job's state."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "log", "level": "info", "message": f"training on {props.name} ({device}, "
                f"{props.total_memory / 2**30:.0f} GB)", "device": "cuda", "gpu": props.name}
    if setting == "cpu":
        return {"type": "log", "level": "info", "message": 'training on the CPU (train.device = "cpu")',
                "device": "cpu"}
    return {"type": "log", "level": "warning", "message": f"training on the CPU, many times slower "
            f'than a GPU: {problem}; set train.device = "cuda" to refuse to start without a GPU '
            "instead", "device": "cpu", "fallback": True}


class GpuMeter:
    """The GPU fields of a progress event: this process's peak memory (a counter torch keeps,
    free to read every step) and the device's memory in use and utilisation, read at most
    once every :data:`READ_EVERY_S` (a driver query each step would show in a fast loop), the
    last reading repeated in between. On the CPU: no fields at all."""

    def __init__(self, device: torch.device):
        self.device = device if device.type == "cuda" else None
        self._due = 0.0
        self._reading: dict[str, Any] = {}

    def fields(self) -> dict[str, Any]:
        if self.device is None:
            return {}
        now = time.monotonic()
        if now >= self._due:
            self._due, self._reading = now + READ_EVERY_S, self._read()
        return {"memory_mb": round(torch.cuda.max_memory_allocated(self.device) / 2**20),
                **self._reading}

    def _read(self) -> dict[str, Any]:
        free, total = torch.cuda.mem_get_info(self.device)
        return {"gpu_memory_mb": (total - free) // 2**20, "gpu_memory_total_mb": total // 2**20,
                "gpu_util": _utilization(self.device)}


def _utilization(device: torch.device) -> int | None:
    """The GPU's utilisation in percent, through NVML; None where it is not to be had."""
    try:
        return torch.cuda.utilization(device)
    except Exception:  # no nvidia-ml-py, a MIG slice (memory only), NVML gone: never stop a run
        return None
