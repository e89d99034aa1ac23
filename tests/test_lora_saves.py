"""A run's LoRA files: the intermediate saves (``NAME-000002.safetensors``) beside the final file,
in kohya's format with their step recorded, never written over another run's, and listed with
their sizes wherever a job is shown (`jobs show`, REST, the monitor), a deleted one as missing.
One tiny SD1.5 run (5 steps, a save every 2) is trained for the module."""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from server_api import jp_server_config  # noqa: F401 (fixture)
from test_server_jobs import api  # noqa: F401 (fixture)
from test_train import _images, config

from lora_lab import Workspace
from lora_lab.jobdir import JobRecord
from lora_lab.jobs.summary import format_bytes
from lora_lab.served import API_ENV, WORKSPACE_ENV
from lora_lab.training.base_model import load_base_model
from lora_lab.training.lora_file import kohya_state_dict, read_lora
from lora_lab.training.loras import base_of, free_base, lora_name, lora_path, place_lora, run_files, written_by
from lora_lab.training.trainer import Trainer
from lora_lab.widgets.monitor import TrainingMonitor

STEPS, EVERY = 5, 2
NAME = "cat"


def run_config(tiny_models, **save):
    return config(tiny_models, train={"max_steps": STEPS},
                  save={"name": NAME, "every_n_steps": EVERY, **save})


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_models):
    """The module's run: its workspace, its job, and the LoRA weights it held at each save
    (read from the live adapters the moment each file was written)."""
    ws = Workspace(tmp_path_factory.mktemp("run") / "ws")
    cfg = run_config(tiny_models)
    job = JobRecord.create("train", {"config": cfg.to_dict(), "gpus": 1}, ws)
    held: dict[int | None, dict[str, torch.Tensor]] = {}

    def on_event(event):
        if event["type"] == "lora":
            unet, *tes = [trainer.acc.unwrap_model(m) for m in trainer.models]
            live = kohya_state_dict(unet, tes or [None])  # views of the parameters on a CPU
            held[event["step"]] = {k: v.clone() for k, v in live.items()}

    trainer = Trainer(cfg, job, ws, on_event)
    result = trainer.run()
    job.set_status("succeeded", output=str(result.output), steps=result.steps)
    return ws, job, held


def test_intermediate_saves_lie_beside_the_final_file_and_load_like_it(run, tiny_models):
    ws, job, held = run
    names = sorted(p.name for p in ws.loras.iterdir())
    assert names == ["cat-000002.safetensors", "cat-000004.safetensors", "cat.safetensors"]
    final_tensors, final_meta = read_lora(ws.loras / "cat.safetensors")
    for step in (2, 4, None):
        path = ws.loras / ("cat.safetensors" if step is None else f"cat-{step:06d}.safetensors")
        tensors, meta = read_lora(path)
        assert meta["ss_session_id"] == job.id == written_by(path)
        assert meta["ss_steps"] == str(step or STEPS) and meta["ss_max_train_steps"] == str(STEPS)
        assert meta.keys() == final_meta.keys() and meta["ss_output_name"] == NAME
        assert tensors.keys() == final_tensors.keys()
        assert all(k.startswith(("lora_unet_", "lora_te_")) for k in tensors)
        for key, value in held[step].items():  # the weights as they were at that step, exactly
            assert torch.equal(tensors[key], value), (step, key)
    assert not torch.equal(held[2][next(iter(held[2]))], held[None][next(iter(held[2]))])
    # recorded in the job, the final file last; the checkpoints no longer hold a copy
    assert [(Path(f["path"]).name, f["step"]) for f in job.view()["loras"]] == [
        ("cat-000002.safetensors", 2), ("cat-000004.safetensors", 4), ("cat.safetensors", None)]
    assert all(f["bytes"] == (ws.loras / Path(f["path"]).name).stat().st_size
               for f in job.view()["loras"])
    assert not list((job.path / "checkpoints").rglob("*.safetensors"))
    saved = [(e["step"], Path(e["path"]).name) for e in job.events() if e["type"] == "lora"]
    assert saved == [(2, "cat-000002.safetensors"), (4, "cat-000004.safetensors"),
                     (None, "cat.safetensors")]
    # an intermediate file loads into a fresh pipeline as the final one does, and differs from it
    pipe = load_base_model(str(tiny_models["sd15"]), "sd15").pipeline
    untouched = _images(pipe)
    pipe.load_lora_weights(str(ws.loras / "cat-000002.safetensors"))
    at_2 = _images(pipe)
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(ws.loras / "cat.safetensors"))
    assert not np.array_equal(at_2, untouched) and not np.array_equal(at_2, _images(pipe))


