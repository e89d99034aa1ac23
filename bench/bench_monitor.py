"""Monitor benchmark: a TrainingMonitor following a job that writes 50 progress events a second.

    .venv/bin/python bench/bench_monitor.py            # 25 s of events (~35 s)
    .venv/bin/python bench/bench_monitor.py --quick    # 15 s

A writer process appends realistic training events (progress every step, a log line every 5
steps, a checkpoint every 500) to a real job directory through JobRecord, as a training job
does; the monitor follows it from this process with its own background poller (interval 0.5 s),
its widgets unconnected to a browser. Reported: how long after being written each event is
first shown (target: under 1 s), the monitor's memory over the run (target: flat), the cost of
one poller step against a bare EventTail read + JSON parse of the same file in the same run, and
catching up on an hour of events (180,000) in one step.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from benchlib import Row, print_machine, print_table, timed

from lora_lab.jobdir import JobRecord
from lora_lab.jobdir.tail import EventTail
from lora_lab.widgets.monitor import CURVE_POINTS, TrainingMonitor
from lora_lab.workspace import Workspace

RATE = 50  # events a second, the fast job
LAG_TARGET_S = 1.0
GROWTH_TARGET_KB = 256  # "flat": noise of the allocator and the interpreter, no per-event growth
HOUR = 180_000  # events in an hour at 50 a second
WARMUP_S = CURVE_POINTS / RATE + 1  # until the curves hold all the points they may keep


def write_events(job_dir: Path, seconds: float, rate: int) -> None:
    """The writer process: a training job's events at ``rate`` a second for ``seconds``."""
    job = JobRecord(job_dir)
    total = int(seconds * rate)
    job.set_status("running", phase="training", started_at=time.time())
    job.event({"type": "phase", "phase": "training"})
    start = time.monotonic()
    with job.heartbeat(), open(job.log_path, "a") as log:
        for step in range(1, total + 1):
            time.sleep(max(0.0, start + step / rate - time.monotonic()))
            job.event(progress_event(step, total, rate))
            if step % 5 == 0:
                log.write(f"{time.strftime('%H:%M:%S')} step {step}: loss {0.1 + 1 / step:.4f}\n")
                log.flush()
            if step % 500 == 0:
                job.event({"type": "checkpoint", "step": step, "path": f"checkpoints/step-{step:06d}"})
    job.event({"type": "done", "steps": total})
    job.set_status("succeeded", phase="done", progress=1.0)


