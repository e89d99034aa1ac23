"""What every list of jobs shows, worked out once so that `lora-lab jobs list`, the JobsPanel and
REST agree: each job's dataset, LoRA name, where it runs, start time, duration and reason (why it
failed, or why it waits), the filters by state and kind, and the columns of a table of them.

Read from the job directory alone (spec.json, status.json), never from a step's code: listing a
hundred jobs imports no torch.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import LoraLabError
from ..jobdir import ACTIVE, STATES, JobRecord, list_jobs
from ..training.loras import base_of, lora_name
from ..workspace import Workspace
from .kinds import KINDS

REASON_CHARS = 160  # one line of a table: the whole message is in `jobs show` and the monitor
COLUMNS = ("id", "kind", "state", "where", "phase", "progress", "dataset", "lora", "started",
           "duration", "reason")


def summarize(view: dict[str, Any], spec: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """The fields a list shows beyond the view: ``dataset``, ``lora_name`` (the LoRA files'
    name, or the one they will get), ``started_at`` and ``duration_s`` of the job's latest run
    (to its end, or to now while it runs), ``executor``, where it runs ("local" for a job made
    before executors were recorded), and ``reason``: the first line of why it failed, or why a
    queued job waits (a Ray job waiting for the cluster's GPUs)."""
    dataset, name = _dataset_and_name(view, _table(spec, "params"))
    started = view.get("started_at")
    started = started if isinstance(started, (int, float)) else None
    # an ended job's last status write (the heartbeat stamps each) is its end
    end = (now or time.time()) if view["state"] in ACTIVE else view.get("heartbeat")
    duration = end - started if started is not None and isinstance(end, (int, float)) \
        and view["state"] != "queued" else None
    return {"dataset": dataset, "lora_name": name, "started_at": started,
            "duration_s": round(max(duration, 0.0), 1) if duration is not None else None,
            "executor": view.get("executor") or "local", "reason": _reason(view)}


def _reason(view: dict[str, Any]) -> str | None:
    if view["state"] in ("failed", "interrupted"):
        return one_line(view.get("error"))
    return one_line(view.get("reason")) if view["state"] == "queued" else None


def job_summary(job: JobRecord) -> dict[str, Any]:
    """The job's view (:meth:`JobRecord.view`) with its :func:`summarize` fields."""
    view = job.view()
    return {**view, **summarize(view, job.spec())}


def job_summaries(workspace: Workspace, *, state: str | None = None, kind: str | None = None,
                  limit: int | None = None) -> list[dict[str, Any]]:
    """The summaries of the workspace's jobs, newest first, only those in ``state`` and of
    ``kind`` when given, at most ``limit``; a job folder being made or damaged is left out."""
    check_filters(state, kind)
    out = []
    for job in list_jobs(workspace):
        if kind and job.id.split("-")[2] != kind:  # the id names its kind: no file read
            continue
        try:
            summary = job_summary(job)
        except (OSError, ValueError, KeyError):
            continue
        if state and summary["state"] != state:
            continue
        out.append(summary)
        if limit is not None and len(out) >= limit:
            break
    return out


def check_filters(state: str | None, kind: str | None) -> None:
    if state and state not in STATES:
        raise LoraLabError(f"unknown job state {state!r}; use one of {', '.join(STATES)}")
    if kind and kind not in KINDS:
        raise LoraLabError(f"unknown job kind {kind!r}; use one of {', '.join(KINDS)}")


def cells(summary: dict[str, Any]) -> dict[str, str]:
    """A summary as the text of each of :data:`COLUMNS`."""
    progress = summary.get("progress")
    started = summary.get("started_at")
    return {"id": summary["id"], "kind": summary["kind"], "state": summary["state"],
            "where": summary.get("executor") or "local", "phase": summary.get("phase") or "",
            "progress": f"{progress:.0%}" if isinstance(progress, (int, float)) else "",
            "dataset": summary.get("dataset") or "", "lora": summary.get("lora_name") or "",
            "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if started else "",
            "duration": format_duration(summary.get("duration_s")),
            "reason": summary.get("reason") or ""}


def table(rows: Sequence[dict[str, str]], columns: Sequence[str], space: str = " ") -> list[str]:
    """A header line and one line per row, each column as wide as its widest cell (the last
    one not padded); ``space`` pads (a no-break space where spaces would collapse)."""
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in columns[:-1]}

    def line(values: dict[str, str]) -> str:
        padded = [values[c] + space * (widths[c] - len(values[c])) for c in columns[:-1]]
        return (space * 2).join([*padded, values[columns[-1]]]).rstrip(space)

    return [line({c: c.upper() for c in columns}), *(line(r) for r in rows)]


def format_bytes(n: float) -> str:
    """Bytes as people read them: 812 B, 3.4 MB."""
    units = ["B", "KB", "MB", "GB", "TB"]
    while n >= 1000 and len(units) > 1:
        n, units = n / 1000, units[1:]
    return f"{n:.0f} B" if units[0] == "B" else f"{n:.1f} {units[0]}"


def format_duration(seconds: float | None) -> str:
    """12s, 4m05s, 2h03m: short enough for a column."""
    if seconds is None:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def one_line(text: Any) -> str | None:
    """The first line of a message, cut to :data:`REASON_CHARS`."""
    if not isinstance(text, str) or not text.strip():
        return None
    first = text.strip().splitlines()[0]
    return first if len(first) <= REASON_CHARS else first[:REASON_CHARS - 1] + "…"


def _dataset_and_name(view: dict[str, Any], params: dict[str, Any]) -> tuple[str | None, str | None]:
    if view["kind"] == "caption":
        dataset = params.get("dataset")
        return (dataset if isinstance(dataset, str) else None), None
    config = _table(params, "config")
    source = _table(config, "dataset").get("source")
    dataset = Path(source).name if isinstance(source, str) and source else None
    if view.get("loras"):  # the name the files got (NAME-2 when NAME was another run's)
        return dataset, base_of(Path(view["loras"][-1]["path"]))
    save_name = _table(config, "save").get("name")
    save_name = save_name if isinstance(save_name, str) else ""
    if view["kind"] != "train" or not (save_name or dataset):
        return dataset, None
    return dataset, lora_name(save_name, source or "", view["id"])


def _table(d: dict[str, Any], key: str) -> dict[str, Any]:
    """``d[key]`` when it is a dict, else an empty one (a spec damaged by hand lists anyway)."""
    value = d.get(key)
    return value if isinstance(value, dict) else {}
