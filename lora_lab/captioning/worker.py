"""The resident caption model: a child process that loads the model once and answers one-image
requests, for "re-caption this image" in the panels and the server extension.

The model lives in its own process so that a crash in llama.cpp (an abort, the OOM killer)
takes down only the worker: the caller gets a :class:`CaptionError` at once, never a hang, and
the next request starts a fresh worker. A request that outlives ``timeout`` is treated the same.
"""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
from typing import Any

from .base import Answer, CaptionError
from .llama import model_name, model_paths

_POLL_S = 0.1  # how often a waiting caller checks that the worker is still alive


class CaptionWorker:
    """A :class:`~lora_lab.captioning.base.Captioner` backed by a resident
    :class:`~lora_lab.captioning.llama.LlamaCaptioner` in a child process.

    ``options`` are LlamaCaptioner's (handler, n_ctx, gpu, max_tokens, ...). The worker starts
    on the first request (or :meth:`start`); requests are answered one at a time.
    """

    def __init__(self, model: str | os.PathLike | None = None,
                 mmproj: str | os.PathLike | None = None, *, timeout: float = 300.0,
                 load_timeout: float = 600.0, **options: Any):
        model_path, mmproj_path = model_paths(model, mmproj, options.pop("workspace", None))
        self._spec = (str(model_path), str(mmproj_path), options)
        self.timeout, self.load_timeout = timeout, load_timeout
        self.name = model_name(model_path, mmproj_path)
        self.starts = 0  # how many worker processes were started: > 1 after a restart
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Any = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    def start(self) -> None:
        """Load the model now (it is loaded on the first request otherwise)."""
        with self._lock:
            self._ensure_running()

    def caption(self, image: bytes, prompt: str) -> Answer:
        with self._lock:
            self._ensure_running()
            self._conn.send((image, prompt))
            return self._reply(self.timeout, "captioning")

    def close(self) -> None:
        with self._lock:
            if self._proc is None:
                return
            try:
                self._conn.send(None)
            except OSError:
                pass
            self._proc.join(timeout=10)
            self._stop()

    def _ensure_running(self) -> None:
        if self._proc is not None:
            if self._proc.is_alive():
                return
            self._stop()  # died between requests: nothing was lost, start again quietly
        # spawn, not fork: the Jupyter server that owns a worker is threaded.
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, *self._spec),
                                 name="lora-lab-caption-worker", daemon=True)
        self._proc.start()
        child.close()
        self.starts += 1
        self._reply(self.load_timeout, "loading the caption model")

    def _reply(self, timeout: float, doing: str) -> Any:
        """The worker's next message: the model's name once loaded, then an Answer per caption."""
        deadline = time.monotonic() + timeout
        try:
            while not self._conn.poll(_POLL_S):
                if not self._proc.is_alive():
                    raise EOFError
                if time.monotonic() > deadline:
                    self._stop()
                    raise CaptionError(f"the caption worker took longer than {timeout:.0f} s "
                                       f"{doing}; it was stopped and restarts with the next request")
            status, value = self._conn.recv()
        except (EOFError, OSError):
            self._proc.join(timeout=5)
            code = self._proc.exitcode
            self._stop()
            raise CaptionError(f"the caption worker died (exit code {code}) while {doing}; "
                               "it restarts with the next request") from None
        if status == "error":
            if doing.startswith("loading"):
                self._stop()
            raise CaptionError(value)
        return value

    def _stop(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=10)
        self._conn.close()
        self._proc = self._conn = None


def _serve(conn, model: str, mmproj: str, options: dict[str, Any]) -> None:
    """The worker process: load once, then answer (image, prompt) until told to stop."""
    from .llama import LlamaCaptioner

    try:
        captioner = LlamaCaptioner(model, mmproj, **options)
    except Exception as e:  # reported to the caller, which raises it
        conn.send(("error", str(e)))
        return
    conn.send(("ready", captioner.name))
    try:
        while (request := conn.recv()) is not None:
            try:
                conn.send(("ok", captioner.caption(*request)))
            except Exception as e:
                conn.send(("error", str(e)))
    except EOFError:  # the owner went away without saying so
        pass
    captioner.close()
