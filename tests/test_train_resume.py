"""Killed, interrupted or resumed, a run ends with the weights of a run never interrupted."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import config

from lora_lab.jobdir import JobRecord

LORA_LAB = str(Path(sys.executable).parent / "lora-lab")
STEPS = 30


def _run(ws, *argv, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run([LORA_LAB, "--workspace", str(ws.root), *map(str, argv)],
                          capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def _start(ws, *argv) -> subprocess.Popen:
    return subprocess.Popen([LORA_LAB, "--workspace", str(ws.root), *map(str, argv), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(ws, proc, kind: str, step: int) -> JobRecord:
    """Wait until the (only) running job has logged a ``kind`` event at ``step`` or later."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        for path in ws.jobs.glob("*/events.jsonl"):
            for line in path.read_text().splitlines()[:-1]:  # the last line may be torn
                event = json.loads(line)
                if event["type"] == kind and event["step"] >= step:
                    return JobRecord(path.parent)
        time.sleep(0.02)
    raise AssertionError(f"no {kind} event at step {step}")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_models) -> Path:
    """The final LoRA file of an uninterrupted run (in a subprocess, like the runs it is
    compared with), its intermediate saves beside it."""
    root = tmp_path_factory.mktemp("reference")
    from lora_lab import Workspace

    ws = Workspace(root / "ws")
    cfg = _config(tiny_models).write(root / "run.toml")
    return Path(json.loads(_run(ws, "train", cfg, "--json").stdout)["output"])


@pytest.fixture(scope="module")
def reference(reference_run):
    return load_file(reference_run)


def _config(tiny_models):
    # dropout and a warm-up schedule: the global RNG and the LR scheduler must resume exactly too
    return config(tiny_models, train={"max_steps": STEPS, "scheduler": "cosine", "warmup_steps": 5,
                                      "batch_size": 2},
                  network={"rank": 4, "dropout": 0.1},
                  dataset={"flip": True, "shuffle_tags": True, "caption_dropout": 0.2},
                  save={"every_n_steps": 5, "name": "resumed"})


def _same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_kill_9_after_a_checkpoint_then_resume_gives_the_same_lora(ws, tiny_models, tmp_path,
                                                                     reference, reference_run):
    cfg = _config(tiny_models).write(tmp_path / "run.toml")
    proc = _start(ws, "train", cfg)
    job = _wait_for(ws, proc, "checkpoint", 10)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert job.status()["state"] == "running"  # nobody said otherwise: issue 5 reads the pid
    progress = [e["step"] for e in job.events() if e["type"] == "progress"]
    assert max(progress) < STEPS, "killed too late to test a resume"
    out = json.loads(_run(ws, "train", "--resume", job.id, "--json").stdout)
    assert out["job"] == job.id and out["steps"] == STEPS
    assert any(e.get("message", "").startswith("resumed from step-0000")
               for e in job.events() if e["type"] == "log")
    _same_weights(load_file(out["output"]), reference)
    # the intermediate saves too, those of the run killed and those of the resumed one alike
    for step in range(5, STEPS, 5):
        name = f"resumed-{step:06d}.safetensors"
        _same_weights(load_file(ws.loras / name), load_file(reference_run.parent / name))
    assert [f["step"] for f in job.view()["loras"]] == [5, 10, 15, 20, 25, None]


def test_ctrl_c_saves_a_checkpoint_and_exits_then_resume_finishes(ws, tiny_models, tmp_path,
                                                                  reference):
    cfg = _config(tiny_models).write(tmp_path / "run.toml")
    proc = _start(ws, "train", cfg)
    job = _wait_for(ws, proc, "progress", 7)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    status = job.status()
    assert status["state"] == "interrupted" and "resume to continue" in status["error"]
    last = [e for e in job.events() if e["type"] == "checkpoint"][-1]
    assert last["step"] == max(e["step"] for e in job.events() if e["type"] == "progress")
    assert last["step"] % 5 != 0 or last["step"] < STEPS
    out = json.loads(_run(ws, "train", "--resume", job.id, "--json").stdout)
    _same_weights(load_file(out["output"]), reference)
    assert "already succeeded" in _run(ws, "train", "--resume", job.id, check=False).stderr


def test_a_stop_at_a_save_step_still_writes_that_steps_lora(ws, tiny_models, reference_run):
    """Ctrl-C read at step 10, a step that saves: the step's LoRA is written before the
    checkpoint the resume starts after, so no intermediate save goes missing."""
    from lora_lab.training.job import train

    def ctrl_c_during_step_10(event: dict) -> None:
        if event["type"] == "progress" and event["step"] == 9:
            os.kill(os.getpid(), signal.SIGINT)  # read by the loop at the end of step 10

    job = JobRecord.create("train", {"config": _config(tiny_models).to_dict(), "gpus": 1}, ws)
    with pytest.raises(KeyboardInterrupt, match="interrupted at step 10"):
        train(_config(tiny_models), job, workspace=ws, on_event=ctrl_c_during_step_10)
    assert [f["step"] for f in job.view()["loras"]] == [5, 10]
    train(_config(tiny_models), job, workspace=ws, resume=True)
    assert [f["step"] for f in job.view()["loras"]] == [5, 10, 15, 20, 25, None]
    name = "resumed-000010.safetensors"
    _same_weights(load_file(ws.loras / name), load_file(reference_run.parent / name))


def test_two_data_parallel_processes_on_cpu(ws, tiny_models, tmp_path):
    cfg = config(tiny_models, train={"max_steps": 3, "batch_size": 2, "grad_accum": 2}).write(
        tmp_path / "run.toml")
    out = json.loads(_run(ws, "train", cfg, "--gpus", "2", "--json").stdout)
    job = JobRecord(ws.jobs / out["job"])
    assert job.status()["state"] == "succeeded" and out["steps"] == 3
    # one record from rank 0: each step reported once, one done event
    assert [e["step"] for e in job.events() if e["type"] == "progress"] == [1, 2, 3]
    assert [e["type"] for e in job.events()].count("done") == 1
    assert load_file(out["output"])


@pytest.mark.parametrize("on_gpu, same", [(False, False), (True, True)])
def test_threads_are_a_cpu_runs_setting_only(tiny_models, on_gpu, same):
    """A CPU run's sums change with its thread count, so its checkpoint resumes only with the
    same count; a GPU run's resume on a node with other cores (a Ray cluster's) too."""
    from types import SimpleNamespace

    from lora_lab.training.trainer_checkpoints import TrainerCheckpoints

    run = SimpleNamespace(cfg=config(tiny_models), acc=SimpleNamespace(num_processes=1), on_gpu=on_gpu)
    before = torch.get_num_threads()
    try:
        prints = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            prints.append(TrainerCheckpoints._fingerprint(run))
    finally:
        torch.set_num_threads(before)
    assert (prints[0] == prints[1]) == same
