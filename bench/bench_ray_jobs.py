"""Ray executor benchmark: a tiny training job submitted through Ray against the same job on
this box, and how late a job on Ray's events reach a follower.

    .venv/bin/python bench/bench_ray_jobs.py              # 3 jobs each way (~3 min)
    .venv/bin/python bench/bench_ray_jobs.py --repeats 1

A local Ray head (2 CPUs, 2 logical GPUs) is started with `lora-lab cluster start`'s code and
stopped at the end. Each job trains the tiny SD1.5 for 40 steps on the sample images; a
JobFollower polls it every 0.25 s, as the WebSocket stream does. Reported against the local
executor in the same run: the submit call, submit to running, submit to succeeded (the
overhead is Ray's runtime-environment set-up and scheduling), and each progress event's lag
from being written to being read (target under 2 s).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchlib import Row, Target, print_machine, print_table, tiny_family

from lora_lab import cluster
from lora_lab.jobdir import JobFollower
from lora_lab.jobs import submit
from lora_lab.training.config import TrainConfig
from lora_lab.workspace import Workspace

STEPS = 40
POLL_S = 0.25
LAG_TARGET_MS = 2000


def run_one(ws: Workspace, cfg: dict, executor: str) -> dict[str, float | list[float]]:
    """One job from submit to its end: its milestones (seconds from submit) and event lags."""
    start = time.time()
    job = submit("train", {"config": cfg, "gpus": 1}, ws, executor=executor)
    submitted, running, lags = time.time() - start, None, []
    follower = JobFollower(job)
    while True:
        messages = follower.poll()
        now = time.time()
        if running is None and job.view()["state"] == "running":
            running = now - start
        lags += [now - m["time"] for m in messages if m["type"] == "progress"]
        if any(m["type"] == "end" for m in messages):
            assert job.view()["state"] == "succeeded", job.log_path.read_text()[-2000:]
            return {"submit": submitted, "running": running or now - start,
                    "done": now - start, "lags": lags}
        time.sleep(POLL_S)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="jobs each way")
    args = parser.parse_args(argv)
    print_machine()
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1")
    with tempfile.TemporaryDirectory(prefix="rb", dir="/tmp") as tmp:
        root = Path(tmp)
        ws = Workspace(root / "ws")
        models = tiny_family(root / "tiny", "sd15")
        cfg = TrainConfig.from_dict({
            "model": {"base": str(models["sd15"])},
            "dataset": {"source": str(models["samples"]), "resolution": 64, "min_bucket": 64,
                        "max_bucket": 128, "trigger": "sks"},
            "train": {"max_steps": STEPS}, "sample": {"every_n_steps": 0}}).to_dict()
        cluster.start_head(ws, port=cluster.free_port(), dashboard_port=cluster.free_port(),
                           node_ip="127.0.0.1", num_cpus=2, num_gpus=2, temp_dir=root / "ray")
        try:
            runs = {e: [run_one(ws, cfg, e) for _ in range(args.repeats)] for e in ("local", "ray")}
        finally:
            cluster.stop_head(ws)
    best = {e: {k: min(r[k] for r in rs) for k in ("submit", "running", "done")}
            for e, rs in runs.items()}
    print_table("a tiny training job submitted through Ray", "the same job on the local executor", [
        Row("submit() call", best["ray"]["submit"], best["local"]["submit"]),
        Row("submit to running", best["ray"]["running"], best["local"]["running"]),
        Row("submit to succeeded", best["ray"]["done"], best["local"]["done"])])
    lags = {e: [lag for r in rs for lag in r["lags"]] for e, rs in runs.items()}
    print_table("event lag, written to read by a follower polling every 0.25 s",
                "the local executor's", [
                    Row("p50 lag", statistics.median(lags["ray"]), statistics.median(lags["local"]),
                        Target(ms=LAG_TARGET_MS)),
                    Row("max lag", max(lags["ray"]), max(lags["local"]), Target(ms=LAG_TARGET_MS))])


if __name__ == "__main__":
    main()
