"""The Jupyter server extension: REST + WebSocket handlers over the core library.

Enabled by ``jupyter-config/server-config/lora_lab.json`` (installed into
``etc/jupyter/jupyter_server_config.d``), or by hand with
``jupyter server extension enable lora_lab.server_ext``. Routes live under
``{base_url}lora-lab/api/``; see ``openapi.json`` there.
"""
from __future__ import annotations

from typing import Any

from .app import LoraLabApp

__all__ = ["LoraLabApp"]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "lora_lab.server_ext", "app": LoraLabApp}]
