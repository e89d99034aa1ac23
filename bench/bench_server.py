"""Server benchmark: the server extension's latency idle and while a training job runs, and what
it adds to the Jupyter server's start-up.

    .venv/bin/python bench/bench_server.py            # 10,000-image dataset, 400 requests a side (~2 min)
    .venv/bin/python bench/bench_server.py --quick    # 1,000 images, 100 requests (~40 s)

A real `jupyter server` runs in a subprocess on a temp workspace, as a user runs it; requests go
over HTTP with the token, on one kept-alive connection. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import Row, Target, cpu_busy, generate_jpegs, own_cpu, print_machine, print_table

TOKEN = "bench-token"
PAGE = 100
LOAD_TARGET = Target(ratio=3.0)  # p99 under load within 3x of idle
START_TARGET_MS = 150.0  # what the extension may add to start-up


class Server:
    """``jupyter server`` in a subprocess, with the lora_lab extension on or off."""

    def __init__(self, root: Path, workspace: Path, extension: bool):
        self.port = _free_port()
        config = root / f"config-{'on' if extension else 'off'}.json"
        config.write_text(json.dumps({"ServerApp": {"jpserver_extensions": {
            "lora_lab.server_ext": extension}}, "LoraLabApp": {"workspace": str(workspace)}}))
        cmd = [str(Path(sys.executable).with_name("jupyter-server")), f"--config={config}",
               f"--port={self.port}", f"--IdentityProvider.token={TOKEN}", "--no-browser",
               "--allow-root", f"--ServerApp.root_dir={root}"]
        env = {**os.environ, "LORA_LAB_HOME": str(workspace), "JUPYTER_PLATFORM_DIRS": "1"}
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.ready_s = self._wait_ready()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def _wait_ready(self) -> float:
        """Seconds from the process start to its first answer to GET /api/status."""
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"jupyter server exited with {self.proc.returncode}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", "/api/status", headers={"Authorization": f"token {TOKEN}"})
                if conn.getresponse().status == 200:
                    return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.005)

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, "/lora-lab/api/" + path, body=data,
                          headers={"Authorization": f"token {TOKEN}",
                                   "Content-Type": "application/json"})
        response = self.conn.getresponse()
        return response.status, response.read()

    def timed(self, path: str) -> float:
        start = time.perf_counter()
        status, body = self.call("GET", path)
        elapsed = time.perf_counter() - start
        if status != 200:
            raise SystemExit(f"GET {path}: {status} {body[:200]!r}")
        return elapsed

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def latencies(server: Server, paths: list[str], count: int) -> dict[str, list[float]]:
    """``count`` requests of each path, interleaved."""
    times: dict[str, list[float]] = {p: [] for p in paths}
    for _ in range(count):
        for p in paths:
            times[p].append(server.timed(p))
    return times


def p99(times: list[float]) -> float:
    return sorted(times)[min(len(times) - 1, int(len(times) * 0.99))]


def bench_latency(root: Path, ws: Path, job_config: dict, count: int, images: int) -> None:
    """The requests with the server idle (before and after), and while a training job runs."""
    server = Server(root, ws, extension=True)
    try:
        paths = [f"datasets/bench/images?offset={images // 2}&limit={PAGE}"]
        status, body = server.call("POST", "jobs", {"kind": "train", "params": {"config": job_config}})
        if status != 202:
            raise SystemExit(f"POST jobs: {status} {body[:300]!r}")
        job = json.loads(body)["id"]
        paths.append(f"jobs/{job}")
        _wait_for(server, job, lambda v: v.get("phase") == "training")
        busy, cores = _with_cpu_use(lambda: latencies(server, paths, count))
        server.call("POST", f"jobs/{job}/cancel")
        _wait_for(server, job, lambda v: v["state"] not in ("queued", "running"))
        time.sleep(1)  # let the job's process exit
        idle, quiet = _with_cpu_use(lambda: latencies(server, paths, count))
    finally:
        server.stop()
    rows = []
    for path, label in zip(paths, (f"a page of {PAGE} of {images} images", "a job's status")):
        for name, stat in (("p50", statistics.median), ("p99", p99)):
            rows.append(Row(f"{label}, {name} under load", stat(busy[path]), stat(idle[path]),
                            LOAD_TARGET if name == "p99" else None))
    print_table(f"latency over HTTP, {count} requests each, while a tiny training job runs "
                f"(other processes used {cores:.2f} of {os.cpu_count()} cores) vs. idle "
                f"({quiet:.2f} cores)", "the same request with the server idle (after the job)", rows)


def _with_cpu_use(fn):
    """``fn()`` and how many cores other processes (the job, the server) used meanwhile."""
    busy, own, start = cpu_busy(), own_cpu(), time.perf_counter()
    result = fn()
    return result, ((cpu_busy() - busy) - (own_cpu() - own)) / (time.perf_counter() - start)


def _wait_for(server: Server, job: str, done, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = server.call("GET", f"jobs/{job}")
        view = json.loads(body)
        if status == 200 and done(view):
            return view
        time.sleep(0.1)
    raise SystemExit(f"job {job} did not get there: {view}")


def bench_startup(root: Path, ws: Path, repeats: int) -> None:
    """Start-up to the first answer, with and without the extension, alternated."""
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeats):
        for extension in (False, True):
            server = Server(root, ws, extension)
            times[extension].append(server.ready_s)
            server.stop()
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print_table(f"server start-up to its first answer, median of {repeats}, alternated",
                "the same server without the lora_lab extension",
                [Row("jupyter server with lora_lab", on, off,
                     Target(ms=(off * 1000 + START_TARGET_MS)))])
    print(f"  the extension adds {(on - off) * 1000:.0f} ms (target < {START_TARGET_MS:.0f} ms)")


def prepare(root: Path, images: int) -> tuple[Path, dict]:
    """A workspace with an ``images``-image dataset "bench", and a tiny training job's config."""
    from lora_lab.datasets import ingest
    from lora_lab.tiny import fabricate
    from lora_lab.workspace import Workspace

    ws = Workspace(root / "ws")
    ingest(generate_jpegs(root / "jpegs", images, 64)[0].parent, "bench", workspace=ws)
    tiny = fabricate(root / "tiny", sdxl=False, caption=False)
    config = {"model": {"base": str(tiny["sd15"])},
              "dataset": {"source": str(tiny["samples"]), "resolution": 64, "min_bucket": 64,
                          "max_bucket": 128, "trigger": "sks"},
              "train": {"max_steps": 1_000_000}}
    return ws.root, config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, help="images in the dataset (default 10000; --quick 1000)")
    parser.add_argument("--requests", type=int, help="requests of each kind per side (default 400)")
    parser.add_argument("--starts", "--repeats", type=int, default=7,
                        help="server starts each way (default 7)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    images = args.images or (1000 if args.quick else 10_000)
    count = args.requests or (100 if args.quick else 400)
    print_machine()
    with tempfile.TemporaryDirectory(prefix="lora-lab-bench-server-") as tmp:
        root = Path(tmp)
        ws, job_config = prepare(root, images)
        bench_startup(root, ws, 3 if args.quick else args.starts)
        bench_latency(root, ws, job_config, count, images)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
