"""JobsPanel: the workspace's jobs as a table (dataset, LoRA name, start, duration, why one
failed) with their true state and progress, filtered by state and kind; pick one to open a
TrainingMonitor on it (caption jobs too), to cancel or resume it, or to delete it once ended."""
from __future__ import annotations

import html
import threading
from typing import Any

import ipywidgets as widgets

from ..errors import LoraLabError
from ..jobdir import RESUMABLE, STATES, open_job
from ..jobs import KINDS, delete, job_summaries
from ..jobs.summary import COLUMNS, cells, table
from ..workspace import Workspace
from .common import Notice, Poller, reporting, workspace_of
from .monitor import TrainingMonitor

REFRESH_S = 2.0
SHOWN = 200  # newest jobs listed; older ones stay reachable with TrainingMonitor(id)
NBSP = "\u00a0"  # pads the columns: a <select> collapses plain spaces
MONO = "font-family:var(--jp-code-font-family,monospace);font-size:var(--jp-code-font-size,12px)"
# the list's options in the header's font, so the columns line up under it
STYLE = f"<style>.lora-lab-jobs-list select{{{MONO}}}</style>"


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
        self.state_filter = widgets.Dropdown(options=[("all states", ""), *((s, s) for s in STATES)],
                                             value="", layout={"width": "130px"})
        self.kind_filter = widgets.Dropdown(options=[("all kinds", ""), *((k, k) for k in KINDS)],
                                            value="", layout={"width": "110px"})
        self.header = widgets.HTML()
        self.jobs = widgets.Select(options=[], rows=8, layout={"width": "100%"})
        self.jobs.add_class("lora-lab-jobs-list")
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.open_button = widgets.Button(description="Open monitor", icon="line-chart",
                                          button_style="primary")
        self.cancel_button = widgets.Button(description="Cancel", icon="stop",
                                            tooltip="stop the selected job (a training run saves a checkpoint first)")
        self.resume_button = widgets.Button(description="Resume", icon="play",
                                            tooltip="continue the selected job where it stopped")
        self.delete_button = widgets.Button(description="Delete", icon="trash",
                                            tooltip="delete the selected job's folder (it must have ended)")
        self.delete_lora = widgets.Checkbox(description="and its LoRA files", indent=False,
                                            layout={"width": "auto"})
        self.refresh_button.on_click(self._on_refresh)
        self.open_button.on_click(self._on_open)
        self.cancel_button.on_click(self._on_cancel)
        self.resume_button.on_click(self._on_resume)
        self.delete_button.on_click(self._on_delete)
        for control in (self.state_filter, self.kind_filter):
            control.observe(self._on_filter, names="value")
        self.jobs.observe(lambda _: self._enable_buttons(), names="value")
        self.monitor_box = widgets.VBox()
        self.children = [widgets.HTML(STYLE),
                         widgets.HBox([self.refresh_button, self.state_filter, self.kind_filter,
                                       self.open_button, self.cancel_button, self.resume_button,
                                       self.delete_button, self.delete_lora],
                                      layout={"flex_flow": "row wrap"}),
                         self.notice, self.header, self.jobs, self.monitor_box]
        self.refresh()
        if autostart:
            self.poller.start()

    def refresh(self) -> list[dict[str, Any]]:
        """Read the jobs the filters let through again; the rows shown (one summary per job,
        :func:`~lora_lab.jobs.job_summary`)."""
        with self._lock:
            rows = job_summaries(self.ws, state=self.state_filter.value or None,
                                 kind=self.kind_filter.value or None, limit=SHOWN)
            self.rows = rows
            header, *lines = table([cells(r) for r in rows], COLUMNS, NBSP)
            self.header.value = (f'<pre style="margin:0 0 0 4px;{MONO}">'
                                 f"{html.escape(header)}</pre>")
            options = tuple(zip(lines, (r["id"] for r in rows)))
            if options != self.jobs.options:  # a heartbeat alone changes nothing shown
                selected = self.jobs.value
                self.jobs.options = options
                self.jobs.value = selected if selected in {r["id"] for r in rows} else None
            self._enable_buttons()
            return rows

    def _enable_buttons(self) -> None:
        """Cancel for a selected job that runs or waits, Resume for one that stopped early."""
        state = next((r["state"] for r in self.rows if r["id"] == self.jobs.value), None)
        self.cancel_button.disabled = state not in ("queued", "running")
        self.resume_button.disabled = state not in RESUMABLE

    def _tick(self) -> bool:
        self.refresh()
        return True

    @reporting
    def _on_refresh(self, _: Any = None) -> None:
        self.refresh()

    @reporting
    def _on_filter(self, _: Any = None) -> None:
        self.refresh()

    @reporting
    def _on_open(self, _: Any = None) -> None:
        self.open_monitor(self._selected())

    @reporting
    def _on_cancel(self, _: Any = None) -> None:
        self._monitor_of_selected().cancel_button.click()
        self.refresh()

    @reporting
    def _on_resume(self, _: Any = None) -> None:
        self._monitor_of_selected().resume_button.click()
        self.refresh()

    def _selected(self) -> str:
        if not self.jobs.value:
            raise LoraLabError("select a job in the list first")
        return self.jobs.value

    def _monitor_of_selected(self) -> TrainingMonitor:
        """The selected job's monitor, opened if need be: Cancel and Resume go through it, so
        a Resume clicked while a cancel still waits for the job to stop is held back until
        then, whichever of the two panels each click came from (and its outcome shows there)."""
        job_id = self._selected()
        if self.monitor is None or self.monitor.job.id != job_id:
            self.open_monitor(job_id)
        return self.monitor

    @reporting
    def _on_delete(self, _: Any = None) -> None:
        job = open_job(self._selected(), self.ws)
        (result,) = delete([job], self.ws, lora="remove" if self.delete_lora.value else "keep")
        if self.monitor is not None and self.monitor.job.id == job.id:
            self.monitor.close()
            self.monitor, self.monitor_box.children = None, []
        self.refresh()
        steps = result["step_loras_removed"]
        lora = (" and its LoRA file" if result["lora_removed"] else
                f" (its LoRA file is kept: {result['lora_kept']})" if result["lora_kept"] else "")
        lora += f", {steps} intermediate LoRA file(s)" if steps else ""
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

