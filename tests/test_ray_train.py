"""A data-parallel train job on a Ray cluster runs as Ray Train workers (a real local head, 2
CPUs, 2 logical GPUs; gloo ranks on the CPU): the same LoRA as `accelerate launch` on one box,
cancelled with a checkpoint and resumed to that same LoRA, a lost worker read as interrupted;
with its folder in the bucket too, and with a rank on a "node" that has no job folder."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_bucket_jobs import _objects, in_bucket  # noqa: F401 (fixture)
from test_jobs import wait_until
from test_ray_jobs import WAIT_S, _trained, on_ray  # noqa: F401 (fixture)
from test_train import config
from test_train_resume import _same_weights

from lora_lab.cluster import free_port
from lora_lab.errors import Unavailable
from lora_lab.jobdir import JobRecord
from lora_lab.jobs import cancel, resume, submit
from lora_lab.jobs.bucket_jobs import request_cancel
from lora_lab.training.ray_train import train_on_ray
from lora_lab.widgets.monitor import TrainingMonitor
from lora_lab.workspace import Workspace

LORA_LAB = str(Path(sys.executable).parent / "lora-lab")
STEPS = 48  # long enough that a cancel after step 2 lands before the end, on a loaded box too


def _config(tiny_models):
    # dropout, flips, shuffled tags, a warm-up: every draw the ranks make must match
    return config(tiny_models, train={"max_steps": STEPS, "batch_size": 2, "scheduler": "cosine",
                                      "warmup_steps": 4},
                  network={"rank": 4, "dropout": 0.1},
                  dataset={"flip": True, "shuffle_tags": True, "caption_dropout": 0.2},
                  save={"every_n_steps": 8, "name": "raytrain"})


@pytest.fixture(scope="module")
def launched(tmp_path_factory, tiny_models) -> dict:
    """The LoRA of the same run as 2 ranks under `accelerate launch` on this box."""
    root = tmp_path_factory.mktemp("launched")
    path = _config(tiny_models).write(root / "run.toml")
    done = subprocess.run([LORA_LAB, "--workspace", str(root / "ws"), "train", str(path), "--gpus",
                           "2", "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return load_file(json.loads(done.stdout)["output"])


def _wait(job: JobRecord, until) -> dict:
    return wait_until(job, until, WAIT_S)


def _submit(ws, tiny_models) -> JobRecord:
    return submit("train", {"config": _config(tiny_models).to_dict(), "gpus": 2}, ws,
                  executor="ray")


def test_two_ray_train_workers_end_with_the_lora_of_accelerate_launch(on_ray, tiny_models,  # noqa: F811
                                                                       launched):
    job = _submit(on_ray, tiny_models)
    view = _wait(job, lambda v: v["state"] not in ("queued", "running"))
    assert view["state"] == "succeeded", job.log_path.read_text()[-4000:]
    events = job.events()
    assert any(e.get("message") == "2 Ray Train workers on CPUs (gloo)" for e in events)
    assert any("on 2 processes" in e.get("message", "") for e in events if e["type"] == "log")
    # rank 0 reports each step once, for both ranks; the monitor reads the same record
    assert [e["step"] for e in events if e["type"] == "progress"] == list(range(1, STEPS + 1))
    assert [e["type"] for e in events].count("done") == 1
    _same_weights(load_file(view["output"]), launched)
    assert [f["step"] for f in view["loras"]] == [*range(8, STEPS, 8), None]
    monitor = TrainingMonitor(job, on_ray, autostart=False)
    assert "succeeded" in monitor.state.value and "on the Ray cluster" in monitor.state.value
    assert monitor.bar.value == 1
    monitor.close()


def test_a_running_job_holds_its_gpus_and_the_monitor_follows_it(on_ray, tiny_models):  # noqa: F811
    job = submit("train", {"config": config(tiny_models, train={"max_steps": 100_000}).to_dict(),
                           "gpus": 2}, on_ray, executor="ray")
    running = _wait(job, lambda v: v["state"] == "running" and _trained(job) >= 1)
    assert running["executor"] == "ray" and running["phase"] == "training"
    monitor = TrainingMonitor(job, on_ray, autostart=False)
    assert "running" in monitor.state.value and "on the Ray cluster" in monitor.state.value
    steps = _trained(job)
    _wait(job, lambda v: _trained(job) > steps)  # progress keeps arriving
    monitor.refresh()
    assert 0 < monitor.bar.value < 1 and "/100000" in monitor.stats.value
    # its GPUs count as held while its workers run, though the Ray job's own process asked for none
    other = submit("train", {"config": config(tiny_models).to_dict(), "gpus": 1}, on_ray,
                   executor="ray")
    waiting = _wait(other, lambda v: v.get("reason"))
    assert waiting["reason"] == "waiting for 1 free GPUs on the Ray cluster (0 free)"
    assert cancel(other)["state"] == "cancelled"
    assert cancel(job)["state"] == "cancelled"
    assert [e["step"] for e in job.events() if e["type"] == "checkpoint"] == [_trained(job)]
    monitor.close()


def test_cancelled_with_a_checkpoint_then_resumed_to_the_same_lora(on_ray, tiny_models,  # noqa: F811
                                                                   launched):
    job = _submit(on_ray, tiny_models)
    _wait(job, lambda v: _trained(job) >= 2)
    assert cancel(job)["state"] == "cancelled"
    trained = _trained(job)
    assert [e["step"] for e in job.events() if e["type"] == "checkpoint"][-1] == trained < STEPS
    # recorded once, by rank 0 after the checkpoint; the Ray job's process then ended as stopped
    assert [e for e in job.events() if e["type"] == "cancelled"] == [
        {"time": job.events()[-1]["time"], "type": "cancelled"}]
    log = job.log_path.read_text()
    assert "\nlora-lab: stopped\n" in log and "lora-lab: error" not in log
    resume(job)
    view = _wait(job, lambda v: v["state"] not in ("queued", "running"))
    assert view["state"] == "succeeded", job.log_path.read_text()[-4000:]
    assert view["handle"]["submission_id"] == f"{job.id}-r1"
    assert any(e.get("message") == f"resumed from step-{trained:06d}"
               for e in job.events() if e["type"] == "log")
    _same_weights(load_file(view["output"]), launched)


def test_a_lost_worker_reads_interrupted_and_resumes_to_the_same_lora(on_ray, tiny_models,  # noqa: F811
                                                                       launched):
    job = _submit(on_ray, tiny_models)
    _wait(job, lambda v: any(e["type"] == "checkpoint" for e in job.events()))
    rank0 = job.status()["pid"]  # rank 0, a Ray Train worker, writes the job's status
    assert "RayTrainWorker" in Path(f"/proc/{rank0}/cmdline").read_text()
    os.kill(rank0, signal.SIGKILL)
    view = _wait(job, lambda v: v["state"] not in ("queued", "running"))
    assert view["state"] == "interrupted", job.log_path.read_text()[-4000:]
    assert "a Ray Train worker was lost (rank 0" in view["error"] and "resume it" in view["error"]
    resume(job)
    view = _wait(job, lambda v: v["state"] not in ("queued", "running"))
    assert view["state"] == "succeeded", job.log_path.read_text()[-4000:]
    _same_weights(load_file(view["output"]), launched)


def test_with_its_folder_in_the_bucket_cancelled_and_resumed_to_the_same_lora(  # noqa: F811
        on_ray, in_bucket, tiny_models, launched):
    job = _submit(on_ray, tiny_models)
    assert job.status()["handle"]["url"] == f"{in_bucket.url}/jobs/{job.id}"
    # cancel's word to the worker as the workers start: 48 tiny steps take less time than a
    # cancel takes to land through the bucket, the workers' start longer than cancel() waits
    # before it forces the stop. The ranks read it before their first step: they stop after it.
    _wait(job, lambda v: any(e.get("message") == "2 Ray Train workers on CPUs (gloo)"
                             for e in job.events()))  # the events came here through the bucket
    request_cancel(job.status()["handle"]["url"])
    view = _wait(job, lambda v: v["state"] not in ("queued", "running"))
    assert view["state"] == "cancelled", job.log_path.read_text()[-4000:]
    assert not any(e.get("forced") for e in job.events())
    trained = _trained(job)
    assert [e["step"] for e in job.events() if e["type"] == "checkpoint"] == [trained] == [1]
    # rank 0 wrote every rank's RNG state: the checkpoint is whole in the bucket, and here
    saved = f"checkpoints/step-{trained:06d}"
    assert {f"{saved}/{name}" for name in ("rng-0.pt", "rng-1.pt", "training.pt", "state.json")} <= \
        set(_objects(in_bucket, job.id))
    assert sorted(p.name for p in (job.path / saved).iterdir()) == [
        "rng-0.pt", "rng-1.pt", "state.json", "training.pt"]
    resume(job)
    view = _wait(job, lambda v: v["state"] not in ("queued", "running"))
    assert view["state"] == "succeeded", job.log_path.read_text()[-4000:]
    assert any(e.get("message") == f"resumed from step-{trained:06d}"
               for e in job.events() if e["type"] == "log")
    assert view["output"].startswith(str(on_ray.root))  # pulled where it would have been written here
    _same_weights(load_file(view["output"]), launched)


_RANK = """import json, sys
from pathlib import Path
from lora_lab.jobdir import JobRecord
from lora_lab.training.config import TrainConfig
from lora_lab.training.job import train
from lora_lab.workspace import Workspace
job, ws, config, resume = sys.argv[1:]
train(TrainConfig.from_dict(json.loads(config)), JobRecord(Path(job)), workspace=Workspace(ws),
      resume=resume == "resume")
