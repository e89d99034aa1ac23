"""Real `jupyter server` processes: a job outlives the server that started it (stop the server
mid-run, start another: it reports the job truthfully), and pip enables the extension."""
from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from server_api import workspace_models
from test_train import config

from lora_lab.jobdir import open_job
from lora_lab.jobdir.record import pid_alive

TOKEN = "restart-test"


class Server:
    def __init__(self, root: Path, workspace: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [str(Path(sys.executable).with_name("jupyter-server")), f"--port={self.port}",
               f"--IdentityProvider.token={TOKEN}", "--no-browser", "--allow-root",
               f"--ServerApp.root_dir={root}",
               '--ServerApp.jpserver_extensions={"lora_lab.server_ext": True}',
               f"--LoraLabApp.workspace={workspace}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while self.call("GET", "health", check=False)[0] != 200:
            assert self.proc.poll() is None, self.proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)

    def call(self, method: str, path: str, body: dict | None = None, check: bool = True):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            conn.request(method, f"/lora-lab/api/{path}", body=json.dumps(body) if body else None,
                         headers={"Authorization": f"token {TOKEN}"})
            response = conn.getresponse()
            result = response.status, json.loads(response.read() or b"null")
        except (OSError, ValueError):
            if check:
                raise
            return None, None
        assert not check or result[0] < 400, result
        return result

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) is not None


def test_a_job_outlives_a_server_restart(ws, tiny_models, tmp_path):
    first = Server(tmp_path, ws.root)
    try:
        paths = workspace_models(ws, tiny_models)  # a request names paths inside the workspace
        cfg = config(paths, train={"max_steps": 400}, save={"name": "survivor"}).to_dict()
        code, reply = first.call("POST", "jobs", {"kind": "train", "params": {"config": cfg}})
        assert code == 202
        job_id = reply["id"]
        deadline = time.monotonic() + 120
        while first.call("GET", f"jobs/{job_id}")[1].get("phase") != "training":
            assert time.monotonic() < deadline, open_job(job_id, ws).log_path.read_text()
            time.sleep(0.1)
    finally:
        first.stop()
    job = open_job(job_id, ws)
    assert pid_alive(job.status()["pgid"]) and job.view()["state"] == "running"
    second = Server(tmp_path, ws.root)
    try:
        view = second.call("GET", f"jobs/{job_id}")[1]
        assert view["state"] in ("running", "succeeded")
        deadline = time.monotonic() + 600  # generous: a niced job on a busy 2-core runner
        while view["state"] == "running":
            assert time.monotonic() < deadline, job.log_path.read_text()
            time.sleep(0.2)
            view = second.call("GET", f"jobs/{job_id}")[1]
        assert view["state"] == "succeeded" and view["steps"] == 400, job.log_path.read_text()
        events = second.call("GET", f"jobs/{job_id}/events?after=0")[1]["events"]
        steps = [e["step"] for e in events if e["type"] == "progress"]
        assert steps == list(range(1, 401)) and events[-1]["type"] == "done"
        assert (ws.loras / "survivor.safetensors").is_file()
    finally:
        second.stop()


def test_installing_the_package_enables_the_extension():
    """The JSON pip puts in etc/jupyter/jupyter_server_config.d turns it on, and it validates."""
    listing = subprocess.run([str(Path(sys.executable).with_name("jupyter")), "server", "extension",
                              "list"], capture_output=True, text=True, timeout=120)
    text = re.sub(r"\x1b\[[0-9;]*m", "", listing.stdout + listing.stderr)  # no colours
    assert "lora_lab.server_ext enabled" in text and "lora_lab.server_ext  OK" in text, text
