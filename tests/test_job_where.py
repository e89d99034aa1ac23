"""Where a job runs, in every surface: `--executor`, REST's "executor" and the server's setting,
the panels' "Run on" choice. A local job (asked for, or by default) runs as before and says
"local"; a bad executor name (flag, request, $LORA_LAB_EXECUTOR, setting) and Ray without a
cluster are refused before any job exists; a job on the Ray cluster, its record written as the
Ray dispatcher writes it, shows as ray with why it waits in `jobs list`/`jobs show`, REST, the
JobsPanel and the monitor. (Jobs that really run on a Ray cluster are tested with one.)"""
from __future__ import annotations

import asyncio
import json
import time

import pytest
from conftest import tree_digest
from server_api import api, jp_server_config  # noqa: F401 (fixtures)
from test_launcher import launcher_on
from traitlets import TraitError

from lora_lab.datasets import ingest
from lora_lab.jobdir import JobRecord, open_job
from lora_lab.server_ext.app import LoraLabApp
from lora_lab.tiny import gguf_models
from lora_lab.widgets.browser import DatasetBrowser
from lora_lab.widgets.captions import CaptionEditor
from lora_lab.widgets.jobs_panel import JobsPanel
from lora_lab.widgets.monitor import TrainingMonitor

ADDRESS = "http://127.0.0.1:8265"
WAITING = (f"it asks for 4 GPUs and the Ray cluster at {ADDRESS} has 2; join more nodes "
           "(lora-lab cluster start prints the line) or ask for fewer")
NO_CLUSTER = "no Ray cluster configured: run `lora-lab cluster start`"


@pytest.fixture(autouse=True)
def no_cluster(monkeypatch):
    """No default executor and no Ray cluster configured (the workspace has no cluster.json);
    what a Jupyter server started here sets is undone afterwards."""
    monkeypatch.delenv("LORA_LAB_EXECUTOR", raising=False)
    monkeypatch.delenv("LORA_LAB_RAY_ADDRESS", raising=False)


@pytest.fixture
def shapes(ws, tiny_caption) -> dict[str, str]:
    """The sample dataset and the tiny caption pair inside the workspace: a caption job's
    parameters, paths relative to the workspace as a REST client names them."""
    ingest(tiny_caption["samples"], "shapes", workspace=ws)
    model, mmproj = gguf_models.write_caption_pair(ws.models / "caption")
    return {"dataset": "shapes", "model": str(model.relative_to(ws.root)),
            "mmproj": str(mmproj.relative_to(ws.root)), "max_tokens": 8}


def caption_argv(ws, params: dict[str, str]) -> list[str]:
    return ["jobs", "submit", "caption", params["dataset"], "--model", ws.root / params["model"],
            "--mmproj", ws.root / params["mmproj"], "--max-tokens", "8", "--mode", "overwrite"]


def ray_job(ws, **status) -> JobRecord:
    """A train job as the Ray dispatcher leaves it while the cluster lacks its GPUs (its pid is
    this test's and its heartbeat fresh: it waits, alive)."""
    job = JobRecord.create("train", {"config": {"dataset": {"source": "/data/cats"}}, "gpus": 4}, ws)
    job.set_status("queued", **{"executor": "ray", "phase": "waiting for the Ray cluster",
                                "handle": {"address": ADDRESS, "submission_id": None},
                                "reason": WAITING, **status})
    return job


