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

from ..devices import gpu_ids
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
    the body runs. ``need`` 0 (a caption job on a remote server) takes none.

    On a machine with GPUs, slot k is GPU k: the body sees only its slots' GPUs (through
    ``$CUDA_VISIBLE_DEVICES``), so two jobs never land on one GPU by default. A job that took
    every slot for more GPUs than there are slots runs alone and sees them all.
    """
    held: list[tuple[int, IO[str]]] = []
    if min(need, slots):
        with job.heartbeat():  # while it waits; the job's own code beats while it runs
            held = _wait(job, ws, slots, min(need, slots))
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = gpu_ids()
    if ids and held and len(held) == need:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids[k % len(ids)] for k, _ in held)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before
        for _, lock in held:
            lock.close()


def _wait(job: JobRecord, ws: Workspace, slots: int, need: int) -> list[tuple[int, IO[str]]]:
    folder = ws.jobs / ".slots"
    folder.mkdir(parents=True, exist_ok=True)
    waiting = False
    while True:
        if _ahead(job, ws) < slots:
            held = _take(folder, slots, need)
            if held:
                return held
        if not waiting:
            waiting = True
            job.set_status("queued", phase="waiting for a free slot")
            # stderr: a background job's log, beside a foreground run's progress (not its --json)
            print("waiting for a free slot (another job is running)", file=sys.stderr, flush=True)
        time.sleep(POLL_S)


def _take(folder: Path, slots: int, need: int) -> list[tuple[int, IO[str]]]:
    """``need`` slots at once (their numbers and locks), or none: a job never sits on some
    while it waits for more."""
    held: list[tuple[int, IO[str]]] = []
    for k in range(slots):
        lock = open(folder / f"slot-{k}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        held.append((k, lock))
        if len(held) == need:
            return held
    for _, lock in held:
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
        if status.get("executor") == "ray":  # the cluster's GPUs, not this box's slots
            continue
        if status["state"] == "queued" and process_alive(status) and \
                (status.get("queued_at", 0), other.id) < mine:
            count += 1
    return count
