"""JobsPanel: every job in the workspace with its true state, phase and progress; pick one to
open a TrainingMonitor on it (caption jobs too), or to delete it once it has ended."""
from __future__ import annotations

import threading
from typing import Any

import ipywidgets as widgets

from ..errors import LoraLabError
from ..jobdir import list_jobs, open_job
from ..jobs import delete
from ..workspace import Workspace
from .common import Notice, Poller, reporting, workspace_of
from .monitor import TrainingMonitor

REFRESH_S = 2.0
SHOWN = 200  # newest jobs listed; older ones stay reachable with TrainingMonitor(id)


class JobsPanel(widgets.VBox):
    """The workspace's jobs, newest first, refreshed every ``interval`` seconds in the
    background (``autostart=False``: only when :meth:`refresh` is called)."""

    def __init__(self, workspace: Workspace | str | None = None, interval: float = REFRESH_S,
                 autostart: bool = True):
        super().__init__()
        self.add_class("lora-lab-jobs")
        self.poller = Poller(self._tick, interval)  # first: close() needs it if the rest fails
        self.monitor: TrainingMonitor | None = None
        self.ws = workspace_of(workspace)
        self.autostart = autostart
        self.notice = Notice()
        self.rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.jobs = widgets.Select(options=[], rows=8, layout={"width": "100%"})
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.open_button = widgets.Button(description="Open monitor", icon="line-chart",
                                          button_style="primary")
        self.delete_button = widgets.Button(description="Delete", icon="trash",
                                            tooltip="delete the selected job's folder (it must have ended)")
        self.delete_lora = widgets.Checkbox(description="and its LoRA file", indent=False,
                                            layout={"width": "auto"})
        self.refresh_button.on_click(self._on_refresh)
        self.open_button.on_click(self._on_open)
        self.delete_button.on_click(self._on_delete)
        self.monitor_box = widgets.VBox()
        self.children = [widgets.HBox([self.refresh_button, self.open_button, self.delete_button,
                                       self.delete_lora]),
                         self.notice, self.jobs, self.monitor_box]
        self.refresh()
        if autostart:
            self.poller.start()

    def refresh(self) -> list[dict[str, Any]]:
        """Read every job's view again; the rows shown (one dict per job)."""
        with self._lock:
            rows = []
            for job in list_jobs(self.ws)[:SHOWN]:
                try:
                    rows.append(job.view())
                except (OSError, ValueError, KeyError):  # a job directory being created
                    continue
            self.rows = rows
            options = tuple((row_label(r), r["id"]) for r in rows)
            if options != self.jobs.options:  # a heartbeat alone changes nothing shown
                selected = self.jobs.value
                self.jobs.options = options
                self.jobs.value = selected if selected in {r["id"] for r in rows} else None
            return rows

    def _tick(self) -> bool:
        self.refresh()
        return True

    @reporting
    def _on_refresh(self, _: Any = None) -> None:
        self.refresh()

    @reporting
    def _on_open(self, _: Any = None) -> None:
        if not self.jobs.value:
            raise LoraLabError("select a job in the list first")
        self.open_monitor(self.jobs.value)

    @reporting
    def _on_delete(self, _: Any = None) -> None:
        if not self.jobs.value:
            raise LoraLabError("select a job in the list first")
        job = open_job(self.jobs.value, self.ws)
        (result,) = delete([job], self.ws, lora="remove" if self.delete_lora.value else "keep")
        if self.monitor is not None and self.monitor.job.id == job.id:
            self.monitor.close()
            self.monitor, self.monitor_box.children = None, []
        self.refresh()
        lora = (" and its LoRA file" if result["lora_removed"] else
                f" (its LoRA file is kept: {result['lora_kept']})" if result["lora_kept"] else "")
        self.notice.show(f"deleted job {job.id}{lora}: {result['bytes'] / 2**20:.1f} MB freed", "info")

    def open_monitor(self, job_id: str) -> TrainingMonitor:
        """Show a monitor for ``job_id`` below the list, in place of the previous one."""
        if self.monitor is not None:
            self.monitor.close()
        self.monitor = TrainingMonitor(job_id, self.ws, autostart=self.autostart)
        self.monitor_box.children = [self.monitor]
        self.notice.clear()
        return self.monitor

    def close(self) -> None:
        self.poller.stop()
        if self.monitor is not None:
            self.monitor.close()
        super().close()


def row_label(view: dict[str, Any]) -> str:
    """A job as one line of the list: id, kind, state, phase, progress."""
    progress = view.get("progress")
    percent = f"{progress * 100:5.1f}%" if isinstance(progress, (int, float)) else "     -"
    phase = view.get("phase") or ""
    return f"{view['id']}  {view['kind']:<7} {view['state']:<11} {percent}  {phase}"
