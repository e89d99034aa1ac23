"""What the server tests share: a Jupyter server with the extension on the test's workspace, the
sample dataset, zip bodies."""
from __future__ import annotations

import io
import zipfile

import pytest

from lora_lab.datasets import ingest


def server_config(ws, **settings) -> dict:
    return {"ServerApp": {"jpserver_extensions": {"lora_lab.server_ext": True}},
            "LoraLabApp": {"workspace": str(ws.root), **settings}}


@pytest.fixture
def jp_server_config(ws, request):
    """pytest-jupyter's server config; parametrize it (indirect) to change LoraLabApp settings."""
    return server_config(ws, **getattr(request, "param", {}))


@pytest.fixture
def shapes(ws, samples) -> str:
    ingest(samples, "shapes", workspace=ws)
    return "shapes"


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()
