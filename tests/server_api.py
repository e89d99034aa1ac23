"""What the server tests share: a Jupyter server with the extension on the test's workspace, the
sample dataset, the tiny model inside the workspace, zip bodies."""
from __future__ import annotations

import io
import json
import shutil
import zipfile

import pytest

from lora_lab.datasets import ingest

API = ("lora-lab", "api")


@pytest.fixture
def api(jp_fetch):
    """``await api(*path, method=, body=)`` -> (status code, JSON body), errors included."""
    async def call(*path, method="GET", body=None):
        data = json.dumps(body) if body is not None else None
        r = await jp_fetch(*API, *path, method=method, body=data, raise_error=False)
        return r.code, json.loads(r.body)
    return call


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


def workspace_models(ws, tiny_models) -> dict[str, str]:
    """The tiny SD1.5 model and the sample images copied into the workspace (a request to the
    server may only name paths inside it), as paths relative to its root."""
    shutil.copytree(tiny_models["sd15"], ws.models / "sd15", dirs_exist_ok=True)
    shutil.copytree(tiny_models["samples"], ws.root / "samples", dirs_exist_ok=True)
    return {"sd15": "models/sd15", "samples": "samples"}


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()
