"""Every run's TensorBoard record, read back with TensorBoard's own reader and served by the
documented `tensorboard` command; MLflow into the workspace's store and W&B offline when [track]
asks; a tracker that is not installed refused before a job exists; a resume after kill -9 that
appends to the same TensorBoard run without repeating a step."""
from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from conftest import tree_digest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_train import config
from test_train_resume import _run, _start, _wait_for

from lora_lab.jobdir import JobRecord, list_jobs
from lora_lab.training.config import ConfigError, TrainConfig
from lora_lab.training.tracking import TENSORBOARD, tensorboard_command

METRICS = ("train/loss", "train/lr", "train/grad_norm")
PROMPTS = ["sks, a red circle", "sks, a blue square"]


def read_events(job: JobRecord) -> EventAccumulator:
    """The job's event folder as TensorBoard loads it (every record kept, none sampled away)."""
    acc = EventAccumulator(str(job.path / TENSORBOARD), size_guidance={"scalars": 0, "images": 0,
                                                                       "tensors": 0})
    return acc.Reload()


def last_progress(job: JobRecord) -> dict[int, dict]:
    """Each step's progress event, the last one written where a resumed run wrote it again."""
    return {e["step"]: e for e in job.events() if e["type"] == "progress"}


def assert_metrics_match(acc: EventAccumulator, progress: dict[int, dict]) -> None:
    """Every step once, in order, holding what the progress event said (as float32)."""
    for tag in METRICS:
        scalars = acc.Scalars(tag)
        assert [s.step for s in scalars] == list(range(1, len(progress) + 1)), tag
        key = tag.removeprefix("train/")
        assert [s.value for s in scalars] == pytest.approx([progress[s.step][key] for s in scalars],
                                                           rel=1e-6), tag


def test_a_run_records_loss_lr_grad_norm_samples_and_its_config_for_tensorboard(cli, ws, tiny_models,
                                                                                tmp_path):
    path = config(tiny_models, train={"max_steps": 6, "max_grad_norm": 0.05},
                  sample={"every_n_steps": 3, "prompts": PROMPTS, "steps": 2}).write(tmp_path / "run.toml")
    out = json.loads(cli("train", path, "--json")[1])
    job = JobRecord(ws.jobs / out["job"])
    progress = last_progress(job)
    assert all(e["grad_norm"] > 0.05 for e in progress.values())  # the norm before clipping
    acc = read_events(job)
    assert_metrics_match(acc, progress)
    assert "train/it_s" in acc.Tags()["scalars"]  # and, on a GPU, its memory and utilisation
    for i in range(len(PROMPTS)):
        images = acc.Images(f"samples/{i}")
        assert [im.step for im in images] == [3, 6]
        for im in images:  # the PNG as the trainer wrote it, byte for byte
            png = (job.path / "samples" / f"step-{im.step:06d}-{i}.png").read_bytes()
            assert im.encoded_image_string == png and (im.width, im.height) == (64, 64)
    [text] = acc.Tensors("config/text_summary")
    toml = text.tensor_proto.string_val[0].decode().removeprefix("```toml\n").removesuffix("```")
    recorded = TrainConfig.from_dict(tomllib.loads(toml))
    # the config as it ran: "pick for me" zeros filled in for the family
    assert recorded.train.max_steps == 6 and recorded.sample.prompts == tuple(PROMPTS)
    assert recorded.model.family == "sd15" and recorded.network.alpha == 16.0
    shown = cli("jobs", "show", job.id)[1]
    assert f"tensorboard: {tensorboard_command(job.path / TENSORBOARD)}" in shown


