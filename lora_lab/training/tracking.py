"""A training run's record for experiment trackers: TensorBoard event files in the job folder,
always (``JOB/tensorboard/``, what ``tensorboard --logdir`` opens), and an MLflow and a Weights &
Biases run through accelerate's trackers when ``[track]`` asks for them.

The trainer's main process hands over every event it emits (:meth:`RunTracker.event`):
``progress`` gives the scalars (loss, lr, grad_norm, it/s, memory), ``sample`` an image,
``validation`` ``val/loss`` and its images; the
config goes in once, as TOML text. A step costs a few records queued for the TensorBoard
writer's own thread, which flushes every :data:`FLUSH_S` seconds and at each checkpoint and sample.

A run resumed from its checkpoint at step N appends to the same event folder, first marking that
the steps after N start over (TensorBoard's ``purge_step``): steps a killed run logged past its
last checkpoint are replaced, not shown twice. MLflow's run is found again by its job tag and
W&B's by its id (the job's); both keep the values they had for such steps, which the resumed run
logs again unchanged (a resume is exact): MLflow holds them twice, W&B ignores the repeats.
"""
from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w

from ..errors import LoraLabError
from ..jobdir import JobRecord
from ..workspace import Workspace
from .config import TrainConfig, check_package

TENSORBOARD = "tensorboard"  # the event folder, inside the job's folder
FLUSH_S = 10  # TensorBoard itself reloads every 5 s
NOT_METRICS = ("step", "total", "epoch", "eta_s", "time")  # numbers in a progress event
JOB_TAG = "lora_lab.job"  # the MLflow tag a resumed run is found by
_COLORSPACE = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}  # an image summary's channel counts


def tensorboard_command(jobs: Path) -> str:
    """The command that opens every run under ``jobs`` (a job folder, or the jobs folder)."""
    return f"tensorboard --logdir {jobs} --port 6006"


