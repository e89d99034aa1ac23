"""What the lora-lab job that wrote a LoRA file recorded about it: the run's config, its sample
images, its training and validation losses, up to the step the file was saved at.

The file names its job (``ss_session_id``, :func:`lora_lab.training.loras.written_by`); a file
from elsewhere, or whose job was deleted, has no run, and its model card comes from its
metadata alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LoraLabError
from ..jobdir import open_job
from ..training.loras import written_by
from ..workspace import Workspace


@dataclass
class Sample:
    index: int
    prompt: str
    path: Path


@dataclass
class LoraRun:
    job_id: str
    config: dict[str, Any]  # the TrainConfig as the job ran it (sections of plain values)
    samples: list[Sample] = field(default_factory=list)  # the latest sampled step's, in order
    sample_step: int | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss)
    validation: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)
    best: tuple[int, float] | None = None  # the validation event marked best, last one wins


def lora_run(path: Path, until_step: int | None, workspace: Workspace | None = None) -> LoraRun | None:
    """The run of the train job that wrote ``path``, as of ``until_step`` (the file's step;
    None: the whole run), or None when no such job is in the workspace."""
    job_id = written_by(path)
    if job_id is None:
        return None
    try:
        job = open_job(job_id, workspace)
        spec = job.spec()
    except (LoraLabError, OSError, ValueError):
        return None
    config = spec.get("params", {}).get("config")
    if spec.get("kind") != "train" or not isinstance(config, dict):
        return None
    run = LoraRun(job_id, config)
    losses: dict[int, float] = {}
    validation: dict[int, float] = {}
    samples: dict[int, dict[int, Sample]] = {}
    for event in job.events():
        step = event.get("step")
        if not isinstance(step, int) or (until_step is not None and step > until_step):
            continue
        kind = event.get("type")
        if kind == "progress" and _finite(event.get("loss")):
            losses[step] = float(event["loss"])  # a resumed run repeats steps: the last one counts
        elif kind == "validation" and _finite(event.get("loss")):
            validation[step] = float(event["loss"])
            if event.get("best"):
                run.best = (step, float(event["loss"]))
        elif kind == "sample" and isinstance(event.get("path"), str):
            image = job.path / event["path"]
            if image.is_file() and image.resolve().is_relative_to(job.path.resolve()):
                sample = Sample(int(event.get("index", 0)), str(event.get("prompt", "")), image)
                samples.setdefault(step, {})[sample.index] = sample
    run.losses, run.validation = sorted(losses.items()), sorted(validation.items())
    if samples:
        run.sample_step = max(samples)
        run.samples = [samples[run.sample_step][i] for i in sorted(samples[run.sample_step])]
    return run


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
