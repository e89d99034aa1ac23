"""The Ray Jobs API calls lora_lab makes: submit a job's process, ask its state, stop it.

Each call names the cluster by its Jobs API (dashboard) address, as recorded in the job's
status, so a job submitted to one cluster is always asked about there.
"""
from __future__ import annotations

import functools
from typing import Any

from .cluster import require_ray
from .errors import LoraLabError

RAY_ACTIVE = ("PENDING", "RUNNING")  # Ray's states of a job that has not ended
JOB_ENV = "LORA_LAB_RAY_JOB"  # in a Ray job lora_lab submitted (and its workers): its submission id


def submit(address: str, submission_id: str, entrypoint: str, *, gpus: int,
           env: dict[str, str]) -> None:
    """Submit ``entrypoint`` (a shell command) as Ray job ``submission_id``, asking for ``gpus``
    GPUs (Ray hands them out through ``$CUDA_VISIBLE_DEVICES``)."""
    try:
        _client(address).submit_job(entrypoint=entrypoint, submission_id=submission_id,
                                    entrypoint_num_gpus=gpus, runtime_env={"env_vars": env})
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise LoraLabError(f"the Ray cluster at {address} refused job {submission_id}: {e}") from None


def state(address: str, submission_id: str) -> str | None:
    """The Ray job's state (PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED); None when the
    cluster cannot be reached or does not know the job."""
    try:
        return _client(address).get_job_status(submission_id).value
    except (ConnectionError, RuntimeError, ValueError):
        return None


def logs(address: str, submission_id: str) -> str:
    """What the Ray job's entrypoint printed (empty when the cluster cannot say)."""
    try:
        return _client(address).get_job_logs(submission_id)
    except (ConnectionError, RuntimeError, ValueError):
        return ""


def stop(address: str, submission_id: str) -> None:
    """Ask Ray to stop the job: the signal and grace period its submission set, then a kill."""
    try:
        _client(address).stop_job(submission_id)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise LoraLabError(f"the Ray cluster at {address} could not stop job {submission_id}: "
                           f"{e}") from None


@functools.lru_cache(maxsize=8)
def _client(address: str) -> Any:
    """One client per cluster (making one asks the cluster for its version)."""
    require_ray("a job on a Ray cluster")
    from ray.job_submission import JobSubmissionClient
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConnectionError(e) from None