class RunTracker:
    """One run's trackers, started at ``first_step`` (its checkpoint's step when resumed); as a
    context, they end with it: finished, or failed / killed by the exception that ends it."""

    def __init__(self, config: TrainConfig, job: JobRecord, workspace: Workspace, run_name: str,
                 first_step: int):
        from torch.utils.tensorboard import SummaryWriter

        track = config.track
        for key in ("mlflow", "wandb"):  # checked before the job existed; again for a resume
            check_package(f"track.{key}", getattr(track, key))
        self.job = job
        self.tb = SummaryWriter(str(job.path / TENSORBOARD), purge_step=first_step + 1,
                                flush_secs=FLUSH_S)
        self.tb.add_text("config", f"```toml\n{tomli_w.dumps(config.to_dict())}```", first_step)
        self.others: list[Any] = []  # accelerate's MLflowTracker / WandBTracker
        name = track.run_name or run_name
        try:
            if track.mlflow:
                self.others.append(_start_mlflow(config, job, workspace, name))
            if track.wandb:
                self.others.append(_start_wandb(config, job, name))
        except BaseException as e:
            self.close(e)
            raise

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        self.close(error)

    def relay(self, on_event: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
        """``on_event``, with each event recorded here first."""
        def both(event: dict[str, Any]) -> None:
            self.event(event)
            on_event(event)
        return both

    def event(self, event: dict[str, Any]) -> None:
        if event["type"] == "progress":
            self._metrics(event)
        elif event["type"] == "sample":
            self._sample(event)
        elif event["type"] == "validation":
            self._validation(event)
        elif event["type"] == "checkpoint":
            self.tb.flush()  # what a resume starts from is on disk

    def _metrics(self, event: dict[str, Any]) -> None:
        step = event["step"]
        values = {f"train/{k}": v for k, v in event.items() if k not in NOT_METRICS
                  and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.tb.file_writer.add_summary(_scalars_summary(values), step)  # one record for all
        for tracker in list(self.others):  # _guarded may drop one
            # MLflow's own queue, so a store's round trip stays off the step
            extra = {"synchronous": False} if tracker.name == "mlflow" else {}
            self._guarded(tracker, tracker.log, values, step=step, **extra)

    def _sample(self, event: dict[str, Any]) -> None:
        path, step, prompt = self.job.path / event["path"], event["step"], event["prompt"]
        tag = f"samples/{event['index']}"  # the index in sample.prompts (the config text lists them)
        self.tb.file_writer.add_summary(_image_summary(tag, path.read_bytes()), step)
        self.tb.flush()
        for tracker in list(self.others):
            self._guarded(tracker, _log_sample, tracker, tag, path, prompt, step)

    def _validation(self, event: dict[str, Any]) -> None:
        """``val/loss``, and the validation images as ``val/samples/N`` (N: the prompt's index)."""
        step = event["step"]
        self.tb.file_writer.add_summary(_scalars_summary({"val/loss": event["loss"]}), step)
        for i, path in enumerate(event["samples"]):
            self.tb.file_writer.add_summary(_image_summary(f"val/samples/{i}",
                                                           (self.job.path / path).read_bytes()), step)
        if event["samples"]:
            self.tb.flush()  # as a sample's: the images are the big records
        for tracker in list(self.others):
            extra = {"synchronous": False} if tracker.name == "mlflow" else {}
            self._guarded(tracker, tracker.log, {"val/loss": event["loss"]}, step=step, **extra)

    def _guarded(self, tracker: Any, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """An optional tracker that fails (a server gone) is dropped, not the training run."""
        try:
            call(*args, **kwargs)
        except Exception as e:
            self.others.remove(tracker)
            _warn(f"{tracker.name} stopped logging this run: {_first_line(e)}")

    def close(self, error: BaseException | None) -> None:
        """Flush the event file and end the other runs: finished, failed or (Ctrl-C) killed."""
        self.tb.close()
        status = "FINISHED" if error is None else "FAILED" if isinstance(error, Exception) else "KILLED"
        for tracker in self.others:
            try:
                _end(tracker, status)
            except Exception as e:  # the LoRA is saved: a tracker's end does not fail the job
                _warn(f"{tracker.name}: could not end the run ({_first_line(e)})")


def _scalars_summary(values: dict[str, float]) -> Any:
    """What add_scalar writes, for every value at once: one record a step instead of one each
    (the writer's thread frames and checksums each record in Python)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    return Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()])


def _image_summary(tag: str, png: bytes) -> Any:
    """The PNG as it was written, not decoded and encoded again (what torch's add_image writes,
    a plain image summary: every TensorBoard reader shows it, and drops it on a resume's purge)."""
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    with Image.open(io.BytesIO(png)) as image:  # reads the header only
        proto = Summary.Image(height=image.height, width=image.width,
                              colorspace=_COLORSPACE.get(image.mode, 3), encoded_image_string=png)
    return Summary(value=[Summary.Value(tag=tag, image=proto)])


def mlflow_store(uri: str, workspace: Workspace) -> tuple[str, str | None]:
    """The tracking URI ([track] mlflow_uri, else $MLFLOW_TRACKING_URI, else the workspace's own
    SQLite store) and, for the workspace's store, where its artifacts go."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri:
        return uri, None
    folder = workspace.root / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()


def _start_mlflow(config: TrainConfig, job: JobRecord, workspace: Workspace, name: str) -> Any:
    import mlflow
    from accelerate.tracking import MLflowTracker

    track = config.track
    uri, artifacts = mlflow_store(track.mlflow_uri, workspace)
    try:
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.get_experiment_by_name(track.project)
        earlier = mlflow.search_runs([experiment.experiment_id], f"tags.`{JOB_TAG}` = '{job.id}'",
                                     output_format="list") if experiment else []
        tracker = MLflowTracker(track.project, artifacts, tags={JOB_TAG: job.id}, run_name=name,
                                run_id=earlier[0].info.run_id if earlier else None)
        tracker.start()
        if not earlier:  # MLflow refuses to change a logged parameter
            tracker.store_init_configuration(_params(config))
    except Exception as e:
        raise LoraLabError(f"track.mlflow: could not start the MLflow run at {uri} ({_first_line(e)}); "
                           "check track.mlflow_uri, or set track.mlflow = false") from None
    return tracker


def _start_wandb(config: TrainConfig, job: JobRecord, name: str) -> Any:
    import wandb
    from accelerate.tracking import WandBTracker

    track = config.track
    tracker = WandBTracker(track.project, name=name, id=job.id, resume="allow",
                           mode=None if track.wandb_mode == "auto" else track.wandb_mode,
                           dir=None if os.environ.get("WANDB_DIR") else str(job.path),
                           settings=wandb.Settings(quiet=True))
    try:
        tracker.start()
    except Exception as e:
        raise LoraLabError(f"track.wandb: could not start the W&B run ({_first_line(e)}); run "
                           "`wandb login` or set WANDB_API_KEY where the job runs, or set "
                           "track.wandb_mode = \"offline\" and `wandb sync` the job's wandb/ folder "
                           "later") from None
    tracker.store_init_configuration(_params(config))
    return tracker


def _params(config: TrainConfig) -> dict[str, Any]:
    """The settings as flat parameters (``train.lr``); [track] is where they go, not what ran."""
    return {f"{table}.{key}": value for table, values in config.to_dict().items() if table != "track"
            for key, value in values.items()}


def _log_sample(tracker: Any, tag: str, path: Path, prompt: str, step: int) -> None:
    if tracker.name == "mlflow":
        tracker.log_artifact(str(path), artifact_path="samples")
    else:
        import wandb

        tracker.log({tag: wandb.Image(str(path), caption=prompt)}, step=step)


def _end(tracker: Any, status: str) -> None:
    if tracker.name == "mlflow":
        import mlflow

        mlflow.flush_async_logging()
        mlflow.end_run(status)
    else:
        tracker.run.finish(exit_code=0 if status == "FINISHED" else 1)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _warn(message: str) -> None:
    print(f"lora-lab: warning: {message}", file=sys.stderr, flush=True)
