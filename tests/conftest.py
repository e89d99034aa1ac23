"""Shared fixtures: a fresh workspace per test, sample images, and the CLI run in-process."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
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
class S3Bucket:
    """A bucket in moto's S3 server on 127.0.0.1, with IAM authentication on: only the
    fixture's key and secret are accepted, so wrong credentials really fail."""

    def __init__(self, endpoint: str, name: str, key: str, secret: str, prefix: str = "lab"):
        self.endpoint, self.name, self.key, self.secret = endpoint, name, key, secret
        self.url = f"s3://{name}/{prefix}"

    def under(self, prefix: str) -> S3Bucket:
        """The same bucket with another prefix (each test its own: the server is shared)."""
        return S3Bucket(self.endpoint, self.name, self.key, self.secret, prefix)

    def env(self, monkeypatch, **changes: str | None) -> None:
        """Configure lora_lab for this bucket through the environment (``changes`` override
        or, with None, remove a variable); ~/.aws and instance metadata are kept out."""
        values = {"LORA_LAB_BUCKET": self.url, "LORA_LAB_BUCKET_ENDPOINT": self.endpoint,
                  "AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret,
                  "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_CONFIG_FILE": os.devnull,
                  "AWS_EC2_METADATA_DISABLED": "true", **changes}
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(var, raising=False)
        for var, value in values.items():
            if value is None:
                monkeypatch.delenv(var, raising=False)
            else:
                monkeypatch.setenv(var, value)


@pytest.fixture(scope="session")
def s3_bucket():
    """moto's S3 server on 127.0.0.1 (offline), an IAM user allowed s3:*, its bucket."""
    import json

    import botocore.session
    import requests
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # us-east-1: the one region where CreateBucket needs no LocationConstraint
    setup = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup",
                 aws_secret_access_key="setup")
    session = botocore.session.Session()
    iam = session.create_client("iam", **setup)
    iam.create_user(UserName="lab")
    allow = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    policy = iam.create_policy(PolicyName="s3-all", PolicyDocument=json.dumps(allow))["Policy"]["Arn"]
    iam.attach_user_policy(UserName="lab", PolicyArn=policy)
    key = iam.create_access_key(UserName="lab")["AccessKey"]
    session.create_client("s3", **setup).create_bucket(Bucket="lab-bucket")
    # from here on every request is checked against IAM (moto's INITIAL_NO_AUTH_ACTION_COUNT = 0)
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    yield S3Bucket(endpoint, "lab-bucket", key["AccessKeyId"], key["SecretAccessKey"])
    server.stop()


@pytest.fixture
def bucket_env(s3_bucket, monkeypatch) -> S3Bucket:
    """The session's bucket, under a prefix of this test's own, configured through the environment."""
    import secrets

    bucket = s3_bucket.under(f"t-{secrets.token_hex(4)}")
    bucket.env(monkeypatch)
    return bucket
