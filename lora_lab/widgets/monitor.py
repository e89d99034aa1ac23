"""TrainingMonitor: follow any job from its job directory alone, so it attaches to a job started
by the CLI, the REST API, papermill or before the kernel restarted.

Reading is incremental (byte offsets into events.jsonl and log.txt) and what is kept is bounded
(decimated curves, the last log lines, the last samples), so following a long, fast job costs
the same at its end as at its start. The browser gets at most one update per ``interval``.
"""
from __future__ import annotations

import html
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from ..errors import Conflict, LoraLabError
from ..jobdir import ACTIVE, RESUMABLE, JobFollower, JobRecord, open_job
from ..jobs import cancel, resume
from ..jobs.summary import format_bytes
from ..served import job_file_url
from ..workspace import Workspace
from .chart import Curves
from .common import Notice, Poller, reporting, waiting_reason, where_html, workspace_of

log = logging.getLogger(__name__)
LOG_LINES = 200  # log lines kept and shown
SAMPLES = 8  # sample images kept and shown, newest last
CURVE_POINTS = 500  # about one a pixel across the 420-px charts
CANCEL_GRACE_S = 60.0  # a training job saves a checkpoint before it stops; off-thread, so no wait
STATE_STYLE = {"succeeded": "success", "failed": "danger", "interrupted": "danger",
               "removed": "danger", "cancelled": "warning"}
ERROR_STATES = ("failed", "interrupted", "removed")


