"""The Jupyter server extension app: settings (traitlets) and the route table. At start-up it
builds the one :class:`~.services.Services` the handlers share and puts it in the tornado
settings, where the handlers find it (they never import this module).

Settings are read from ``jupyter_server_config.py`` (``c.LoraLabApp.workspace = ...``) or the
command line (``--LoraLabApp.gpu_slots=2``); each falls back to an environment variable, so a
pod image can configure the server without a config file.

Loading the extension imports tornado and the light core modules only: torch, diffusers and
llama_cpp load inside the job processes and the caption worker process, never here.
"""
from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from jupyter_server.utils import url_path_join
from traitlets import Int, List, TraitError, Unicode, default, validate

from .. import __version__
from ..confine import server_prefix
from ..errors import LoraLabError
from ..jobs.executors import EXECUTORS, reattach
from ..served import export_server
from ..workspace import Workspace, default_root
from . import (
    feed,
    handlers_caption,
    handlers_datasets,
    handlers_jobs,
    handlers_lab,
    handlers_meta,
    handlers_models,
    handlers_suggest,
)
from .base import API
from .handlers_loras import ROUTES as LORA_TOOL_ROUTES
from .services import SETTINGS_KEY, Services, Settings


def routes() -> list[tuple[str, type]]:
    """Every (pattern relative to base_url, handler) of the REST API and the WebSockets."""
    table = (handlers_datasets.ROUTES + handlers_jobs.ROUTES + handlers_caption.ROUTES
             + handlers_meta.ROUTES + handlers_lab.ROUTES + handlers_models.ROUTES + feed.ROUTES
             + handlers_suggest.ROUTES + LORA_TOOL_ROUTES)
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
        Defaults to $LORA_LAB_CAPTION_MODEL, else the pair `lora-lab models pull caption` (or
        caption-small) put in the workspace's models/, looked up at each load.""",
    )
    caption_mmproj = Unicode(
        config=True,
        help="""The caption model's vision projector GGUF (mmproj). Defaults to
        $LORA_LAB_CAPTION_MMPROJ, else the pulled caption model's mmproj (as caption_model).""",
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
    allowed_caption_servers = List(
        Unicode(), config=True,
        help="""OpenAI-compatible caption servers a caption job submitted over REST may use, as
        URL prefixes (http://127.0.0.1:8080, https://host/v1): a job naming any other server is
        refused, so the server's caption API key ($LORA_LAB_CAPTION_API_KEY) goes nowhere else.
        Defaults to $LORA_LAB_ALLOWED_CAPTION_SERVERS (comma- or space-separated), else none.""",
    )
    executor = Unicode(
        config=True,
        help="""Where a job submitted over REST runs when the request names no "executor":
        local (a process on this box) or ray (the Ray cluster `lora-lab cluster start` made,
        or $LORA_LAB_RAY_ADDRESS). Defaults to $LORA_LAB_EXECUTOR, else local.""",
    )
    ingest_roots = List(
        Unicode(), config=True,
        help="""Folders outside the workspace that POST datasets {source} may read zips and
        image folders from (the workspace itself is always allowed). Defaults to
        $LORA_LAB_INGEST_ROOTS (separated by ':'), else none.""",
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

    @default("allowed_caption_servers")
    def _allowed_caption_servers_default(self) -> list[str]:
        raw = os.environ.get("LORA_LAB_ALLOWED_CAPTION_SERVERS", "")
        return [url for url in re.split(r"[\s,]+", raw) if url]

    @default("executor")
    def _executor_default(self) -> str:
        return _known_executor(os.environ.get("LORA_LAB_EXECUTOR", "").strip() or "local",
                               "$LORA_LAB_EXECUTOR")

    @validate("executor")
    def _executor_setting(self, proposal: dict[str, Any]) -> str:
        return _known_executor(proposal["value"], "LoraLabApp.executor")

    @default("ingest_roots")
    def _ingest_roots_default(self) -> list[str]:
        return [p for p in os.environ.get("LORA_LAB_INGEST_ROOTS", "").split(os.pathsep) if p]

    @validate("allowed_caption_servers")
    def _server_urls(self, proposal: dict[str, Any]) -> list[str]:
        try:
            return [server_prefix(url) for url in proposal["value"]]
        except LoraLabError as e:
            raise TraitError(f"LoraLabApp.allowed_caption_servers: {e}") from None

    @validate("ingest_roots")
    def _absolute_folders(self, proposal: dict[str, Any]) -> list[str]:
        for root in proposal["value"]:
            if not Path(root).expanduser().is_absolute():
                raise TraitError(f"LoraLabApp.ingest_roots: {root!r} must be an absolute path")
        return proposal["value"]

    @validate("max_upload_mb", "gpu_slots")
    def _at_least_one(self, proposal: dict[str, Any]) -> int:
        if proposal["value"] < 1:
            raise TraitError(f"LoraLabApp.{proposal['trait'].name} must be at least 1, "
                             f"not {proposal['value']}")
        return proposal["value"]

    # -- lifecycle --------------------------------------------------------------------------------
    def initialize_settings(self) -> None:
        """Build the one :class:`Services` the handlers share, into the tornado settings."""
        settings = Settings(
            caption_model=self.caption_model, caption_mmproj=self.caption_mmproj,
            max_upload_mb=self.max_upload_mb, gpu_slots=self.gpu_slots, executor=self.executor,
            allowed_caption_servers=tuple(self.allowed_caption_servers),
            ingest_roots=tuple(Path(r).expanduser().resolve() for r in self.ingest_roots),
            contents_root=Path(self.serverapp.root_dir).expanduser().resolve())
        self.services = Services(Workspace(self.workspace), settings)
        self.settings[SETTINGS_KEY] = self.services
        # the kernels this server starts inherit it: their panels then link LoRA files for download
        export_server(url_path_join(self.serverapp.base_url, API), self.services.ws)
        # ... and its default executor: their panels and terminals run jobs where REST does
        os.environ["LORA_LAB_EXECUTOR"] = self.executor
        self.log.info("lora_lab %s: workspace %s, %d GPU slot(s), jobs run %s by default",
                      __version__, self.services.ws.root, self.gpu_slots,
                      "on the Ray cluster" if self.executor == "ray" else "on this box")
        for job in reattach(self.services.ws):  # the box restarted while they ran on the cluster
            self.log.info("lora_lab: following job %s on the Ray cluster again", job.id)

    def initialize_handlers(self) -> None:
        self.handlers.extend(routes())

    async def stop_extension(self) -> None:
        """Close the caption worker. Jobs keep running: they are their own processes and
        outlive the server by design (a restarted server picks them up from their folders)."""
        services = getattr(self, "services", None)
        if services is not None:
            await asyncio.get_running_loop().run_in_executor(None, services.close)


def _known_executor(name: str, source: str) -> str:
    if name not in EXECUTORS:
        raise TraitError(f"{source} must be one of {', '.join(EXECUTORS)}, not {name!r}")
    return name


def _env_int(name: str, fallback: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return fallback
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise TraitError(f"${name} must be a whole number >= 1, not {raw!r}")
    return int(raw)
