"""One job road for every surface: data-parallel runs as jobs (REST, CLI, panel), foreground runs
that wait for their GPU slot, one resume path, absolute paths in specs, LoRA names that never
replace another run's, job ids in creation order."""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from server_api import jp_server_config, workspace_models  # noqa: F401 (fixture)
from test_jobs import ended, long_run, training, wait_until
from test_server_jobs import api, train_config, wait_for_state  # noqa: F401 (fixture)
from test_train import config

from lora_lab.datasets import ingest
from lora_lab.errors import Conflict, LoraLabError
from lora_lab.jobdir import JobRecord, list_jobs, open_job
from lora_lab.jobs import cancel, resume, submit
from lora_lab.training.config import TrainConfig
from lora_lab.training.job import train
from lora_lab.training.lora_file import read_lora

LORA_LAB = str(Path(sys.executable).parent / "lora-lab")


async def test_a_data_parallel_job_over_rest_runs_two_processes(api, ws, tiny_models):
    code, accepted = await api("jobs", method="POST", body={"kind": "train", "params": {
        "config": train_config(ws, tiny_models, 3, batch_size=2), "gpus": 2}})
    assert code == 202, accepted
    view = await wait_for_state(api, accepted["id"], ("succeeded", "failed"), timeout=300)
    job = open_job(accepted["id"], ws)
    assert view["state"] == "succeeded", job.log_path.read_text()
    assert job.spec()["params"]["gpus"] == 2
    # rank 0 reports each step once, for both ranks
    assert [e["step"] for e in job.events() if e["type"] == "progress"] == [1, 2, 3]
    assert any("on 2 processes" in e["message"] for e in job.events() if e["type"] == "log")
    assert read_lora(view["output"])[0]


async def test_gpus_outside_the_devices_are_refused_and_leave_no_job(api, ws, tiny_models):
    for gpus, words in ((0, "whole number >= 1"), (os.cpu_count() + 1, "this machine has"),
                        ("2", "whole number")):
        code, err = await api("jobs", method="POST", body={"kind": "train", "params": {
            "config": train_config(ws, tiny_models, 3), "gpus": gpus}})
        assert code == 400 and words in err["detail"], (gpus, err)
    assert not ws.jobs.exists() or list_jobs(ws) == []


def test_gpus_0_on_the_command_line_is_refused(cli, ws, tiny_models, tmp_path):
    path = config(tiny_models).write(tmp_path / "run.toml")
    assert "gpus must be a whole number >= 1, not 0" in cli.fails("train", path, "--gpus", "0")
    assert "this machine has" in cli.fails("jobs", "submit", "train", path, "--gpus", "999")
    assert list_jobs(ws) == []


