"""What every panel shares: a notice line for errors and news, handlers that report instead of
raising, and a background poller that keeps a panel current without blocking the kernel."""
from __future__ import annotations

import contextlib
import functools
import html
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import ipywidgets as widgets

from ..errors import LoraLabError
from ..jobs.executors import EXECUTORS, chosen
from ..workspace import Workspace

log = logging.getLogger(__name__)
COLORS = {"error": "#b3261e", "warning": "#8a5a00", "info": "#1f5f8b", "ok": "#1e7b34"}


def workspace_of(workspace: Workspace | str | None) -> Workspace:
    """The workspace a panel works in: the one given, a path, or the default."""
    return workspace if isinstance(workspace, Workspace) else Workspace(workspace)


RUN_ON = (("This box", "local"), ("Ray cluster", "ray"))


def run_on_choice() -> widgets.Dropdown:
    """Where a panel's job runs: this box or the Ray cluster, at first the default
    ($LORA_LAB_EXECUTOR, which the Jupyter server sets to its own setting for its kernels). A
    default that names no executor leaves nothing chosen: the job is then refused saying why."""
    default = chosen(None)
    return widgets.Dropdown(options=RUN_ON, value=default if default in EXECUTORS else None,
                            description="Run on", style={"description_width": "50px"},
                            layout={"width": "190px"},
                            tooltip="where the job runs: a process on this box, or a Ray job on "
                                    "the cluster `lora-lab cluster start` made")


def where_html(view: dict[str, Any]) -> str:
    """Where a job runs, for a panel's status line: nothing for this box, "on the Ray cluster"
    (its address and submission id in the tooltip) for Ray."""
    if (view.get("executor") or "local") != "ray":
        return ""
    handle = view.get("handle") or {}
    tip = (f"Ray cluster {handle.get('address') or '?'}, submission id "
           f"{handle.get('submission_id') or 'none yet (waiting in the queue)'}")
    return f' · <span class="lora-lab-run-where" title="{html.escape(tip)}">on the Ray cluster</span>'


def waiting_reason(view: dict[str, Any]) -> str | None:
    """Why a queued job waits (a Ray job waiting for the cluster's GPUs), if it says."""
    return view.get("reason") if view.get("state") == "queued" and view.get("reason") else None


class Notice(widgets.HTML):
    """One line that tells the user what happened: an error in red, news in blue or green."""

    kind = "info"

    def show(self, message: str, kind: str = "info") -> None:
        self.kind = kind
        self.value = (f'<span class="lora-lab-{kind}" style="color:{COLORS[kind]}">'
                      f"{html.escape(message)}</span>")

    def clear(self) -> None:
        self.kind, self.value = "info", ""

    @property
    def text(self) -> str:
        """The message without its markup (what a test or a screen reader reads)."""
        return html.unescape(self.value.split(">", 1)[-1].rsplit("<", 1)[0]) if self.value else ""


class Quiet:
    """For a panel that sets its own controls: while :meth:`_quietly` is active, its handlers
    (which return early on ``_quiet``) ignore those changes, so there are no feedback loops."""

    _quiet = False

    @contextlib.contextmanager
    def _quietly(self) -> Iterator[None]:
        """While active, the panel's own changes to its controls trigger no handlers."""
        before, self._quiet = self._quiet, True
        try:
            yield
        finally:
            self._quiet = before


def reporting(handler: Callable) -> Callable:
    """Decorate a panel's event handler: an error shows in the panel's ``notice`` line instead
    of vanishing into the kernel log (ipywidgets swallows exceptions raised by handlers)."""
    @functools.wraps(handler)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return handler(self, *args, **kwargs)
        except LoraLabError as e:
            self.notice.show(str(e), "error")
        except Exception as e:  # a bug: say what it was, keep the panel alive
            log.exception("panel handler %s failed", handler.__name__)
            self.notice.show(f"{type(e).__name__}: {e}", "error")
        return None
    return run


class Poller:
    """Calls ``tick`` every ``interval`` seconds on a daemon thread until it returns False or
    :meth:`stop` is called. Panels do their reading here, so the kernel stays free; tests call
    ``tick`` themselves and never start the thread.

    A :meth:`start` always takes effect, even one made while a last tick is deciding to stop
    (a job resumed just as its monitor saw it end): that tick's False is then ignored."""

    def __init__(self, tick: Callable[[], bool], interval: float):
        self.tick, self.interval = tick, interval
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._live = False  # a thread runs and has not decided to end
        self._again = False  # start() was called since the current tick began

    @property
    def running(self) -> bool:
        return self._live

    def start(self) -> None:
        with self._lock:
            self._stop.clear()
            self._again = True
            if not self._live:
                self._live = True
                threading.Thread(target=self._run, name="lora-lab poller", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while True:
            stopped = self._stop.wait(self.interval)
            with self._lock:
                if stopped and self._stop.is_set():
                    self._live = False
                    return
                self._again = False
            try:
                go_on = self.tick() is not False
            except Exception:  # keep polling: a file half-written now reads fine next time
                log.exception("panel update failed")
                go_on = True
            with self._lock:
                if not go_on and not self._again:
                    self._live = False
                    return
