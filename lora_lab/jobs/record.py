"""The job directory, the contract between a running job and whoever watches it.

    jobs/ID/spec.json      kind and parameters, written once
    jobs/ID/status.json    state, phase, pid, progress, timestamps, error (replaced atomically)
    jobs/ID/events.jsonl   append-only: progress, log, done / failed / cancelled

Nobody keeps job state in memory only: the CLI, the server extension and the panels all read
these files.
"""
from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from .. import atomic
from ..workspace import Workspace

STATES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")


class JobRecord:
    def __init__(self, path: Path):
        self.path = path
        self.id = path.name

    @classmethod
    def create(cls, kind: str, params: dict[str, Any], workspace: Workspace | None = None) -> "JobRecord":
        ws = workspace or Workspace()
        job_id = time.strftime("%Y%m%d-%H%M%S") + f"-{kind}-{secrets.token_hex(3)}"
        job = cls(ws.jobs / job_id)
        job.path.mkdir(parents=True)
        atomic.write_text(job.path / "spec.json", json.dumps({"kind": kind, "params": params}, indent=2))
        job.set_status("queued")
        return job

    def spec(self) -> dict[str, Any]:
        return json.loads((self.path / "spec.json").read_text(encoding="utf-8"))

    def status(self) -> dict[str, Any]:
        return json.loads((self.path / "status.json").read_text(encoding="utf-8"))

    def set_status(self, state: str, **fields: Any) -> None:
        """Replace status.json with ``state`` and ``fields`` merged over the previous status."""
        assert state in STATES, state
        path = self.path / "status.json"
        status = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {
            "id": self.id, "created": time.time()}
        status.update(fields, state=state, pid=os.getpid(), heartbeat=time.time())
        atomic.write_text(path, json.dumps(status, indent=2))

    def event(self, event: dict[str, Any]) -> None:
        """Append one event (a ``type`` and its fields) with its time."""
        line = json.dumps({"time": round(time.time(), 3), **event}, ensure_ascii=False)
        with open(self.path / "events.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def events(self, after: int = 0) -> list[dict[str, Any]]:
        path = self.path / "events.jsonl"
        if not path.exists():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()[after:]
        return [json.loads(line) for line in lines if line.strip()]