def test_a_later_run_of_the_name_never_writes_over_earlier_files(run, ws, tiny_models):
    run_ws, first, _ = run
    shutil.copytree(run_ws.loras, ws.loras, dirs_exist_ok=True)  # the first run's files
    before = {p.name: p.read_bytes() for p in ws.loras.iterdir()}
    job = JobRecord.create("train", {}, ws)

    def another_run_finishing_now(event):  # takes cat-2-000004 between this run's saves
        if event["type"] == "lora" and event["step"] == 2:
            shutil.copy(ws.loras / "cat-000004.safetensors", ws.loras / "cat-2-000004.safetensors")

    result = Trainer(run_config(tiny_models), job, ws, another_run_finishing_now).run()
    assert {p.name: p.read_bytes() for p in ws.loras.iterdir() if p.name in before} == before
    assert written_by(ws.loras / "cat-2-000004.safetensors") == first.id  # untouched too
    mine = [Path(e["path"]).name for e in job.events() if e["type"] == "lora"]
    assert mine == ["cat-2-000002.safetensors", "cat-3-000004.safetensors", "cat-3.safetensors"]
    assert result.output == ws.loras / "cat-3.safetensors"
    assert all(written_by(ws.loras / name) == job.id for name in mine)
    warnings = [e["message"] for e in job.events() if e.get("level") == "warning" and "fallback" not in e]
    assert len(warnings) == 2 and all("another run's LoRA name" in w for w in warnings)
    assert warnings[0].endswith("named cat-2") and warnings[1].endswith("named cat-3")


def tiny_lora(path: Path, job_id: str | None, value: float = 1.0) -> Path:
    meta = {"ss_session_id": job_id} if job_id else {}
    save_file({"lora_unet_x.lora_down.weight": torch.full((2, 2), value)}, str(path), metadata=meta)
    return path


def test_a_resumed_run_rewrites_only_its_own_files(tmp_path):
    out = tmp_path / "loras"
    out.mkdir()
    tiny_lora(out / "dog-000002.safetensors", "job-a")
    placed = place_lora(tiny_lora(out / ".staged", "job-a", 2.0), out, "dog", 2, "job-a")
    assert placed == out / "dog-000002.safetensors"  # its own: replaced
    assert load_file(placed)["lora_unet_x.lora_down.weight"][0, 0] == 2.0
    assert place_lora(tiny_lora(out / ".staged", "job-b"), out, "dog", 2, "job-b") == \
        out / "dog-2-000002.safetensors"
    (out / "dog-3.safetensors").write_bytes(b"a file from elsewhere, not even safetensors")
    assert place_lora(tiny_lora(out / ".staged", "job-c"), out, "dog", None, "job-c") == \
        out / "dog-4.safetensors"
    assert free_base(out, "dog", "job-a") == "dog" and free_base(out, "dog", "job-b") == "dog-2"
    assert [p.name for p in run_files(out, "dog")] == ["dog-000002.safetensors"]  # not dog-2's
    assert base_of(out / "dog-2-000002.safetensors") == "dog-2" == base_of(out / "dog-2.safetensors")
    assert not list(out.glob(".staged*"))
    assert written_by(out / "dog-3.safetensors") is None and written_by(out / "nothing") is None


def copy_job(run, ws) -> JobRecord:
    """The module's job and its LoRA files copied into ``ws`` (to change them freely)."""
    _, job, _ = run
    copy = JobRecord(ws.jobs / job.id)
    shutil.copytree(job.path, copy.path)
    ws.loras.mkdir(parents=True, exist_ok=True)
    loras = []
    for f in job.status()["loras"]:
        target = shutil.copy(f["path"], ws.loras / Path(f["path"]).name)
        loras.append({**f, "path": str(target)})
    copy.set_status("succeeded", loras=loras, output=loras[-1]["path"], started_at=time.time() - 42)
    return copy


def test_jobs_show_lists_the_loras_and_a_deleted_one_as_missing(run, cli, ws):
    job = copy_job(run, ws)
    (ws.loras / "cat-000004.safetensors").unlink()
    out = cli("jobs", "show", job.id)[1]
    size = (ws.loras / "cat.safetensors").stat().st_size
    assert f"step 2: {ws.loras / 'cat-000002.safetensors'} (" in out
    assert f"step 4: {ws.loras / 'cat-000004.safetensors'} (missing)" in out
    assert f"LoRA: {ws.loras / 'cat.safetensors'} ({format_bytes(size)})" in out
    shown = json.loads(cli("jobs", "show", job.id, "--json")[1])
    assert [(f["step"], f["bytes"], f.get("missing")) for f in shown["loras"]] == [
        (2, size, None), (4, None, True), (None, size, None)]
    assert shown["lora_name"] == NAME and shown["dataset"] == "samples"
    # removed with the job when asked: the intermediate files too
    assert "removed its 1 intermediate LoRA file(s); removed its LoRA" in \
        cli("jobs", "rm", job.id, "--lora", "remove")[1]
    assert list(ws.loras.iterdir()) == []


