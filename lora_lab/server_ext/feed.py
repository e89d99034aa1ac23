"""The workspace feed over a WebSocket: what the JupyterLab sidebar shows, kept current, so it
polls nothing while the socket is open.

``WS stream?limit=50`` sends text messages, each one JSON object:

- at open: ``{"type": "jobs", "jobs": [the newest limit job views], "total": N}``, then
  ``{"type": "datasets", "datasets": [{"name", "images", "captioned"}]}``, then
  ``{"type": "gpus", "gpus": [...], "source": "nvml" | "none"}`` (as GET gpus);
- then only what changed: ``{"type": "job", "job": view, "total": N}`` for a new or changed
  job (an active one whose process died reads interrupted), ``{"type": "removed", "id": ID,
  "total": N}``, and ``datasets`` / ``gpus`` again when they changed.

Jobs are checked every second, datasets and GPUs every two (:class:`lora_lab.watch.WorkspaceWatch`
does the checking, cheaply with hundreds of jobs; this handler only times it). A client that
loses the socket opens a new one and starts again from the opening messages.
"""
from __future__ import annotations

import asyncio
import itertools

from jupyter_server.auth.decorator import ws_authenticated

from ..watch import WorkspaceWatch
from .stream import LoraLabSocket

POLL_S = 1.0
SLOW_EVERY = 2  # datasets and GPUs: every second poll


class FeedHandler(LoraLabSocket):
    """WS: the workspace's jobs, datasets and GPUs, then their changes (see the module docstring)."""

    watch: WorkspaceWatch

    @ws_authenticated
    async def get(self) -> None:
        limit = self.int_arg("limit", 50, 1, 1000)  # a bad one is a 400 before the upgrade
        self.watch = WorkspaceWatch(self.services.ws, self.services.settings.contents_root, limit)
        await super().get()

    async def pump(self) -> None:
        await self.send(await self.blocking(self.watch.start))
        for tick in itertools.count(1):
            await asyncio.sleep(POLL_S)
            await self.send(await self.blocking(self.watch.poll, tick % SLOW_EVERY == 0))


ROUTES = [("stream", FeedHandler)]
