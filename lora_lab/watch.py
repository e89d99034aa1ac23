"""What the JupyterLab sidebar is shown of a workspace: job views with the paths its file browser
opens, pages of them, and :class:`WorkspaceWatch`, which tells a feed what changed since it
last asked (jobs, datasets, GPUs) without reading what did not.

No tornado here: the server extension's feed (``WS stream``) only calls :meth:`WorkspaceWatch.start`
once and :meth:`WorkspaceWatch.poll` on a timer, off the event loop.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .confine import contents_path
from .datasets import list_datasets
from .devices import gpu_status
from .jobdir import JobRecord, JobsWatch, list_jobs
from .jobs import summarize
from .workspace import Workspace


def with_browse(view: dict[str, Any], ws: Workspace, root: Path | None) -> dict[str, Any]:
    """``view`` with ``browse``: where JupyterLab's file browser (rooted at ``root``) finds the
    job's folder and its LoRA file; null for what lies outside ``root``."""
    output = view.get("output")
    lora = Path(output) if isinstance(output, str) and os.path.isabs(output) else None
    return {**view, "browse": {"dir": contents_path(ws.jobs / view["id"], root),
                               "output": contents_path(lora, root)}}


def job_view(job: JobRecord, ws: Workspace, root: Path | None) -> dict[str, Any]:
    """The job's true state (:meth:`JobRecord.view`) with its ``browse`` paths, what every
    list of jobs shows (:func:`~lora_lab.jobs.summarize`) and ``bytes``, its folder's size (a
    walk of the folder: the feed's polls leave it out)."""
    view = job.view()
    return {**with_browse(view, ws, root), **summarize(view, job.spec()), "bytes": job.disk_bytes()}


def job_page(ws: Workspace, root: Path | None, offset: int = 0,
             limit: int | None = None) -> dict[str, Any]:
    """The jobs newest first, ``limit`` of them (all without) from ``offset`` on, and how many
    there are; only the page's own status files are read."""
    jobs = list_jobs(ws)
    views = []
    for job in jobs[offset:] if limit is None else jobs[offset:offset + limit]:
        try:
            views.append(job_view(job, ws, root))
        except (OSError, ValueError, KeyError):  # a folder mid-creation, or damaged by hand
            continue
    return {"jobs": views, "total": len(jobs), "offset": offset, "limit": limit}


class WorkspaceWatch:
    """The messages of the workspace feed: :meth:`start` gives the opening ones, each
    :meth:`poll` only what changed since (see the feed's docs in :mod:`lora_lab.server_ext.feed`)."""

    def __init__(self, ws: Workspace, root: Path | None, limit: int = 50):
        self.ws, self.root, self.limit = ws, root, limit
        self.jobs = JobsWatch(ws)
        self._datasets_stamp: tuple | None = None  # None: not read yet
        self._datasets: list[dict[str, Any]] | None = None
        self._gpus: dict[str, Any] | None = None

    def start(self) -> list[dict[str, Any]]:
        """The newest ``limit`` jobs and the total, then the datasets, then the GPUs."""
        views, total = self.jobs.start(self.limit)
        return [{"type": "jobs", "jobs": [self._served(v) for v in views], "total": total},
                *self._poll_datasets(), *self._poll_gpus()]

    def poll(self, slow: bool = True) -> list[dict[str, Any]]:
        """What changed since the last call: jobs (new or changed, removed) always; datasets
        and GPUs only when ``slow`` (they change less and cost more to read)."""
        changed, gone, total = self.jobs.poll()
        messages = [{"type": "job", "job": self._served(v), "total": total} for v in changed]
        messages += [{"type": "removed", "id": job_id, "total": total} for job_id in gone]
        if slow:
            messages += self._poll_datasets() + self._poll_gpus()
        return messages

    def _served(self, view: dict[str, Any]) -> dict[str, Any]:
        try:
            summary = summarize(view, JobRecord(self.ws.jobs / view["id"]).spec())
        except (OSError, ValueError):  # removed meanwhile: its removal comes next
            summary = {}
        return {**with_browse(view, self.ws, self.root), **summary}

    def _poll_datasets(self) -> list[dict[str, Any]]:
        """The datasets again when a dataset folder changed (an image or caption file added,
        replaced or removed renames inside it, which moves its time), and the counts with it."""
        stamp = _folder_stamps(self.ws.datasets)  # before the read: a change meanwhile shows next time
        if stamp == self._datasets_stamp:
            return []
        self._datasets_stamp = stamp
        datasets = list_datasets(self.ws)
        if datasets == self._datasets:
            return []
        self._datasets = datasets
        return [{"type": "datasets", "datasets": datasets}]

    def _poll_gpus(self) -> list[dict[str, Any]]:
        gpus = gpu_status()
        if gpus == self._gpus:
            return []
        self._gpus = gpus
        return [{"type": "gpus", **gpus}]


def _folder_stamps(folder: Path) -> tuple:
    """``folder``'s own stamp and each subfolder's: a file made, renamed or removed in one
    changes its time."""
    def stamp(path: str) -> tuple[int, int, int]:
        st = os.stat(path)
        return st.st_ino, st.st_size, st.st_mtime_ns

    try:
        subfolders = sorted(e.path for e in os.scandir(folder) if e.is_dir())
        return tuple((path, *stamp(path)) for path in [str(folder), *subfolders])
    except FileNotFoundError:  # removed meanwhile: read again next time
        return ()
