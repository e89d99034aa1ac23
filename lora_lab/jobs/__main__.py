"""``python -m lora_lab.jobs JOB_DIR [--resume] [--slots N]``: the process of one background job.

The job runner starts it detached; it waits its turn for a GPU slot, then runs the job its
spec describes (directly, or through the notebook the spec names) with its output in log.txt.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import sys
import time
from pathlib import Path
from typing import IO

from ..errors import LoraLabError
from ..workspace import Workspace
from .execute import run_job, run_notebook
from .record import ACTIVE, JobRecord, list_jobs, process_alive

POLL_S = 0.5
# Below the server and the kernels in CPU priority: a job on a busy CPU takes only what they
# leave, so pages and status requests stay quick (a GPU-bound job barely notices).
NICENESS = 10


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_lab.jobs")
    parser.add_argument("job", type=Path, help="job directory (workspace/jobs/ID)")
    parser.add_argument("--resume", action="store_true", help="continue where it stopped")
    parser.add_argument("--slots", type=int, default=1, help="jobs that may run at once")
    args = parser.parse_args(argv)
    job = JobRecord(args.job.resolve())
    ws = Workspace(job.path.parent.parent)
    os.nice(NICENESS)
    job.set_status("queued", pgid=os.getpgrp())
    try:
        with job.heartbeat():  # while it waits; the job's own code beats while it runs
            slot = wait_for_slot(job, ws, args.slots)
        notebook = job.spec().get("notebook")
        if notebook:
            run_notebook(job, Path(notebook), args.resume)
            if job.status()["state"] in ACTIVE:
                raise LoraLabError(f"the notebook {notebook} ended without running the job "
                                   "(it should call lora_lab.jobs.run_job(job_dir, resume))")
        else:
            run_job(job.path, args.resume)
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


if __name__ == "__main__":
    sys.exit(main())
