"""The Jupyter server extension app: settings (traitlets), the route table, shared resources.

Settings are read from ``jupyter_server_config.py`` (``c.LoraLabApp.workspace = ...``) or the
command line (``--LoraLabApp.gpu_slots=2``); each falls back to an environment variable, so a
pod image can configure the server without a config file.

Loading the extension imports tornado and the light core modules only: torch, diffusers and
llama_cpp load inside the job processes and the caption worker process, never here.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from traitlets import Int, TraitError, Unicode, default, validate

from .. import __version__
from ..workspace import Workspace, default_root
from . import handlers_caption, handlers_datasets, handlers_jobs, handlers_meta
from .base import API


def routes() -> list[tuple[str, type]]:
    """Every (pattern relative to base_url, handler) of the REST API and the job stream."""
    table = (handlers_datasets.ROUTES + handlers_jobs.ROUTES + handlers_caption.ROUTES
             + handlers_meta.ROUTES)
    return [(f"{API}/{pattern}", handler) for pattern, handler in table]


class LoraLabApp(ExtensionApp):
    """lora_lab's REST + WebSocket API for datasets, captions and jobs."""

    name = "lora_lab"

    workspace = Unicode(
        config=True,
        help="""The lora_lab workspace root (datasets/, jobs/, models/, loras/, exports/).
        Every path a request names is resolved inside it. Defaults to $LORA_LAB_HOME, else
        /workspace/lora-lab when /workspace exists (VastAI, RunPod), else ~/lora-lab.""",
    )
    caption_model = Unicode(
        config=True,
        help="""The caption model GGUF for POST caption (one image at a time, resident).
        Defaults to $LORA_LAB_CAPTION_MODEL, else the Qwen2.5-VL-7B Q8_0 file under the
        workspace's models/caption/.""",
    )
    caption_mmproj = Unicode(
        config=True,
        help="""The caption model's vision projector GGUF (mmproj). Defaults to
        $LORA_LAB_CAPTION_MMPROJ, else the Qwen2.5-VL-7B mmproj under models/caption/.""",
    )
    max_upload_mb = Int(
        config=True,
        help="""The largest zip a POST datasets upload may send, in MiB; a bigger upload is
        refused with 413 as soon as it passes the limit. Defaults to $LORA_LAB_MAX_UPLOAD_MB,
        else 4096.""",
    )
    gpu_slots = Int(
        config=True,
        help="""How many jobs may run at once (one per GPU); the rest wait in the queue.
        Defaults to $LORA_LAB_GPU_SLOTS, else 1.""",
    )

    @default("workspace")
    def _workspace_default(self) -> str:
        return str(default_root())

    @default("caption_model")
    def _caption_model_default(self) -> str:
        return os.environ.get("LORA_LAB_CAPTION_MODEL", "")

    @default("caption_mmproj")
    def _caption_mmproj_default(self) -> str:
        return os.environ.get("LORA_LAB_CAPTION_MMPROJ", "")

    @default("max_upload_mb")
    def _max_upload_mb_default(self) -> int:
        return _env_int("LORA_LAB_MAX_UPLOAD_MB", 4096)

    @default("gpu_slots")
    def _gpu_slots_default(self) -> int:
        return _env_int("LORA_LAB_GPU_SLOTS", 1)

    @validate("max_upload_mb", "gpu_slots")
    def _at_least_one(self, proposal: dict[str, Any]) -> int:
        if proposal["value"] < 1:
            raise TraitError(f"LoraLabApp.{proposal['trait'].name} must be at least 1, "
                             f"not {proposal['value']}")
        return proposal["value"]

    # -- lifecycle --------------------------------------------------------------------------------
    def initialize_settings(self) -> None:
        self.ws = Workspace(self.workspace)
        _remove_stale_uploads(self.ws.root / ".uploads")
        # Short and medium blocking calls (file reads, ingest, export, cancel); the caption model
        # answers one image at a time, so its requests queue on their own single thread and
        # never hold up the rest.
        self.executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="lora-lab")
        self.caption_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lora-lab-caption")
        self._caption_worker: Any = None
        self._worker_lock = threading.Lock()
        self.log.info("lora_lab %s: workspace %s, %d GPU slot(s)", __version__, self.ws.root,
                      self.gpu_slots)

    def initialize_handlers(self) -> None:
        self.handlers.extend(routes())

    async def stop_extension(self) -> None:
        """Close the caption worker. Jobs keep running: they are their own processes and
        outlive the server by design (a restarted server picks them up from their folders)."""
        await asyncio.get_running_loop().run_in_executor(None, self.close_caption_worker)
        for executor in (getattr(self, "executor", None), getattr(self, "caption_executor", None)):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)

    # -- shared resources -------------------------------------------------------------------------
    def caption_worker(self) -> Any:
        """The resident caption model, started on the first request (blocking: call it off the
        event loop). The worker loads llama_cpp in its own process."""
        with self._worker_lock:
            if self._caption_worker is None:
                from ..captioning.worker import CaptionWorker

                self._caption_worker = CaptionWorker(self.caption_model or None,
                                                     self.caption_mmproj or None, workspace=self.ws)
            return self._caption_worker

    def close_caption_worker(self) -> None:
        """Let the resident caption model go, and its memory (VRAM on a GPU box) with it; the
        next caption request loads it again."""
        with self._worker_lock:
            worker, self._caption_worker = self._caption_worker, None
        if worker is not None:
            worker.close()

    def describe(self) -> dict[str, Any]:
        """The settings a client may want to show (GET health)."""
        from ..captioning.llama import model_paths  # PIL and ctypes only; llama_cpp stays out

        model, mmproj = model_paths(self.caption_model or None, self.caption_mmproj or None, self.ws)
        worker = self._caption_worker
        return {"version": __version__, "workspace": str(self.ws.root), "gpu_slots": self.gpu_slots,
                "max_upload_mb": self.max_upload_mb,
                "caption_model": str(model), "caption_mmproj": str(mmproj),
                "caption_model_found": model.is_file() and mmproj.is_file(),
                "caption_worker_running": bool(worker is not None and worker.pid)}


def _remove_stale_uploads(folder: Path, max_age_s: float = 86400) -> None:
    """Uploads a killed server left half-written (a live one never keeps one for a day)."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime > max_age_s:
                path.unlink()


def _env_int(name: str, fallback: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return fallback
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise TraitError(f"${name} must be a whole number >= 1, not {raw!r}")
    return int(raw)
