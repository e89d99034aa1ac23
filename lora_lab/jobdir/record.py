"""The job directory, the contract between a running job and whoever watches it.

    jobs/ID/spec.json      kind and parameters, written once
    jobs/ID/status.json    state, phase, pid, heartbeat, progress, timestamps, error, the LoRA
                           files written (replaced atomically)
    jobs/ID/events.jsonl   append-only: phase, progress, checkpoint, sample, log, done / failed / cancelled
    jobs/ID/log.txt        the job process's own output, when the job runner started it
    jobs/ID/tensorboard/   a train job's TensorBoard event files (training/tracking.py)

Nobody keeps job state in memory only: the CLI, the server extension and the panels all read
these files. A job whose process died without saying so still reads "running" in status.json;
:meth:`JobRecord.view` tells the truth from its pid and the age of its heartbeat.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import atomic
from ..errors import LoraLabError, NotFound
from ..workspace import Workspace

STATES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")
RESUMABLE = ("failed", "cancelled", "interrupted")  # ended, but `resume` continues them
HEARTBEAT_S = 5.0  # a live job rewrites its heartbeat this often ...
STALE_S = 60.0  # ... so one older than this means its process hangs or is gone
# date-time to the millisecond, so ids sort in creation order (ids of older versions, to the
# second, still open and sort before any newer id of the same second)
_ID = re.compile(r"[0-9]{8}-[0-9]{6}(?:[0-9]{3})?-[a-z]+-[0-9a-f]{6}")
_status_lock = threading.Lock()  # the heartbeat thread and the job's own updates both rewrite status
_beating: set[Path] = set()


class JobRecord:
    def __init__(self, path: Path):
        self.path = path
        self.id = path.name

    @classmethod
    def create(cls, kind: str, params: dict[str, Any], workspace: Workspace | None = None,
               notebook: Path | None = None) -> JobRecord:
        """A new queued job; with ``notebook``, the job runner runs it through that notebook."""
        ws = workspace or Workspace()
        ws.jobs.mkdir(parents=True, exist_ok=True)
        job = cls(ws.jobs / _new_id(kind))
        job.path.mkdir()
        spec = {"kind": kind, "params": params, **({"notebook": str(notebook)} if notebook else {})}
        atomic.write_text(job.path / "spec.json", json.dumps(spec, indent=2))
        job.set_status("queued", queued_at=time.time())
        return job

    @property
    def workspace(self) -> Workspace:
        """The workspace the job's folder lies in (``ROOT/jobs/ID``)."""
        return Workspace(self.path.parent.parent)

    @property
    def log_path(self) -> Path:
        return self.path / "log.txt"

    def spec(self) -> dict[str, Any]:
        return json.loads((self.path / "spec.json").read_text(encoding="utf-8"))

    def status(self) -> dict[str, Any]:
        """status.json as the job last wrote it (see :meth:`view` for the truth)."""
        return json.loads((self.path / "status.json").read_text(encoding="utf-8"))

    def set_status(self, state: str, **fields: Any) -> None:
        """Replace status.json with ``state`` and ``fields`` merged over the previous status."""
        assert state in STATES, state
        path = self.path / "status.json"
        with _status_lock:
            status = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {
                "id": self.id, "created": time.time()}
            status.update(pid=os.getpid(), heartbeat=time.time())  # the writer is the job ...
            status.update(fields, state=state)  # ... unless ``fields`` names another pid
            atomic.write_text(path, json.dumps(status, indent=2))

    def _touch(self) -> None:
        """Refresh the heartbeat, leaving the rest as the job last wrote it (read under the
        lock: a state read before it would undo an update made meanwhile)."""
        path = self.path / "status.json"
        with _status_lock:
            status = json.loads(path.read_text(encoding="utf-8"))
            status.update(pid=os.getpid(), heartbeat=time.time())
            atomic.write_text(path, json.dumps(status, indent=2))

    def view(self) -> dict[str, Any]:
        """The status with its kind and the true state (an active job whose process is gone
        or silent reads ``interrupted``), and the LoRA files it wrote (:func:`lora_files`)."""
        status = {**self.status(), "id": self.id, "kind": self.spec()["kind"]}
        if status["state"] in ACTIVE and not process_alive(status):
            status["state"] = "interrupted"
            status["error"] = ("its process ended without finishing (killed, or the machine "
                               "restarted); resume it to continue")
        status["loras"] = lora_files(status)
        return status

    def disk_bytes(self) -> int:
        """The size of the job's files (checkpoints, samples, logs): a walk of its folder, so
        asked only where it is shown, never on every poll of every job."""
        return folder_bytes(self.path)

    @property
    def finished(self) -> bool:
        return self.view()["state"] not in ACTIVE

    @property
    def cancel_requested(self) -> bool:
        return (self.path / "cancel-requested").exists()

    def event(self, event: dict[str, Any]) -> None:
        """Append one event (a ``type`` and its fields) with its time."""
        line = json.dumps({"time": round(time.time(), 3), **event}, ensure_ascii=False)
        with open(self.path / "events.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def events(self, after: int = 0) -> list[dict[str, Any]]:
        """Events from number ``after`` on (a line being written is left for the next call)."""
        path = self.path / "events.jsonl"
        if not path.exists():
            return []
        text = path.read_text(encoding="utf-8")
        complete = text[:text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines()[after:] if line.strip()]

    def record_end(self, error: BaseException) -> None:
        """The final state for a job ended by ``error``: cancelled when someone asked for it,
        failed on an error, interrupted on Ctrl-C (resumable)."""
        message = str(error) or type(error).__name__
        if self.cancel_requested:
            self.event({"type": "cancelled"})
            self.set_status("cancelled", error=None)
        elif isinstance(error, Exception):
            self.event({"type": "failed", "error": message})
            self.set_status("failed", error=message)
        else:
            self.event({"type": "failed", "error": message, "resumable": True})
            self.set_status("interrupted", error=message)

    @contextlib.contextmanager
    def heartbeat(self) -> Iterator[None]:
        """Keep the heartbeat fresh while the body runs, even through long silent phases."""
        if self.path in _beating:  # the job runner's beat already covers the trainer's
            yield
            return
        _beating.add(self.path)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_S):
                with contextlib.suppress(OSError, ValueError):
                    self._touch()

        thread = threading.Thread(target=beat, name=f"heartbeat {self.id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            _beating.discard(self.path)


_last_ms = 0
_id_lock = threading.Lock()


def _new_id(kind: str) -> str:
    """A job id like 20261123-101500123-train-1a2b3c: two made in this process never share a
    millisecond, so they sort in the order they were made."""
    global _last_ms
    with _id_lock:
        _last_ms = max(time.time_ns() // 1_000_000, _last_ms + 1)
        ms = _last_ms
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(ms // 1000)) + f"{ms % 1000:03d}"
    return f"{stamp}-{kind}-{secrets.token_hex(3)}"


def open_job(job_id: str, workspace: Workspace | None = None) -> JobRecord:
    """The job ``job_id``; a name that is not a job id is refused before touching the disk."""
    ws = workspace or Workspace()
    if not _ID.fullmatch(job_id):
        raise LoraLabError(f"{job_id!r} is not a job id (like 20261123-101500123-train-1a2b3c)")
    job = JobRecord(ws.jobs / job_id)
    if not (job.path / "status.json").is_file():
        raise NotFound(f"no job {job_id} in {ws.jobs} (see `lora-lab jobs list`)")
    return job


def is_job_id(name: str) -> bool:
    return _ID.fullmatch(name) is not None


def list_jobs(workspace: Workspace | None = None) -> list[JobRecord]:
    """Every job in the workspace, newest first."""
    ws = workspace or Workspace()
    if not ws.jobs.is_dir():
        return []
    return [JobRecord(p) for p in sorted(ws.jobs.iterdir(), reverse=True)
            if _ID.fullmatch(p.name) and (p / "status.json").is_file()]


def lora_files(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The LoRA files a job recorded (``loras`` in status.json: intermediate saves by step,
    then the final file, step None; older jobs recorded only their ``output``), each with its
    size now: ``bytes`` None and ``missing`` true for one deleted since."""
    recorded = status.get("loras")
    if not isinstance(recorded, list):
        output = status.get("output")
        recorded = [{"path": output, "step": None}] if isinstance(output, str) and output else []
    files = []
    for entry in recorded:
        try:
            size: int | None = os.stat(entry["path"]).st_size
        except OSError:
            size = None
        except (TypeError, KeyError, ValueError):  # damaged by hand: not a file
            continue
        files.append({"path": entry["path"], "step": entry.get("step"), "bytes": size,
                      **({"missing": True} if size is None else {})})
    return files


def folder_bytes(folder: Path) -> int:
    """The bytes of the files under ``folder`` (links not followed); what vanishes meanwhile
    counts as nothing."""
    total, stack = 0, [os.fspath(folder)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except FileNotFoundError:
            continue
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):  # an old checkpoint rotated out
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    total += entry.stat(follow_symlinks=False).st_size
    return total


def pid_alive(pid: int | None) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # the state letter follows the parenthesised command name
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except (OSError, IndexError):
        return True


def process_alive(status: dict[str, Any]) -> bool:
    """Whether the process a status names runs and has beaten its heart lately. A Ray job's
    process runs elsewhere, so its pid means nothing here: a heartbeat that missed a beat asks
    Ray, and only while Ray cannot be reached does the heartbeat alone decide."""
    age = time.time() - status.get("heartbeat", 0)
    sid = ray_submission(status)
    if sid is None:
        return age < STALE_S and pid_alive(status.get("pid"))
    if age < 2 * HEARTBEAT_S:
        return True
    from ..ray_jobs import RAY_ACTIVE, state
    ray_state = state(status["handle"]["address"], sid)
    return age < STALE_S if ray_state is None else ray_state in RAY_ACTIVE


def ray_submission(status: dict[str, Any]) -> str | None:
    """The Ray submission id of a job submitted to Ray; None for a job on this box (or one its
    Ray dispatcher has not submitted yet)."""
    handle = status.get("handle") if status.get("executor") == "ray" else None
    return (handle or {}).get("submission_id")
