"""What this box can do for lora_lab, one line per check: the GPU, torch's CUDA build and bf16,
llama.cpp's GPU offload, free disk, the models present, the server extension, the Ray cluster.

Each line is ok, warn or fail with what was found and, when not ok, the fix. A check that
raises becomes a fail line with the error's first line, never a traceback. torch is imported
only when the box has an NVIDIA GPU (a CPU box answers in about a second); a long-lived process
(the Jupyter server, a kernel) runs the checks in a child process with :func:`diagnose_apart`,
so torch, llama.cpp and a CUDA context never stay loaded in it.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from .cluster import ADDRESS_ENV, PIP_LINE, cluster_file, cluster_resources, dashboard_url, ray_installed
from .devices import NVIDIA_GPUS, driver_version, gpu_status
from .errors import LoraLabError
from .workspace import Workspace

Status = Literal["ok", "warn", "fail"]
GB = 10**9  # disks are sold and shown (df -H, the pod templates) in decimal gigabytes
DISK_WARN_GB, DISK_FAIL_GB = 50, 10  # a real base model is 2-24 GB, the caption pair ~9 GB
EXTENSION = "lora_lab.server_ext"  # the module jupyter_server loads (jupyter-config/ enables it)


@dataclass(frozen=True)
class Check:
    check: str
    status: Status
    found: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Box:
    """The facts several checks share, each read once when first asked for."""

    def __init__(self, ws: Workspace):
        self.ws = ws

    @cached_property
    def gpus(self) -> list[dict[str, Any]]:
        """The GPUs NVML reads (name, memory)."""
        return gpu_status()["gpus"]

    @cached_property
    def listed(self) -> int:
        """The GPUs the NVIDIA driver lists, whether or not NVML can read them."""
        return len(list(NVIDIA_GPUS.iterdir())) if NVIDIA_GPUS.is_dir() else 0

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus) or self.listed > 0


# -- GPU and torch -------------------------------------------------------------------------------
def gpu_line(box: Box) -> list[Check]:
    if box.gpus:
        models: dict[str, int] = {}
        for gpu in box.gpus:
            label = f"{gpu['name']} ({gpu['memory_total_mb'] / 1024:.0f} GiB)"
            models[label] = models.get(label, 0) + 1
        found = ", ".join(f"{n}x {label}" for label, n in models.items())
        return [Check("gpu", "ok", f"{found}; driver {driver_version() or 'unknown'}")]
    if box.listed:
        return [Check("gpu", "warn", f"the NVIDIA driver lists {box.listed} GPU(s), but NVML "
                      "cannot read them (name, memory)",
                      "pip install nvidia-ml-py, and check that `nvidia-smi` works")]
    return [Check("gpu", "warn", "no NVIDIA GPU: training and captioning run on the CPU, fine "
                  "for the tiny demo models, far too slow for real ones",
                  "for real models, run on a box with an NVIDIA GPU (a VastAI or RunPod pod); "
                  "on one, `nvidia-smi` must list it")]


def torch_lines(box: Box) -> list[Check]:
    """torch's CUDA build and bf16. torch is imported only when there is a GPU to check it
    against: the import alone takes seconds."""
    if importlib.util.find_spec("torch") is None:
        return [Check("torch", "fail", "torch is not installed: nothing can train",
                      "pip install torch (on a GPU pod, keep the CUDA torch its image ships)")]
    if not box.has_gpu:
        version = importlib.metadata.version("torch")
        return [Check("torch", "ok", f"torch {version}; no GPU for it to use (not imported)"),
                Check("bf16", "ok", "no GPU: on the CPU, train with train.mixed_precision = \"no\"")]
    import torch

    unchecked = Check("bf16", "warn", "not checked: torch cannot use the GPU", "fix the torch line first")
    if torch.version.cuda is None:
        return [Check("torch", "fail", f"torch {torch.__version__} is built without CUDA, on a "
                      "box with an NVIDIA GPU: it trains on the CPU",
                      "install a CUDA build of torch for this driver's CUDA (the gpu line): "
                      "https://pytorch.org/get-started/locally/"), unchecked]
    if not torch.cuda.is_available():
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
        why = (f"$CUDA_VISIBLE_DEVICES is {hidden!r}; unset it or name a GPU" if hidden is not None
               else "the driver may be older than torch's CUDA (compare the gpu line): update "
                    "the driver or install a torch built for the driver's CUDA")
        return [Check("torch", "fail", f"torch {torch.__version__} (CUDA {torch.version.cuda}) "
                      "sees no GPU", why), unchecked]
    count, name = torch.cuda.device_count(), torch.cuda.get_device_name(0)
    lines = [Check("torch", "ok", f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees "
                   f"{count} GPU(s): {name}")]
    # native bf16 from compute capability 8.0 (Ampere) on; is_bf16_supported() also says yes
    # for the slow emulation on older GPUs
    major, minor = torch.cuda.get_device_capability(0)
    if major >= 8:
        lines.append(Check("bf16", "ok", f"supported (compute capability {major}.{minor}): "
                           "train with train.mixed_precision = \"bf16\""))
    else:
        lines.append(Check("bf16", "warn", f"not supported natively (compute capability "
                           f"{major}.{minor}, before Ampere)",
                           "train with train.mixed_precision = \"fp16\""))
    return lines


# -- llama.cpp -----------------------------------------------------------------------------------
def llama_line(box: Box) -> list[Check]:
    if importlib.util.find_spec("llama_cpp") is None:
        return [Check("llama.cpp", "warn", "llama-cpp-python is not installed: no local captioning",
                      _llama_install(box.has_gpu, None))]
    import llama_cpp  # ctypes bindings: ~0.4 s alone, ~0.07 s once the CLI has loaded numpy

    version = importlib.metadata.version("llama-cpp-python")
    offload = bool(llama_cpp.llama_supports_gpu_offload())
    if offload:
        where = "" if box.has_gpu else ", but no GPU here to offload to"
        return [Check("llama.cpp", "ok", f"llama-cpp-python {version}, built with GPU offload{where}")]
    if not box.has_gpu:
        return [Check("llama.cpp", "ok", f"llama-cpp-python {version}, a CPU build: right for a "
                      "box without a GPU")]
    return [Check("llama.cpp", "fail", f"llama-cpp-python {version} is a CPU build on a box with "
                  "a GPU: a 7B caption model takes minutes per image", _llama_install(True, version))]


def _llama_install(gpu: bool, version: str | None) -> str:
    """The command that builds llama-cpp-python for CUDA (from source: it has no CUDA wheel on
    PyPI), or for the CPU without a GPU. --no-deps: a forced reinstall would replace numpy too."""
    pin = f"llama-cpp-python=={version}" if version else "llama-cpp-python"
    if not gpu:
        return f"pip install {pin}"
    command = (f'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir --no-deps '
               f"--no-binary llama-cpp-python {pin}")
    if shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists():
        return f"install the CUDA toolkit (the build needs nvcc, not found here), then: {command}"
    return command


# -- disk and models -----------------------------------------------------------------------------
def disk_line(box: Box) -> list[Check]:
    usage = shutil.disk_usage(box.ws.root)
    free = usage.free / GB
    found = (f"{free:.0f} GB free of {usage.total / GB:.0f} GB on {_mount_point(box.ws.root)} "
             f"(the workspace {box.ws.root})")
    if free >= DISK_WARN_GB:
        return [Check("disk", "ok", found)]
    fix = ("free space (old jobs' checkpoints: lora-lab jobs list, then delete them) or put the "
           "workspace on a bigger volume ($LORA_LAB_HOME)")
    if free >= DISK_FAIL_GB:
        return [Check("disk", "warn", f"{found}: under {DISK_WARN_GB} GB, room for a model or two",
                      fix)]
    return [Check("disk", "fail", f"{found}: under {DISK_FAIL_GB} GB, too little for a real model",
                  fix)]


def _mount_point(path: Path) -> Path:
    while not os.path.ismount(path) and path.parent != path:
        path = path.parent
    return path


def model_lines(box: Box) -> list[Check]:
    """The base models in the workspace, the catalogue models pulled, and the caption model."""
    from .captioning.llama import model_paths  # PIL and ctypes; llama_cpp stays out
    from .models import present

    models = box.ws.models
    found = _base_models(models)
    if found:
        shown = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
        lines = [Check("base models", "ok", f"{len(found)} in {models}: {shown}")]
    else:
        lines = [Check("base models", "warn", f"none in {models}",
                       f"lora-lab models pull sd15 (or sdxl), or copy a diffusers folder or a "
                       f".safetensors checkpoint into {models}")]
    pulled = [name for name, path in present(box.ws).items() if path is not None]
    lines.append(Check("catalogue", "ok", f"pulled: {', '.join(pulled)}") if pulled else
                 Check("catalogue", "warn", "no catalogue model pulled yet (lora-lab models list)",
                       "lora-lab models pull caption, then a base model: sdxl, z-image-turbo, ..."))
    model, mmproj = model_paths(workspace=box.ws)
    if model.is_file() and mmproj.is_file():
        size = _size(model.stat().st_size + mmproj.stat().st_size)
        lines.append(Check("caption model", "ok", f"{model.name} + {mmproj.name} ({size}) in "
                           f"{_in_workspace(model.parent, box.ws)}"))
        return lines
    missing = " and ".join(_in_workspace(p, box.ws) for p in (model, mmproj) if not p.is_file())
    others = sorted(p.name for p in (models / "caption").glob("*.gguf"))
    lines.append(Check("caption model", "warn", f"not found: {missing}" + (
        f" (models/caption/ holds {', '.join(others)})" if others else ""),
        "lora-lab models pull caption, or set $LORA_LAB_CAPTION_MODEL and "
        "$LORA_LAB_CAPTION_MMPROJ to a GGUF and its mmproj"))
    return lines


def _base_models(folder: Path, depth: int = 1) -> list[str]:
    """The diffusers folders (with their pipeline class) and .safetensors files in ``folder``
    and its subfolders ``depth`` levels down, as the trainer's ``local_models`` finds them, but
    read from model_index.json and file names only: ``local_models`` also names each one's
    family, which imports torch."""
    found = []
    for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        if (path / "model_index.json").is_file():
            found.append(f"{path.name} ({_pipeline_class(path / 'model_index.json')})")
        elif path.suffix == ".safetensors" and path.is_file():
            found.append(f"{path.name} ({_size(path.stat().st_size)})")
        elif path.is_dir() and depth:
            found += [f"{path.name}/{name}" for name in _base_models(path, depth - 1)]
    return found


def _in_workspace(path: Path, ws: Workspace) -> str:
    """``path`` relative to the workspace root when inside it: shorter, and where users look."""
    return str(path.relative_to(ws.root)) if path.is_relative_to(ws.root) else str(path)


def _size(n: int) -> str:
    return f"{n / GB:.1f} GB" if n >= GB // 10 else f"{n / 10**6:.1f} MB"


def _pipeline_class(index: Path) -> str:
    try:
        return str(json.loads(index.read_text())["_class_name"])
    except (ValueError, KeyError, TypeError, OSError):
        return "damaged model_index.json"


# -- the server extension ------------------------------------------------------------------------
def extension_line(box: Box) -> list[Check]:
    enabled, source = extension_enabled()
    if enabled:
        return [Check("server extension", "ok", f"{EXTENSION} enabled in {source}")]
    found = (f"{EXTENSION} is disabled in {source}" if source else
             f"{EXTENSION} is enabled in no Jupyter config (the wheel installs "
             "jupyter_server_config.d/lora_lab.json)")
    return [Check("server extension", "warn", f"{found}: JupyterLab's LoRA Lab sidebar and REST "
                  "API are missing (notebook panels still work)",
                  f"jupyter server extension enable {EXTENSION}, then restart JupyterLab")]


def extension_enabled() -> tuple[bool, Path | None]:
    """Whether jupyter_server loads the extension, and the config file that says so, read as
    jupyter_server reads ``jpserver_extensions`` (ExtensionConfigManager): every config
    folder, lowest priority first; in each, ``jupyter_server_config.d/*.json`` in name order,
    then ``jupyter_server_config.json``; a later value wins, null removes. Much faster than
    ``jupyter server extension list``, which imports every extension."""
    from jupyter_core.paths import jupyter_config_path

    value, source = False, None
    for folder in map(Path, reversed(jupyter_config_path())):
        for path in [*sorted((folder / "jupyter_server_config.d").glob("*.json")),
                     folder / "jupyter_server_config.json"]:
            extensions = _read_json(path).get("ServerApp", {}).get("jpserver_extensions", {})
            if isinstance(extensions, dict) and EXTENSION in extensions:
                value = extensions[EXTENSION]
                source = None if value is None else path  # null: as if never said
    return value is True, source


def _read_json(path: Path) -> dict[str, Any]:
    """A config file's JSON object; {} for a missing, empty or invalid one (jupyter_server
    skips those too)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# -- the Ray cluster ----------------------------------------------------------------------------
def cluster_line(box: Box) -> list[Check]:
    """Ray installed or not, and the configured cluster's nodes and GPUs. Without a configured
    cluster nothing is asked over the network and Ray is not imported, so this costs nothing."""
    ray = f"Ray {importlib.metadata.version('ray')}" if ray_installed() else None
    configured = os.environ.get(ADDRESS_ENV, "").strip() or cluster_file(box.ws).is_file()
    if not configured:
        found = (f"{ray} installed; no cluster configured: jobs run on this box" if ray else
                 f"Ray is not installed: jobs run on this box (for a Ray cluster: {PIP_LINE})")
        return [Check("cluster", "ok", found)]
    fix = (f"on the head box: lora-lab cluster start (or status); elsewhere, set {ADDRESS_ENV} "
           "to the head's dashboard URL (http://HOST:8265)")
    try:
        url = dashboard_url(box.ws)
        found = cluster_resources(url, timeout=3)
    except LoraLabError as e:
        return [Check("cluster", "fail", str(e), fix)]
    alive = sum(node["alive"] for node in found["nodes"])
    line = (f"{url}: {alive} node(s), {found['gpus_free']} of {found['gpus']} GPU(s) free, "
            f"{found['cpus_free']} of {found['cpus']} CPU(s) free")
    if ray is None:
        return [Check("cluster", "warn", f"{line}; but Ray is not installed here: jobs cannot be "
                      "sent to it", PIP_LINE)]
    return [Check("cluster", "ok", f"{ray}; {line}")]


# -- running them --------------------------------------------------------------------------------
CHECKS: tuple[tuple[str, Callable[[Box], list[Check]]], ...] = (
    ("gpu", gpu_line), ("torch", torch_lines), ("llama.cpp", llama_line), ("disk", disk_line),
    ("models", model_lines), ("server extension", extension_line), ("cluster", cluster_line))


def diagnose(ws: Workspace | None = None) -> list[Check]:
    """Every check's lines, in this process."""
    box = Box(ws or Workspace())
    lines: list[Check] = []
    for name, check in CHECKS:
        try:
            lines += check(box)
        except Exception as e:  # one broken check must not hide the others
            lines.append(Check(name, "fail", f"the check failed: {type(e).__name__}: {_first_line(e)}",
                               "fix what the error names, then run lora-lab doctor again"))
    return lines


def _first_line(error: BaseException) -> str:
    return next(iter(str(error).strip().splitlines()), "")


def diagnose_apart(ws: Workspace | None = None, env: dict[str, str] | None = None,
                   timeout_s: float = 120) -> list[Check]:
    """:func:`diagnose` in a child process (``python -m lora_lab.doctor``), with ``env`` added
    to its environment: for a long-lived process, which must not keep torch, llama.cpp or a
    CUDA context loaded after asking."""
    ws = ws or Workspace()
    command = [sys.executable, "-m", "lora_lab.doctor", str(ws.root)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return [Check("doctor", "fail", f"the checks took longer than {timeout_s:.0f} s",
                      "run lora-lab doctor in a terminal to see which one hangs")]
    try:
        return [Check(**line) for line in json.loads(done.stdout.strip().splitlines()[-1])]
    except (ValueError, TypeError, IndexError):
        said = done.stderr.strip().splitlines()
        return [Check("doctor", "fail", f"the checks' process ended with status {done.returncode}"
                      f"{': ' + said[-1] if said else ''}", "run lora-lab doctor in a terminal")]


# -- showing them --------------------------------------------------------------------------------
_COLOURS = {"ok": "\033[32m", "warn": "\033[33m", "fail": "\033[31m"}


def table(lines: list[Check], colour: bool = False) -> str:
    """The lines aligned for people: status, check, what was found; the fix under it."""
    width = max((len(line.check) for line in lines), default=0)
    out = []
    for line in lines:
        status = f"{line.status:<4}"
        if colour:
            status = f"{_COLOURS[line.status]}{status}\033[0m"
        out.append(f"{status}  {line.check:<{width}}  {line.found}")
        if line.fix:
            out.append(f"{'':4}  {'':<{width}}  fix: {line.fix}")
    return "\n".join(out)


def failed(lines: list[Check]) -> bool:
    return any(line.status == "fail" for line in lines)


if __name__ == "__main__":  # diagnose_apart's child: the workspace root in, the lines as JSON out
    print(json.dumps([line.to_dict() for line in diagnose(Workspace(sys.argv[1]))]))
