"""Jobs through the REST API and the WebSocket stream, with real training processes on the tiny
SD1.5 model: submit, watch (and reconnect) until done, events, files, cancel, resume, refusals."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
import tornado.httpclient
from conftest import tree_digest
from safetensors.torch import save_file
from server_api import jp_server_config, workspace_models  # noqa: F401 (fixture)

from lora_lab.datasets import ingest
from lora_lab.jobdir import JobRecord, open_job
from lora_lab.training.lora_file import read_lora

API = ("lora-lab", "api")
ACTIVE = ("queued", "running")


@pytest.fixture
def api(jp_fetch):
    async def call(*path, method="GET", body=None, **kwargs):
        data = json.dumps(body) if body is not None else ("" if method == "POST" else None)
        r = await jp_fetch(*API, *path, method=method, body=data, raise_error=False, **kwargs)
        is_json = r.headers.get("Content-Type", "").startswith("application/json")
        return r.code, json.loads(r.body) if is_json and r.body else r.body
    return call


def train_config(ws, tiny_models, steps: int, **train) -> dict:
    """A config naming the model and images by paths relative to the workspace, as a remote
    client does."""
    paths = workspace_models(ws, tiny_models)
    return {"model": {"base": paths["sd15"]},
            "dataset": {"source": paths["samples"], "resolution": 64, "min_bucket": 64,
                        "max_bucket": 128, "trigger": "sks"},
            "train": {"max_steps": steps, "lr": 1e-3, **train}}


async def read_stream(jp_ws_fetch, job_id, *, after=0, log_offset=0, until=None):
    """Messages of jobs/ID/stream until the server closes it, or until ``until(messages)``."""
    ws = await jp_ws_fetch(*API, "jobs", job_id, "stream",
                           params={"after": after, "log_offset": log_offset})
    messages = []
    while (raw := await asyncio.wait_for(ws.read_message(), 180)) is not None:
        messages.append(json.loads(raw))
        if until and until(messages):
            ws.close()
            break
    return messages


async def wait_for_state(api, job_id, states, timeout=120):
    for _ in range(int(timeout / 0.2)):
        code, view = await api("jobs", job_id)
        if view["state"] in states:
            return view
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} still {view['state']}")


async def test_a_training_job_streams_its_events_and_logs_across_a_reconnect(
        api, jp_fetch, jp_ws_fetch, tiny_models, ws):
    code, accepted = await api("jobs", method="POST", body={
        "kind": "train", "params": {"config": train_config(ws, tiny_models, 3)}})
    assert code == 202 and accepted["job"]["state"] in ACTIVE
    job_id = accepted["id"]
    # the job runs in its own folder: it was given the workspace's paths, made absolute
    spec = open_job(job_id, ws).spec()["params"]["config"]
    assert spec["model"]["base"] == str(ws.models / "sd15")
    assert spec["dataset"]["source"] == str(ws.root / "samples")
    # the first client leaves after its first event; the second picks up where it left
    first = await read_stream(jp_ws_fetch, job_id,
                              until=lambda ms: any(m["type"] != "log_line" for m in ms))
    last_n = max(m["n"] for m in first if "n" in m)
    offsets = [m["offset"] for m in first if m["type"] == "log_line"]
    second = await read_stream(jp_ws_fetch, job_id, after=last_n,
                               log_offset=offsets[-1] if offsets else 0)
    end = second[-1]
    assert end["type"] == "end" and end["state"] == "succeeded", second[-5:]

    events = [m for m in first + second if "n" in m and m["type"] != "end"]
    assert [e["n"] for e in events] == list(range(1, len(events) + 1))  # none lost, none twice
    assert [e["type"] for e in events].count("progress") == 3 and events[-1]["type"] == "done"
    code, listed = await api("jobs", job_id, "events", params={"after": 0})
    assert listed["events"] == events and listed["next"] == end["n"] == len(events)
    assert listed["finished"] is True and listed["state"] == "succeeded"
    code, tail = await api("jobs", job_id, "events", params={"after": len(events) - 2})
    assert [e["n"] for e in tail["events"]] == [len(events) - 1, len(events)]

    log = (ws.jobs / job_id / "log.txt").read_bytes()
    streamed = "".join(m["line"] + "\n" for m in first + second if m["type"] == "log_line")
    assert streamed.strip() == log.decode().strip() and end["offset"] == len(log)

    code, view = await api("jobs", job_id)
    assert view["state"] == "succeeded" and view["kind"] == "train"
    code, jobs = await api("jobs")
    assert [j["id"] for j in jobs["jobs"]] == [job_id]
    code, files = await api("jobs", job_id, "files")
    lora = next(f for f in files["files"] if f.get("output"))
    code, body = await api("jobs", job_id, "files", "log.txt")
    assert code == 200 and body == log
    # a finished job: cancel and resume are refused with the reason
    code, err = await api("jobs", job_id, "cancel", method="POST")
    assert code == 409 and "already succeeded" in err["detail"]
    code, err = await api("jobs", job_id, "resume", method="POST")
    assert code == 409 and "already succeeded" in err["detail"]
    # a reconnect after the end gets nothing again but the end
    again = await read_stream(jp_ws_fetch, job_id, after=end["n"], log_offset=end["offset"])
    assert [m["type"] for m in again] == ["end"]
    # the LoRA file (written under loras/) downloads as one of the job's files
    r = await jp_fetch(*API, "jobs", job_id, "files", lora["path"])
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert "attachment" in r.headers["Content-Disposition"]
    (ws.root / "dl.safetensors").write_bytes(r.body)
    tensors, meta = read_lora(ws.root / "dl.safetensors")
    assert meta["ss_steps"] == "3" and all(k.startswith("lora_unet_") for k in tensors)
    # deleted: its folder goes (the size GET reported is what was freed), its LoRA stays
    assert view["bytes"] == sum(f["bytes"] for f in files["files"] if not f.get("output"))
    code, err = await api("jobs", job_id, method="DELETE", params={"lora": "maybe"})
    assert code == 400 and "lora must be keep or remove" in err["detail"]
    code, deleted = await api("jobs", job_id, method="DELETE")
    assert code == 200 and deleted["bytes"] == view["bytes"] and deleted["lora_removed"] is False
    assert not (ws.jobs / job_id).exists() and Path(deleted["lora"]).is_file()
    assert (await api("jobs", job_id))[0] == 404
    code, err = await api("jobs", job_id, method="DELETE")
    assert code == 404 and "no job" in err["detail"]


async def test_cancel_a_running_job_then_resume_it(api, tiny_models, ws):
    code, accepted = await api("jobs", method="POST", body={
        "kind": "train", "params": {"config": train_config(ws, tiny_models, 100_000)}})
    job_id = accepted["id"]
    await wait_for_state(api, job_id, ("running",))
    code, view = await api("jobs", job_id, "cancel", method="POST")
    assert code == 200 and view["state"] == "cancelled"
    assert open_job(job_id, ws).view()["state"] not in ACTIVE
    code, err = await api("jobs", job_id, "cancel", method="POST")
    assert code == 409 and "already cancelled" in err["detail"]
    code, resumed = await api("jobs", job_id, "resume", method="POST")
    assert code == 202 and resumed["id"] == job_id and resumed["job"]["state"] in ACTIVE
    code, err = await api("jobs", job_id, "resume", method="POST")
    assert code == 409 and "still" in err["detail"]
    await wait_for_state(api, job_id, ("running",))
    spec = (ws.jobs / job_id / "spec.json").read_bytes()
    code, err = await api("jobs", job_id, method="DELETE", params={"lora": "remove"})
    assert code == 409 and "is still running; cancel it first" in err["detail"]
    assert (ws.jobs / job_id / "spec.json").read_bytes() == spec and not list(ws.jobs.glob(".del*"))
    assert open_job(job_id, ws).view()["state"] == "running"
    code, view = await api("jobs", job_id, "cancel", method="POST")
    assert code == 200 and view["state"] == "cancelled"
    code, events = await api("jobs", job_id, "events")
    assert [e["type"] for e in events["events"]].count("cancelled") == 2
    code, deleted = await api("jobs", job_id, method="DELETE", params={"lora": "remove"})
    assert code == 200 and deleted["lora"] is None and not (ws.jobs / job_id).exists()


async def test_invalid_jobs_are_refused_before_anything_starts(api, jp_ws_fetch, ws, tiny_models):
    code, err = await api("jobs", method="POST", body={
        "kind": "train", "params": {"config": train_config(ws, tiny_models, -5, lr=0)}})
    assert code == 400 and "max_steps" in err["detail"] and "lr" in err["detail"]
    assert len(err["problems"]) >= 2
    code, err = await api("jobs", method="POST", body={"kind": "train", "params": {"steps": 1}})
    assert code == 400 and "config" in err["detail"]
    code, err = await api("jobs", method="POST", body={"kind": "train", "params": []})
    assert code == 400 and "params must be an object" in err["detail"]
    assert list(ws.jobs.iterdir()) == []
    code, err = await api("jobs", "20260101-000000-train-abcdef")
    assert code == 404 and "no job" in err["detail"]
    with pytest.raises(tornado.httpclient.HTTPClientError) as e:
        await jp_ws_fetch(*API, "jobs", "20260101-000000-train-abcdef", "stream")
    assert e.value.code == 404
    job = JobRecord.create("train", {}, ws)
    with pytest.raises(tornado.httpclient.HTTPClientError) as e:
        await jp_ws_fetch(*API, "jobs", job.id, "stream", params={"after": "-1"})
    assert e.value.code == 400


async def test_runs_bound_to_fail_are_refused_with_the_reason_and_leave_no_job_record(
        api, ws, tiny_models, monkeypatch):
    config = train_config(ws, tiny_models, 3)
    ingest(tiny_models["samples"], "shapes", workspace=ws)  # 3 of its 8 images lack a caption
    done = JobRecord.create("train", {}, ws)  # an earlier run: its intermediate save holds "mine"
    done.set_status("succeeded", pid=None)
    save_file({"x": torch.zeros(1)}, ws.loras / "mine-000200.safetensors",
              metadata={"ss_session_id": done.id})
    jobs = tree_digest(ws.jobs)

    async def refused(kind: str, params: dict, code: int) -> dict:
        status, err = await api("jobs", method="POST", body={"kind": kind, "params": params})
        assert status == code, err
        assert tree_digest(ws.jobs) == jobs  # no job record, not even a failed one
        return err

    def train(**sections) -> dict:
        return {"config": {**config, **{k: {**config.get(k, {}), **v} for k, v in sections.items()}}}

    err = await refused("train", train(dataset={"source": "shapes", "trigger": ""}), 400)
    assert err["detail"].startswith("dataset.trigger: 3 of 8 images have no caption")
    assert "`lora-lab caption shapes`" in err["detail"]
    err = await refused("train", train(model={"base": "models/sd15x"}), 400)  # a mistyped path
    assert err["detail"] == (f"model.base: {ws.models / 'sd15x'} does not exist; "
                             f"models in {ws.models}: sd15 (sd15)")
    err = await refused("train", train(train={"device": "cuda"}), 400)  # this box has no GPU
    assert err["detail"].startswith('train.device: "cuda", but this machine shows no GPU')
    images = sorted(p.name for p in tiny_models["samples"].iterdir() if p.suffix != ".txt")
    err = await refused("train", train(validation={"images": images}), 400)  # all held out
    assert err["detail"].startswith("validation.images: holding out 8 of the 8 images")
    assert "leaves no training images" in err["detail"]
    err = await refused("train", train(save={"name": "mine"}), 409)
    assert err["detail"].startswith(f"save.name: 'mine' is taken: {ws.loras / 'mine-000200.safetensors'}"
                                    f" is the LoRA of job {done.id}")
    err = await refused("train", train(model={"base": "models/sd15x"}, save={"name": "mine"},
                                       dataset={"source": "shapes", "trigger": ""}), 400)
    assert [p.split(":")[0] for p in err["problems"]] == ["model.base", "dataset.trigger", "save.name"]
    monkeypatch.delenv("LORA_LAB_CAPTION_MODEL", raising=False)
    err = await refused("caption", {"dataset": "shapes"}, 400)
    assert err["detail"].startswith("caption parameter model: caption model file not found: "
                                    f"{ws.models / 'caption'}")
    assert "params model and mmproj" in err["detail"]
    code, accepted = await api("jobs", method="POST", body={"kind": "train", "params": train(
        dataset={"source": "shapes", "trigger": "sks"}, save={"name": "mine-2"})})
    assert code == 202  # with a trigger word and a free name, the same run is accepted
    assert (await wait_for_state(api, accepted["id"], ("succeeded", "failed")))["state"] == "succeeded"


async def test_500_jobs_come_in_pages_newest_first(api, ws):
    ids = []
    for _ in range(500):
        job = JobRecord.create("caption", {}, ws)
        job.set_status("succeeded", pid=None)
        ids.append(job.id)
    newest = ids[::-1]
    code, page = await api("jobs", params={"limit": 50})
    assert code == 200 and (page["total"], page["offset"], page["limit"]) == (500, 0, 50)
    assert [j["id"] for j in page["jobs"]] == newest[:50]
    code, page = await api("jobs", params={"offset": 480, "limit": 50})
    assert [j["id"] for j in page["jobs"]] == newest[480:] and page["total"] == 500
    code, page = await api("jobs", params={"offset": 600, "limit": 50})
    assert code == 200 and page["jobs"] == [] and page["total"] == 500
    code, everything = await api("jobs")  # without a limit: every job, as before paging
    assert [j["id"] for j in everything["jobs"]] == newest and everything["limit"] is None


@pytest.mark.parametrize("params, name", [
    ({"limit": "-1"}, "limit"), ({"limit": "0"}, "limit"), ({"limit": "fifty"}, "limit"),
    ({"limit": "1001"}, "limit"), ({"offset": "-5"}, "offset"), ({"offset": "x", "limit": 5}, "offset")])
async def test_a_bad_page_is_refused(api, ws, params, name):
    code, err = await api("jobs", params=params)
    assert code == 400 and err["detail"].startswith(name), err


async def test_delete_removes_a_lora_only_inside_the_workspace(api, ws, tmp_path):
    ws.loras.mkdir(parents=True, exist_ok=True)
    inside, outside = ws.loras / "mine.safetensors", tmp_path / "theirs.safetensors"
    jobs = {}
    for lora in (inside, outside):
        lora.write_bytes(b"lora")
        jobs[lora] = job = JobRecord.create("train", {}, ws)
        job.set_status("succeeded", pid=None, output=str(lora))
    code, deleted = await api("jobs", jobs[inside].id, method="DELETE", params={"lora": "remove"})
    assert code == 200 and deleted["lora_removed"] is True and not inside.exists()
    code, deleted = await api("jobs", jobs[outside].id, method="DELETE", params={"lora": "remove"})
    assert code == 200 and deleted["lora_kept"] == "it is outside the workspace"
    assert outside.read_bytes() == b"lora" and not jobs[outside].path.exists()
    code, err = await api("jobs", "not-a-job", method="DELETE")
    assert code == 400 and "is not a job id" in err["detail"]
