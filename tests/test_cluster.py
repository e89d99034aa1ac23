"""`lora-lab cluster start | status | stop` and doctor's cluster line, against a real local Ray
head (the session's `ray_cluster`, 2 CPUs and 2 logical GPUs), and every way of getting there
wrong: nothing listening, something that is not a Ray dashboard, a malformed
$LORA_LAB_RAY_ADDRESS, no cluster configured, a stale record, Ray not installed."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import bare_env, tree_digest

from lora_lab.cluster import free_port


def doctor_cluster(cli, *flags: str, rc: int = 0) -> dict:
    code, out, err = cli(*flags, "doctor", "--json", ok=False)
    assert code == rc and err == "", (code, err)
    return {line["check"]: line for line in json.loads(out)}["cluster"]


# -- a running head ------------------------------------------------------------------------------
def test_start_prints_the_join_line_and_status_shows_the_head(ray_cluster, cli, monkeypatch):
    port = ray_cluster.address.rsplit(":", 1)[1]
    join = [line.strip() for line in ray_cluster.printed.splitlines() if " start --address=" in line]
    assert len(join) == 1 and join[0].endswith(f"/ray start --address={ray_cluster.address}")
    assert f"{sys.prefix}/bin/ray" in join[0] and port in join[0]
    assert ray_cluster.url in ray_cluster.printed

    root = ray_cluster.workspace_root
    _, out, _ = cli("--workspace", root, "cluster", "status")
    assert out.startswith(f"{ray_cluster.url}: 1 node(s), 2 of 2 GPU(s) free, 2 of 2 CPU(s) free\n")
    assert "(head)" in out and "2/2" in out
    _, out, _ = cli("--workspace", root, "cluster", "status", "--json")
    found = json.loads(out)
    assert (found["dashboard"], found["gpus"], found["gpus_free"], found["cpus"]) == (ray_cluster.url, 2, 2, 2)
    [node] = found["nodes"]
    assert node["alive"] and node["head"] and (node["gpus"], node["gpus_free"]) == (2, 2)
    assert 0 < node["memory_free"] <= node["memory_total"]
    assert ray_cluster.address.startswith(f"{node['ip']}:")

    # from any workspace, through $LORA_LAB_RAY_ADDRESS; a bare HOST:PORT is taken as http://
    monkeypatch.setenv("LORA_LAB_RAY_ADDRESS", ray_cluster.url.removeprefix("http://") + "/")
    _, out, _ = cli("cluster", "status", "--json")
    assert json.loads(out)["dashboard"] == ray_cluster.url and json.loads(out)["gpus_free"] == 2


def test_doctor_reports_the_cluster(ray_cluster, cli):
    line = doctor_cluster(cli, "--workspace", ray_cluster.workspace_root)
    assert line["status"] == "ok" and line["fix"] is None
    assert line["found"].startswith("Ray 2.")
    assert line["found"].endswith(f"{ray_cluster.url}: 1 node(s), 2 of 2 GPU(s) free, 2 of 2 CPU(s) free")


def test_a_second_head_is_refused_before_anything_starts(ray_cluster, cli, ws):
    root = ray_cluster.workspace_root
    before = tree_digest(root)
    line = cli.fails("--workspace", root, "cluster", "start", "--port", free_port(),
                     "--dashboard-port", free_port())
    assert "a Ray head is running already" in line and ray_cluster.url in line
    assert tree_digest(root) == before
    # another workspace, the head's own ports: taken
    port = ray_cluster.address.rsplit(":", 1)[1]
    line = cli.fails("cluster", "start", "--port", port, "--dashboard-port", free_port())
    assert f"port {port} is taken" in line and "--port" in line
    dashboard = ray_cluster.url.rsplit(":", 1)[1]
    line = cli.fails("cluster", "start", "--node-ip", "127.0.0.1", "--port", free_port(),
                     "--dashboard-port", dashboard)
    assert f"port {dashboard} is taken" in line and "--dashboard-port" in line
    assert not (ws.root / "cluster.json").exists()


# -- bad input -----------------------------------------------------------------------------------
class NotRay(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def not_a_dashboard():
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotRay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_an_unreachable_head_is_one_clear_line(cli, monkeypatch, not_a_dashboard):
    nothing = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("LORA_LAB_RAY_ADDRESS", nothing)
    line = cli.fails("cluster", "status")
    assert f"the Ray head at {nothing} is unreachable" in line and "Connection refused" in line
    assert "lora-lab cluster start" in line
    check = doctor_cluster(cli, rc=1)
    assert check["status"] == "fail" and "unreachable" in check["found"] and "cluster start" in check["fix"]

    # an unknown host name: the resolver's answer, not a retry loop
    monkeypatch.setenv("LORA_LAB_RAY_ADDRESS", "http://no-such-head.invalid:8265")
    assert "no-such-head.invalid:8265 is unreachable" in cli.fails("cluster", "status")

    monkeypatch.setenv("LORA_LAB_RAY_ADDRESS", not_a_dashboard)
    line = cli.fails("cluster", "status")
    assert f"{not_a_dashboard} answers HTTP 404" in line and "not a Ray dashboard" in line
    assert doctor_cluster(cli, rc=1)["status"] == "fail"


@pytest.mark.parametrize("address", ["ray://10.0.0.5:10001", "10.0.0.5", "http://", "ftp://10.0.0.5:21",
                                     "http://10.0.0.5:99999", "http://10.0.0.5:8265/?x=1"])
def test_a_malformed_address_is_refused(cli, monkeypatch, address):
    monkeypatch.setenv("LORA_LAB_RAY_ADDRESS", address)
    line = cli.fails("cluster", "status")
    assert f"LORA_LAB_RAY_ADDRESS={address!r} is not a Ray dashboard URL: give http://HOST:PORT" in line
    check = doctor_cluster(cli, rc=1)
    assert check["status"] == "fail" and "LORA_LAB_RAY_ADDRESS" in check["found"]


def test_no_cluster_configured(cli, ws, monkeypatch):
    monkeypatch.delenv("LORA_LAB_RAY_ADDRESS", raising=False)
    assert "no Ray cluster configured: run `lora-lab cluster start`" in cli.fails("cluster", "status")
    assert "no head started here" in cli.fails("cluster", "stop")
    check = doctor_cluster(cli)
    assert check == {"check": "cluster", "status": "ok", "fix": None,
                     "found": check["found"]} and "no cluster configured" in check["found"]


def test_a_stale_record_is_forgotten_and_another_box_s_head_left_alone(cli, ws, monkeypatch):
    """A head recorded before the pod restarted: its process group is gone (or is somebody
    else's now), so stop ends nothing and forgets it; a head another box recorded (a shared
    volume) is that box's to stop."""
    monkeypatch.delenv("LORA_LAB_RAY_ADDRESS", raising=False)
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)  # a live group, not Ray's
    try:
        record = {"address": "10.0.0.5:6379", "dashboard": f"http://127.0.0.1:{free_port()}",
                  "host": socket.gethostname(), "pgid": sleeper.pid,
                  "session_dir": "/tmp/ray/session_gone"}
        (ws.root / "cluster.json").write_text(json.dumps({**record, "host": "another-pod"}))
        assert "the head runs on 'another-pod', not on this box" in cli.fails("cluster", "stop")
        assert (ws.root / "cluster.json").exists()
        (ws.root / "cluster.json").write_text(json.dumps(record))
        _, out, _ = cli("cluster", "stop")
        assert "was not running" in out and not (ws.root / "cluster.json").exists()
        assert sleeper.poll() is None  # not ours: untouched
    finally:
        sleeper.kill()
        sleeper.wait()


def test_without_ray_installed(ws, tmp_path):
    """A Python where `import ray` fails, as without the extra: `cluster start` says how to
    install it and starts nothing; doctor says so too, without failing."""
    blocked = ("import sys; sys.modules['ray'] = None; from lora_lab.cli import main; "
               "raise SystemExit(main(sys.argv[1:]))")

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", blocked, "--workspace", str(ws.root), *argv],
                              capture_output=True, text=True, timeout=120,
                              env=bare_env(HF_HUB_OFFLINE="1", HOME=str(tmp_path)))

    done = run("cluster", "start")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"lora-lab: error: `lora-lab cluster start` needs Ray: pip install 'lora_lab[ray]' (into {sys.prefix})"]
    assert not (ws.root / "cluster.json").exists()
    done = run("doctor", "--json")
    check = {line["check"]: line for line in json.loads(done.stdout)}["cluster"]
    assert check["status"] == "ok" and check["found"] == ("Ray is not installed: jobs run on this box (for a Ray "
                                                   "cluster: pip install 'lora_lab[ray]')")
