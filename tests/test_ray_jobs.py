"""Jobs on a Ray cluster (a real local head with 2 logical GPUs): trained, captioned, cancelled,
killed and resumed through the CLI as on this box, with lora_lab's queue in front of Ray's."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from server_api import api, jp_server_config  # noqa: F401 (fixtures)
from test_caption_batch import assert_each_appended_once, forty_captioned
from test_jobs import wait_until
from test_launcher import launcher_on
from test_server_jobs import read_stream, train_config
from test_train import config

from lora_lab.datasets import Dataset
from lora_lab.jobdir import ACTIVE, JobRecord, list_jobs
from lora_lab.jobs import cancel, submit

WAIT_S = 180


@pytest.fixture
def on_ray(ray_cluster, ws, monkeypatch):
    """The workspace, with jobs going to the test cluster by default; a job a failed test left
    running is cancelled, so it holds none of the cluster's GPUs."""
    monkeypatch.setenv("LORA_LAB_RAY_ADDRESS", ray_cluster.url)
    monkeypatch.setenv("LORA_LAB_EXECUTOR", "ray")
    yield ws
    for job in list_jobs(ws):
        if job.view()["state"] in ACTIVE:
            cancel(job)


@pytest.fixture(params=["shared", "bucket"])
def folders(request, monkeypatch) -> str:
    """Where Ray jobs keep their folders: in this workspace (a filesystem the nodes share), or
    in the bucket, followed from here."""
    if request.param == "bucket":
        monkeypatch.setenv("LORA_LAB_JOBS_URL", f"{request.getfixturevalue('bucket_env').url}/jobs")
    return request.param


def _wait(job: JobRecord, until: Callable[[dict], bool]) -> dict:
    """The view once ``until`` holds, waiting long enough for Ray to set a job up."""
    return wait_until(job, until, WAIT_S)


def _only_job(ws) -> JobRecord:
    jobs = list_jobs(ws)
    assert len(jobs) == 1
    return jobs[0]


def _train_config(tiny_models, tmp_path: Path, steps: int = 200) -> Path:
    return config(tiny_models, train={"max_steps": steps},
                  save={"every_n_steps": 50, "name": "onray"}).write(tmp_path / "run.toml")


def _trained(job: JobRecord) -> int:
    return max((e["step"] for e in job.events() if e["type"] == "progress"), default=0)


def test_training_on_ray_is_cancelled_with_a_checkpoint_and_resumed_to_its_end(
        on_ray, cli, tiny_models, tmp_path, ray_cluster):
    cli("jobs", "submit", "train", _train_config(tiny_models, tmp_path))
    job = _only_job(on_ray)
    view = _wait(job, lambda v: _trained(job) >= 5)
    assert view["executor"] == "ray" and view["handle"] == {"address": ray_cluster.url,
                                                            "submission_id": job.id}
    cli("jobs", "cancel", job.id)
    assert job.view()["state"] == "cancelled"
    events = job.events()
    assert [e["step"] for e in events if e["type"] == "checkpoint"][-1] == _trained(job) < 200

    cli("jobs", "resume", job.id)
    view = _wait(job, lambda v: v["state"] not in ("queued", "running"))
    assert view["state"] == "succeeded", job.log_path.read_text()[-3000:]
    assert view["handle"]["submission_id"] == f"{job.id}-r1"  # Ray never reuses an id
    assert [f["step"] for f in view["loras"]] == [50, 100, 150, None]
    assert any(e.get("message", "").startswith("resumed from step-")
               for e in job.events() if e["type"] == "log")
    assert "train job" in job.log_path.read_text()  # the process's output, where it always is


def test_a_worker_killed_mid_job_reads_interrupted_and_resumes_from_its_checkpoint(
        on_ray, folders, cli, tiny_models, tmp_path):
    cli("jobs", "submit", "train", _train_config(tiny_models, tmp_path, steps=400))
    job = _only_job(on_ray)
    _wait(job, lambda v: any(e["type"] == "checkpoint" for e in job.events()))
    os.kill(job.status()["pid"], signal.SIGKILL)  # the job's process on the (only) node
    view = _wait(job, lambda v: v["state"] != "running")
    assert view["state"] == "interrupted" and "resume it" in view["error"]
    saved = [e["step"] for e in job.events() if e["type"] == "checkpoint"][-1]
    cli("jobs", "resume", job.id)  # from the bucket's last checkpoint, with the folder there
    _wait(job, lambda v: any(e.get("message", "").startswith(f"resumed from step-{saved:06d}")
                             for e in job.events() if e["type"] == "log"))
    cli("jobs", "cancel", job.id)


def test_a_caption_job_on_ray_killed_mid_way_resumes_with_nothing_lost_or_doubled(
        on_ray, folders, cli, tiny_caption, tmp_path):
    """With the folder in the bucket, the worker captions a copy of its own: each caption
    comes back here through the bucket, into this dataset's journal entry for the batch."""
    cli("dataset", "ingest", forty_captioned(tmp_path), "--name", "many")
    cli("jobs", "submit", "caption", "many", "--mode", "append", "--model",
        tiny_caption["caption_model"], "--mmproj", tiny_caption["caption_mmproj"],
        "--max-tokens", "48")
    job = _only_job(on_ray)
    _wait(job, lambda v: sum(e["type"] == "progress" for e in job.events()) >= 3)
    os.kill(job.status()["pid"], signal.SIGKILL)  # the job's process on the (only) node
    assert _wait(job, lambda v: v["state"] != "running")["state"] == "interrupted"
    ds = Dataset.open("many", on_ray)
    assert 0 < len(ds.journal.last()[1]["changes"]) < 40, "killed too late to test a resume"
    assert ("url" in job.view()["handle"]) == (folders == "bucket")

    cli("jobs", "resume", job.id)
    view = _wait(job, lambda v: v["state"] not in ("queued", "running"))
    assert view["state"] == "succeeded" and view["executor"] == "ray", job.log_path.read_text()
    assert_each_appended_once(ds)
    assert ds.index.get("img00.jpg")["caption_model"] == view["model"]  # the source came too