def wait_ended(job: JobRecord, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while (view := job.view())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job.log_path.read_text()
        time.sleep(0.1)
    return view


# -- CLI ------------------------------------------------------------------------------------------
def test_local_by_flag_or_by_default_runs_as_before_and_says_local(cli, ws, shapes):
    asked = json.loads(cli(*caption_argv(ws, shapes), "--executor", "local", "--json")[1])
    default = json.loads(cli(*caption_argv(ws, shapes), "--json")[1])
    for submitted in (asked, default):
        assert submitted["executor"] == "local" and submitted["handle"] is None
        view = wait_ended(open_job(submitted["id"], ws))
        assert view["state"] == "succeeded", open_job(submitted["id"], ws).log_path.read_text()
    lines = cli("jobs", "list")[1].splitlines()
    where = lines[0].index("WHERE")
    assert [line[where:where + 5] for line in lines[1:3]] == ["local", "local"]
    shown = cli("jobs", "show", asked["id"])[1]
    assert "executor: local" in shown and "ray cluster" not in shown
    assert json.loads(cli("jobs", "show", asked["id"], "--json")[1])["executor"] == "local"


def test_a_bad_executor_is_refused_before_any_job_exists(cli, ws, shapes, capsys, monkeypatch):
    before = tree_digest(ws.jobs)
    with pytest.raises(SystemExit) as usage:
        cli(*caption_argv(ws, shapes), "--executor", "bogus")
    assert usage.value.code == 2
    assert "argument --executor: invalid choice: 'bogus'" in capsys.readouterr().err
    monkeypatch.setenv("LORA_LAB_EXECUTOR", "bogus")
    line = cli.fails(*caption_argv(ws, shapes))
    assert line == "lora-lab: error: executor must be one of local, ray, not 'bogus'"
    monkeypatch.delenv("LORA_LAB_EXECUTOR")
    line = cli.fails(*caption_argv(ws, shapes), "--executor", "ray")
    assert NO_CLUSTER in line and "LORA_LAB_RAY_ADDRESS" in line
    assert cli.fails("models", "pull", "sd15", "--executor", "ray") == \
        "lora-lab: error: --executor is for a background pull: add --background"
    assert tree_digest(ws.jobs) == before  # no job folder, not even a failed record


def test_a_ray_job_shows_where_it_runs_and_why_it_waits(cli, ws):
    waiting = ray_job(ws)
    submitted = ray_job(ws, phase="starting on the Ray cluster", reason=None,
                        handle={"address": ADDRESS, "submission_id": "20261207-ray-r1"})
    lines = cli("jobs", "list")[1].splitlines()
    rows = {line.split()[0]: line for line in lines[1:-1]}
    where = lines[0].index("WHERE")
    assert rows[waiting.id][where:where + 4] == rows[submitted.id][where:where + 4] == "ray "
    assert rows[waiting.id].endswith(WAITING)  # the REASON column: why it waits
    shown = cli("jobs", "show", waiting.id)[1].splitlines()
    assert "executor: ray" in shown and f"reason: {WAITING}" in shown
    assert f"ray cluster: {ADDRESS}, submission id: not submitted yet" in shown
    shown = cli("jobs", "show", submitted.id)[1]
    assert "submission id: 20261207-ray-r1" in shown and "reason:" not in shown
    listed = {j["id"]: j for j in json.loads(cli("jobs", "list", "--json")[1])}
    assert listed[waiting.id]["executor"] == "ray" and listed[waiting.id]["reason"] == WAITING
    assert listed[submitted.id]["handle"]["submission_id"] == "20261207-ray-r1"


# -- REST -----------------------------------------------------------------------------------------
async def test_rest_takes_an_executor_and_refuses_a_bad_one_leaving_no_job(api, ws, shapes):  # noqa: F811
    before = tree_digest(ws.jobs)
    code, body = await api("jobs", method="POST",
                           body={"kind": "caption", "params": shapes, "executor": "bogus"})
    assert code == 400 and body["detail"] == "executor must be one of local, ray, not 'bogus'"
    code, body = await api("jobs", method="POST",
                           body={"kind": "caption", "params": shapes, "executor": "ray"})
    assert code == 503 and NO_CLUSTER in body["detail"]
    code, body = await api("models/pull", method="POST", body={"model": "sd15", "executor": 7})
    assert code == 400 and body["detail"] == "executor must be a string, not 7"
    assert tree_digest(ws.jobs) == before
    for executor in ("local", None):  # asked for, and the server's default
        code, body = await api("jobs", method="POST",
                               body={"kind": "caption", "params": shapes, "executor": executor})
        assert code == 202 and body["job"]["executor"] == "local" and body["job"]["handle"] is None
        job = open_job(body["id"], ws)
        assert (await asyncio.to_thread(wait_ended, job))["state"] == "succeeded"
        code, view = await api("jobs", job.id)
        assert code == 200 and view["executor"] == "local"


async def test_rest_job_views_say_where_a_job_runs_and_why_it_waits(api, ws):  # noqa: F811
    waiting = ray_job(ws)
    old = JobRecord.create("caption", {"dataset": "shapes"}, ws)  # made before executors existed
    old.set_status("succeeded", pid=None)
    code, view = await api("jobs", waiting.id)
    assert code == 200 and view["state"] == "queued" and view["executor"] == "ray"
    assert view["handle"] == {"address": ADDRESS, "submission_id": None}
    assert view["reason"] == WAITING and view["phase"] == "waiting for the Ray cluster"
    code, page = await api("jobs")
    assert {j["id"]: j["executor"] for j in page["jobs"]} == {waiting.id: "ray", old.id: "local"}
    assert (await api("health"))[1]["executor"] == "local"


@pytest.mark.parametrize("jp_server_config", [{"executor": "ray"}], indirect=True)
async def test_the_server_setting_is_the_default_a_request_can_override(api, ws, shapes):  # noqa: F811
    assert (await api("health"))[1]["executor"] == "ray"
    before = tree_digest(ws.jobs)
    code, body = await api("jobs", method="POST", body={"kind": "caption", "params": shapes})
    assert code == 503 and NO_CLUSTER in body["detail"]  # the setting's ray: no cluster here
    assert tree_digest(ws.jobs) == before
    code, body = await api("jobs", method="POST",
                           body={"kind": "caption", "params": shapes, "executor": "local"})
    assert code == 202 and body["job"]["executor"] == "local"
    assert (await asyncio.to_thread(wait_ended, open_job(body["id"], ws)))["state"] == "succeeded"


def test_a_bad_server_setting_is_refused_saying_which(monkeypatch):
    with pytest.raises(TraitError, match="LoraLabApp.executor must be one of local, ray, not 'bogus'"):
        LoraLabApp(executor="bogus")
    monkeypatch.setenv("LORA_LAB_EXECUTOR", "ray")
    assert LoraLabApp().executor == "ray" and LoraLabApp(executor="local").executor == "local"
    monkeypatch.setenv("LORA_LAB_EXECUTOR", "bogus")
    with pytest.raises(TraitError, match=r"\$LORA_LAB_EXECUTOR must be one of local, ray, not 'bogus'"):
        _ = LoraLabApp().executor  # reading it, as the server does at start, runs the fallback


# -- panels ---------------------------------------------------------------------------------------
def test_the_launcher_runs_on_the_default_and_shows_a_refused_choice(ws, tiny_models, monkeypatch):
    launcher = launcher_on(ws, tiny_models, **{"dataset.trigger": "sks"})
    assert launcher.run_on.value == "local" and launcher.run_on.label == "This box"
    assert launcher.check() and not launcher.train_button.disabled, launcher.problems
    before = tree_digest(ws.jobs)
    launcher.run_on.value = "ray"
    launcher.train_button.click()
    assert launcher.notice.kind == "error" and NO_CLUSTER in launcher.notice.text
    assert launcher.job is None and tree_digest(ws.jobs) == before
    monkeypatch.setenv("LORA_LAB_EXECUTOR", "ray")  # the server's setting, as its kernels get it
    assert launcher_on(ws, tiny_models).run_on.label == "Ray cluster"
    monkeypatch.setenv("LORA_LAB_EXECUTOR", "bogus")
    bad = launcher_on(ws, tiny_models, **{"dataset.trigger": "sks"})
    assert bad.run_on.value is None  # nothing chosen: Train says why the default fails
    bad.train_button.click()
    assert bad.notice.text == "executor must be one of local, ray, not 'bogus'"
    assert tree_digest(ws.jobs) == before


def test_the_caption_editor_runs_its_job_where_chosen_and_shows_a_refusal(ws, shapes):
    browser = DatasetBrowser("shapes", ws, page_size=3, thumb_size=64)
    editor = CaptionEditor(browser, ws.root / shapes["model"], ws.root / shapes["mmproj"],
                           max_tokens=8, autostart=False)
    assert editor.run_on.value == "local" and editor.run_on.label == "This box"
    before = tree_digest(ws.jobs)
    browser.selected = ["purple_square.jpg"]
    editor.run_on.value = "ray"
    editor.ai_selection_button.click()
    assert editor.notice.kind == "error" and NO_CLUSTER in editor.notice.text
    assert editor.job is None and tree_digest(ws.jobs) == before
    editor.close()
    browser.close()


def test_the_monitor_and_jobs_panel_show_a_ray_job_and_why_it_waits(ws):
    waiting = ray_job(ws)
    local = JobRecord.create("caption", {"dataset": "shapes"}, ws)
    local.set_status("succeeded", pid=None)
    monitor = TrainingMonitor(waiting.id, ws, autostart=False)
    assert "on the Ray cluster" in monitor.state.value
    assert f"Ray cluster {ADDRESS}, submission id none yet" in monitor.state.value  # its tooltip
    assert WAITING in monitor.stats.value
    waiting.set_status("running", phase="training", reason=None,
                       handle={"address": ADDRESS, "submission_id": waiting.id})
    monitor.refresh()
    assert f"submission id {waiting.id}" in monitor.state.value and WAITING not in monitor.stats.value
    assert "Ray" not in TrainingMonitor(local.id, ws, autostart=False).state.value
    panel = JobsPanel(ws, autostart=False)
    assert "WHERE" in panel.header.value
    options = dict((job_id, text) for text, job_id in panel.jobs.options)
    assert "ray" in options[waiting.id].split() and "local" in options[local.id].split()
    for widget in (monitor, panel):
        widget.close()
