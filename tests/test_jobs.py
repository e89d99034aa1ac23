"""Background jobs through `lora-lab jobs`: detached processes, a queue, cancel, interrupted
detection and resume, on the tiny models."""
from __future__ import annotations

import json
import os
import shutil
import signal
import time

import pytest
import torch
from conftest import tree_digest
from safetensors.torch import save_file
from test_train import config

from lora_lab.datasets import Dataset, ingest
from lora_lab.errors import Conflict, LoraLabError, NotFound
from lora_lab.jobdir import JobRecord, list_jobs, open_job
from lora_lab.jobdir.record import STALE_S, pid_alive
from lora_lab.jobs import cancel, resume, submit


def wait_until(job: JobRecord, done, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = job.view()
        if done(view):
            return view
        time.sleep(0.1)
    raise AssertionError(f"job {job.id} still {job.view()} after {timeout} s; log:\n"
                         f"{job.log_path.read_text() if job.log_path.exists() else ''}")


def ended(view: dict) -> bool:
    return view["state"] not in ("queued", "running")


def training(job: JobRecord, after: int = 0) -> dict:
    """Once the job reports a step (after its event number ``after``), or has ended."""
    return wait_until(job, lambda v: any(e["type"] == "progress" for e in job.events(after))
                      or ended(v))


def long_run(tiny_models, **save) -> dict:
    """A train job's params that run for minutes unless stopped."""
    return {"config": config(tiny_models, train={"max_steps": 100_000}, save=save).to_dict()}


def test_submit_from_the_cli_runs_detached_and_logs(cli, ws, tiny_models, tmp_path):
    path = config(tiny_models, train={"max_steps": 3}).write(tmp_path / "run.toml")
    submitted = json.loads(cli("jobs", "submit", "train", path, "--set", "save.name=bg", "--json")[1])
    job = open_job(submitted["id"], ws)
    assert submitted["state"] == "queued" and job.status()["pid"] != os.getpid()
    cli("jobs", "logs", job.id, "-f")  # returns once the job has ended
    view = job.view()
    assert view["state"] == "succeeded", job.log_path.read_text()
    assert (ws.loras / "bg.safetensors").is_file()
    log = job.log_path.read_text()
    assert f"train job {job.id}" in log and "phase phase=training" in log
    listed = json.loads(cli("jobs", "list", "--json")[1])
    assert [v["id"] for v in listed] == [job.id] and listed[0]["kind"] == "train"
    shown = json.loads(cli("jobs", "show", job.id, "--json")[1])
    assert shown["events"][-1]["type"] == "done"


def test_one_slot_runs_one_job_at_a_time_in_order(ws, tiny_models):
    first = submit("train", long_run(tiny_models, name="first"), ws, slots=1)
    second = submit("train", {"config": config(tiny_models, save={"name": "second"}).to_dict()},
                    ws, slots=1)
    training(first)
    assert second.view()["state"] == "queued"
    assert second.view()["phase"] == "waiting for a free slot"
    cancel(second)  # a queued job cancels at once
    assert second.view()["state"] == "cancelled" and not second.events()[0].get("forced")
    third = submit("train", {"config": config(tiny_models, save={"name": "third"}).to_dict()},
                   ws, slots=1)
    time.sleep(1)
    assert third.view()["state"] == "queued"
    cancel(first, grace_s=30)
    view = wait_until(third, ended)
    assert view["state"] == "succeeded", third.log_path.read_text()
    started = next(e["time"] for e in third.events() if e["type"] == "phase")
    assert started >= first.events()[-1]["time"]  # it started after the first one stopped


def test_a_job_started_where_ctrl_c_is_ignored_still_hears_its_cancel(ws, tiny_models):
    first = submit("train", long_run(tiny_models, name="first"), ws, slots=1)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under `nohup jupyter lab &`
    try:
        second = submit("train", {"config": config(tiny_models, save={"name": "second"}).to_dict()},
                        ws, slots=1)
    finally:
        signal.signal(signal.SIGINT, previous)
    training(first)
    assert second.view()["phase"] == "waiting for a free slot"
    cancel(second)  # waiting for its slot, it has no Ctrl-C handler of its own
    assert second.view()["state"] == "cancelled" and not second.events()[0].get("forced")
    cancel(first, grace_s=30)


def test_cancel_saves_a_checkpoint_and_resume_finishes(ws, tiny_models):
    job = submit("train", {"config": config(
        tiny_models, train={"max_steps": 400}, save={"name": "resumed"}).to_dict()}, ws)
    training(job)
    view = cancel(job, grace_s=60)
    assert view["state"] == "cancelled"
    assert [e["type"] for e in job.events()][-2:] == ["checkpoint", "cancelled"]
    with pytest.raises(Conflict, match="already cancelled"):
        cancel(job)
    resume(job)
    view = wait_until(job, ended, timeout=300)
    assert view["state"] == "succeeded" and view["steps"] == 400, job.log_path.read_text()
    with pytest.raises(Conflict, match="already succeeded"):
        resume(job)


def test_a_killed_job_reads_interrupted_and_resumes(ws, tiny_models):
    job = submit("train", long_run(tiny_models, every_n_steps=20), ws)
    wait_until(job, lambda v: any(e["type"] == "checkpoint" for e in job.events()) or ended(v))
    os.killpg(job.status()["pgid"], signal.SIGKILL)
    view = wait_until(job, lambda v: v["state"] != "running", timeout=10)
    assert view["state"] == "interrupted" and "resume it to continue" in view["error"]
    assert job.status()["state"] == "running"  # status.json still says so: the view tells the truth
    seen = len(job.events())
    resume(job)
    training(job, after=seen)
    assert job.view()["state"] == "running"
    with pytest.raises(Conflict, match="still running"):
        resume(job)
    cancel(job, grace_s=60)
    resumed_at = max(e["step"] for e in job.events() if e["type"] == "checkpoint")
    assert resumed_at > 20


def test_a_stale_heartbeat_reads_interrupted(ws):
    job = JobRecord.create("train", {"config": {}}, ws)
    job.set_status("running")  # this process: alive
    assert job.view()["state"] == "running"
    status = json.loads((job.path / "status.json").read_text())
    status["heartbeat"] -= STALE_S + 1  # alive but silent: hung
    (job.path / "status.json").write_text(json.dumps(status))
    assert job.view()["state"] == "interrupted"


def test_caption_job_in_the_background(cli, ws, tiny_caption):
    cli("dataset", "ingest", tiny_caption["samples"], "--name", "shapes")
    ds = Dataset.open("shapes", ws)
    uncaptioned = [r["file"] for r in ds.index.all() if ds.caption(r["file"]) is None]
    out = json.loads(cli("jobs", "submit", "caption", "shapes", "--model", tiny_caption["caption_model"],
                         "--mmproj", tiny_caption["caption_mmproj"], "--max-tokens", "8",
                         "--trigger", "sks", "--json")[1])
    job = open_job(out["id"], ws)
    assert wait_until(job, ended)["state"] == "succeeded", job.log_path.read_text()
    assert all(ds.caption(f).startswith("sks") for f in uncaptioned)
    assert job.events()[-1]["captioned"] == len(uncaptioned)


def test_bad_submissions_are_refused_before_anything_starts(ws, tiny_models, samples):
    Dataset.create("empty", ws)
    cases = [
        ("resize", {}, LoraLabError, "unknown job kind 'resize'; use one of caption, train"),
        ("caption", {"dataset": "nope"}, NotFound, "dataset 'nope' does not exist"),
        ("caption", {"dataset": "empty", "mode": "redo"}, LoraLabError, "unknown caption mode"),
        ("caption", {"dataset": "empty", "max_tokens": "8"}, LoraLabError, "max_tokens: '8' is not a whole number"),
        ("caption", {"dataset": "empty", "temperature": 1}, LoraLabError, "unknown caption parameter"),
        ("caption", ["empty"], LoraLabError, "params must be an object"),
        ("train", {"config": {"train": {"lr": -1}}}, LoraLabError, "train.lr: -1 is out of range"),
        ("train", {"cfg": {}}, LoraLabError, 'params are {"config"'),
    ]
    for kind, params, error, message in cases:
        with pytest.raises(error, match=message.replace("(", r"\(").replace("{", r"\{")):
            submit(kind, params, ws)
    assert list_jobs(ws) == []
    for bad in ("../datasets", "/etc", "20261123-101500-train-zzzzzz"):
        with pytest.raises(LoraLabError, match="is not a job id"):
            open_job(bad, ws)
    with pytest.raises(NotFound, match="no job 20261123-101500-train-abcdef"):
        open_job("20261123-101500-train-abcdef", ws)


def test_runs_bound_to_fail_are_refused_by_the_cli_and_leave_no_job_record(
        cli, ws, tiny_models, tmp_path, monkeypatch):
    ingest(tiny_models["samples"], "shapes", workspace=ws)  # 3 of its 8 images lack a caption
    shutil.copytree(tiny_models["sd15"], ws.models / "sd15")
    done = JobRecord.create("train", {}, ws)  # an earlier run, whose LoRA holds a name
    done.set_status("succeeded", pid=None)
    save_file({"x": torch.zeros(1)}, ws.loras / "mine.safetensors",
              metadata={"ss_session_id": done.id})
    jobs = tree_digest(ws.jobs)

    def fails(*argv: str) -> str:
        line = cli.fails(*argv)
        assert tree_digest(ws.jobs) == jobs  # nothing written, not even a failed record
        return line

    uncaptioned = config(tiny_models, dataset={"source": "shapes", "trigger": ""}).write(
        tmp_path / "uncaptioned.toml")
    for verb in (("train",), ("jobs", "submit", "train")):
        line = fails(*verb, uncaptioned)
        assert "dataset.trigger: 3 of 8 images have no caption (e.g. purple_square.jpg" in line
        assert "`lora-lab caption shapes`" in line and "or set dataset.trigger" in line
        line = fails(*verb, uncaptioned, "--set", "dataset.trigger=sks", "--set",
                     f"model.base={ws.models / 'sd15x'}")
        assert f"model.base: {ws.models / 'sd15x'} does not exist; models in {ws.models}: " \
               "sd15 (sd15)" in line
        line = fails(*verb, uncaptioned, "--set", "dataset.trigger=sks", "--set", "save.name=mine")
        assert f"save.name: 'mine' is taken: {ws.loras / 'mine.safetensors'} is the LoRA of job " \
               f"{done.id}" in line and f"`lora-lab jobs rm {done.id} --lora remove`" in line
    monkeypatch.delenv("LORA_LAB_CAPTION_MODEL", raising=False)
    for verb in (("caption",), ("jobs", "submit", "caption")):
        line = fails(*verb, "shapes")
        assert "caption parameter model: caption model file not found: " \
               f"{ws.models / 'caption'}" in line and "that path is the default" in line
        assert "$LORA_LAB_CAPTION_MODEL" in line
        line = fails(*verb, "shapes", "--model", tmp_path / "typo.gguf")
        assert f"not found: {tmp_path / 'typo.gguf'}" in line and "that path is as given" in line
    monkeypatch.setenv("LORA_LAB_CAPTION_MODEL", str(tmp_path / "env.gguf"))
    assert "that path is from $LORA_LAB_CAPTION_MODEL" in fails("caption", "shapes")
    Dataset.create("empty", ws)
    assert "dataset 'empty' has no images to caption" in fails("caption", "empty")


def pipeline_notebook(path, body: str):
    """A notebook with a papermill parameters cell and one cell of ``body``."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    params = nbformat.v4.new_code_cell("job_dir = None\nresume = False")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)
    return path


def test_a_job_runs_through_a_notebook(cli, ws, tiny_models, tmp_path):
    import nbformat

    nb = pipeline_notebook(tmp_path / "train.ipynb", "from lora_lab.jobs import run_job\n"
                           "result = run_job(job_dir, resume)\nprint('LoRA at', result.output)")
    path = config(tiny_models, train={"max_steps": 2}, save={"name": "nb"}).write(tmp_path / "run.toml")
    out = json.loads(cli("jobs", "submit", "train", path, "--notebook", nb, "--json")[1])
    job = open_job(out["id"], ws)
    assert wait_until(job, ended)["state"] == "succeeded", job.log_path.read_text()
    wait_until(job, lambda v: not pid_alive(v["pgid"]))  # papermill saves the notebook last
    executed = nbformat.read(job.path / "run.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for o in executed.cells[-1].outputs)
    assert f"LoRA at {ws.loras / 'nb.safetensors'}" in printed

    idle = pipeline_notebook(tmp_path / "idle.ipynb", "print(job_dir)")
    job = submit("train", {"config": config(tiny_models).to_dict()}, ws, notebook=idle)
    view = wait_until(job, ended)
    assert view["state"] == "failed" and "ended without running the job" in view["error"]
    with pytest.raises(LoraLabError, match="not an .ipynb file"):
        submit("train", {"config": config(tiny_models).to_dict()}, ws, notebook=tmp_path / "run.toml")
