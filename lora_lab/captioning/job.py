"""A caption job: one dataset captioned as its job directory's spec says.

The same function runs it in the foreground (``lora-lab caption``) and as a background job
(``lora-lab jobs submit caption``, the server extension); run again on the same spec, it
continues where it stopped (the batch journal skips what is done).
"""
from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any

from ..datasets import Dataset
from ..devices import check_gpus
from ..errors import LoraLabError
from ..jobdir import JobRecord
from ..workspace import Workspace
from . import prompts
from .base import Captioner, CaptionError
from .batch import MODES, BatchReport, CaptionSettings, caption_dataset, check_settings
from .openai_server import server_urls

HANDLERS = ("qwen25vl", "mtmd")
# parameter: (default, accepted types); "dataset" has no default
PARAMS: dict[str, tuple[Any, tuple[type, ...]]] = {
    "dataset": (None, (str,)),
    "model": (None, (str, type(None))), "mmproj": (None, (str, type(None))),
    "handler": ("qwen25vl", (str,)),
    # one URL, or a list of them: one run shared by several servers
    "server": (None, (str, list, type(None))), "concurrency": (4, (int,)),
    "preset": (None, (str, type(None))), "prompt": (None, (str, type(None))),
    "mode": ("skip", (str,)), "trigger": ("", (str,)),
    "max_words": (None, (int, type(None))), "max_tokens": (300, (int,)),
    "files": (None, (list, type(None))),
    # on a Ray cluster: one captioner actor (one model) per GPU, see .pool
    "gpus": (1, (int,)),
}
_TYPE_NAMES = {str: "text", int: "a whole number", list: "a list of file names"}


def caption_params(params: dict[str, Any], workspace: Workspace | None = None,
                   probe: bool = False, local: bool = True) -> dict[str, Any]:
    """``params`` checked and completed with defaults, before any model is loaded; with
    ``probe``, every caption server named must answer now (a job run on this box), not only
    once the job has started. Not ``local`` (a job on a Ray cluster), ``gpus`` is not held to
    this box's devices, and more than one captions through an actor pool (:mod:`.pool`)."""
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise LoraLabError(f"unknown caption parameter(s) {', '.join(unknown)}; known: "
                           f"{', '.join(PARAMS)}")
    if not params.get("dataset"):
        raise LoraLabError("a caption job needs a dataset")
    full = {k: params.get(k, default) for k, (default, _) in PARAMS.items()}
    for key, (_, types) in PARAMS.items():
        if not isinstance(full[key], types) or isinstance(full[key], bool):
            raise LoraLabError(f"caption parameter {key}: {full[key]!r} is not "
                               f"{_TYPE_NAMES[types[0]]}")
    if full["handler"] not in HANDLERS:
        raise LoraLabError(f"caption parameter handler: {full['handler']!r} is not one of "
                           f"{', '.join(HANDLERS)}")
    if full["concurrency"] < 1 or full["max_tokens"] < 1:
        raise LoraLabError("caption parameters concurrency and max_tokens must be at least 1")
    _check_gpus(full, local)
    if full["server"] or full["server"] == []:  # each a URL, named once
        try:
            server_urls(full["server"])
        except CaptionError as e:  # the request's fault, not a server's
            raise LoraLabError(f"caption parameter server: {e}") from None
    ds = Dataset.open(full["dataset"], workspace)
    try:
        settings_of(full)
        if not ds.index.count():
            raise LoraLabError(f"dataset {ds.name!r} has no images to caption; add some with "
                               f"`lora-lab dataset ingest FOLDER_OR_ZIP --name {ds.name} --add` "
                               "or the captioning panel's upload")
    finally:
        ds.index.close()
    if not full["server"]:  # a caption server has its own model
        _check_model(full["model"], full["mmproj"], workspace)
    elif probe:
        captioner_of(full, workspace).close()
    return full


def _check_gpus(full: dict[str, Any], local: bool) -> None:
    """As a train job's ``gpus``; more than one only where there are models to spread over."""
    gpus = check_gpus(full["gpus"], local)
    if gpus > 1 and full["server"]:
        raise LoraLabError(f"caption parameter gpus: {gpus} GPUs are for captioning with a model "
                           "of this run's own; a run through caption servers uses theirs (leave "
                           "gpus at 1, or name more servers)")
    if gpus > 1 and local:
        raise LoraLabError(f"caption parameter gpus: {gpus} GPUs caption through a Ray cluster, "
                           "one model per GPU (executor ray; `lora-lab cluster start` makes one "
                           "of this box); a job on this box captions with one model")