class MonitoredJob:
    """What a monitor knows about a job, folded from its files: new events and log lines on
    each :meth:`read`, nothing re-read, everything kept bounded. It goes on reading after
    the job ends, since a resumed job writes on."""

    def __init__(self, job: JobRecord):
        self.job = job
        self.stream = JobFollower(job)
        self.curves = Curves(CURVE_POINTS)
        self.log_lines: deque[str] = deque(maxlen=LOG_LINES)
        self.samples: deque[dict[str, Any]] = deque(maxlen=SAMPLES)
        self.progress: dict[str, Any] | None = None  # the newest progress event
        self.validation: dict[str, Any] | None = None  # the newest validation event
        self.phase: str | None = None
        self.device: dict[str, Any] | None = None  # the run's log line saying where it trains
        self.error: str | None = None
        self.view: dict[str, Any] = {}
        self._stamp: tuple[int, ...] | None = None  # status.json's identity at the last read

    @property
    def events_read(self) -> int:
        """The number of the newest event read (events are numbered from 1)."""
        return self.stream.events.n

    @property
    def active(self) -> bool:
        return self.view.get("state") in ACTIVE

    @property
    def resumable(self) -> bool:
        return self.view.get("state") in RESUMABLE

    def status_changed(self) -> bool:
        """Whether status.json was rewritten since the last :meth:`read`: one stat, so the
        monitor of an ended job can watch for a resume made elsewhere (the sidebar, the CLI)."""
        return self._status_stamp() != self._stamp

    def _status_stamp(self) -> tuple[int, ...] | None:
        try:
            st = (self.job.path / "status.json").stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size  # written atomically: a new inode each time

    def read(self) -> bool:
        """Take in everything new; whether anything changed. The state is read first, so an
        ended job's files are complete when they are read after it."""
        before = self.view
        self._stamp = self._status_stamp()
        try:
            self.view = self.job.view()
        except FileNotFoundError:  # someone deleted the job directory: nothing more will come
            self.view = {**before, "state": "removed",
                         "error": f"its job directory {self.job.path} was removed"}
        final = not self.active
        new = False
        while batch := self.stream.read(final):  # a piece at a time: a long backlog never sits in memory
            new = True
            for message in batch:
                self._fold(message)
        if self.view.get("error") and self.view["state"] in ERROR_STATES:
            self.error = self.view["error"]
        return new or _changed(before, self.view)

    def _fold(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "log_line":
            self.log_lines.append(event["line"])
        elif kind == "phase":
            self.phase = event.get("phase")
        elif kind == "progress":
            self.progress = event
            self.curves.add(event)
        elif kind == "sample":
            self.samples.append(event)
        elif kind == "validation":
            self.validation = event
            self.curves.add(event)
            prompts = event.get("prompts") or []
            for i, path in enumerate(event.get("samples") or []):  # beside the samples, labelled
                prompt = prompts[i] if i < len(prompts) else ""
                self.samples.append({"step": event["step"], "path": path,
                                     "prompt": f"validation: {prompt}"})
        elif kind == "failed":
            self.error = event.get("error")
        elif kind == "resumed":
            self.error = None
        elif kind == "log":
            if "device" in event:
                self.device = event
            if not self.job.log_path.exists():  # else log.txt has it already
                self.log_lines.append(f"{event.get('level', 'info')}: {event.get('message', '')}")


def _changed(before: dict[str, Any], after: dict[str, Any]) -> bool:
    keys = ("state", "phase", "progress", "error", "loras", "best_step", "executor", "handle",
            "reason")
    return any(before.get(k) != after.get(k) for k in keys)


class TrainingMonitor(widgets.VBox):
    """Live view of one job: state, phase, where it runs (and why a Ray job waits), progress,
    speed and ETA, loss (and validation loss) and learning-rate curves, the best validation
    step, samples and validation images, the LoRA files it wrote (path, size, download link),
    the log tail, and cancel / resume.

    ``job`` is a job id or a JobRecord; an unknown id raises NotFound here, as every other
    surface refuses it. ``autostart=False`` leaves the background poller off (call
    :meth:`refresh` yourself, as tests do).
    """

    def __init__(self, job: str | JobRecord, workspace: Workspace | str | None = None,
                 interval: float = 0.5, autostart: bool = True):
        super().__init__()
        self.add_class("lora-lab-monitor")
        self.poller = Poller(self.tick, interval)  # first: close() needs it if the rest fails
        self.ws = workspace_of(workspace)
        self.job = job if isinstance(job, JobRecord) else open_job(job, self.ws)
        self.interval = interval
        self.follower = MonitoredJob(self.job)
        self.notice = Notice()
        self.cancelling: threading.Thread | None = None  # the latest cancel (tests join it)
        self.stopping = False  # a cancel waits for the job's process to end
        self.resume_pending = False  # Resume clicked meanwhile: done once the process has ended
        self._buttons = threading.Lock()  # the cancel thread and a click both use the two above
        self._lock = threading.Lock()  # the poller thread and a caller may refresh at once
        self._last_render = -math.inf
        self._pending = False  # read but not yet shown
        self._sample_boxes: dict[str, widgets.Widget] = {}
        self._build()
        self.follow = autostart
        self.refresh()
        if autostart and (self.follower.active or self.follower.resumable):
            self.poller.start()

    def _build(self) -> None:
        self.title = widgets.HTML()
        self.state = widgets.HTML()
        self.bar = widgets.FloatProgress(min=0.0, max=1.0, layout={"width": "100%"})
        self.stats = widgets.HTML()
        self.charts = widgets.HTML(layout={"display": "none"})
        self.samples = widgets.HBox(layout={"flex_flow": "row wrap"})
        self.log_view = widgets.HTML()  # not ``log``: that name is a widget trait
        self.loras = widgets.HTML()
        self.loras.add_class("lora-lab-loras")
        self.cancel_button = widgets.Button(description="Cancel", icon="stop",
                                            button_style="warning")
        self.resume_button = widgets.Button(description="Resume", icon="play")
        self.cancel_button.on_click(self._on_cancel)
        self.resume_button.on_click(self._on_resume)
        self.children = [self.title, widgets.HBox([self.state, self.cancel_button,
                                                   self.resume_button]),
                         self.bar, self.stats, self.notice, self.loras, self.charts,
                         self.samples, self.log_view]

    # -- reading and showing ---------------------------------------------------------------------
    def refresh(self) -> bool:
        """Read everything new and show it now; whether the job is still active."""
        with self._lock:
            self.follower.read()
            self._render()
            return self.follower.active

    def tick(self) -> bool:
        """The poller's step: read what is new, show it at most once per ``interval``; False
        (stop polling) once the job has ended for good and all of it is shown. A job that can
        be resumed is still watched, at the cost of one stat a tick until its status changes."""
        with self._lock:
            f = self.follower
            if not f.active and not f.status_changed():
                return f.resumable
            self._pending |= f.read()
            ended = not f.active
            if self._pending and (ended or time.monotonic() - self._last_render >= self.interval):
                self._render()
            return not ended or f.resumable

    def _render(self) -> None:
        self._last_render, self._pending = time.monotonic(), False
        f = self.follower
        state = f.view.get("state", "?")
        self.title.value = f"<b>{html.escape(f.view.get('kind', 'job'))} job</b> <code>{self.job.id}</code>"
        phase = f.view.get("phase") or f.phase  # status.json's is the newest (e.g. "done")
        self.state.value = (f"<b>{state}</b>" + (f" · {html.escape(phase)}" if phase else "")
                            + where_html(f.view) + device_html(f.device))
        self.bar.value = _fraction(f)
        self.bar.bar_style = STATE_STYLE.get(state, "info")
        waiting = waiting_reason(f.view)  # a Ray job waiting for the cluster's GPUs says why
        self.stats.value = html.escape(waiting or stats_line(f.progress, state)) \
            + validation_html(f.validation, f.view)
        self.cancel_button.disabled = state not in ACTIVE
        self.cancel_button.button_style = "warning" if state in ACTIVE else ""  # no orange when idle
        self.resume_button.disabled = self.resume_pending or \
            state not in RESUMABLE
        self._show_error(f, state)
        if f.curves.has_loss:
            self.charts.value = f.curves.loss_svg(420, 220) + f.curves.lr_svg(420, 220)
            self.charts.layout.display = None
        self._show_samples(f)
        self.loras.value = loras_html(f.view.get("loras") or [], self.ws, self.job.id)
        self.log_view.value = log_html(f.log_lines)

    def _show_error(self, f: MonitoredJob, state: str) -> None:
        if f.error and state in ERROR_STATES:
            self.notice.show(f"job {state}: {f.error}", "error")
        elif self.notice.kind == "error" and state in ACTIVE:
            self.notice.clear()  # resumed: the old error no longer holds

    def _show_samples(self, f: MonitoredJob) -> None:
        wanted = [e["path"] for e in f.samples]
        if wanted == list(self._sample_boxes):
            return
        boxes = {p: self._sample_boxes.get(p) or _sample_box(self.job, e)
                 for p, e in zip(wanted, f.samples)}
        self._sample_boxes = boxes
        self.samples.children = list(boxes.values())

    # -- buttons ---------------------------------------------------------------------------------
    @reporting
    def _on_cancel(self, _: Any = None) -> None:
        state = self.job.view()["state"]
        if state not in ACTIVE:
            raise Conflict(f"job {self.job.id} is already {state}")
        with self._buttons:
            if self.stopping:
                raise Conflict(f"job {self.job.id} is already being cancelled")
            self.stopping = True
        # cancel() waits for the job to stop (up to its grace period): not on the kernel's thread
        self.cancelling = threading.Thread(target=self._cancel, name=f"cancel {self.job.id}",
                                           daemon=True)
        self.cancel_button.disabled = True
        self.notice.show("cancelling: a training job saves a checkpoint first", "info")
        self.cancelling.start()

    def _cancel(self) -> None:
        try:
            view = cancel(self.job, grace_s=CANCEL_GRACE_S)
            self.notice.show(f"job {self.job.id} {view['state']}", "info")
        except LoraLabError as e:
            self.notice.show(str(e), "error")
        except Exception as e:  # a bug: say so in the panel, the thread has no one else to tell
            log.exception("cancelling %s failed", self.job.id)
            self.notice.show(f"{type(e).__name__}: {e}", "error")
        with self._buttons:
            self.stopping, pending, self.resume_pending = False, self.resume_pending, False
        if pending:
            self._resume()
        else:
            self.refresh()

    @reporting
    def _on_resume(self, _: Any = None) -> None:
        # A job records "cancelled" before its process has ended, and cancel() marks a job it
        # finds still active once that process ends: a resume in between would be marked
        # cancelled while it runs. So a resume waits for the cancel to finish.
        with self._buttons:
            deferred = self.resume_pending = self.stopping
        if deferred:
            self.resume_button.disabled = True
            self.notice.show("resuming once the job has stopped (it saves a checkpoint first)", "info")
            return
        self._resume()

    @reporting
    def _resume(self) -> None:
        resume(self.job)
        self.notice.show(f"job {self.job.id} resumed", "ok")
        self.refresh()
        if self.follow:
            self.poller.start()

    def close(self) -> None:
        self.poller.stop()
        super().close()


def validation_html(event: dict[str, Any] | None, view: dict[str, Any]) -> str:
    """The newest validation loss and the best one so far (status.json's best_step)."""
    if not event:
        return ""
    text = f"validation loss {event['loss']:.4f} at step {event['step']}"
    if view.get("best_step") is not None:
        text += f" · best {view['best_val_loss']:.4f} at step {view['best_step']}"
    return f'<div class="lora-lab-validation">{html.escape(text)}</div>'


def log_html(lines: Iterable[str]) -> str:
    """The log tail, oldest line first and newest at the bottom, in a box that shows its bottom:
    a column-reverse flex box starts scrolled to its end, and stays there as lines come."""
    text = html.escape("\n".join(lines))
    if not text:
        return ""
    return ('<div class="lora-lab-log" style="display:flex;flex-direction:column-reverse;'
            'max-height:14em;overflow:auto;border:1px solid var(--jp-border-color2,#ddd)">'
            f'<pre style="margin:0;font-size:11px;color:var(--jp-content-font-color1,inherit)">'
            f"{text}</pre></div>")


def loras_html(files: list[dict[str, Any]], ws: Workspace, job_id: str) -> str:
    """The LoRA files of a job (its view's ``loras``): the final one on top, then the
    intermediate saves, each with its path, size and, where a Jupyter server serves this
    workspace, a download link (:mod:`lora_lab.served`)."""
    final = [f for f in files if f["step"] is None]
    steps = [f for f in files if f["step"] is not None]
    parts = [f"<div><b>LoRA</b> {_lora_file_html(f, ws, job_id)}</div>" for f in final]
    if steps:
        rows = "".join(f"<tr><td>step&nbsp;{f['step']}</td><td>{_lora_file_html(f, ws, job_id)}</td></tr>"
                       for f in steps)
        # folded once the final file is there: it is what most people came for
        parts.append(f"<details{'' if final else ' open'}><summary>intermediate saves "
                     f"({len(steps)})</summary><table>{rows}</table></details>")
    return "".join(parts)


def _lora_file_html(f: dict[str, Any], ws: Workspace, job_id: str) -> str:
    path = f"<code>{html.escape(f['path'])}</code>"
    if f["bytes"] is None:
        return f"{path} · <i>missing: deleted since it was written</i>"
    url = job_file_url(ws, job_id, f["path"])
    link = (f' · <a href="{html.escape(url)}" download="{html.escape(Path(f["path"]).name)}">'
            "download</a>") if url else ""
    return f"{path} · {format_bytes(f['bytes'])}{link}"


def device_html(line: dict[str, Any] | None) -> str:
    """Where the job trains, from its device log line; a fall back to the CPU stands out (many
    times slower, and seldom meant on a GPU box), its reason in the tooltip."""
    if not line:
        return ""
    if line.get("fallback"):
        return (' · <span class="lora-lab-cpu-fallback" style="color:var(--jp-warn-color1,#b35c00)" '
                f'title="{html.escape(line.get("message", ""))}"><b>on the CPU: no usable GPU</b></span>')
    return f" · on {html.escape(line.get('gpu') or 'the CPU')}"


def _fraction(f: MonitoredJob) -> float:
    p = f.progress
    if p and p.get("total"):
        return min(p["step"] / p["total"], 1.0)
    if f.view.get("state") == "succeeded":
        return 1.0
    return float(f.view.get("progress") or 0.0)


def stats_line(progress: dict[str, Any] | None, state: str) -> str:
    """One line of numbers from a progress event: a training step's or a captioned image's."""
    if not progress:
        return "waiting for the first step" if state in ACTIVE else ""
    p = progress
    unit, rate = ("image", p.get("images_per_s")) if "images_per_s" in p else ("step", p.get("it_s"))
    parts = [f"{unit} {p['step']}/{p['total']}"]
    parts += [f"epoch {p['epoch']}"] if p.get("epoch") else []
    parts += [f"{rate:.2f} {'images/s' if unit == 'image' else 'it/s'}"] if rate else []
    parts += [f"ETA {format_eta(p['eta_s'])}"] if p.get("eta_s") is not None and state in ACTIVE else []
    parts += [f"loss {p['loss']:.4f}"] if p.get("loss") is not None else []
    parts += [f"lr {p['lr']:.2e}"] if p.get("lr") is not None else []
    parts += gpu_parts(p)
    return " · ".join(parts)


def gpu_parts(p: dict[str, Any]) -> list[str]:
    """The GPU's utilisation and memory in use, and the run's peak, as a progress event on a GPU
    carries them; nothing for a CPU run's (which has none of them)."""
    parts = [f"GPU {p['gpu_util']}%"] if p.get("gpu_util") is not None else []
    used, total = p.get("gpu_memory_mb"), p.get("gpu_memory_total_mb")
    if used is not None:
        parts.append(f"GPU memory {used:,}" + (f" / {total:,}" if total else "") + " MB")
    return parts + ([f"peak {p['memory_mb']:,} MB"] if p.get("memory_mb") else [])


def format_eta(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _sample_box(job: JobRecord, event: dict[str, Any]) -> widgets.Widget:
    path = job.path / event["path"]
    try:
        image: widgets.Widget = widgets.Image(value=path.read_bytes(), format="png",
                                              layout={"width": "160px"})
    except OSError as e:  # removed since (keep_last) or unreadable: say so in its place
        image = widgets.HTML(f"<i>{html.escape(path.name)}: {html.escape(e.strerror or str(e))}</i>")
    label = widgets.HTML(f"<small>step {event.get('step')}: {html.escape(event.get('prompt', ''))}</small>",
                         layout={"width": "160px"})
    return widgets.VBox([image, label])