def progress_event(step: int, total: int, rate: float) -> dict:
    return {"type": "progress", "step": step, "total": total, "loss": round(0.1 + 1 / step, 6),
            "lr": 1e-4 * min(1.0, step / 100), "it_s": rate, "eta_s": round((total - step) / rate, 1),
            "epoch": step // 100 + 1, "memory_mb": 6144}


class Recorder:
    """Wraps the monitor's render and its poller's step: when each event was first shown, and
    what a step costs."""

    def __init__(self, monitor: TrainingMonitor):
        self.monitor = monitor
        self.shown: list[tuple[float, int]] = []  # (wall time, newest event number on screen)
        self.tick_s: list[float] = []
        render, tick = monitor._render, monitor.poller.tick

        def recorded_render() -> None:
            render()
            self.shown.append((time.time(), monitor.follower.events_read))

        def timed_tick() -> bool:
            start = time.perf_counter()
            try:
                return tick()
            finally:
                self.tick_s.append(time.perf_counter() - start)

        monitor._render, monitor.poller.tick = recorded_render, timed_tick

    def lags(self, written: dict[int, float]) -> list[float]:
        """For each render, the wait of the oldest event it showed first."""
        out, before = [], 0
        for at, newest in self.shown:
            if newest > before and before + 1 in written:
                out.append(at - written[before + 1])
            before = max(before, newest)
        return out


def follow_run(root: Path, seconds: float, trace: bool) -> dict:
    ws = Workspace(root / "ws")
    job = JobRecord.create("train", {"config": {}}, ws)
    writer = subprocess.Popen([sys.executable, __file__, "--write", str(job.path),
                               "--seconds", str(seconds)])
    while job.status()["state"] != "running":
        time.sleep(0.01)
    if trace:
        tracemalloc.start()
    monitor = TrainingMonitor(job.id, ws, interval=0.5, autostart=False)
    recorder = Recorder(monitor)
    monitor.poller.start()
    floor_tail, floor_s, memory = EventTail(job.path / "events.jsonl"), [], []
    started = time.monotonic()
    while monitor.poller.running:
        time.sleep(0.5)
        t0 = time.perf_counter()
        floor_tail.read_all()  # the bare floor: read and parse what is new, nothing else
        floor_s.append(time.perf_counter() - t0)
        if time.monotonic() - started >= 2 * len(memory):
            memory.append((time.monotonic() - started, tracemalloc.get_traced_memory()[0], rss()))
    memory.append((time.monotonic() - started, tracemalloc.get_traced_memory()[0], rss()))
    writer.wait()
    written = {e["n"]: e["time"] for e in EventTail(job.path / "events.jsonl").read_all()}
    catch_up = hour_backlog(job, monitor)
    tracemalloc.stop()
    return {"lags": recorder.lags(written), "tick_s": recorder.tick_s, "floor_s": floor_s,
            "memory": memory, "events": len(written), "state": monitor.follower.view["state"],
            "renders": len(recorder.shown), "catch_up": catch_up}


def hour_backlog(job: JobRecord, monitor: TrainingMonitor) -> dict:
    """An hour of events appended at once: one refresh reads them all; its time against a bare
    read of the same events, and the memory it keeps."""
    path = job.path / "events.jsonl"
    offset = path.stat().st_size
    with open(path, "a") as f:
        for step in range(1, HOUR + 1):
            f.write(json.dumps({"time": time.time(), **progress_event(step, HOUR, RATE)}) + "\n")
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    start = time.perf_counter()
    monitor.refresh()
    seconds = time.perf_counter() - start
    current, peak = tracemalloc.get_traced_memory()
    floor = EventTail(path)
    floor.tail.offset = offset
    floor_s = timed(floor.read_all)
    return {"seconds": seconds, "floor_s": floor_s, "growth": current - before,
            "peak": peak - before, "points": len(monitor.follower.curves.loss)}


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def report(runs: list[dict], seconds: float) -> None:
    lags = [lag for r in runs for lag in r["lags"]]
    ticks = [t for r in runs for t in r["tick_s"]]
    floors = [t for r in runs for t in r["floor_s"]]
    print(f"\n## follow: {RATE} events/s for {seconds:g} s, monitor interval 0.5 s "
          f"({sum(r['events'] for r in runs)} events, {sum(r['renders'] for r in runs)} renders, "
          f"final state {', '.join(r['state'] for r in runs)})")
    worst = max(lags)
    print(f"lag, written -> first shown: median {statistics.median(lags) * 1000:.0f} ms, "
          f"max {worst * 1000:.0f} ms (target < {LAG_TARGET_S * 1000:.0f} ms: "
          f"{'ok' if worst < LAG_TARGET_S else 'MISS'})")
    for i, r in enumerate(runs):
        print_memory(i + 1, r["memory"])
        c = r["catch_up"]
        traced = (f"memory {c['growth'] / 1024:+.0f} KB after, peak {c['peak'] / 2**20:.1f} MB "
                  "during, " if c["peak"] else "")
        print(f"an hour's backlog ({HOUR} events) in one refresh: {traced}"
              f"{c['points']} loss points kept")
    print_table("one poller step, median (events, log and status read, folded, shown)",
                "a bare EventTail read + JSON parse of the same file, every 0.5 s in the same run",
                [Row("monitor tick", statistics.median(ticks), statistics.median(floors)),
                 Row("monitor tick, p90", _p90(ticks), _p90(floors))])
    print_table(f"an hour's backlog ({HOUR} events) in one refresh", "a bare EventTail read + "
                "JSON parse of the same events",
                [Row(f"refresh, run {i + 1}", r["catch_up"]["seconds"], r["catch_up"]["floor_s"])
                 for i, r in enumerate(runs)])


def print_memory(run: int, memory: list[tuple[float, int, int]]) -> None:
    """Memory every 2 s, and its growth once the curves are full (after WARMUP_S)."""
    print(f"memory, run {run}, every 2 s: traced " + " ".join(f"{m[1] / 1024:.0f}" for m in memory)
          + " KB; RSS " + " ".join(f"{m[2] / 2**20:.1f}" for m in memory) + " MB")
    settled = [m for m in memory if m[0] >= WARMUP_S]
    if len(settled) < 2:
        print(f"  growth: not measured (needs a run longer than {WARMUP_S:g} s)")
        return
    growth = (settled[-1][1] - settled[0][1]) / 1024
    traced = (f"traced {growth:+.0f} KB (target < {GROWTH_TARGET_KB} KB: "
              f"{'ok' if growth < GROWTH_TARGET_KB else 'MISS'}), " if settled[0][1] else "")
    print(f"  growth from {settled[0][0]:.0f} s (curves full) to the end: {traced}"
          f"RSS {(settled[-1][2] - settled[0][2]) / 2**20:+.1f} MB")


def _p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * (len(values) - 1))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, help="how long the writer writes (default 25; --quick 15)")
    parser.add_argument("--no-tracemalloc", action="store_true",
                        help="time without tracemalloc's overhead (memory then as RSS only)")
    parser.add_argument("--repeats", type=int, default=1, help="follow runs (default 1)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)  # the writer process
    args = parser.parse_args(argv)
    seconds = args.seconds or (15.0 if args.quick else 25.0)
    if args.write:
        write_events(args.write, seconds, RATE)
        return
    print_machine()
    with tempfile.TemporaryDirectory(prefix="lora-lab-bench-monitor-") as tmp:
        runs = [follow_run(Path(tmp) / f"run{i}", seconds, not args.no_tracemalloc)
                for i in range(args.repeats)]
    report(runs, seconds)


if __name__ == "__main__":
    main()
