"""What the JupyterLab sidebar and launcher ask for besides datasets and jobs: the GPUs now, the
training presets to start a run from, and the notebook kit copied where the file browser shows it.
"""
from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

from tornado.web import authenticated

from ..confine import contents_path
from ..devices import gpu_status
from ..errors import Conflict
from ..notebook_kit import copy_kit
from ..training.presets import PRESETS, preset_config
from .base import LoraLabHandler

KIT_FOLDER = "lora-lab-notebooks"  # in the Jupyter root, when the workspace lies outside it
QUICKSTART = "interactive/quickstart.ipynb"


class GpusHandler(LoraLabHandler):
    """GET: each GPU's name, utilization and memory (NVML); none on a CPU-only box."""

    @authenticated
    async def get(self) -> None:
        self.reply(await self.blocking(gpu_status))


class PresetsHandler(LoraLabHandler):
    """GET: the training presets, each with the whole config it starts from."""

    @authenticated
    async def get(self) -> None:
        self.reply({"presets": [{"name": p.name, "label": p.label, "description": p.description,
                                 "family": p.overrides["model"]["family"],
                                 "config": preset_config(p.name)} for p in PRESETS.values()]})


class KitHandler(LoraLabHandler):
    """POST: copy the notebook kit (notebooks the user edited are kept) into the workspace's
    notebooks/ when the file browser shows the workspace, else into the Jupyter root's
    lora-lab-notebooks/; the reply says what was copied and where (``path``, ``open``)."""

    @authenticated
    async def post(self) -> None:
        self.reply(await self.blocking(self._copy))

    def _copy(self) -> dict[str, Any]:
        root = self.services.settings.contents_root
        inside = contents_path(self.ws.root, root) is not None
        dest = self.ws.root / "notebooks" if inside or root is None else root / KIT_FOLDER
        if dest.exists() and not dest.is_dir():
            raise Conflict(f"{dest} is a file, where the notebook kit's folder goes; move or "
                           "rename it, then copy the kit again")
        report = copy_kit(dest)
        path = contents_path(Path(report.dest), root)
        return {**report.to_dict(), "path": path,
                "open": None if path is None else posixpath.join(path, QUICKSTART)}


ROUTES = [("gpus", GpusHandler), ("presets", PresetsHandler), ("kit", KitHandler)]
