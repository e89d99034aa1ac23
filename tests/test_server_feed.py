"""The workspace feed: WorkspaceWatch on real job folders, datasets and processes (what changed
since the last poll, read cheaply with 500 jobs), and the WebSocket that times it, through a
real Jupyter server (opening messages, a job appearing, a job removed, refusals)."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess

import pytest
import tornado.httpclient
from server_api import jp_server_config, shapes  # noqa: F401 (fixtures)

from lora_lab.datasets import Dataset, ingest
from lora_lab.jobdir import JobRecord, JobsWatch
from lora_lab.watch import WorkspaceWatch

API = ("lora-lab", "api")


def finished_job(ws, state="succeeded") -> JobRecord:
    job = JobRecord.create("train", {}, ws)
    job.set_status(state, pid=None)
    return job


def types(messages) -> list[str]:
    return [m["type"] for m in messages]


# -- WorkspaceWatch ----------------------------------------------------------------------------------
def test_the_opening_messages_are_the_newest_jobs_the_datasets_and_the_gpus(ws, shapes, tmp_path):
    old, new = finished_job(ws, "failed"), finished_job(ws)
    watch = WorkspaceWatch(ws, tmp_path, limit=1)  # the workspace lies inside this root
    jobs, datasets, gpus = watch.start()
    assert jobs["type"] == "jobs" and jobs["total"] == 2
    assert [j["id"] for j in jobs["jobs"]] == [new.id]  # newest first, ``limit`` of them
    assert jobs["jobs"][0]["browse"] == {"dir": f"ws/jobs/{new.id}", "output": None}
    assert datasets == {"type": "datasets",
                        "datasets": [{"name": "shapes", "images": 8, "captioned": 5}]}
    assert gpus == {"type": "gpus", "gpus": [], "source": "none"}  # this box has no NVIDIA GPU
    assert watch.poll() == []  # nothing changed: nothing sent, not even the GPUs again
    assert old.view()["state"] == "failed"


def test_a_new_job_a_changed_one_and_a_removed_one(ws):
    first = finished_job(ws)
    watch = WorkspaceWatch(ws, None)
    watch.start()
    second = JobRecord.create("caption", {}, ws)
    (message,) = watch.poll()
    assert message["type"] == "job" and message["job"]["id"] == second.id
    assert message["job"]["state"] == "queued" and message["total"] == 2
    assert message["job"]["browse"] == {"dir": None, "output": None}  # no file browser root
    second.set_status("running", phase="captioning", progress=0.5)
    (message,) = watch.poll()
    assert message["job"]["phase"] == "captioning" and message["job"]["progress"] == 0.5
    second._touch()  # only the heartbeat moved: nothing to tell
    assert watch.poll() == []
    shutil.rmtree(first.path)
    assert watch.poll() == [{"type": "removed", "id": first.id, "total": 1}]
    assert watch.poll() == []


def test_an_active_job_whose_process_dies_reads_interrupted(ws):
    proc = subprocess.Popen(["sleep", "600"])
    job = JobRecord.create("train", {}, ws)
    job.set_status("running", pid=proc.pid, phase="training")
    watch = JobsWatch(ws)
    views, total = watch.start(50)
    assert views[0]["state"] == "running" and total == 1
    assert watch.poll() == ([], [], 1)
    stamp = os.stat(job.path / "status.json")
    proc.kill()
    proc.wait()
    (view,), gone, total = watch.poll()  # status.json still says running: the pid says otherwise
    assert view["state"] == "interrupted" and "resume" in view["error"]
    assert os.stat(job.path / "status.json").st_mtime_ns == stamp.st_mtime_ns
    assert watch.poll() == ([], [], 1)  # told once


def test_datasets_are_sent_again_only_when_a_dataset_changed(ws, samples):
    watch = WorkspaceWatch(ws, None)
    assert watch.start()[1] == {"type": "datasets", "datasets": []}
    assert watch.poll() == []
    ingest(samples, "shapes", workspace=ws)
    assert types(watch.poll(slow=False)) == []  # datasets are for the slow polls
    (message,) = watch.poll(slow=True)
    assert message["datasets"] == [{"name": "shapes", "images": 8, "captioned": 5}]
    assert watch.poll() == []
    ds = Dataset.open("shapes", ws)
    ds.set_caption(ds.images(captioned=False).items[0]["file"], "a new caption")
    ds.index.close()
    (message,) = watch.poll()
    assert message["datasets"][0]["captioned"] == 6
    shutil.rmtree(ws.datasets / "shapes")
    assert watch.poll() == [{"type": "datasets", "datasets": []}]


def test_with_500_jobs_a_poll_reads_only_the_status_files_that_changed(ws):
    jobs = [finished_job(ws) for _ in range(500)]
    watch = JobsWatch(ws)
    views, total = watch.start(50)
    assert total == 500 and [v["id"] for v in views] == [j.id for j in jobs[:-51:-1]]
    for _ in range(5):  # the older 450 are learned, 100 a poll, and none is sent
        assert watch.poll() == ([], [], 500)
    # an edit that keeps the file's inode, size and time is not seen: the file is not read
    old = jobs[100].path / "status.json"
    stat = os.stat(old)
    old.write_text(old.read_text().replace('"succeeded"', '"cancelled"'))
    os.utime(old, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert watch.poll() == ([], [], 500)
    jobs[100].set_status("failed", error="disk full")  # a real (atomic) write is
    (view,), gone, total = watch.poll()
    assert view["id"] == jobs[100].id and view["error"] == "disk full"


# -- the WebSocket -----------------------------------------------------------------------------------
async def read_until(socket, done, timeout=30.0) -> list[dict]:
    """Messages until ``done(message)`` is true of one (the last one returned)."""
    messages = []
    while True:
        raw = await asyncio.wait_for(socket.read_message(), timeout)
        assert raw is not None, f"the feed closed: {messages}"
        messages.append(json.loads(raw))
        if done(messages[-1]):
            return messages


async def test_the_feed_opens_with_the_workspace_then_sends_its_changes(jp_ws_fetch, ws, shapes):
    kept, removed = finished_job(ws), finished_job(ws)
    socket = await jp_ws_fetch(*API, "stream", params={"limit": 1})
    opening = [json.loads(await asyncio.wait_for(socket.read_message(), 30)) for _ in range(3)]
    assert types(opening) == ["jobs", "datasets", "gpus"]
    assert [j["id"] for j in opening[0]["jobs"]] == [removed.id] and opening[0]["total"] == 2
    assert opening[0]["jobs"][0]["browse"]["dir"] is None  # ws lies outside the Jupyter root
    assert opening[1]["datasets"][0]["name"] == "shapes"
    assert opening[2] == {"type": "gpus", "gpus": [], "source": "none"}
    new = JobRecord.create("train", {}, ws)
    seen = await read_until(socket, lambda m: m["type"] == "job")
    assert seen[-1]["job"]["id"] == new.id and seen[-1]["total"] == 3
    shutil.rmtree(removed.path)
    seen = await read_until(socket, lambda m: m["type"] == "removed")
    assert seen[-1] == {"type": "removed", "id": removed.id, "total": 2}
    shutil.rmtree(ws.datasets / "shapes")
    seen = await read_until(socket, lambda m: m["type"] == "datasets")
    assert seen[-1]["datasets"] == [] and kept.path.is_dir()
    socket.close()


@pytest.mark.parametrize("limit", ["-1", "0", "ten", "1001"])
async def test_a_bad_limit_is_refused_before_the_upgrade(jp_ws_fetch, limit):
    with pytest.raises(tornado.httpclient.HTTPClientError) as e:
        await jp_ws_fetch(*API, "stream", params={"limit": limit})
    assert e.value.code == 400


async def test_the_feed_refuses_a_client_without_the_token(jp_ws_fetch, ws):
    finished_job(ws)
    with pytest.raises(tornado.httpclient.HTTPClientError) as e:
        await jp_ws_fetch(*API, "stream", headers={"Authorization": "token wrong"})
    assert e.value.code == 403
