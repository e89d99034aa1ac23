"""The live stream of one job over a WebSocket: its events and its log lines as they are written;
and what every lora_lab WebSocket shares (:class:`LoraLabSocket`).

``WS jobs/ID/stream?after=N&log_offset=B`` sends text messages, each one JSON object:

- every event of events.jsonl after number N, as written plus ``"n"`` (its line number);
- every line of log.txt from byte B on, as ``{"type": "log_line", "line": ..., "offset": ...}``
  (``offset``: where the next line starts);
- once the job has ended and all of that is sent, ``{"type": "end", "state": ..., "n": ...,
  "offset": ...}``, and the socket closes.

A client that loses the connection opens a new one with ``after`` = the last ``n`` and
``log_offset`` = the last ``offset`` it saw, and misses nothing and gets nothing twice. The
files are polled (every 0.2 s): they are written by another process, often on network storage
where inotify does not reach.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from jupyter_server.auth.decorator import ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado.web import HTTPError
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from ..errors import LoraLabError
from ..jobdir import JobFollower, open_job
from .base import allowed_methods, error_body, status_of
from .services import SETTINGS_KEY, Services

JOB = r"(?P<job_id>[^/]+)"
POLL_S = 0.2
T = TypeVar("T")


class LoraLabSocket(WebSocketMixin, WebSocketHandler, JupyterHandler):
    """Base of the WebSockets: clients only listen, while the subclass's ``pump`` sends (with
    :meth:`send`) until there is no more; errors before the upgrade are the REST routes' JSON.
    Subclasses decorate ``get`` with ``@ws_authenticated``."""

    pump: Callable[[], Awaitable[None]]  # each subclass's own sending loop
    _pump: asyncio.Task | None = None

    def set_default_headers(self) -> None:
        """JupyterHandler's page headers (CSP and such) do not apply to a WebSocket upgrade."""

    @property
    def services(self) -> Services:
        return self.settings[SETTINGS_KEY]

    def open(self, *args: str, **kwargs: str) -> None:
        super().open()  # WebSocketMixin: keep-alive pings
        self._pump = asyncio.ensure_future(self._send_all())

    async def send(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            await self.write_message(json.dumps(message, default=str))

    def on_message(self, message: str | bytes) -> None:
        """Clients only listen; anything they send is ignored."""

    def on_close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """The REST routes' JSON error, not the server's HTML page (which needs a login to draw)."""
        if status_code == 405:
            self.set_header("Allow", ", ".join(allowed_methods(self)))
        error = kwargs.get("exc_info", (None, None, None))[1]
        detail = error.log_message if isinstance(error, HTTPError) and error.log_message else ""
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(error_body(status_code, detail)))

    def int_arg(self, name: str, default: int, lo: int, hi: int) -> int:
        raw = self.get_query_argument(name, "") or str(default)
        if not (raw.isascii() and raw.isdigit()) or not lo <= int(raw) <= hi:
            raise HTTPError(400, f"{name} must be a whole number from {lo} to {hi}, not {raw!r}")
        return int(raw)

    async def _send_all(self) -> None:
        try:
            await self.pump()
            self.close()
        except WebSocketClosedError:  # the client went away: it reconnects
            return
        except Exception as e:  # a folder vanished or cannot be read: say so and close
            self.log.warning("%s stopped: %s", self.request.path, e)
            with contextlib.suppress(WebSocketClosedError):
                await self.write_message(json.dumps({"type": "error", "detail": str(e)}))
            self.close()

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the extension's thread pool: file reads stay off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.services.executor, fn, *args)


class JobStreamHandler(LoraLabSocket):
    """WS: a job's events and log lines, live, until it ends (see the module docstring)."""

    follower: JobFollower

    @ws_authenticated
    async def get(self, job_id: str) -> None:
        # An unknown job or a bad argument is an HTTP error before the upgrade, not a socket
        # that opens and closes at once; so is a plain GET (tornado's 400: no Upgrade header).
        try:
            job = open_job(job_id, self.services.ws)
        except LoraLabError as e:
            raise HTTPError(status_of(e), str(e)) from None
        self.follower = JobFollower(job, self.int_arg("after", 0, 0, 10**12),
                                    self.int_arg("log_offset", 0, 0, 10**15))
        await super().get(job_id=job_id)

    async def pump(self) -> None:
        while not self.follower.ended:
            messages = await self.blocking(self.follower.poll)
            await self.send(messages)
            if not messages:
                await asyncio.sleep(POLL_S)
