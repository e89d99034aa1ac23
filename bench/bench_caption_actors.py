"""Captioning across GPUs: caption throughput with 2 captioner actors against 1, on a stand-in
captioner of fixed latency, through the real pool on a local Ray head.

    .venv/bin/python bench/bench_caption_actors.py               # 60 images, 0.2 s each (~1 min)
    .venv/bin/python bench/bench_caption_actors.py --images 20   # quicker

A local Ray head (2 CPUs, 2 logical GPUs) is started with `lora-lab cluster start`'s code and
stopped at the end. The stand-in sleeps for its latency (a GPU busy with one image: no CPU
taken, so 2 cores suffice) and enters through the pool's captioner factory, where a caption job
passes today's llama.cpp captioner. Each run captions the whole dataset through caption_dataset
(images prepared, answers journaled and written as in a job). Reported: images per second from
the first answer to the last (the rate a long run holds), and the whole run with the actors'
start (target: 2 actors at least 1.8x as fast as 1).
"""
from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from pathlib import Path

from benchlib import Row, Target, generate_jpegs, print_machine, print_table

from lora_lab import cluster
from lora_lab.captioning.base import Answer
from lora_lab.captioning.batch import CaptionSettings, caption_dataset
from lora_lab.captioning.pool import CaptionPool
from lora_lab.datasets import Dataset, ingest
from lora_lab.workspace import Workspace

TARGET = Target(ratio=1 / 1.8)  # time per image with 2 actors: at most 1/1.8 of 1 actor's


class FixedLatencyCaptioner:
    """A model that takes ``latency_s`` per image and answers the same caption."""
    name = "stand-in"

    def __init__(self, latency_s: float):
        self.latency_s = latency_s

    def caption(self, image: bytes, prompt: str) -> Answer:
        time.sleep(self.latency_s)
        return Answer("a photo")

    def close(self) -> None:
        pass


def run(ds: Dataset, address: str, actors: int, latency_s: float) -> dict[str, float]:
    """One run over every image: seconds per image, first answer to last, and in all."""
    pool = CaptionPool(functools.partial(FixedLatencyCaptioner, latency_s), "stand-in", actors,
                       address=address)
    answered: list[float] = []
    start = time.monotonic()
    try:
        report = caption_dataset(ds, pool, CaptionSettings("Describe the image.", mode="overwrite"),
                                 on_event=lambda e: answered.append(time.monotonic())
                                 if e["type"] == "progress" else None)
    finally:
        pool.close()
    assert report.captioned == len(ds) and len(pool.answered) == actors, (report, pool.answered)
    # the first answer of each actor comes at once: the steady rate counts the ones after them
    return {"steady": (answered[-1] - answered[0]) / (len(answered) - actors),
            "whole": (time.monotonic() - start) / len(answered)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=60, help="images captioned per run")
    parser.add_argument("--latency", type=float, default=0.2, help="the stand-in's seconds per image")
    args = parser.parse_args(argv)
    if args.images < 4 or args.latency <= 0:
        parser.error("--images must be at least 4 and --latency above 0")
    print_machine()
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    with tempfile.TemporaryDirectory(prefix="rc", dir="/tmp") as tmp:
        root = Path(tmp)
        ws = Workspace(root / "ws")
        generate_jpegs(root / "src", args.images, 256)
        ingest(root / "src", "bench-actors", workspace=ws)
        ds = Dataset.open("bench-actors", ws)
        head = cluster.start_head(ws, port=cluster.free_port(), dashboard_port=cluster.free_port(),
                                  node_ip="127.0.0.1", num_cpus=2, num_gpus=2, temp_dir=root / "ray")
        try:
            runs = {n: run(ds, head["address"], n, args.latency) for n in (1, 2)}
        finally:
            cluster.stop_head(ws)
    for n, r in runs.items():
        print(f"{n} actor(s): {1 / r['steady']:.2f} images/s steady, {1 / r['whole']:.2f} "
              f"images/s with the actors' start")
    print(f"steady throughput, 2 actors / 1: {runs[1]['steady'] / runs[2]['steady']:.2f}x "
          "(target >= 1.8x)")
    print_table(f"seconds per image, {args.images} images at {args.latency:g} s each",
                "the same run on 1 captioner actor", [
                    Row("2 actors, first answer to last", runs[2]["steady"], runs[1]["steady"], TARGET),
                    Row("2 actors, with the actors' start", runs[2]["whole"], runs[1]["whole"])])


if __name__ == "__main__":
    main()