def test_the_monitor_shows_the_loras_with_download_links_where_a_server_serves_them(
        run, ws, monkeypatch, tmp_path):
    job = copy_job(run, ws)
    monkeypatch.setenv(API_ENV, "/user/me/lora-lab/api/")
    monkeypatch.setenv(WORKSPACE_ENV, str(ws.root))
    box = TrainingMonitor(job.id, ws, autostart=False).loras.value
    size = (ws.loras / "cat.safetensors").stat().st_size
    assert f"<b>LoRA</b> <code>{ws.loras / 'cat.safetensors'}</code> · {format_bytes(size)}" in box
    links = re.findall(r'<a href="([^"]+)" download="([^"]+)">download</a>', box)
    assert links == [(f"/user/me/lora-lab/api/jobs/{job.id}/files/{n}", n) for n in
                     ("cat.safetensors", "cat-000002.safetensors", "cat-000004.safetensors")]
    assert "intermediate saves (2)" in box and "step&nbsp;4" in box

    (ws.loras / "cat-000002.safetensors").unlink()
    monitor = TrainingMonitor(job.id, ws, autostart=False)
    assert "cat-000002.safetensors</code> · <i>missing" in monitor.loras.value
    assert len(re.findall("download</a>", monitor.loras.value)) == 2
    monkeypatch.setenv(WORKSPACE_ENV, str(tmp_path))  # that server serves another workspace
    assert "<a " not in TrainingMonitor(job.id, ws, autostart=False).loras.value
    monkeypatch.delenv(API_ENV)  # a kernel no Jupyter server started (papermill, VS Code)
    box = TrainingMonitor(job.id, ws, autostart=False).loras.value
    assert "<a " not in box and str(ws.loras / "cat.safetensors") in box


async def test_rest_lists_serves_and_links_the_loras(run, ws, api, jp_fetch, jp_base_url):
    job = copy_job(run, ws)
    try:
        # the extension told the kernels it starts where it serves this workspace
        assert os.environ[API_ENV] == f"{jp_base_url}lora-lab/api/"
        assert os.environ[WORKSPACE_ENV] == str(ws.root)
        code, view = await api("jobs", job.id)
        assert code == 200 and [(Path(f["path"]).name, f["step"]) for f in view["loras"]] == [
            ("cat-000002.safetensors", 2), ("cat-000004.safetensors", 4), ("cat.safetensors", None)]
        assert view["lora_name"] == NAME and view["dataset"] == "samples"
        assert view["reason"] is None and view["duration_s"] == pytest.approx(42, abs=5)
        code, page = await api("jobs")
        assert page["jobs"][0]["loras"] == view["loras"]
        code, files = await api("jobs", job.id, "files")
        steps = {f["path"]: f["step"] for f in files["files"] if f.get("output")}
        assert steps == {"cat-000002.safetensors": 2, "cat-000004.safetensors": 4,
                         "cat.safetensors": None}
        link = re.search(r'href="([^"]+)"[^>]*>download</a></td>',
                         TrainingMonitor(job.id, ws, autostart=False).loras.value)[1]
        assert link == f"{jp_base_url}lora-lab/api/jobs/{job.id}/files/cat-000002.safetensors"
        r = await jp_fetch("lora-lab", "api", "jobs", job.id, "files", "cat-000002.safetensors")
        assert "attachment" in r.headers["Content-Disposition"]
        assert r.body == (ws.loras / "cat-000002.safetensors").read_bytes()

        (ws.loras / "cat-000002.safetensors").unlink()
        code, view = await api("jobs", job.id)
        assert view["loras"][0] == {"path": str(ws.loras / "cat-000002.safetensors"), "step": 2,
                                    "bytes": None, "missing": True}
        code, err = await api("jobs", job.id, "files", "cat-000002.safetensors")
        assert code == 404
    finally:  # the extension set them in this process: leave no trace for later tests
        os.environ.pop(API_ENV, None)
        os.environ.pop(WORKSPACE_ENV, None)


def test_a_default_name_is_its_own_run_name_not_a_step():
    """dataset + date and time: its time must not read as a step suffix (-011044)."""
    name = lora_name("", "/data/cats", "20261207-011044123-train-1a2b3c")
    assert name == "cats-20261207_011044"
    assert base_of(lora_path(Path("out"), name, None)) == name == base_of(lora_path(Path("out"), name, 500))