def test_a_job_asking_for_more_gpus_than_the_cluster_has_waits_saying_why(on_ray, tiny_models):
    cfg = config(tiny_models, train={"max_steps": 4})
    job = submit("train", {"config": cfg.to_dict(), "gpus": 4}, on_ray)
    view = _wait(job, lambda v: v.get("reason"))
    assert view["state"] == "queued" and view["phase"] == "waiting for the Ray cluster"
    assert "asks for 4 GPUs" in view["reason"] and "has 2" in view["reason"]
    time.sleep(2)
    assert job.view()["state"] == "queued" and job.view()["handle"]["submission_id"] is None
    assert cancel(job)["state"] == "cancelled"


def test_a_job_waits_in_lora_labs_queue_until_the_cluster_has_its_gpus(on_ray, tiny_models):
    """Ray Jobs is not a queue: a job needing GPUs another job holds is not submitted (Ray would
    fail it after 15 minutes) but waits here, saying why, and goes once they are free."""
    first = submit("train", {"config": config(tiny_models, train={"max_steps": 100_000}).to_dict(),
                             "gpus": 1}, on_ray)
    _wait(first, lambda v: v["state"] == "running")
    second = submit("train", {"config": config(tiny_models, train={"max_steps": 4}).to_dict(),
                              "gpus": 2}, on_ray)
    view = _wait(second, lambda v: v.get("reason"))
    assert view["reason"] == "waiting for 2 free GPUs on the Ray cluster (1 free)"
    assert view["state"] == "queued" and view["handle"]["submission_id"] is None
    assert cancel(first)["state"] == "cancelled"
    view = _wait(second, lambda v: v["state"] != "queued")
    assert view["handle"]["submission_id"] == second.id and not view.get("reason")


def test_an_unreachable_head_refuses_the_job_before_it_exists(ws, cli, tiny_models, tmp_path,
                                                             monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("LORA_LAB_RAY_ADDRESS", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("LORA_LAB_EXECUTOR", "ray")
    line = cli.fails("jobs", "submit", "train", _train_config(tiny_models, tmp_path))
    assert f"127.0.0.1:{port}" in line and "unreachable" in line
    assert list_jobs(ws) == []


async def test_rest_runs_a_job_on_ray_and_its_stream_follows_it_to_the_end(
        on_ray, folders, api, jp_ws_fetch, tiny_models):  # noqa: F811
    code, accepted = await api("jobs", method="POST", body={
        "kind": "train", "params": {"config": train_config(on_ray, tiny_models, 20)},
        "executor": "ray"})
    assert code == 202 and accepted["job"]["executor"] == "ray"
    messages = await read_stream(jp_ws_fetch, accepted["id"],
                                 until=lambda ms: ms[-1]["type"] == "end")
    assert messages[-1]["state"] == "succeeded"
    assert [m["step"] for m in messages if m["type"] == "progress"][-1] == 20
    assert any(m["type"] == "log_line" for m in messages)  # the log, read where the job wrote it
    code, view = await api("jobs", accepted["id"])
    assert view["executor"] == "ray" and view["handle"]["submission_id"] == accepted["id"]
    assert ("url" in view["handle"]) == (folders == "bucket")
    assert not view["loras"][-1].get("missing")  # the LoRA file is here, wherever it was written


async def test_rest_captions_on_ray_and_its_stream_follows_it_to_the_end(
        on_ray, folders, api, jp_ws_fetch, cli, tiny_caption):  # noqa: F811
    cli("dataset", "ingest", tiny_caption["samples"], "--name", "pics")
    for key in ("caption_model", "caption_mmproj"):  # a request names model files inside the workspace
        shutil.copy(tiny_caption[key], on_ray.models / tiny_caption[key].name)
    code, accepted = await api("jobs", method="POST", body={"kind": "caption", "executor": "ray", "params": {
        "dataset": "pics", "model": f"models/{tiny_caption['caption_model'].name}",
        "mmproj": f"models/{tiny_caption['caption_mmproj'].name}", "max_tokens": 16}})
    assert code == 202, accepted
    messages = await read_stream(jp_ws_fetch, accepted["id"], until=lambda ms: ms[-1]["type"] == "end")
    assert messages[-1]["state"] == "succeeded", messages[-6:]
    done = next(m for m in messages if m["type"] == "done")
    ds = Dataset.open("pics", on_ray)
    assert done["captioned"] > 0 and done["captioned"] + done["already_done"] == len(ds)
    assert all(ds.caption(f) for f in ds.select(None))  # here, whichever node captioned them
    code, view = await api("jobs", accepted["id"])
    assert ("url" in view["handle"]) == (folders == "bucket")


def test_the_launcher_trains_on_ray_and_its_monitor_follows(on_ray, folders, tiny_models):
    launcher = launcher_on(on_ray, tiny_models, **{"dataset.trigger": "sks", "train.max_steps": 20})
    launcher.run_on.value = "ray"
    launcher.gpus.value = 1
    assert launcher.check(), launcher.problems
    launcher.train_button.click()
    assert launcher.job is not None, launcher.notice.text
    view = _wait(launcher.job, lambda v: v["state"] not in ("queued", "running"))
    assert view["state"] == "succeeded" and view["executor"] == "ray"
    monitor = launcher.monitor
    monitor.refresh()
    assert "on the Ray cluster" in monitor.state.value and "succeeded" in monitor.state.value
    launcher.close()
