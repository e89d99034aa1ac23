"""The devices a job may spread over, read without importing torch (the server checks
requests with this, and must stay light); and what the GPUs are doing now, read with NVIDIA's
management library (NVML) for the sidebar's GPU strip."""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

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


def check_gpus(gpus: object, local: bool = True) -> int:
    """``gpus`` as a job may ask for it: a whole number from 1, to the visible devices when the
    job runs on this box (a cluster's queue holds a job asking for more than it has)."""
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
        raise LoraLabError(f"gpus must be a whole number >= 1, not {gpus!r}")
    count, what = visible_devices()
    if local and gpus > count:
        raise LoraLabError(f"gpus = {gpus}, but this machine has {count} {what}"
                           f"{'s' if count > 1 else ''} to run on")
    return gpus


_nvml_lock = threading.Lock()
_nvml_ready = False  # NVML is started once per process and left running: a start enumerates
# every GPU, too slow to repeat every poll


def gpu_status() -> dict[str, Any]:
    """Each GPU's name, utilization and memory now, as NVML reads them:
    ``{"gpus": [gpu_reading(...), ...], "source": "nvml"}``; on a box without the library, the
    driver or a GPU, ``{"gpus": [], "source": "none"}`` (the sidebar says "CPU only")."""
    global _nvml_ready
    try:
        import pynvml  # nvidia-ml-py: ctypes only, but nothing else needs it
    except ImportError:
        return _no_gpus()
    try:
        _start_nvml(pynvml)
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(gpu_reading(index, pynvml.nvmlDeviceGetName(handle),
                                    _utilization(pynvml, handle), memory.used, memory.total))
    except pynvml.NVMLError:  # no driver (NVMLError_LibraryNotFound), no GPU, a GPU gone
        return _no_gpus()
    return {"gpus": gpus, "source": "nvml"} if gpus else _no_gpus()


def driver_version() -> str | None:
    """The NVIDIA driver's version and the newest CUDA it runs, as NVML reads them
    ("550.54.15, CUDA 12.4"); None without the library or the driver."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        _start_nvml(pynvml)
        version, cuda = pynvml.nvmlSystemGetDriverVersion(), pynvml.nvmlSystemGetCudaDriverVersion()
    except pynvml.NVMLError:
        return None
    if isinstance(version, bytes):
        version = version.decode("utf-8", errors="replace")
    return f"{version}, CUDA {cuda // 1000}.{cuda % 1000 // 10}"


def _start_nvml(pynvml: Any) -> None:
    global _nvml_ready
    with _nvml_lock:
        if not _nvml_ready:
            pynvml.nvmlInit()
            _nvml_ready = True


def _no_gpus() -> dict[str, Any]:
    return {"gpus": [], "source": "none"}


def _utilization(pynvml: Any, handle: Any) -> int | None:
    try:
        return pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
    except pynvml.NVMLError_NotSupported:  # a MIG slice reports memory only
        return None


def gpu_reading(index: int, name: str | bytes, utilization: int | None, used_bytes: int,
                total_bytes: int) -> dict[str, Any]:
    """One GPU as GET gpus shows it: utilization in percent, memory in MiB."""
    if isinstance(name, bytes):  # older nvidia-ml-py versions return the C string as it is
        name = name.decode("utf-8", errors="replace")
    return {"index": index, "name": name, "utilization": utilization,
            "memory_used_mb": used_bytes // 2**20, "memory_total_mb": total_bytes // 2**20}
