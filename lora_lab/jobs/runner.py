"""Background jobs: submitted as detached processes, cancelled, resumed.

A submitted job is a job directory plus its own OS process in a new session (``python -m
lora_lab.jobs JOB_DIR``), so it outlives the server, kernel or terminal that started it; it
waits for its GPU slots there (see :mod:`.slots`).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .. import atomic
from ..errors import Conflict, LoraLabError
from ..jobdir import ACTIVE, JobRecord, pid_alive
from ..workspace import Workspace
from .kinds import check_params
from .slots import gpu_slots


def submit(kind: str, params: dict[str, Any], workspace: Workspace | None = None, *,
           slots: int | None = None, notebook: str | os.PathLike | None = None,
           base: str | os.PathLike | None = None) -> JobRecord:
    """Check ``params`` (relative paths are taken from ``base``, default the current folder),
    record the job and start its process; returns at once (queued). A refused request leaves
    no job behind.

    With ``notebook``, the job runs through it under papermill: the notebook gets parameters
    ``job_dir`` and ``resume`` and calls ``lora_lab.jobs.run_job(job_dir, resume)``.
    """
    ws = workspace or Workspace()
    params = check_params(kind, params, ws, base)
    if notebook is not None:
        notebook = Path(notebook).expanduser().resolve()
        if notebook.suffix != ".ipynb" or not notebook.is_file():
            raise LoraLabError(f"notebook {notebook} is not an .ipynb file")
    job = JobRecord.create(kind, params, ws, notebook)
    _start(job, resume=False, slots=slots)
    return job


def reopen(job: JobRecord, kind: str | None = None) -> JobRecord:
    """Make an ended job ready to run again, for ``resume`` and ``lora-lab train --resume``
    alike: refuse one that succeeded or still runs, clear a leftover cancel request and
    record a ``resumed`` event."""
    view = job.view()
    if kind and view["kind"] != kind:
        raise LoraLabError(f"job {job.id} is a {view['kind']} job, not a {kind} job")
    if view["state"] == "succeeded":
        raise Conflict(f"job {job.id} already succeeded; nothing to resume")
    if view["state"] in ACTIVE:
        raise Conflict(f"job {job.id} is still {view['state']}; cancel it first "
                       f"(lora-lab jobs cancel {job.id}), or wait for it")
    (job.path / "cancel-requested").unlink(missing_ok=True)
    job.event({"type": "resumed"})
    return job


def resume(job: JobRecord, *, slots: int | None = None) -> JobRecord:
    """Start an ended job again: training from its last checkpoint, captioning where it stopped."""
    _start(reopen(job), resume=True, slots=slots)
    return job


def cancel(job: JobRecord, grace_s: float = 10.0) -> dict[str, Any]:
    """Stop a queued or running job: asked politely (as Ctrl-C: a training job saves a
    checkpoint), then killed after ``grace_s``. Returns the job's final view."""
    view = job.view()
    if view["state"] not in ACTIVE:
        raise Conflict(f"job {job.id} is already {view['state']}; only a queued or running "
                       "job can be cancelled")
    atomic.write_text(job.path / "cancel-requested", f"{time.time()}\n")
    pid = view["pid"]
    _signal(view, signal.SIGINT)
    if not _exited(pid, grace_s):
        _signal(view, signal.SIGKILL)
        _exited(pid, 5.0)
    if job.status()["state"] in ACTIVE:  # killed before it could record it
        job.event({"type": "cancelled", "forced": True})
        job.set_status("cancelled", error=None)
    return job.view()


def _start(job: JobRecord, *, resume: bool, slots: int | None) -> None:
    # pid = ours until the child writes its own: "queued", not "interrupted", meanwhile
    job.set_status("queued", queued_at=time.time(), error=None, phase=None, progress=None)
    cmd = [sys.executable, "-m", "lora_lab.jobs", str(job.path), "--slots", str(slots or gpu_slots())]
    cmd += ["--resume"] if resume else []
    with open(job.log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=job.path,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    threading.Thread(target=proc.wait, daemon=True).start()  # reap it: no zombie to mistake for alive
    if job.status().get("pid") == os.getpid():
        job.set_status("queued", pid=proc.pid, pgid=proc.pid)


def _signal(view: dict[str, Any], sig: int) -> None:
    """``sig`` to the job's process group (data-parallel ranks included), else its process."""
    try:
        if view.get("pgid"):
            os.killpg(view["pgid"], sig)
        else:
            os.kill(view["pid"], sig)
    except ProcessLookupError:
        pass


def _exited(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
