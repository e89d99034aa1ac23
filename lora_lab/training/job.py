"""A train job: its parameters checked before it exists, and the run, in one process or as
data-parallel ranks under ``accelerate launch`` (on a Ray cluster: :mod:`.ray_train`; which one
runs a job: :mod:`.run`).

The same function runs it in the foreground (``lora-lab train``) and as a background job
(``lora-lab jobs submit train``, the server extension, the notebook launcher).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..devices import check_gpus
from ..errors import LoraLabError
from ..jobdir import EventTail, JobRecord
from ..workspace import Workspace
from .config import TrainConfig
from .preflight import check_train
from .trainer import Trainer, TrainResult

OnEvent = Callable[[dict[str, Any]], None] | None
PARAMS = ("config", "gpus")


def train_params(params: dict[str, Any], workspace: Workspace, base: Path,
                 local: bool = True) -> dict[str, Any]:
    """``{"config": {...}, "gpus": N}`` checked as :mod:`.preflight` says (every problem at
    once), with every path in the config absolute (relative ones taken from ``base``). A job
    not ``local`` (for a cluster) is not held to this box's devices."""
    if not isinstance(params.get("config"), dict) or set(params) - set(PARAMS):
        raise LoraLabError('a train job\'s params are {"config": {...}, "gpus": N}: the '
                           "TrainConfig as an object with sections model, dataset, network, "
                           "train, save, sample, validation, track, and the number of GPUs (default 1)")
    config = check_train(absolute_paths(params["config"], base), workspace, base, local)
    return {"config": config.to_dict(), "gpus": check_gpus(params.get("gpus", 1), local)}


def absolute_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """TrainConfig data with its relative paths taken from ``base``; Hub ids and dataset names
    stay, and so does a value of the wrong type (for the validation to report)."""
    d = {table: dict(values) if isinstance(values, dict) else values for table, values in data.items()}

    def path_of(table: str, key: str) -> str | None:
        section = d.get(table)
        value = section.get(key) if isinstance(section, dict) else None
        return value if isinstance(value, str) and value else None

    for table, key in (("model", "base"), ("model", "vae"), ("model", "config"), ("model", "adapter"),
                       ("save", "output_dir")):
        value = path_of(table, key)
        if value and (key == "output_dir" or (base / Path(value).expanduser()).exists()
                      or value.startswith((".", "~"))):
            d[table][key] = os.path.normpath(base / Path(value).expanduser())
    for table in ("dataset", "validation"):  # a dataset name, unless it reads as a folder from ``base``
        source = path_of(table, "source")
        if source and ("/" in source or source.startswith("~") or (base / source).is_dir()):
            d[table]["source"] = os.path.normpath(base / Path(source).expanduser())
    return d


def train(config: TrainConfig, job: JobRecord | None = None, *, resume: bool = False,
          workspace: Workspace | None = None, on_event: OnEvent = None,
          stop: threading.Event | None = None) -> TrainResult:
    """Run a training job to its end, recording it in ``job`` (a new one by default).

    Under ``accelerate launch`` or Ray Train every rank calls this with the same job; rank 0
    reports. ``stop`` set asks the run to stop as Ctrl-C does (a checkpoint, then interrupted).
    """
    ws = workspace or Workspace()
    job = job or JobRecord.create("train", {"config": config.to_dict(), "gpus": 1}, ws)
    main = int(os.environ.get("RANK", "0")) == 0
    if main:
        job.set_status("running", phase="validating", started_at=time.time())
    try:
        with job.heartbeat() if main else contextlib.nullcontext():
            result = Trainer(config, job, ws, on_event, stop).run(resume)
    except BaseException as e:
        if main:
            job.record_end(e)
        raise
    if main:
        record_done(job, result)
    return result


def record_done(job: JobRecord, result: TrainResult) -> None:
    """The end of a run that trained to its last step: a ``done`` event, the job succeeded."""
    done = {"output": str(result.output), "steps": result.steps, "seconds": result.seconds,
            "loss": result.loss}
    status = job.status()  # what validation found, for whoever reads the record's end
    done.update({k: status[k] for k in ("best_step", "best_val_loss", "best_lora") if k in status})
    job.event({"type": "done", **done})
    job.set_status("succeeded", phase="done", progress=1.0, **done)


def launch(job: JobRecord, gpus: int, resume: bool, on_event: OnEvent = None) -> TrainResult:
    """Run the job as ``gpus`` ranks under ``accelerate launch``, passing their events on.

    The ranks write to this process's own output (log.txt for a background job), never to a
    pipe that could fill and stall them; they share its process group, so a cancel reaches them.
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
           str(gpus), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "0", "-m", "lora_lab.training", str(job.path)]
    cmd += ["--resume"] if resume else []
    env = {**os.environ, "OMP_NUM_THREADS": str(rank_threads())}
    events = new_events(job)
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            time.sleep(0.2)
            pass_on(events, on_event)
    except KeyboardInterrupt:  # the ranks got the same Ctrl-C: let them save their checkpoint
        proc.wait()
        raise
    pass_on(events, on_event)
    status = job.status()
    if proc.returncode != 0 or status["state"] != "succeeded":
        cause = status.get("error") or f"accelerate launch exited with {proc.returncode}"
        raise LoraLabError(f"training with {gpus} processes failed: {cause}")
    return recorded_result(status)


def recorded_result(status: dict[str, Any]) -> TrainResult:
    """The result rank 0 recorded in a succeeded job's status."""
    return TrainResult(Path(status["output"]), status["steps"], status["seconds"], status["loss"])


def rank_threads() -> int:
    """Each rank's CPU threads: ranks x threads within the cores (oversubscribed gloo ranks
    crawl), and the same for every run of a job (the count is part of exact resume)."""
    return int(os.environ.get("OMP_NUM_THREADS", "1"))


def new_events(job: JobRecord) -> EventTail:
    """A tail of the job's events from their end now (what earlier runs of the job wrote is
    not passed on again)."""
    events = EventTail(job.path / "events.jsonl")
    events.read_all()
    return events


def pass_on(events: EventTail, on_event: OnEvent) -> None:
    """The ranks' new events to ``on_event`` (read incrementally, not the whole file a poll)."""
    for event in events.read_all():
        if on_event:
            on_event(event)
