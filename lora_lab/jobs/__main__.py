"""``python -m lora_lab.jobs JOB_DIR [--resume] [--slots N]``: the process of one background job.

The job runner starts it detached; it waits its turn for a GPU slot, runs the job its spec
describes, and prints a readable line per event into the job's log.txt.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from ..errors import LoraLabError
from ..workspace import Workspace
from .record import ACTIVE, JobRecord, list_jobs, process_alive

POLL_S = 0.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_lab.jobs")
    parser.add_argument("job", type=Path, help="job directory (workspace/jobs/ID)")
    parser.add_argument("--resume", action="store_true", help="continue where it stopped")
    parser.add_argument("--slots", type=int, default=1, help="jobs that may run at once")
    args = parser.parse_args(argv)
    job = JobRecord(args.job.resolve())
    ws = Workspace(job.path.parent.parent)
    job.set_status("queued", pgid=os.getpgrp())
    try:
        with job.heartbeat():
            slot = wait_for_slot(job, ws, args.slots)
            _run(job, ws, args.resume)
            slot.close()
    except BaseException as e:
        if job.status()["state"] in ACTIVE:  # ended before the job's own code recorded it
            job.record_end(e)
        print(f"lora-lab: {'error: ' + str(e) if isinstance(e, Exception) else 'stopped'}", flush=True)
        return 1 if isinstance(e, LoraLabError) else 2 if isinstance(e, Exception) else 130
    return 0


def wait_for_slot(job: JobRecord, ws: Workspace, slots: int) -> IO[str]:
    """Hold one of ``slots`` lock files, once no more than ``slots - 1`` older queued jobs wait."""
    folder = ws.jobs / ".slots"
    folder.mkdir(exist_ok=True)
    waiting = False
    while True:
        if _ahead(job, ws) < slots:
            for k in range(slots):
                lock = open(folder / f"slot-{k}.lock", "w")
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return lock  # released by the OS when this process ends, however it ends
                except BlockingIOError:
                    lock.close()
        if not waiting:
            waiting = True
            job.set_status("queued", phase="waiting for a free slot")
            print("waiting for a free slot (another job is running)", flush=True)
        time.sleep(POLL_S)


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


def _run(job: JobRecord, ws: Workspace, resume: bool) -> None:
    kind, params = job.spec()["kind"], job.spec()["params"]
    print(f"{kind} job {job.id}{' (resumed)' if resume else ''}, pid {os.getpid()}", flush=True)
    if kind == "caption":
        from ..captioning.job import run_caption_job

        run_caption_job(job, ws, on_event=_LogLines())
    elif kind == "train":
        from ..training.config import TrainConfig
        from ..training.trainer import train

        train(TrainConfig.from_dict(params["config"]), job, resume=resume, workspace=ws,
              on_event=_LogLines())
    else:
        raise LoraLabError(f"unknown job kind {kind!r}")


class _LogLines:
    """Events as log lines: every one but progress, which is printed at most every 10 s."""

    def __init__(self) -> None:
        self.last_progress = 0.0

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "progress":
            now = time.monotonic()
            if now - self.last_progress < 10 and event["step"] != event["total"]:
                return
            self.last_progress = now
        fields = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("type", "time"))
        print(f"{time.strftime('%H:%M:%S')} {kind} {fields}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