def test_a_foreground_run_waits_for_the_gpu_slot_of_a_background_job(ws, tiny_models, tmp_path):
    busy = submit("train", long_run(tiny_models), ws, slots=1)
    training(busy)
    path = config(tiny_models, train={"max_steps": 2}, save={"name": "fg"}).write(tmp_path / "fg.toml")
    fg = subprocess.Popen([LORA_LAB, "--workspace", str(ws.root), "train", str(path), "--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "LORA_LAB_GPU_SLOTS": "1"})
    waiting = wait_until(busy, lambda v: any(
        j.status().get("phase") == "waiting for a free slot" for j in list_jobs(ws) if j.id != busy.id))
    assert waiting["state"] == "running"  # the background job still has the GPU
    time.sleep(2)
    assert fg.poll() is None
    cancel(busy, grace_s=60)
    out, err = fg.communicate(timeout=300)
    assert fg.returncode == 0, err
    result = json.loads(out)
    first_step = next(e["time"] for e in open_job(result["job"], ws).events() if e["type"] == "progress")
    assert first_step >= busy.events()[-1]["time"]  # it trained only once the slot was free


def test_train_resume_and_jobs_resume_share_one_path(cli, ws, tiny_models, tmp_path):
    job = submit("train", long_run(tiny_models, every_n_steps=2), ws)
    wait_until(job, lambda v: any(e["type"] == "checkpoint" for e in job.events()) or ended(v))
    cancel(job, grace_s=60)
    assert (job.path / "cancel-requested").exists()
    assert "keeps its own config" in cli.fails("train", "--resume", job.id, "--set", "train.lr=1")
    # the foreground resume clears the cancel marker and records "resumed", as jobs resume does;
    # the job's own config runs (a 100,000-step run: stopped once it steps again)
    seen = len(job.events())
    proc = subprocess.Popen([LORA_LAB, "--workspace", str(ws.root), "train", "--resume", job.id],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_until(job, lambda v: any(e["type"] == "progress" for e in job.events(seen))
               or proc.poll() is not None)
    assert proc.poll() is None, proc.stderr.read()
    assert not (job.path / "cancel-requested").exists()
    assert "resumed" in [e["type"] for e in job.events()]
    with pytest.raises(Conflict, match="still running"):
        resume(job)  # a resume of a running job
    assert "still running" in cli.fails("train", "--resume", job.id)
    cancel(job, grace_s=60)
    proc.wait(timeout=60)
    assert [e["type"] for e in job.events()].count("resumed") == 1


def test_relative_paths_in_a_submitted_job_are_made_absolute(cli, ws, tiny_models, tmp_path,
                                                              monkeypatch):
    monkeypatch.chdir(tiny_models["sd15"].parent)
    cfg = config(tiny_models, save={"name": "rel"}).to_dict()
    cfg["model"]["base"] = tiny_models["sd15"].name  # relative to this folder, not the job's
    cfg["dataset"]["source"] = os.path.relpath(tiny_models["samples"])
    cfg["save"]["output_dir"] = "out"
    job = submit("train", {"config": cfg}, ws)
    spec = job.spec()["params"]["config"]
    assert spec["model"]["base"] == str(tiny_models["sd15"])
    assert spec["dataset"]["source"] == str(tiny_models["samples"])
    assert spec["save"]["output_dir"] == str(tiny_models["sd15"].parent / "out")
    view = wait_until(job, ended, timeout=300)
    assert view["state"] == "succeeded", job.log_path.read_text()
    assert Path(view["output"]) == tiny_models["sd15"].parent / "out" / "rel.safetensors"
    cfg["model"]["base"] = "./no-such-model"
    with pytest.raises(LoraLabError, match="no-such-model"):
        submit("train", {"config": cfg}, ws)


def test_a_lora_never_replaces_another_runs(cli, ws, tiny_models, tmp_path):
    ingest(tiny_models["samples"], "cats", workspace=ws)
    path = config(tiny_models, dataset={"source": "cats"}, save={"name": "same"}).write(
        tmp_path / "run.toml")
    first = json.loads(cli("train", path, "--json")[1])
    assert Path(first["output"]).name == "same.safetensors"
    jobs = [job.id for job in list_jobs(ws)]
    # a second run of that name is refused before it exists (the name is taken) ...
    refused = cli.fails("train", path)
    assert f"'same' is taken: {first['output']} is the LoRA of job {first['job']}" in refused
    assert [job.id for job in list_jobs(ws)] == jobs
    # ... and one past that check (its name taken while it ran) ends under the next free name
    cfg = TrainConfig.load(path)
    second = train(cfg, JobRecord.create("train", {"config": cfg.to_dict(), "gpus": 1}, ws),
                   workspace=ws)
    assert second.output.name == "same-2.safetensors"
    assert read_lora(first["output"])[1]["ss_session_id"] == first["job"]  # untouched
    warning = [e["message"] for e in list_jobs(ws)[0].events() if e["type"] == "log"
               and e.get("level") == "warning"]
    assert any("another run's LoRA" in m for m in warning)
    unnamed = json.loads(cli("train", path, "--set", "save.name=", "--json")[1])
    assert Path(unnamed["output"]).name == f"cats-{unnamed['job'][:15].replace('-', '_')}.safetensors"


def test_job_ids_sort_in_creation_order_within_one_second(ws):
    made = [JobRecord.create("caption", {"n": i}, ws).id for i in range(30)]
    assert made == sorted(made) and len(set(made)) == 30
    assert [j.id for j in list_jobs(ws)] == made[::-1]
    old = ws.jobs / "20261123-101500-train-abcdef"  # an id of an older version still opens
    old.mkdir()
    (old / "spec.json").write_text('{"kind": "train", "params": {}}')
    (old / "status.json").write_text('{"state": "failed"}')
    assert open_job(old.name, ws).id == old.name


def test_the_launcher_panel_asks_for_gpus_with_the_same_check(ws, tiny_models):
    from test_widgets_jobs import tiny_form

    from lora_lab.widgets import TrainingLauncher

    launcher = tiny_form(TrainingLauncher(str(tiny_models["samples"]), str(tiny_models["sd15"]),
                                          workspace=ws, autostart=False))
    for gpus, words in ((0, "whole number >= 1"), (os.cpu_count() + 1, "this machine has")):
        launcher.gpus.value = gpus
        launcher.train_button.click()
        assert launcher.notice.kind == "error" and words in launcher.notice.text
    assert launcher.job is None and list_jobs(ws) == []
    for dotted, value in {"train.max_steps": 0, "train.epochs": 2, "dataset.repeats": 3,
                          "train.batch_size": 2}.items():
        launcher.fields[dotted].value = value
    launcher.gpus.value = 1
    one = launcher.steps
    launcher.gpus.value = 2  # two ranks take two batches a step: the count halves, as the trainer's
    assert (one, launcher.steps) == (24, 12) and "over 2 processes" in launcher.plan.value


def test_on_a_gpu_machine_each_slot_is_its_own_gpu(ws, tmp_path, monkeypatch):
    from lora_lab import devices
    from lora_lab.jobs.slots import holding_slots

    driver = tmp_path / "nvidia-gpus"
    for bus in ("0000:01:00.0", "0000:02:00.0"):
        (driver / bus).mkdir(parents=True)
    monkeypatch.setattr(devices, "NVIDIA_GPUS", driver)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert devices.visible_devices() == (2, "GPU")
    with pytest.raises(LoraLabError, match="this machine has 2 GPUs"):
        devices.check_gpus(3)
    job = JobRecord.create("caption", {}, ws)
    with holding_slots(job, ws, 2, 1):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    (ws.jobs / ".slots").mkdir(exist_ok=True)
    with open(ws.jobs / ".slots" / "slot-0.lock", "w") as other:  # another job's process holds GPU 0
        fcntl.flock(other, fcntl.LOCK_EX)
        with holding_slots(job, ws, 2, 1):
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # the pod's own choice is kept, and split
        with holding_slots(job, ws, 2, 1):
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"
    with holding_slots(job, ws, 2, 2):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"
    with holding_slots(job, ws, 1, 2):  # more GPUs than slots: it runs alone and sees them all
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"
