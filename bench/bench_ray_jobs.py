"""Ray executor benchmark: a tiny training job submitted through Ray against the same job on
this box, and how late a job on Ray's events reach a follower, with the job's folder shared
and with it in a bucket (moto's S3 server on 127.0.0.1, standing in for R2 or MinIO).

    .venv/bin/python bench/bench_ray_jobs.py              # 3 jobs each way (~3 min)
    .venv/bin/python bench/bench_ray_jobs.py --repeats 1

A local Ray head (2 CPUs, 2 logical GPUs) is started with `lora-lab cluster start`'s code and
stopped at the end. Each job trains the tiny SD1.5 for 40 steps on the sample images; a
JobFollower polls it every 0.25 s, as the WebSocket stream does. Reported against the local
executor in the same run: the submit call, submit to running, submit to succeeded (the
overhead is Ray's runtime-environment set-up and scheduling), and each progress event's lag
from being written to being read (target under 2 s): through the bucket, the worker pushes a
segment and this box's dispatcher pulls it, each every 0.5 s.
"""
from __future__ import annotations

import argparse
import logging
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


def run_one(ws: Workspace, cfg: dict, way: str) -> dict[str, float | list[float]]:
    """One job from submit to its end: its milestones (seconds from submit) and event lags."""
    start = time.time()
    os.environ.pop("LORA_LAB_JOBS_URL", None)
    if way == "bucket":
        os.environ["LORA_LAB_JOBS_URL"] = f"{os.environ['LORA_LAB_BUCKET']}/jobs"
    job = submit("train", {"config": cfg, "gpus": 1}, ws, executor="local" if way == "local" else "ray")
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
        moto = bucket_server()
        try:
            runs = {w: [run_one(ws, cfg, w) for _ in range(args.repeats)] for w in ("local", "ray", "bucket")}
        finally:
            cluster.stop_head(ws)
            moto.stop()
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
                    Row("max lag", max(lags["ray"]), max(lags["local"]), Target(ms=LAG_TARGET_MS)),
                    Row("p50 lag, folder in the bucket", statistics.median(lags["bucket"]),
                        statistics.median(lags["local"]), Target(ms=LAG_TARGET_MS)),
                    Row("max lag, folder in the bucket", max(lags["bucket"]), max(lags["local"]),
                        Target(ms=LAG_TARGET_MS))])
    print_table("a tiny training job on Ray with its folder in the bucket", "its folder shared", [
        Row("submit to succeeded", best["bucket"]["done"], best["ray"]["done"])])


def bucket_server():
    """moto's S3 server on 127.0.0.1 with a bucket, configured for lora_lab (the environment)."""
    import botocore.session
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(LORA_LAB_BUCKET="s3://bench-bucket/lab", LORA_LAB_BUCKET_ENDPOINT=f"http://{host}:{port}",
                      AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_EC2_METADATA_DISABLED="true")
    botocore.session.Session().create_client("s3", endpoint_url=f"http://{host}:{port}",
                                             region_name="us-east-1").create_bucket(Bucket="bench-bucket")
    return server


if __name__ == "__main__":
    main()
