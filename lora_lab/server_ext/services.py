"""What every handler shares, built once when the extension starts: the workspace, the settings,
the thread pools and the resident caption model.

The app (:mod:`.app`) builds one :class:`Services` and puts it in the tornado settings; handlers
read it from there (``self.settings[SETTINGS_KEY]``), so neither side imports the other.
"""
from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..confine import contents_path
from ..workspace import Workspace

SETTINGS_KEY = "lora_lab_services"


@dataclass(frozen=True)
class Settings:
    """The extension's settings as the handlers use them (see LoraLabApp for each one's help)."""
    caption_model: str = ""
    caption_mmproj: str = ""
    max_upload_mb: int = 4096
    gpu_slots: int = 1
    executor: str = "local"  # where a job runs when its request names no executor
    allowed_caption_servers: tuple[str, ...] = ()
    ingest_roots: tuple[Path, ...] = ()
    contents_root: Path | None = None  # the Jupyter server's root_dir (its file browser's root)


class Services:
    """The workspace, settings, thread pools and caption worker of one running extension."""

    def __init__(self, ws: Workspace, settings: Settings):
        self.ws, self.settings = ws, settings
        _remove_stale_uploads(ws.root / ".uploads")
        # Short and medium blocking calls (file reads, ingest, export, cancel); the caption model
        # answers one image at a time, so its requests queue on their own single thread and
        # never hold up the rest.
        self.executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="lora-lab")
        self.caption_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lora-lab-caption")
        self._caption_worker: Any = None
        self._worker_lock = threading.Lock()

    def caption_worker(self) -> Any:
        """The resident caption model, started on the first request (blocking: call it off the
        event loop). The worker loads llama_cpp in its own process."""
        with self._worker_lock:
            if self._caption_worker is None:
                from ..captioning.worker import CaptionWorker

                s = self.settings
                self._caption_worker = CaptionWorker(s.caption_model or None, s.caption_mmproj or None,
                                                     workspace=self.ws)
            return self._caption_worker

    def close_caption_worker(self) -> None:
        """Let the resident caption model go, and its memory (VRAM on a GPU box) with it; the
        next caption request loads it again."""
        with self._worker_lock:
            worker, self._caption_worker = self._caption_worker, None
        if worker is not None:
            worker.close()

    def close(self) -> None:
        """Stop the caption worker and the thread pools (blocking)."""
        self.close_caption_worker()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.caption_executor.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> dict[str, Any]:
        """The settings a client may want to show (GET health)."""
        from ..captioning.llama import model_paths  # PIL and ctypes only; llama_cpp stays out

        s = self.settings
        model, mmproj = model_paths(s.caption_model or None, s.caption_mmproj or None, self.ws)
        worker = self._caption_worker
        return {"version": __version__, "workspace": str(self.ws.root), "gpu_slots": s.gpu_slots,
                "executor": s.executor,
                "max_upload_mb": s.max_upload_mb,
                "allowed_caption_servers": list(s.allowed_caption_servers),
                "ingest_roots": [str(r) for r in s.ingest_roots],
                "caption_model": str(model), "caption_mmproj": str(mmproj),
                "caption_model_found": model.is_file() and mmproj.is_file(),
                "caption_worker_running": bool(worker is not None and worker.pid),
                "contents": {"root": str(s.contents_root) if s.contents_root else None,
                             "workspace": contents_path(self.ws.root, s.contents_root)}}


def _remove_stale_uploads(folder: Path, max_age_s: float = 86400) -> None:
    """Uploads a killed server left half-written (a live one never keeps one for a day)."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime > max_age_s:
                path.unlink()
