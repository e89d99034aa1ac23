"""Running one job in this process: its kind's code directly, or a notebook through papermill.

``run_job`` is what a pipeline notebook calls with the ``job_dir`` papermill gave it, so a job
run through a notebook records the same job directory, and the executed notebook (``run.ipynb``
in the job directory) becomes a readable record beside it.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..jobdir import ACTIVE, JobRecord
from ..workspace import Workspace
from .kinds import kind_of
from .slots import gpu_slots, holding_slots


def run_job(job_dir: str | os.PathLike, resume: bool = False) -> Any:
    """Run the job in ``job_dir`` as its spec says, logging its events; its kind's result."""
    job = JobRecord(Path(job_dir).resolve())
    kind = job.spec()["kind"]
    print(f"{kind} job {job.id}{' (resumed)' if resume else ''}, pid {os.getpid()}", flush=True)
    return kind_of(kind).run(job, job.workspace, resume, LogLines())


def run_here(job: JobRecord, workspace: Workspace, *, resume: bool = False,
             on_event: Callable[[dict[str, Any]], None] | None = None,
             slots: int | None = None) -> Any:
    """Run ``job`` in this process (``lora-lab train``/``caption`` in the foreground), once its
    GPU slots are free, as a background job would: two runs never share a GPU by accident."""
    # A cancel signals the whole group when this process leads one (data-parallel ranks
    # included), else this process alone, never a group an earlier run of the job led.
    job.set_status("queued", pgid=os.getpgrp() if os.getpgrp() == os.getpid() else None)
    kind = kind_of(job.spec()["kind"])
    try:
        with holding_slots(job, workspace, slots or gpu_slots(), kind.gpus(job.spec()["params"])):
            return kind.run(job, workspace, resume, on_event)
    except BaseException as e:
        if job.status()["state"] in ACTIVE:  # ended before the job's own code recorded it
            job.record_end(e)
        raise


def run_notebook(job: JobRecord, notebook: Path, resume: bool = False) -> None:
    """Execute ``notebook`` with parameters ``job_dir`` and ``resume`` into the job's run.ipynb."""
    import papermill

    # A cancel's Ctrl-C is for the kernel (a training run saves a checkpoint): papermill must
    # keep waiting for it rather than shut the kernel down at once.
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    papermill.execute_notebook(str(notebook), str(job.path / "run.ipynb"),
                               parameters={"job_dir": str(job.path), "resume": resume},
                               cwd=str(job.path), progress_bar=False, log_output=True,
                               stdout_file=sys.stdout, stderr_file=sys.stdout)


class LogLines:
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
