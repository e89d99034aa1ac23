"""Background jobs: submitted as detached processes, cancelled, resumed, deleted.

A submitted job is a job directory plus its own OS process in a new session (``python -m
lora_lab.jobs JOB_DIR``), so it outlives the server, kernel or terminal that started it; it
waits for its GPU slots there (see :mod:`.slots`).
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from .. import atomic
from ..errors import Conflict, LoraLabError, NotFound
from ..jobdir import ACTIVE, JobRecord, list_jobs, lora_files
from ..training.loras import written_by
from ..workspace import Workspace
from . import bucket_jobs
from .executors import check_executor, start, stop
from .kinds import check_params
from .slots import gpu_slots


def submit(kind: str, params: dict[str, Any], workspace: Workspace | None = None, *,
           slots: int | None = None, notebook: str | os.PathLike | None = None,
           base: str | os.PathLike | None = None, executor: str | None = None) -> JobRecord:
    """Check ``params`` (relative paths are taken from ``base``, default the current folder)
    and the ``executor`` (see :mod:`.executors`), record the job and start its process;
    returns at once (queued). A refused request leaves no job behind.

    With ``notebook``, the job runs through it under papermill: the notebook gets parameters
    ``job_dir`` and ``resume`` and calls ``lora_lab.jobs.run_job(job_dir, resume)``.
    """
    ws = workspace or Workspace()
    executor = check_executor(executor, ws)
    if executor == "ray":
        bucket_jobs.check(kind)
    params = check_params(kind, params, ws, base, local=executor == "local")
    if notebook is not None:
        notebook = Path(notebook).expanduser().resolve()
        if notebook.suffix != ".ipynb" or not notebook.is_file():
            raise LoraLabError(f"notebook {notebook} is not an .ipynb file")
    job = JobRecord.create(kind, params, ws, notebook)
    start(job, executor, resume=False, slots=slots or gpu_slots())
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
    """Start an ended job again, where it ran before: training from its last checkpoint,
    captioning where it stopped."""
    status = job.status()
    executor = check_executor(status.get("executor", "local"), job.workspace)
    if (status.get("handle") or {}).get("url"):
        bucket_jobs.check(job.spec()["kind"], status["handle"]["url"])
    start(reopen(job), executor, resume=True, slots=slots or gpu_slots())
    return job


def cancel(job: JobRecord, grace_s: float = 10.0) -> dict[str, Any]:
    """Stop a queued or running job: asked politely (as Ctrl-C: a training job saves a
    checkpoint), then killed after ``grace_s``. Returns the job's final view."""
    view = job.view()
    if view["state"] not in ACTIVE:
        raise Conflict(f"job {job.id} is already {view['state']}; only a queued or running "
                       "job can be cancelled")
    atomic.write_text(job.path / "cancel-requested", f"{time.time()}\n")
    if view.get("kernel") == view["pid"]:  # a notebook's TrainLab: it stops, the kernel lives on
        job.event({"type": "cancelled"})
        job.set_status("cancelled", error=None, pid=view["pid"])
        return job.view()
    stop(job, view, grace_s)
    status = job.status()
    # killed before it could record it; a run resumed meanwhile is another process: left alone
    if status["state"] in ACTIVE and status.get("pid") == view["pid"]:
        job.event({"type": "cancelled", "forced": True})
        job.set_status("cancelled", error=None)
    return job.view()


LORA_CHOICES = ("keep", "remove")


def delete(jobs: list[JobRecord], workspace: Workspace | None = None, *,
           lora: str = "keep") -> list[dict[str, Any]]:
    """Remove ended jobs' folders (checkpoints, samples, logs), every one refused before any
    is touched when one still runs. With ``lora="remove"``, the LoRA file a job wrote goes
    too, unless it lies outside the workspace or a remaining job wrote it as well, and so do
    its intermediate LoRA files. Returns, per job, the bytes freed and what became of its LoRAs."""
    ws = workspace or Workspace()
    if lora not in LORA_CHOICES:
        raise LoraLabError(f"lora must be keep or remove, not {lora!r}")
    for job in jobs:
        _refuse_active(job, _state(job))
    return [_delete(job, ws, lora == "remove") for job in jobs]


def _state(job: JobRecord) -> str:
    """The job's true state; one damaged by hand (a file missing or not JSON) has ended."""
    try:
        return job.view()["state"]
    except (OSError, ValueError, KeyError):
        return "damaged"


def _refuse_active(job: JobRecord, state: str) -> None:
    if state in ACTIVE:
        raise Conflict(f"job {job.id} is still {state}; cancel it first "
                       f"(lora-lab jobs cancel {job.id}), then delete it")


def _delete(job: JobRecord, ws: Workspace, remove_lora: bool) -> dict[str, Any]:
    output = _output(job)
    freed = job.disk_bytes()
    # renamed aside first, to a name no job lister takes for a job: readers see the whole job
    # or none of it, never half its files
    aside = job.path.with_name(f".deleting-{job.id}-{secrets.token_hex(3)}")
    try:
        os.rename(job.path, aside)
    except FileNotFoundError:
        raise NotFound(f"no job {job.id}: it was deleted meanwhile") from None
    state = _state(JobRecord(aside))
    if state in ACTIVE:  # resumed between the check and the rename: put it back
        os.rename(aside, job.path)
        _refuse_active(job, state)
    kept = _remove_lora(output, ws) if remove_lora and output else None
    steps = _remove_step_loras(JobRecord(aside), job.id, ws) if remove_lora else 0
    try:
        shutil.rmtree(aside)
    except OSError as e:
        raise LoraLabError(f"job {job.id} is deleted, but not all its files could be removed "
                           f"({e}); remove {aside} by hand") from None
    return {"id": job.id, "bytes": freed, "lora": output,
            "lora_removed": remove_lora and output is not None and kept is None, "lora_kept": kept,
            "step_loras_removed": steps}


def _remove_lora(output: str, ws: Workspace) -> str | None:
    """Remove the LoRA file at ``output``; None when done, else why it was kept."""
    try:
        path = ws.resolve(output)  # links followed: one pointing out is outside too
    except LoraLabError:
        return "it is outside the workspace"
    if not path.is_file():
        return "it no longer exists"
    for other in list_jobs(ws):  # a later run of the same name: the file is its LoRA now
        named = _output(other)
        with contextlib.suppress(OSError, ValueError):
            if named and (ws.root / named).resolve() == path:
                return f"job {other.id} wrote it too"
    try:
        path.unlink()
    except OSError as e:
        return f"it could not be removed ({e})"
    return None


def _remove_step_loras(job: JobRecord, job_id: str, ws: Workspace) -> int:
    """Remove the intermediate LoRA files (``NAME-000500.safetensors``) that ``job`` (job
    ``job_id``, renamed aside) recorded, those inside the workspace that it wrote itself; how
    many went."""
    try:
        files = [f for f in lora_files(job.status()) if f["step"] is not None]
    except (OSError, ValueError):
        return 0
    removed = 0
    for f in files:
        with contextlib.suppress(LoraLabError, OSError):
            path = ws.resolve(f["path"])
            if written_by(path) == job_id:
                path.unlink()
                removed += 1
    return removed


def _output(job: JobRecord) -> str | None:
    """The LoRA file the job recorded as its output (train jobs that finished), if any."""
    try:
        output = job.status().get("output")
    except (OSError, ValueError, AttributeError):
        return None
    return output if isinstance(output, str) and output else None
