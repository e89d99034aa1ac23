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
from pathlib import Path
from typing import Any

from ..errors import LoraLabError
from ..workspace import Workspace
from .record import JobRecord


def run_job(job_dir: str | os.PathLike, resume: bool = False) -> Any:
    """Run the job in ``job_dir`` as its spec says; its report (caption) or result (train)."""
    job = JobRecord(Path(job_dir).resolve())
    ws = Workspace(job.path.parent.parent)
    kind, params = job.spec()["kind"], job.spec()["params"]
    print(f"{kind} job {job.id}{' (resumed)' if resume else ''}, pid {os.getpid()}", flush=True)
    if kind == "caption":
        from ..captioning.job import run_caption_job

        return run_caption_job(job, ws, on_event=LogLines())
    if kind == "train":
        from ..training.config import TrainConfig
        from ..training.trainer import train

        return train(TrainConfig.from_dict(params["config"]), job, resume=resume, workspace=ws,
                     on_event=LogLines())
    raise LoraLabError(f"unknown job kind {kind!r}")


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
