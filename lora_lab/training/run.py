"""Where a train job's ranks run: in this process, as ``accelerate launch`` ranks on this box, or
as Ray Train workers when the job is a Ray job on a cluster."""
from __future__ import annotations

from ..jobdir import JobRecord
from ..workspace import Workspace
from .config import TrainConfig
from .job import OnEvent, launch, train
from .outputs import TrainResult
from .ray_train import in_ray_job, train_on_ray


def run_train_job(job: JobRecord, workspace: Workspace, *, resume: bool = False,
                  on_event: OnEvent = None) -> TrainResult:
    """Train as ``job``'s spec says: in this process, or with ``gpus`` data-parallel ranks."""
    params = job.spec()["params"]
    gpus = params.get("gpus", 1)
    if gpus > 1 and in_ray_job():  # the cluster's Ray Train workers take the GPUs, on any node
        return train_on_ray(job, gpus, resume, on_event)
    if gpus > 1:
        return launch(job, gpus, resume, on_event)
    return train(TrainConfig.from_dict(params["config"]), job, resume=resume, workspace=workspace,
                 on_event=on_event)
