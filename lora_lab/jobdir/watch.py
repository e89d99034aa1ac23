"""Watching every job of a workspace for changes, cheaply enough to do each second with hundreds
of jobs.

A poll lists the jobs folder and stats each status.json: the file is replaced atomically, so each
write gives it a new inode (and time and size), and only a job whose stamp moved is read again.
Active jobs are the exception, read on every poll: a job whose process dies writes nothing, and
only a fresh :meth:`JobRecord.view` turns it ``interrupted``.
"""
from __future__ import annotations

import os
import stat
from typing import Any

from ..workspace import Workspace
from .record import ACTIVE, JobRecord, is_job_id

Stamp = tuple[int, int, int]  # status.json's inode, size and modification time
LEARN_PER_POLL = 100  # jobs past the first page read per poll, to learn which are still active


class JobsWatch:
    """The jobs of a workspace, and after :meth:`start`, what each :meth:`poll` finds changed."""

    def __init__(self, workspace: Workspace):
        self.ws = workspace
        self._stamps: dict[str, Stamp] = {}
        self._known: dict[str, dict[str, Any]] = {}  # the last view read of a job, sans heartbeat
        self._unread: list[str] = []  # past the first page: stamped, their state not yet read

    def start(self, limit: int) -> tuple[list[dict[str, Any]], int]:
        """The views of the newest ``limit`` jobs, and how many jobs there are. The older ones
        are only stamped now, and read a few at a time by the polls that follow."""
        self._stamps = stamps = self._scan()
        ids = list(stamps)
        self._unread = ids[limit:]
        views = [self._read(job_id) for job_id in ids[:limit]]
        return [v for v in views if v is not None], len(ids)

    def poll(self) -> tuple[list[dict[str, Any]], list[str], int]:
        """(views of the jobs new or changed since the last poll, newest first; ids of the jobs
        whose folder is gone; how many jobs there are now)."""
        stamps = self._scan()
        gone = [job_id for job_id in self._stamps if job_id not in stamps]
        for job_id in gone:
            self._known.pop(job_id, None)
        changed = []
        for job_id, stamp in stamps.items():
            before = self._known.get(job_id)
            active = before is not None and before["state"] in ACTIVE
            if stamp == self._stamps.get(job_id) and not active:
                continue
            view = self._read(job_id)
            if view is not None and _sans_heartbeat(view) != before:
                changed.append(view)
        self._stamps = stamps
        self._learn(stamps)
        return changed, gone, len(stamps)

    def _learn(self, stamps: dict[str, Stamp]) -> None:
        """Read a few jobs past the first page: one of them may still be active, and must then
        be read on each poll like the others."""
        batch, self._unread = self._unread[:LEARN_PER_POLL], self._unread[LEARN_PER_POLL:]
        for job_id in batch:
            if job_id in stamps and job_id not in self._known:
                self._read(job_id)

    def _read(self, job_id: str) -> dict[str, Any] | None:
        try:
            view = JobRecord(self.ws.jobs / job_id).view()
        except (OSError, ValueError, KeyError):  # damaged by hand, or removed meanwhile
            return None
        self._known[job_id] = _sans_heartbeat(view)
        return view

    def _scan(self) -> dict[str, Stamp]:
        """Every job's status.json stamp, newest first (what :func:`list_jobs` lists)."""
        stamps = {}
        try:
            entries = list(os.scandir(self.ws.jobs))
        except FileNotFoundError:
            return {}
        for entry in entries:
            if not is_job_id(entry.name):
                continue
            try:
                st = os.stat(os.path.join(entry.path, "status.json"))
            except OSError:  # a folder mid-creation or mid-removal
                continue
            if stat.S_ISREG(st.st_mode):
                stamps[entry.name] = (st.st_ino, st.st_size, st.st_mtime_ns)
        return dict(sorted(stamps.items(), reverse=True))


def _sans_heartbeat(view: dict[str, Any]) -> dict[str, Any]:
    """A view without what changes every few seconds while nothing happens."""
    return {k: v for k, v in view.items() if k != "heartbeat"}


class TrainStarts:
    """Train jobs that began to run since the last look, wherever they were started (a panel,
    the CLI, REST, the sidebar), resumed ones included: what a resident caption model watches
    for, to let go of the GPU memory a training run wants. Those running at the first look are
    not news: the model was loaded beside them on purpose."""

    def __init__(self, workspace: Workspace):
        self.watch = JobsWatch(workspace)
        views, _ = self.watch.start(limit=10**9)  # every job, once: an old one may be running
        self.running = {v["id"] for v in views if _training(v)}

    def poll(self) -> list[str]:
        """The ids of the train jobs that started running since the last poll."""
        changed, gone, _ = self.watch.poll()
        started = []
        for view in changed:
            if not _training(view):
                self.running.discard(view["id"])
            elif view["id"] not in self.running:
                self.running.add(view["id"])
                started.append(view["id"])
        self.running.difference_update(gone)
        return started


def _training(view: dict[str, Any]) -> bool:
    return view.get("kind") == "train" and view.get("state") == "running"