def _check_model(model: str | None, mmproj: str | None, workspace: Workspace | None) -> None:
    """The GGUF pair the job would load is there and whole (headers read, nothing loaded)."""
    from .llama import check_gguf, model_paths

    for key, given, path, env in zip(("model", "mmproj"), (model, mmproj),
                                     model_paths(model, mmproj, workspace),
                                     ("LORA_LAB_CAPTION_MODEL", "LORA_LAB_CAPTION_MMPROJ")):
        came = "as given" if given else f"from ${env}" if os.environ.get(env) else "the default"
        try:
            check_gguf(path, "caption model" if key == "model" else "mmproj")
        except CaptionError as e:
            raise LoraLabError(
                f"caption parameter {key}: {e}; that path is {came} (a REST request names the "
                "files as params model and mmproj; without them, the pair `lora-lab models pull "
                f"caption` or `caption-small` put in {(workspace or Workspace()).models} is used)") from None


def settings_of(params: dict[str, Any]) -> CaptionSettings:
    if params["mode"] not in MODES:
        raise LoraLabError(f"unknown caption mode {params['mode']!r}; use one of {', '.join(MODES)}")
    template = prompts.resolve_prompt(params["preset"], params["prompt"])
    settings = CaptionSettings(template, params["trigger"], params["mode"], params["max_words"],
                               "tags" if params["preset"] == "tags" else "sentence")
    check_settings(settings)
    return settings


def captioner_of(params: dict[str, Any], workspace: Workspace | None = None,
                 on_notice: Callable[[str], None] | None = None) -> Captioner:
    """The engine ``params`` name; ``on_notice`` hears of a caption server left out mid-run,
    and of each actor of a pool over several GPUs (its model loaded, the images it answered)."""
    if params.get("gpus", 1) > 1:  # older specs have no gpus
        from ..jobs.bucket_jobs import on_any_node
        from .llama import model_name, model_paths
        from .pool import CaptionPool

        model, mmproj = model_paths(params["model"], params["mmproj"], workspace)
        one = functools.partial(captioner_of, {**params, "gpus": 1, "model": str(model),
                                               "mmproj": str(mmproj)}, workspace)  # each actor's
        return CaptionPool(on_any_node(one, (model, mmproj)), model_name(model, mmproj),
                           params["gpus"], on_notice=on_notice)
    if params["server"]:
        from .openai_server import OpenAIServerCaptioner

        return OpenAIServerCaptioner(params["server"], concurrency=params["concurrency"],
                                     max_tokens=params["max_tokens"], on_notice=on_notice)
    from .llama import LlamaCaptioner

    return LlamaCaptioner(params["model"], params["mmproj"], handler=params["handler"],
                          max_tokens=params["max_tokens"], workspace=workspace)


def run_caption_job(job: JobRecord, workspace: Workspace | None = None,
                    on_event: Callable[[dict[str, Any]], None] | None = None) -> BatchReport:
    """Caption as ``job``'s spec says, recording progress and the outcome in ``job``."""
    # its GPUs were weighed when it was submitted: a Ray job's are the cluster's, not this box's
    params = caption_params(job.spec()["params"], workspace, local=False)
    ds = Dataset.open(params["dataset"], workspace)
    job.set_status("running", phase="loading model", started_at=time.time())
    try:
        with job.heartbeat():
            captioner = captioner_of(params, workspace, lambda message: _record(
                job, {"type": "log", "level": "warning", "message": message}, on_event))
            try:
                job.set_status("running", phase="captioning", model=captioner.name)
                report = caption_dataset(ds, captioner, settings_of(params), files=params["files"],
                                         on_event=lambda e: _record(job, e, on_event))
            finally:
                captioner.close()
    except BaseException as e:
        job.record_end(e)
        raise
    job.event({"type": "done", **report.to_dict()})
    # the counts a job list shows; the done event holds the files
    job.set_status("succeeded", phase="done", progress=1.0, captioned=report.captioned,
                   retried=report.retried, truncated=len(report.truncated))
    return report


def _record(job: JobRecord, event: dict[str, Any],
            on_event: Callable[[dict[str, Any]], None] | None) -> None:
    job.event(event)
    if event["type"] == "progress" and (event["step"] % 10 == 0 or event["step"] == event["total"]):
        job.set_status("running", phase="captioning", progress=event["step"] / event["total"])
    if on_event:
        on_event(event)
