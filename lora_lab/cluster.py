"""A Ray cluster: its Jobs API address and its free GPUs (a first cut; see the cluster helper)."""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from types import ModuleType
from typing import Any

from .errors import LoraLabError
from .workspace import Workspace


def require_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise LoraLabError("running jobs on a Ray cluster needs Ray: pip install 'lora_lab[ray]'") from None
    return ray


def dashboard_url(workspace: Workspace) -> str:
    url = os.environ.get("LORA_LAB_RAY_ADDRESS")
    if url:
        return url if "://" in url else f"http://{url}"
    path = workspace.root / "cluster.json"
    if path.is_file():
        return json.loads(path.read_text())["dashboard"]
    raise LoraLabError("no Ray cluster: run `lora-lab cluster start`, or set LORA_LAB_RAY_ADDRESS")


def cluster_resources(url: str, timeout: float = 5) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"{url}/api/cluster_status", timeout=timeout) as r:
            usage = json.load(r)["data"]["clusterStatus"]["loadMetricsReport"]["usage"]
    except (OSError, ValueError, KeyError) as e:
        raise LoraLabError(f"the Ray cluster at {url} is unreachable ({e})") from None
    used, total = usage.get("GPU", [0, 0])
    return {"gpus": int(total), "gpus_free": int(total - used)}
