"""The registry of job kinds: how each checks its parameters before a job exists, how many
GPUs it takes, and how it runs. The steps' own code is imported only when a job needs it."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LoraLabError
from ..jobdir import JobRecord
from ..workspace import Workspace

OnEvent = Callable[[dict[str, Any]], None] | None


@dataclass(frozen=True)
class JobKind:
    name: str
    # params checked and completed, relative paths made absolute against a folder; the flag:
    # the job runs on this box (its devices are checked), not on a cluster
    check: Callable[[dict[str, Any], Workspace, Path, bool], dict[str, Any]]
    gpus: Callable[[dict[str, Any]], int]  # the GPU slots its checked params take
    run: Callable[[JobRecord, Workspace, bool, OnEvent], Any]  # (job, workspace, resume, on_event)
    # of those GPUs, the ones its Ray workers take, one each, rather than its own process (on a
    # Ray cluster, the job's process asks Ray for the rest)
    actor_gpus: Callable[[dict[str, Any]], int] = lambda p: 0


def _check_caption(params: dict[str, Any], ws: Workspace, base: Path, local: bool) -> dict[str, Any]:
    from ..captioning.job import caption_params

    params = dict(params)
    for key in ("model", "mmproj"):  # absolute first: the files are checked where the job reads them
        if isinstance(params.get(key), str) and params[key]:
            params[key] = str(base / Path(params[key]).expanduser())
    # a cluster's workers may reach other servers, and have other GPUs
    return caption_params(params, ws, probe=local, local=local)


def _caption_gpus(params: dict[str, Any]) -> int:
    """A caption server elsewhere needs no GPU here; older specs have no gpus: one."""
    return 0 if params["server"] else params.get("gpus", 1)


def _caption_actor_gpus(params: dict[str, Any]) -> int:
    """Several GPUs caption through an actor pool (one model each), driven by a GPU-less process."""
    gpus = _caption_gpus(params)
    return gpus if gpus > 1 else 0


def _run_caption(job: JobRecord, ws: Workspace, resume: bool, on_event: OnEvent) -> Any:
    from ..captioning.job import run_caption_job

    return run_caption_job(job, ws, on_event=on_event)


def _check_train(params: dict[str, Any], ws: Workspace, base: Path, local: bool) -> dict[str, Any]:
    from ..training.job import train_params

    return train_params(params, ws, base, local)


def _run_train(job: JobRecord, ws: Workspace, resume: bool, on_event: OnEvent) -> Any:
    from ..training.run import run_train_job

    return run_train_job(job, ws, resume=resume, on_event=on_event)


def _check_pull(params: dict[str, Any], ws: Workspace, base: Path, local: bool) -> dict[str, Any]:
    from ..models.job import pull_params

    return pull_params(params, ws)  # it names no path: models go to the workspace's models/


def _run_pull(job: JobRecord, ws: Workspace, resume: bool, on_event: OnEvent) -> Any:
    from ..models.job import run_pull_job

    return run_pull_job(job, ws, on_event)  # a resume is a pull again: it keeps what arrived


KINDS = {k.name: k for k in (
    JobKind("caption", _check_caption, _caption_gpus, _run_caption, _caption_actor_gpus),
    JobKind("train", _check_train, lambda p: p.get("gpus", 1), _run_train,  # older specs: 1
            lambda p: p.get("gpus", 1) if p.get("gpus", 1) > 1 else 0),  # Ray Train's workers
    JobKind("pull", _check_pull, lambda p: 0, _run_pull),  # a download takes no GPU slot
)}


def kind_of(name: str) -> JobKind:
    if name not in KINDS:
        raise LoraLabError(f"unknown job kind {name!r}; use one of {', '.join(KINDS)}")
    return KINDS[name]


def check_params(kind: str, params: Any, workspace: Workspace | None = None,
                 base: str | os.PathLike | None = None, local: bool = True) -> dict[str, Any]:
    """A job's parameters checked, completed with defaults and with every path absolute
    (relative ones are taken from ``base``, default the current folder), before anything
    starts: a job runs in its own directory, where a relative path would mean another file.

    The one check before a job exists, for ``jobs submit``, ``train``, ``caption``, REST POST
    jobs and the launcher alike: it reads, never writes, and refuses (LoraLabError) what the
    job would fail on at its start: for a train job see :mod:`lora_lab.training.preflight`;
    a caption job needs a dataset with images and its GGUF model files, or caption servers that
    answer (asked now when the job runs on this box).
    ``local``: the job runs on this box, whose GPUs it may ask for; a cluster's job leaves them
    to the cluster's queue.
    """
    job_kind = kind_of(kind)
    if not isinstance(params, dict):
        raise LoraLabError(f"a {kind} job's params must be an object, not {type(params).__name__}")
    return job_kind.check(params, workspace or Workspace(), Path(base or os.getcwd()).absolute(), local)
