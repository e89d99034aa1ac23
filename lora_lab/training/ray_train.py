"""A data-parallel train job on a Ray cluster: Ray Train's ``TorchTrainer`` starts one worker per
GPU, on whichever nodes have them free, and every worker runs :func:`.job.train`, the code an
``accelerate launch`` rank runs. Ray Train sets up the process group and the variables
``accelerate launch`` would give (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...), so Accelerate
finds the ranks as it does on one box, and per-draw seeding makes the run the same as there.

The Ray job's own process (this module's :func:`train_on_ray`) asks Ray for no GPU: its workers
take them. It passes the ranks' events on as :func:`.job.launch` does, and turns the cancel's
Ctrl-C into a flag every worker reads between steps (a Ray worker gets no signal of its own),
so the ranks save one checkpoint together, from which a resume with the same number of workers
continues exactly. Ray is imported only here, when such a job runs.

Only rank 0 reads and writes the job folder (a checkpoint's RNG states are gathered to it, a
resume's state sent from it: :mod:`.trainer_checkpoints`), so the other ranks need no copy of it.
With the folder in the bucket (:mod:`lora_lab.jobs.bucket_jobs`), the copy pushed there is the
one in the Ray job's scratch workspace, on its node: Ray Train's first worker is placed on that
node, which makes rank 0 one of its workers, and workers on other nodes stage the inputs from the
bucket at the same scratch paths first.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from ..cluster import require_ray
from ..errors import LoraLabError, Unavailable
from ..jobdir import JobRecord
from ..jobs.bucket_jobs import ENV_JOB_URL, scratch_root, stage_inputs, worker_env
from ..ray_jobs import JOB_ENV
from .config import TrainConfig
from .gpu import pick_device
from .job import OnEvent, new_events, pass_on, rank_threads, recorded_result, train
from .outputs import TrainResult

STOP_POLL_S = 0.5  # how often a worker asks whether the job was asked to stop
NODE_ID_LABEL = "ray.io/node-id"  # every Ray node's label: its id


def in_ray_job() -> bool:
    """Whether this process is a Ray job's, started by lora_lab's Ray executor."""
    return bool(os.environ.get(JOB_ENV))


def train_on_ray(job: JobRecord, gpus: int, resume: bool, on_event: OnEvent = None) -> TrainResult:
    """Run the job as ``gpus`` Ray Train workers (on GPUs when this node trains on CUDA, else
    gloo ranks on CPUs), passing their events on; a Ctrl-C stops them with a checkpoint."""
    ray = require_ray("training on a Ray cluster")
    try:
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
    except ImportError as e:  # Ray without its train extra (pandas, pyarrow)
        raise Unavailable(f"training on {gpus} GPUs of a Ray cluster needs Ray Train ({e}): "
                          f"pip install 'ray[train]=={ray.__version__}' on every node") from None
    config = job.spec()["params"]["config"]
    on_gpu, _ = pick_device(TrainConfig.from_dict(config).train.device)
    ray.init(ignore_reinit_error=True)  # the cluster the Ray job runs on ($RAY_ADDRESS)
    flag = ray.remote(num_cpus=0)(StopFlag).remote()
    url, node = os.environ.get(ENV_JOB_URL), ray.get_runtime_context().get_node_id()
    trainer = TorchTrainer(
        _worker, train_loop_config={"job": str(job.path), "config": config, "resume": resume,
                                    "stop": flag, "threads": rank_threads(), "url": url, "node": node},
        torch_config=TorchConfig(backend="nccl" if on_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=gpus, use_gpu=on_gpu,  # a GPU each, or a CPU
                                     label_selector=_rank_0_here(node, gpus) if url else None),
        run_config=RunConfig(name=os.environ[JOB_ENV], storage_path=str(job.path / "ray"),
                             failure_config=FailureConfig(max_failures=0),
                             worker_runtime_env={"env_vars": worker_env()} if url else None))
    started = {"type": "log", "level": "info", "message": f"{gpus} Ray Train workers on "
               f"{'GPUs (nccl)' if on_gpu else 'CPUs (gloo)'}"}
    job.event(started)
    if on_event:
        on_event(started)
    return _outcome(job, gpus, *_fit_passing_events(trainer, flag, job, on_event))


def _rank_0_here(node: str, workers: int) -> list[dict[str, str]]:
    """Ray Train's placement for a job whose folder is in the bucket: the first worker on this
    node, the Ray job's, whose scratch copy of the folder is the one pushed to the bucket. Ray
    Train ranks the workers node by node, the first worker's node first, so rank 0 (which alone
    writes the folder) is one of this node's workers."""
    return [{NODE_ID_LABEL: node}] + [{}] * (workers - 1)


