"""Shared fixtures: a fresh workspace per test, sample images, and the CLI run in-process."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from wheel_env import WheelEnv, build_wheel

from lora_lab import Workspace
from lora_lab.cli import main
from lora_lab.tiny.samples import write_samples

os.environ["HF_HUB_OFFLINE"] = "1"

# jp_serverapp / jp_fetch / jp_ws_fetch: a real Jupyter server per test (tests/test_server_*.py)
pytest_plugins = ("pytest_jupyter.jupyter_server",)


def bare_env(**env: str) -> dict[str, str]:
    """A minimal environment for a subprocess, keeping PYTHONPATH so that a test run from a git
    worktree (PYTHONPATH=worktree) starts that tree's code, not the editable install's."""
    kept = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}
    return {**kept, **env}


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Workspace:
    root = tmp_path / "ws"
    monkeypatch.setenv("LORA_LAB_HOME", str(root))
    return Workspace(root)


@pytest.fixture
def samples(tmp_path) -> Path:
    return write_samples(tmp_path / "samples")


class CLI:
    def __init__(self, capsys):
        self.capsys = capsys

    def __call__(self, *argv: str, ok: bool = True) -> tuple[int, str, str]:
        rc = main([str(a) for a in argv])
        out, err = self.capsys.readouterr()
        if ok:
            assert rc == 0, f"lora-lab {' '.join(map(str, argv))} failed ({rc}): {err}"
        return rc, out, err

    def fails(self, *argv: str) -> str:
        """Run a command that must fail with one clear line; return that line."""
        rc, out, err = self(*argv, ok=False)
        assert rc == 1, (rc, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lora-lab: error: "), err
        return lines[0]


@pytest.fixture
def cli(ws, capsys) -> CLI:
    return CLI(capsys)


def jpeg_bytes(size=(64, 48), seed=0, quality=90) -> bytes:
    """A deterministic JPEG of random blocks over noise: each seed gives a distinct image."""
    rng = np.random.default_rng(seed)
    w, h = size
    px = rng.integers(0, 40, (h, w, 3), dtype=np.uint8)
    for _ in range(6):
        x, y = rng.integers(0, w), rng.integers(0, h)
        px[y:y + h // 3, x:x + w // 3] += rng.integers(0, 200, 3, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under root with its sha256: to prove a tree was left untouched."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def tiny_caption(tmp_path_factory) -> dict[str, Path]:
    """The tiny Qwen2.5-VL GGUF pair and the sample images (no diffusion pipelines)."""
    from lora_lab.tiny import fabricate

    return fabricate(tmp_path_factory.mktemp("tiny"), sd15=False, sdxl=False, flow=())


@pytest.fixture(scope="session")
def caption_model(tiny_caption):
    """The tiny caption model, loaded once for the session."""
    from lora_lab.captioning.llama import LlamaCaptioner

    model = LlamaCaptioner(tiny_caption["caption_model"], tiny_caption["caption_mmproj"], max_tokens=8)
    yield model
    model.close()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """The tiny SD1.5 and SDXL pipelines and the sample images (no caption model)."""
    from lora_lab.tiny import fabricate

    return fabricate(tmp_path_factory.mktemp("tiny-diffusion"), caption=False, flow=())


@pytest.fixture(scope="session")
def tiny_flow(tmp_path_factory) -> dict[str, Path]:
    """The five tiny flow-matching pipelines (keys: lora_lab.tiny.FLOW_FAMILIES) and the sample images."""
    from lora_lab.tiny import fabricate

    return fabricate(tmp_path_factory.mktemp("tiny-flow"), sd15=False, sdxl=False, caption=False)


@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory) -> WheelEnv:
    """lora_lab's wheel, built offline from this checkout, alone in a fresh venv (tests/wheel_env.py)."""
    wheel = build_wheel(tmp_path_factory.mktemp("wheel"))
    return WheelEnv.create(tmp_path_factory.mktemp("wheel-venv"), wheel)


@dataclass(frozen=True)
class RayHead:
    url: str  # the dashboard, which serves the Jobs API
    address: str  # IP:PORT, what `ray start --address` joins
    workspace_root: Path  # holds the cluster.json `cluster start` wrote
    printed: str  # what `lora-lab cluster start` printed


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory) -> RayHead:
    """A local Ray head with 2 CPUs and 2 logical GPUs, started once per session through `lora-lab
    cluster start` (dashboard on 127.0.0.1, free ports, a short temp dir: socket paths must stay
    under 108 characters) and stopped through `lora-lab cluster stop`, which must end it."""
    from lora_lab.cluster import free_port

    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        env.setenv("RAY_AUTH_MODE", "disabled")  # a token file from a local ray.init() must not matter
        env.delenv("LORA_LAB_RAY_ADDRESS", raising=False)
        root, temp = tmp_path_factory.mktemp("ray-ws"), tempfile.mkdtemp(prefix="ray", dir="/tmp")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main(["--workspace", str(root), "cluster", "start", "--node-ip", "127.0.0.1",
                       "--port", str(free_port()), "--dashboard-port", str(free_port()),
                       "--num-cpus", "2", "--num-gpus", "2", "--temp-dir", temp])
        assert rc == 0, out.getvalue()
        record = json.loads((root / "cluster.json").read_text())
        yield RayHead(record["dashboard"], record["address"], root, out.getvalue())
        with contextlib.redirect_stdout(io.StringIO()):
            rc = main(["--workspace", str(root), "cluster", "stop"])
        assert rc == 0 and not (root / "cluster.json").exists()
        for _ in range(50):  # every process of the head ended (the stop waits; its reaping may lag)
            try:
                os.killpg(record["pgid"], 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the Ray head's processes outlived `lora-lab cluster stop`: {record}")
        shutil.rmtree(temp, ignore_errors=True)
