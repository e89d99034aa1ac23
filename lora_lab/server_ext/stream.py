"""The live stream of one job over a WebSocket: its events and its log lines as they are written.

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
from typing import Any

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


class JobStreamHandler(WebSocketMixin, WebSocketHandler, JupyterHandler):
    """WS: a job's events and log lines, live, until it ends (see the module docstring)."""

    follower: JobFollower
    _pump: asyncio.Task | None = None

    def set_default_headers(self) -> None:
        """JupyterHandler's page headers (CSP and such) do not apply to a WebSocket upgrade."""

    @property
    def services(self) -> Services:
        return self.settings[SETTINGS_KEY]

    @ws_authenticated
    async def get(self, job_id: str) -> None:
        # An unknown job or a bad argument is an HTTP error before the upgrade, not a socket
        # that opens and closes at once; so is a plain GET (tornado's 400: no Upgrade header).
        try:
            job = open_job(job_id, self.services.ws)
        except LoraLabError as e:
            raise HTTPError(status_of(e), str(e)) from None
        self.follower = JobFollower(job, self._int_arg("after"), self._int_arg("log_offset"))
        await super().get(job_id=job_id)

    def open(self, job_id: str) -> None:  # type: ignore[override]
        super().open()  # WebSocketMixin: keep-alive pings
        self._pump = asyncio.ensure_future(self._send_until_done())

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

    async def _send_until_done(self) -> None:
        loop = asyncio.get_running_loop()
        executor = self.services.executor
        try:
            while not self.follower.ended:
                messages = await loop.run_in_executor(executor, self.follower.poll)
                for message in messages:
                    await self.write_message(json.dumps(message))
                if not messages:
                    await asyncio.sleep(POLL_S)
            self.close()
        except WebSocketClosedError:  # the client went away: it reconnects with after=n
            return
        except Exception as e:  # the job folder vanished or cannot be read: say so and close
            self.log.warning("job stream %s stopped: %s", self.follower.job.id, e)
            with contextlib.suppress(WebSocketClosedError):
                await self.write_message(json.dumps({"type": "error", "detail": str(e)}))
            self.close()

    def _int_arg(self, name: str) -> int:
        raw = self.get_query_argument(name, "0") or "0"
        if not (raw.isascii() and raw.isdigit()):
            raise HTTPError(400, f"{name} must be a whole number >= 0, not {raw!r}")
        return int(raw)