def _fit_passing_events(trainer: Any, flag: Any, job: JobRecord, on_event: OnEvent
                        ) -> tuple[BaseException | None, KeyboardInterrupt | None]:
    """Run ``trainer`` to its end, passing the ranks' events on; a Ctrl-C meanwhile sets the
    job's :class:`StopFlag`. Returns what ``fit()`` raised and the Ctrl-C, each when there was one."""
    events, failure, stopped, ended = new_events(job), [], None, threading.Event()
    # fit() off the main thread: there Ray Train would take Ctrl-C to abort the run, no checkpoint
    threading.Thread(target=_fit, args=(trainer, failure, ended), name=f"ray train {job.id}").start()
    while not ended.is_set():
        try:  # slept, not joined: a Ctrl-C in Thread.join() can leave the thread reading as ended
            time.sleep(0.2)
            pass_on(events, on_event)
        except KeyboardInterrupt as e:  # a cancel: the workers stop after their step, saving
            stopped = e
            flag.set.remote()
    pass_on(events, on_event)
    return (failure[0] if failure else None), stopped


class StopFlag:
    """Whether the job was asked to stop: set by the Ray job's process, read by every worker
    (a Ray actor, so that workers on other nodes see it too)."""

    def __init__(self) -> None:
        self.requested = False

    def set(self) -> None:
        self.requested = True

    def get(self) -> bool:
        return self.requested


def _fit(trainer: Any, failure: list[BaseException], ended: threading.Event) -> None:
    try:
        trainer.fit()
    except BaseException as e:  # judged by the caller, with what the job recorded
        failure.append(e)
    finally:
        ended.set()


def _worker(params: dict[str, Any]) -> None:
    """One rank, as ``python -m lora_lab.training JOB`` is one under ``accelerate launch``."""
    import ray
    import torch

    threads = params["threads"]
    os.environ["OMP_NUM_THREADS"] = str(threads)  # Accelerate reads it, as under accelerate launch
    torch.set_num_threads(threads)
    # a node other than the Ray job's, with the folder in the bucket: the inputs staged here, at
    # the paths they have there; the job folder is rank 0's alone, on the Ray job's node
    elsewhere = params["url"] and ray.get_runtime_context().get_node_id() != params["node"]
    if elsewhere:
        stage_inputs(params["url"])
    job = JobRecord(Path(params["job"]))
    stop, done = threading.Event(), threading.Event()
    threading.Thread(target=_watch, args=(params["stop"], stop, done), daemon=True).start()
    try:
        train(TrainConfig.from_dict(params["config"]), job, resume=params["resume"],
              workspace=job.workspace, stop=stop)
    except KeyboardInterrupt:
        return  # stopped as asked, after a checkpoint: rank 0 recorded it
    finally:
        done.set()
    if elsewhere:  # trained to the end: nothing resumes from this node's copy of the inputs
        shutil.rmtree(scratch_root(job.id), ignore_errors=True)


def _watch(flag: Any, stop: threading.Event, done: threading.Event) -> None:
    """Set ``stop`` once the job's :class:`StopFlag` is set."""
    import ray

    while not done.wait(STOP_POLL_S):
        try:
            if ray.get(flag.get.remote()):
                stop.set()
                return
        except ray.exceptions.RayActorError:  # the Ray job's process is gone: Ray ends the workers
            return


def _outcome(job: JobRecord, gpus: int, failure: BaseException | None,
             stopped: KeyboardInterrupt | None) -> TrainResult:
    """The run's result, or its end raised as a run in one process raises it: interrupted
    (KeyboardInterrupt) or failed (LoraLabError), recorded in the job when no rank could."""
    lost = _lost_worker(failure)
    if lost and not job.cancel_requested:  # the cause, whatever the other ranks then recorded
        message = f"a Ray Train worker was lost ({lost}); resume it to continue"
        job.event({"type": "failed", "error": message, "resumable": True})
        job.set_status("interrupted", error=message)
        raise LoraLabError(message)
    status = job.status()
    if status["state"] == "succeeded":
        return recorded_result(status)
    if status["state"] in ("interrupted", "cancelled"):
        raise stopped or KeyboardInterrupt(status.get("error") or "stopped")
    cause = status.get("error") if status["state"] == "failed" else _cause(failure)
    raise LoraLabError(f"training with {gpus} Ray Train workers failed: {cause}")


def _lost_worker(failure: BaseException | None) -> str | None:
    """What ended a worker that died (killed, or its node gone), when one did; None when every
    failing worker raised an error of its own (or none failed)."""
    from ray.exceptions import RayActorError

    for rank, error in sorted((getattr(failure, "worker_failures", None) or {}).items()):
        cause = getattr(error, "health_check_failure", error)  # Ray Train's wrapper of a dead actor
        if isinstance(cause, RayActorError):
            return f"rank {rank}: {_first_line(cause)}"
    return None


def _cause(failure: BaseException | None) -> str:
    """The first failing rank's own error, in a line."""
    failures = sorted((getattr(failure, "worker_failures", None) or {}).items())
    if failures:
        rank, error = failures[0]
        return f"rank {rank}: {_first_line(getattr(error, '_base_exc', error))}"  # unwrapped
    if failure is None:
        return "the workers ended without finishing"
    return _first_line(getattr(failure, "controller_failure", failure))  # Ray Train's own trouble


def _first_line(error: BaseException) -> str:
    return next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
