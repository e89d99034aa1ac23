"""Where a run trains (train.device), on this GPU-less box: a run that falls back to the CPU says
so first in its log, in the CLI and in the monitor; "cuda" is refused before the job exists and,
for a job recorded while a GPU was there, again when it starts; the pod presets ask for a GPU.
The GPU side itself cannot run here: its fields are shown from a GPU run's progress event."""
from __future__ import annotations

import json

from test_jobs import ended, wait_until
from test_train import config

from lora_lab.jobdir import JobRecord, open_job
from lora_lab.training.config import TrainConfig
from lora_lab.training.presets import PRESETS
from lora_lab.widgets.monitor import TrainingMonitor, device_html, stats_line

NO_GPU = "no GPU is visible here (no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides them)"


def log_events(job: JobRecord) -> list[dict]:
    return [e for e in job.events() if e["type"] == "log"]


def test_a_run_that_falls_back_to_the_cpu_says_so_first_in_its_log_and_the_monitor(cli, ws, tiny_models,
                                                                                  tmp_path):
    path = config(tiny_models, train={"max_steps": 2}).write(tmp_path / "run.toml")
    job = open_job(json.loads(cli("jobs", "submit", "train", path, "--json")[1])["id"], ws)
    assert wait_until(job, ended)["state"] == "succeeded", job.log_path.read_text()
    first = log_events(job)[0]
    assert first["level"] == "warning" and first["device"] == "cpu" and first["fallback"] is True
    assert first["message"] == (f"training on the CPU, many times slower than a GPU: {NO_GPU}; set "
                                'train.device = "cuda" to refuse to start without a GPU instead')
    logged = [line for line in job.log_path.read_text().splitlines() if " log " in line]
    assert "level=warning message=training on the CPU, many times slower" in logged[0]
    progress = [e for e in job.events() if e["type"] == "progress"]
    assert progress and not any({"memory_mb", "gpu_memory_mb", "gpu_util"} & set(e) for e in progress)
    monitor = TrainingMonitor(job.id, ws, autostart=False)
    assert 'class="lora-lab-cpu-fallback"' in monitor.state.value
    assert "on the CPU: no usable GPU" in monitor.state.value and NO_GPU in monitor.state.value
    assert "training on the CPU" in monitor.log_view.value
    assert "GPU" not in monitor.stats.value and "MB" not in monitor.stats.value
    monitor.close()
    # in the foreground, the CLI prints it between its progress lines
    err = cli("train", path)[2]
    assert f"warning: training on the CPU, many times slower than a GPU: {NO_GPU}" in err


def test_train_device_cpu_trains_on_the_cpu_without_a_warning(cli, ws, tiny_models, tmp_path):
    path = config(tiny_models, train={"max_steps": 2, "device": "cpu"}).write(tmp_path / "run.toml")
    rc, out, err = cli("train", path, "--json")
    assert "warning" not in err
    job = open_job(json.loads(out)["job"], ws)
    first = log_events(job)[0]
    assert (first["level"], first["device"], first["message"]) == (
        "info", "cpu", 'training on the CPU (train.device = "cpu")') and "fallback" not in first
    monitor = TrainingMonitor(job.id, ws, autostart=False)
    assert monitor.state.value.endswith(" · on the CPU") and "fallback" not in monitor.state.value
    monitor.close()


def test_cuda_without_a_gpu_is_refused_before_the_job_exists(cli, ws, tiny_models, tmp_path):
    path = config(tiny_models, train={"device": "cuda"}).write(tmp_path / "run.toml")
    for verb in (("train",), ("jobs", "submit", "train")):
        assert cli.fails(*verb, path) == (
            'lora-lab: error: train.device: "cuda", but this machine shows no GPU (no NVIDIA driver, '
            'or CUDA_VISIBLE_DEVICES hides them); set it to "auto" to train on the CPU, or train on '
            "a GPU box (`lora-lab doctor` says what this one has)")
    assert not ws.jobs.exists() or not any(ws.jobs.iterdir())
    cli("train", path, "--set", "train.device=auto", "--set", "train.max_steps=1")  # the way out


def test_a_job_whose_gpu_went_away_fails_when_it_starts_with_the_reason(cli, ws, tiny_models):
    cfg = config(tiny_models, train={"device": "cuda"})
    # recorded while its GPU was there (the check before a job exists passed then), and its
    # process gone with the pod's restart before it ran: interrupted, to be resumed
    job = JobRecord.create("train", {"config": cfg.to_dict(), "gpus": 1}, ws)
    job.set_status("queued", pid=None)
    assert job.view()["state"] == "interrupted"
    rc, _, err = cli("train", "--resume", job.id, ok=False)
    reason = (f'train.device = "cuda", but {NO_GPU}; `lora-lab doctor` says what this box lacks, '
              'or set train.device = "auto" to train on the CPU')
    assert rc == 1 and err.strip().splitlines()[-1] == f"lora-lab: error: {reason}"
    view = job.view()
    assert view["state"] == "failed" and view["error"] == reason
    assert not [e for e in job.events() if e["type"] in ("log", "progress")]  # refused before any work
    assert not (job.path / "checkpoints").exists() and not list(ws.loras.glob("*.safetensors"))


def test_the_pod_presets_ask_for_a_gpu_and_the_demo_ones_run_anywhere(cli, tmp_path):
    devices = {name: p.overrides["train"]["device"] for name, p in PRESETS.items()}
    assert {name for name, device in devices.items() if device == "auto"} == {"sd15", "sdxl"}
    assert set(devices.values()) == {"auto", "cuda"}
    cli("train", "--init", tmp_path / "flux.toml", "--base", "m", "--dataset", "cats", "--preset",
        "flux-dev-lowvram")
    text = (tmp_path / "flux.toml").read_text()
    assert '# auto: a CUDA GPU when torch can use one, else the CPU (the log says so); cuda: refuse ' \
           'to start without one; cpu: the CPU even with a GPU [auto, cuda, cpu]\ndevice = "cuda"' in text
    assert TrainConfig.load(tmp_path / "flux.toml").train.device == "cuda"


def test_the_monitor_shows_a_gpu_runs_memory_and_utilisation_and_nothing_for_a_cpu_run():
    step = {"step": 5, "total": 10, "epoch": 1, "it_s": 1.5, "eta_s": 3.0, "loss": 0.1, "lr": 1e-4}
    gpu = {**step, "memory_mb": 12034, "gpu_memory_mb": 40123, "gpu_memory_total_mb": 81559,
           "gpu_util": 0}  # as a GPU run's progress event carries them (idle between steps: 0%)
    assert stats_line(gpu, "running").endswith(
        "lr 1.00e-04 · GPU 0% · GPU memory 40,123 / 81,559 MB · peak 12,034 MB")
    assert stats_line({**gpu, "gpu_util": None}, "running").endswith(
        "lr 1.00e-04 · GPU memory 40,123 / 81,559 MB · peak 12,034 MB")  # a MIG slice: memory only
    assert stats_line(step, "running").endswith("lr 1.00e-04")
    assert stats_line({**step, "memory_mb": 0}, "running").endswith("lr 1.00e-04")  # older CPU runs
    assert device_html({"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3"}) == " · on NVIDIA H100 80GB HBM3"
    assert device_html(None) == ""
