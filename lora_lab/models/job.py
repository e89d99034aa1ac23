"""A pull job: a model pulled in the background (POST models/pull, ``lora-lab models pull
--background``), recorded in a job directory like captioning and training.

A job rather than a thread of the server: a 30 GB pull outlives a restarted Jupyter server or a
closed notebook, its progress, log, cancel and resume are the jobs' own (the sidebar and the
panels show it), and a cancelled or killed one resumes from the bytes it had.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..errors import LoraLabError
from ..jobdir import JobRecord
from ..workspace import Workspace
from .pull import plan, run

PARAMS = ("model", "name", "include")


def pull_params(params: dict[str, Any], ws: Workspace) -> dict[str, Any]:
    """``params`` checked as far as a pull checks before downloading (the Hub asked, the disk
    measured), so a pull bound to fail is refused before its job exists."""
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise LoraLabError(f"unknown pull parameter(s) {', '.join(unknown)}; known: {', '.join(PARAMS)}")
    model, name, include = params.get("model"), params.get("name"), params.get("include") or []
    if not isinstance(model, str) or not model.strip():
        raise LoraLabError("a pull needs a model: a catalogue name, ORG/NAME or ORG/NAME/PATH")
    if name is not None and not isinstance(name, str):
        raise LoraLabError(f"pull parameter name: {name!r} is not text")
    if not isinstance(include, list) or not all(isinstance(g, str) and g for g in include):
        raise LoraLabError(f"pull parameter include: {include!r} is not a list of file patterns")
    p = plan(model, ws, name=name or None, include=tuple(include))
    return {"model": model.strip(), "name": p.folder.name, "include": list(include)}


def run_pull_job(job: JobRecord, ws: Workspace,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Pull as ``job``'s spec says, recording progress and the outcome in ``job``."""
    params = job.spec()["params"]
    job.set_status("running", phase="checking", started_at=time.time())
    try:
        with job.heartbeat():
            p = plan(params["model"], ws, name=params["name"], include=tuple(params["include"]))
            job.set_status("running", phase="downloading", model=str(p.folder))
            result = run(p, lambda e: _record(job, e, on_event))
    except BaseException as e:
        job.record_end(e)
        raise
    job.event({"type": "done", **result})
    job.set_status("succeeded", phase="done", progress=1.0, model=result["path"])
    return result


def _record(job: JobRecord, event: dict[str, Any],
            on_event: Callable[[dict[str, Any]], None] | None) -> None:
    job.event(event)
    job.set_status("running", phase="downloading", progress=event["step"] / max(event["total"], 1))
    if on_event:
        on_event(event)