def test_mlflow_records_each_step_the_settings_and_samples_in_the_workspace_store(
        cli, ws, tiny_models, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = config(tiny_models, track={"mlflow": True, "project": "shapes"},
                  sample={"every_n_steps": 2, "prompts": PROMPTS[:1], "steps": 2}).write(tmp_path / "run.toml")
    out = json.loads(cli("train", path, "--json")[1])
    job = JobRecord(ws.jobs / out["job"])
    client = MlflowClient(f"sqlite:///{ws.root / 'mlflow' / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("shapes").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["lora_lab.job"] == job.id
    assert run.info.run_name == Path(out["output"]).stem  # the LoRA's name
    assert run.data.params["train.lr"] == "0.001" and run.data.params["dataset.resolution"] == "64"
    assert run.data.params["network.alpha"] == "16.0" and "track.mlflow" not in run.data.params
    progress = last_progress(job)
    for tag in METRICS:
        history = sorted(client.get_metric_history(run.info.run_id, tag), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2, 3, 4]
        assert [m.value for m in history] == [progress[m.step][tag.removeprefix("train/")] for m in history]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert artifacts == {"samples/step-000002-0.png", "samples/step-000004-0.png"}
    assert Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, tracking_uri=client.tracking_uri,
                                                    artifact_path="samples/step-000004-0.png")
                ).read_bytes() == (job.path / "samples" / "step-000004-0.png").read_bytes()


