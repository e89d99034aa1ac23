"""GPU slots: how many jobs run at once, and how many devices a job may ask for.

The queue needs no daemon: a job process (a background job's, or ``lora-lab train`` /
``lora-lab caption`` in the foreground) holds lock files, one per GPU it uses, that the OS
releases when the process ends, however it ends; waiting jobs take them in submission order.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ..errors import LoraLabError
from ..jobdir import JobRecord, list_jobs, process_alive
from ..workspace import Workspace

POLL_S = 0.5


def gpu_slots() -> int:
    """Jobs that may run at once: ``$LORA_LAB_GPU_SLOTS``, default 1 (one GPU, one job)."""
    raw = os.environ.get("LORA_LAB_GPU_SLOTS", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise LoraLabError(f"LORA_LAB_GPU_SLOTS must be a whole number >= 1, not {raw!r}")
    return int(raw)


@contextlib.contextmanager
def holding_slots(job: JobRecord, ws: Workspace, slots: int, need: int) -> Iterator[None]:
    """Wait for ``need`` of the ``slots`` (all of them when it asks for more), hold them while
    the body runs. ``need`` 0 (a caption job on a remote server) takes none."""
    need = min(need, slots)
    with job.heartbeat():  # while it waits; the job's own code beats while it runs
        locks = _wait(job, ws, slots, need) if need else []
    try:
        yield
    finally:
        for lock in locks:
            lock.close()


def _wait(job: JobRecord, ws: Workspace, slots: int, need: int) -> list[IO[str]]:
    folder = ws.jobs / ".slots"
    folder.mkdir(parents=True, exist_ok=True)
    waiting = False
    while True:
        if _ahead(job, ws) < slots:
            locks = _take(folder, slots, need)
            if locks:
                return locks
        if not waiting:
            waiting = True
            job.set_status("queued", phase="waiting for a free slot")
            # stderr: a background job's log, beside a foreground run's progress (not its --json)
            print("waiting for a free slot (another job is running)", file=sys.stderr, flush=True)
        time.sleep(POLL_S)


def _take(folder: Path, slots: int, need: int) -> list[IO[str]]:
    """``need`` slot locks at once, or none (a job never sits on some while waiting for more)."""
    locks: list[IO[str]] = []
    for k in range(slots):
        lock = open(folder / f"slot-{k}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        locks.append(lock)
        if len(locks) == need:
            return locks
    for lock in locks:
        lock.close()
    return []


def _ahead(job: JobRecord, ws: Workspace) -> int:
    """Live queued jobs submitted before this one."""
    mine = (job.status().get("queued_at", 0), job.id)
    count = 0
    for other in list_jobs(ws):
        if other.id == job.id:
            continue
        try:
            status = other.status()
        except (OSError, ValueError):
            continue
        if status["state"] == "queued" and process_alive(status) and \
                (status.get("queued_at", 0), other.id) < mine:
            count += 1
    return count