"""


def test_a_rank_without_the_job_folder_trains_and_resumes_through_rank_0(ws, tiny_models, tmp_path,
                                                                         launched):
    """Rank 1 as on a node of its own (as Ray Train may place it): a workspace of its own for its
    caches, and no job folder. It never writes one, and the run, resumed, is the launched one."""
    cfg = _config(tiny_models)
    job = JobRecord.create("train", {"config": cfg.to_dict(), "gpus": 2}, ws)
    node = tmp_path / "node-2"
    places = [(job.path, ws.root), (Workspace(node).jobs / job.id, node)]

    def run(resume: bool) -> None:
        port = str(free_port())
        ranks = [subprocess.Popen(
            [sys.executable, "-c", _RANK, str(path), str(root), json.dumps(cfg.to_dict()),
             "resume" if resume else "new"],
            env={**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                 "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                 "OMP_NUM_THREADS": "1"}) for rank, (path, root) in enumerate(places)]
        assert [rank.wait(timeout=300) for rank in ranks] == [0, 0]

    run(resume=False)
    assert job.status()["state"] == "succeeded"
    _same_weights(load_file(job.status()["output"]), launched)
    last = sorted((job.path / "checkpoints").iterdir())[-1]
    assert last.name == "step-000040" and {"rng-0.pt", "rng-1.pt"} <= {p.name for p in last.iterdir()}
    run(resume=True)  # from step 40, each rank's RNG state sent by rank 0
    assert any(e.get("message") == "resumed from step-000040" for e in job.events() if e["type"] == "log")
    _same_weights(load_file(job.status()["output"]), launched)
    assert not places[1][0].exists() and (node / "cache" / "latents").is_dir()


def test_without_ray_train_the_run_fails_with_the_line_that_installs_it(ws, tiny_models,
                                                                          monkeypatch):
    monkeypatch.setitem(sys.modules, "ray.train", None)  # as Ray without pandas and pyarrow
    job = JobRecord.create("train", {"config": _config(tiny_models).to_dict(), "gpus": 2}, ws)
    with pytest.raises(Unavailable, match=r"2 GPUs of a Ray cluster needs Ray Train .*: "
                                          r"pip install 'ray\[train\]==\d+\.\d+\.\d+' on every node"):
        train_on_ray(job, 2, resume=False)