@pytest.mark.parametrize("offline_by", ["WANDB_MODE", "track.wandb_mode"])
def test_wandb_offline_writes_its_run_into_the_job_folder(cli, ws, tiny_models, tmp_path, monkeypatch,
                                                         offline_by):
    monkeypatch.delenv("WANDB_DIR", raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # nothing in ~
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    if offline_by == "WANDB_MODE":
        monkeypatch.setenv("WANDB_MODE", "offline")
        track = {"wandb": True}
    else:
        monkeypatch.delenv("WANDB_MODE", raising=False)
        track = {"wandb": True, "wandb_mode": "offline"}
    path = config(tiny_models, track=track,
                  sample={"every_n_steps": 4, "prompts": PROMPTS[:1], "steps": 2}).write(tmp_path / "run.toml")
    out = json.loads(cli("train", path, "--json")[1])
    job = JobRecord(ws.jobs / out["job"])
    [run] = (job.path / "wandb").glob("offline-run-*")
    record = (run / f"run-{job.id}.wandb").read_bytes()  # the run's id is the job's: a resume continues it
    for step in last_progress(job).values():  # each step's values, as W&B encodes them (JSON)
        assert all(json.dumps(step[k]).encode() in record for k in ("loss", "grad_norm"))
    assert b"train/loss" in record and b"network.rank" in record and Path(out["output"]).stem.encode() in record
    [image] = (run / "files" / "media" / "images" / "samples").glob("0_4_*.png")
    assert image.read_bytes() == (job.path / "samples" / "step-000004-0.png").read_bytes()


def test_wandb_online_without_a_login_fails_at_once_saying_what_to_do(cli, ws, tiny_models, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    path = config(tiny_models, track={"wandb": True, "wandb_mode": "online"}).write(tmp_path / "run.toml")
    rc, _, err = cli("train", path, ok=False)
    assert rc == 1 and err.splitlines()[-1] == (  # after the CLI's "validating..."
        "lora-lab: error: track.wandb: could not start the W&B run (No API key configured. Use "
        "`wandb login` to log in.); run `wandb login` or set WANDB_API_KEY where the job runs, or set "
        "track.wandb_mode = \"offline\" and `wandb sync` the job's wandb/ folder later")
    [job] = list_jobs(ws)
    assert job.status()["state"] == "failed"  # before the model was loaded: nothing else was done
    assert [e["phase"] for e in job.events() if e["type"] == "phase"] == ["validating"]


def test_an_mlflow_server_address_holding_credentials_is_refused(tiny_models):
    with pytest.raises(ConfigError, match=r"track.mlflow_uri: 'https://me:secret@mlflow.example:5000' "
                                          r"is not an http\(s\):// address without credentials"):
        config(tiny_models, track={"mlflow": True, "mlflow_uri": "https://me:secret@mlflow.example:5000"})


@pytest.mark.parametrize("key, package, missing", [("track.mlflow", "mlflow", "the mlflow package"),
                                                   ("track.mlflow", "sqlalchemy", "the sqlalchemy package"),
                                                   ("track.wandb", "wandb", "the wandb package")])
def test_a_tracker_not_installed_is_refused_before_a_job_exists(cli, ws, tiny_models, tmp_path,
                                                                monkeypatch, key, package, missing):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package
                        else real(name, *a))
    table, field = key.split(".")
    path = config(tiny_models, **{table: {field: True}}).write(tmp_path / "run.toml")
    jobs = tree_digest(ws.jobs)
    for command in (("train", path), ("jobs", "submit", "train", path)):
        assert cli.fails(*command) == (f"lora-lab: error: {key}: true needs {missing} "
                                       "(pip install 'lora-lab[track]'); or set it to false")
    assert tree_digest(ws.jobs) == jobs


def test_resume_after_kill_9_appends_to_the_same_tensorboard_run_without_repeats(ws, tiny_models,
                                                                                 tmp_path):
    # a checkpoint at 10, then a sample at 12 (the writer flushes there): killed past it, the
    # run has steps on disk that its resume from step 10 logs again
    cfg = config(tiny_models, train={"max_steps": 24}, save={"every_n_steps": 10},
                 sample={"every_n_steps": 12, "prompts": PROMPTS[:1], "steps": 1}).write(tmp_path / "run.toml")
    proc = _start(ws, "train", cfg)
    job = _wait_for(ws, proc, "sample", 12)
    deadline = time.monotonic() + 60
    while 12 not in [s.step for s in read_events(job).Scalars("train/loss")]:
        assert time.monotonic() < deadline, "step 12 never reached the event file"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    checkpoints = [e["step"] for e in job.events() if e["type"] == "checkpoint"]
    assert checkpoints == [10], "killed too late to test a resume"
    _run(ws, "train", "--resume", job.id)
    progress = last_progress(job)
    assert len(progress) == 24 and [e["step"] for e in job.events() if e["type"] == "progress"].count(11) == 2
    assert len(list((job.path / TENSORBOARD).glob("events.out.tfevents.*"))) == 2  # one per process
    acc = read_events(job)
    assert_metrics_match(acc, progress)
    assert [im.step for im in acc.Images("samples/0")] == [12, 24]
    assert [t.step for t in acc.Tensors("config/text_summary")] == [0, 10]  # the config each process ran with
    run = f"{job.id}/{TENSORBOARD}"
    with tensorboard_serving(ws.jobs) as get:  # the server: its fast (Rust) loader where it has one
        loss = get("scalars/scalars", run=run, tag="train/loss", last=24)
        assert [step for _, step, _ in loss] == list(range(1, 25))
        assert [p[2] for p in loss] == pytest.approx([progress[s]["loss"] for s in range(1, 25)], rel=1e-6)
        assert [im["step"] for im in get("images/images", run=run, tag="samples/0", last=24)] == [12, 24]


@contextlib.contextmanager
def tensorboard_serving(logdir: Path) -> Iterator[Callable[..., list]]:
    """The command `lora-lab jobs show` prints, on a free port; yields a GET of a plugin's data
    route that waits until TensorBoard has loaded the series up to step ``last``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = shlex.split(tensorboard_command(logdir).replace("--port 6006", f"--port {port}"))
    tensorboard = str(Path(sys.executable).parent / argv[0])
    proc = subprocess.Popen([tensorboard, *argv[1:], "--host", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def get(route: str, last: int, **params: str) -> list:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", f"/data/plugin/{route}?{urlencode(params)}")
                response = conn.getresponse()
                points = json.loads(response.read()) if response.status == 200 else []
                last_step = points[-1]["step"] if points and isinstance(points[-1], dict) else \
                    points[-1][1] if points else None
                if last_step == last:
                    return points
            except OSError:
                pass  # not listening yet
            assert time.monotonic() < deadline, f"tensorboard served no {route} up to step {last}"
            time.sleep(0.5)
    try:
        yield get
    finally:
        proc.terminate()
        proc.wait(timeout=30)
