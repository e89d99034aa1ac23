"""Ray jobs whose folders live in the bucket (moto's S3 server on 127.0.0.1): the worker runs
the job in a scratch workspace of its own, this box follows it through the bucket; cancel and
resume work as on a shared filesystem, and bad settings are refused before any job. (REST, the
launcher and a killed worker: test_ray_jobs.py, with the folders shared and in the bucket.)"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_caption_batch import forty_captioned
from test_ray_jobs import _only_job, _train_config, _trained, _wait, on_ray  # noqa: F401 (fixture)
from test_train import config

from lora_lab import atomic
from lora_lab.bucket import open_bucket
from lora_lab.datasets import Dataset
from lora_lab.errors import LoraLabError
from lora_lab.jobdir import JobRecord, list_jobs, pid_alive
from lora_lab.jobs import check_params
from lora_lab.jobs.bucket_jobs import (
    ENV_JOB_URL,
    Mirror,
    Places,
    check,
    job_url,
    on_any_node,
    scratch_root,
    stage_inputs,
    upload_for_run,
)
from lora_lab.jobs.executors import reattach


@pytest.fixture
def in_bucket(on_ray, bucket_env, monkeypatch):
    """Ray jobs on the test cluster, their folders under the test's own prefix of the bucket."""
    monkeypatch.setenv("LORA_LAB_JOBS_URL", f"{bucket_env.url}/jobs")
    return bucket_env


def _objects(bucket_env, job_id: str) -> list[str]:
    bucket = open_bucket()
    root = bucket.path("jobs", job_id)
    bucket.fs.invalidate_cache(root)
    return sorted(name[len(root) + 1:] for name in bucket.fs.find(root))


def test_a_run_in_the_bucket_is_followed_here_cancelled_with_a_checkpoint_and_resumed(
        on_ray, in_bucket, cli, tiny_models, tmp_path, ray_cluster):
    cli("jobs", "submit", "train", _train_config(tiny_models, tmp_path))
    job = _only_job(on_ray)
    view = _wait(job, lambda v: _trained(job) >= 5)  # events came here through the bucket
    assert view["handle"]["url"] == f"{in_bucket.url}/jobs/{job.id}"
    scratch = scratch_root(job.id) / "ws" / "jobs" / job.id
    assert (scratch / "spec.json").is_file()  # the worker ran in a copy of its own
    objects = _objects(in_bucket, job.id)
    assert "events/000001.jsonl" in objects and "events.jsonl" not in objects
    assert {"spec.json", "status.json", "places.json"} <= set(objects)
    assert len(_objects(in_bucket, "inputs")) > 2  # the base model and the images, staged beside

    cli("jobs", "cancel", job.id)
    assert job.view()["state"] == "cancelled"  # the worker's word, not a forced one
    events = job.events()
    assert not any(e.get("forced") for e in events)
    checkpoint = [e["step"] for e in events if e["type"] == "checkpoint"][-1]
    assert checkpoint == _trained(job) < 200
    assert any(o.startswith(f"checkpoints/step-{checkpoint:06d}/") for o in _objects(in_bucket, job.id))

    cli("jobs", "resume", job.id)
    view = _wait(job, lambda v: v["state"] not in ("queued", "running"))
    assert view["state"] == "succeeded", job.log_path.read_text()[-3000:]
    assert [f["step"] for f in view["loras"]] == [50, 100, 150, None]
    assert all(f["path"].startswith(str(on_ray.root)) and not f.get("missing") for f in view["loras"])
    assert any(e.get("message", "").startswith(f"resumed from step-{checkpoint:06d}")
               for e in job.events() if e["type"] == "log")
    steps = [e["step"] for e in job.events() if e["type"] == "progress"]
    assert steps == sorted(set(steps)) and steps[-1] == 200  # each step's event came once
    assert "train job" in job.log_path.read_text()  # the worker's log, pulled here
    for _ in range(100):  # the worker's copy, the staged model and images, gone once it ended
        if not scratch.exists():
            break
        time.sleep(0.2)
    assert not scratch.exists()


def test_a_caption_job_in_the_bucket_writes_here_through_the_journal_keeps_an_edit_made_here_and_resumes(
        on_ray, in_bucket, cli, tiny_caption, tmp_path):
    cli("dataset", "ingest", forty_captioned(tmp_path), "--name", "many")
    cli("jobs", "submit", "caption", "many", "--mode", "append", "--model",
        tiny_caption["caption_model"], "--mmproj", tiny_caption["caption_mmproj"], "--max-tokens", "48")
    job = _only_job(on_ray)
    _wait(job, lambda v: sum(e["type"] == "progress" for e in job.events()) >= 3)
    ds = Dataset.open("many", on_ray)
    atomic.write_text(ds.caption_path("img39.jpg"), "edited here")  # in an editor, mid-run
    cli("jobs", "cancel", job.id)
    assert job.view()["state"] == "cancelled"
    assert not any(e.get("forced") for e in job.events())
    assert 0 < len(ds.journal.last()[1]["changes"]) < 39, "cancelled too late to test a resume"
    assert {"captions/journal.jsonl", "captions/sources.jsonl"} <= set(_objects(in_bucket, job.id))

    cli("jobs", "resume", job.id)
    view = _wait(job, lambda v: v["state"] not in ("queued", "running"))
    assert view["state"] == "succeeded", job.log_path.read_text()[-3000:]
    entry = ds.journal.last()[1]  # one entry for the run, killed and resumed: each image once
    assert entry["done"] and sorted(f for f, _, _ in entry["changes"]) == [f"img{i:02d}.jpg" for i in range(39)]
    assert all(after.startswith(f"{before}, ") and ds.caption(f) == after and before == f"orig{f[3:5]}"
               for f, before, after in entry["changes"])
    assert ds.caption("img39.jpg") == "edited here"  # the worker captioned its copy; this edit won
    assert ds.index.get("img00.jpg")["caption_model"] == view["model"]
    cli("dataset", "edit", "many", "--undo")  # the run is one undo step here
    assert [ds.caption(f"img{i:02d}.jpg") for i in range(39)] == [f"orig{i:02d}" for i in range(39)]


def test_a_job_whose_follower_here_died_is_followed_again_by_jobs_list(
        on_ray, in_bucket, cli, tiny_models, tmp_path):
    """This box restarted while the job ran on the cluster: `jobs list` (or the server's start)
    starts a process that pulls its writes again, and only one."""
    cli("jobs", "submit", "train", _train_config(tiny_models, tmp_path, steps=300))
    job = _only_job(on_ray)
    _wait(job, lambda v: _trained(job) >= 5)
    dispatcher = int((job.path / ".following").read_text())
    os.kill(dispatcher, signal.SIGKILL)
    while pid_alive(dispatcher):
        time.sleep(0.05)
    assert job.view()["state"] == "running"  # Ray runs it on
    _, out, err = cli("jobs", "list")
    assert f"following {job.id} on the Ray cluster again" in err
    assert cli("jobs", "list")[2] == ""  # followed: not twice
    view = _wait(job, lambda v: v["state"] not in ("queued", "running"))
    assert view["state"] == "succeeded", job.log_path.read_text()[-3000:]
    steps = [e["step"] for e in job.events() if e["type"] == "progress"]
    assert steps == list(range(1, 301))  # each step's event here once
    assert [f["step"] for f in view["loras"]] == [50, 100, 150, 200, 250, None]
    assert all(not f.get("missing") for f in view["loras"])


def test_a_job_the_cluster_no_longer_knows_gets_no_follower(ws, tiny_models):
    """Its cluster gone (or restarted): `jobs list` starts nothing, however often it runs."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"http://127.0.0.1:{s.getsockname()[1]}"
    job = JobRecord.create("train", {"config": config(tiny_models).to_dict(), "gpus": 1}, ws)
    job.set_status("running", executor="ray", handle={
        "address": address, "submission_id": job.id, "url": f"s3://b/lab/jobs/{job.id}"})
    assert reattach(ws) == [] and not (job.path / ".following").exists()


@pytest.mark.parametrize("change, expected", [
    ({"AWS_SECRET_ACCESS_KEY": "wrong"}, "refused the secret key"),
    ({"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}, "no credentials for bucket"),
])
def test_a_bucket_without_or_with_wrong_credentials_is_refused_before_the_job(
        on_ray, in_bucket, cli, tiny_models, tmp_path, monkeypatch, change, expected):
    in_bucket.env(monkeypatch, **change)
    line = cli.fails("jobs", "submit", "train", _train_config(tiny_models, tmp_path))
    assert expected in line and list_jobs(on_ray) == []


def test_a_job_folder_url_outside_the_bucket_prefix_is_refused(on_ray, in_bucket, cli, tiny_models,
                                                               tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_LAB_JOBS_URL", f"s3://{in_bucket.name}/elsewhere/jobs")
    line = cli.fails("jobs", "submit", "train", _train_config(tiny_models, tmp_path))
    assert "outside the configured bucket" in line and list_jobs(on_ray) == []
    # a worker handed such a URL reads and writes nothing either
    worker = subprocess.run([sys.executable, "-m", "lora_lab.jobs",
                             f"s3://{in_bucket.name}/elsewhere/jobs/20261207-101500123-train-abcdef"],
                            capture_output=True, text=True, timeout=60)
    assert worker.returncode == 1 and "outside the configured bucket" in worker.stdout
    assert not scratch_root("20261207-101500123-train-abcdef").exists()


def test_a_model_download_cannot_keep_its_folder_in_the_bucket(bucket_env, monkeypatch):
    monkeypatch.setenv("LORA_LAB_JOBS_URL", f"{bucket_env.url}/jobs")
    with pytest.raises(LoraLabError, match="a pull job cannot keep its folder in the bucket"):
        check("pull")
    assert check("caption") is not None and check("train") is not None


def test_a_captioner_actor_on_another_node_stages_the_model_alone(bucket_env, ws, cli,
                                                                  tiny_caption, monkeypatch):
    """A caption job on several GPUs, its folder in the bucket: an actor on a node without the
    model fetches the GGUF pair before loading it; the images it gets as bytes stay behind."""
    monkeypatch.setenv("LORA_LAB_JOBS_URL", f"{bucket_env.url}/jobs")
    cli("dataset", "ingest", tiny_caption["samples"], "--name", "pics")
    params = check_params("caption", {"dataset": "pics", "gpus": 2, "model": str(tiny_caption["caption_model"]),
                                      "mmproj": str(tiny_caption["caption_mmproj"])}, ws, local=False)
    job = JobRecord.create("caption", params, ws)
    upload_for_run(job, job_url(job.id), resume=False)
    root = scratch_root(job.id)
    places = json.loads(open_bucket().fs.cat_file(f"{job_url(job.id)[5:]}/places.json"))
    models = [root / "inputs" / Path(e["key"]).name / Path(e["path"]).name
              for e in places["inputs"] if e["path"].endswith(".gguf")]
    monkeypatch.setenv(ENV_JOB_URL, job_url(job.id))  # as the worker sets it for the job's process
    try:
        make = on_any_node(lambda: "loaded", models)
        assert len(models) == 2 and not any(m.exists() for m in models)
        assert make() == "loaded"
        assert [m.read_bytes() for m in models] == [tiny_caption[k].read_bytes()
                                                    for k in ("caption_model", "caption_mmproj")]
        assert not (root / "ws" / "datasets").exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    monkeypatch.delenv(ENV_JOB_URL)
    assert on_any_node(len, models) is len  # a job with its folder on a shared filesystem


def test_events_in_segments_and_an_old_events_jsonl_are_joined_in_order(bucket_env, tmp_path):
    """A reader lists the segments and joins them after an ``events.jsonl`` object; a segment
    past a gap waits; paths come back in this side's terms."""
    bucket = open_bucket()
    url = f"{bucket_env.url}/jobs/20261207-101500123-train-abcdef"
    from lora_lab.bucket import parse_url

    mirror = Mirror(bucket, parse_url(url), tmp_path / "job", Places([("/here/ws", "/there/ws")]))
    mirror.folder.mkdir()
    put = lambda rel, lines: bucket.fs.pipe_file(mirror.key(rel), "".join(  # noqa: E731
        json.dumps(e) + "\n" for e in lines).encode())
    bucket.fs.pipe_file(mirror.key("status.json"), b'{"state": "running"}')
    put("events.jsonl", [{"type": "phase", "n": 1}, {"type": "phase", "n": 2}])
    put("events/000003.jsonl", [{"type": "checkpoint", "path": "/here/ws/jobs/x/checkpoints"}])
    put("events/000005.jsonl", [{"type": "progress", "n": 5}])  # 4 is missing yet
    mirror.pull()
    read = [json.loads(line) for line in (mirror.folder / "events.jsonl").read_text().splitlines()]
    assert [e.get("n") for e in read] == [1, 2, None]
    assert read[2]["path"] == "/there/ws/jobs/x/checkpoints"
    put("events/000004.jsonl", [{"type": "progress", "n": 4}])
    mirror.pull()
    read = [json.loads(line) for line in (mirror.folder / "events.jsonl").read_text().splitlines()]
    assert [e.get("n") for e in read] == [1, 2, None, 4, 5]


def test_a_status_saying_the_job_ended_goes_after_every_file_in_full(bucket_env, tmp_path):
    """A growing file waits a few seconds between uploads, but not past the job's end: whoever
    reads the end finds it whole (a caption job's journal, its last captions)."""
    from lora_lab.bucket import parse_url

    bucket = open_bucket()
    mirror = Mirror(bucket, parse_url(f"{bucket_env.url}/jobs/20261207-101500123-caption-abcdef"),
                    tmp_path / "job")
    mirror.folder.mkdir()
    (mirror.folder / "status.json").write_text('{"state": "running"}')
    (mirror.folder / "log.txt").write_text("a\n")
    mirror.push()
    with open(mirror.folder / "log.txt", "a") as log:
        log.write("b\n")
    mirror.push()
    assert bucket.fs.cat_file(mirror.key("log.txt")) == b"a\n"  # sent again within seconds
    (mirror.folder / "status.json").write_text('{"state": "succeeded"}')
    mirror.push()
    assert bucket.fs.cat_file(mirror.key("log.txt")) == b"a\nb\n"
    assert json.loads(bucket.fs.cat_file(mirror.key("status.json")))["state"] == "succeeded"


def test_a_status_the_job_writes_during_a_push_goes_after_the_files_it_names(
        bucket_env, tmp_path, monkeypatch):
    """The job may write its last LoRA and its end while a push is under way: that push sends
    the status it read first, and the next one the end, after the LoRA and the whole log."""
    from lora_lab.bucket import parse_url

    bucket = open_bucket()
    mirror = Mirror(bucket, parse_url(f"{bucket_env.url}/jobs/20261207-101500123-train-abcdef"),
                    tmp_path / "job")
    mirror.folder.mkdir()
    status, log, lora = mirror.folder / "status.json", mirror.folder / "log.txt", tmp_path / "out.safetensors"
    status.write_text('{"state": "running"}')
    log.write_text("a\n")
    mirror.push()
    push_events = mirror._push_events

    def the_job_ends_meanwhile() -> None:
        lora.write_bytes(b"lora")
        log.write_text("a\nb\n")
        status.write_text(json.dumps({"state": "succeeded", "output": str(lora)}))
        push_events()

    monkeypatch.setattr(mirror, "_push_events", the_job_ends_meanwhile)
    mirror.push()
    assert json.loads(bucket.fs.cat_file(mirror.key("status.json")))["state"] == "running"
    monkeypatch.setattr(mirror, "_push_events", push_events)
    mirror.push()
    assert json.loads(bucket.fs.cat_file(mirror.key("status.json")))["state"] == "succeeded"
    assert bucket.fs.cat_file(mirror.key("outputs/" + str(lora).lstrip("/"))) == b"lora"
    assert bucket.fs.cat_file(mirror.key("log.txt")) == b"a\nb\n"


def test_places_translate_whole_path_segments_only():
    places = Places([("/root/ws", "/tmp/x/ws"), ("/data/photos", "/tmp/x/inputs/1/photos")])
    text = json.dumps({"a": "/root/ws/loras/a.safetensors", "b": "/root/ws2/c", "c": "/data/photos",
                       "d": "/root/ws"})
    there = json.loads(places.there(text))
    assert there == {"a": "/tmp/x/ws/loras/a.safetensors", "b": "/root/ws2/c",
                     "c": "/tmp/x/inputs/1/photos", "d": "/tmp/x/ws"}
    assert json.loads(places.here(json.dumps(there))) == json.loads(text)


def test_jobs_on_the_same_inputs_share_one_staged_copy_until_a_file_changes(
        bucket_env, ws, tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_LAB_JOBS_URL", f"{bucket_env.url}/jobs")
    images = tmp_path / "images"
    shutil.copytree(tiny_models["samples"], images)
    cfg = config(tiny_models, dataset={"source": str(images)}).to_dict()

    def staged() -> list[str]:
        job = JobRecord.create("train", {"config": cfg, "gpus": 1}, ws)
        upload_for_run(job, job_url(job.id), resume=False)
        return sorted(o for o in _objects(bucket_env, "inputs") if o.endswith(".complete"))

    first = staged()
    assert len(first) == 2  # the model folder and the images
    assert staged() == first  # a second job: nothing uploaded again
    os.utime(next(images.glob("*.png")))
    changed = staged()
    assert len(changed) == 3 and set(first) < set(changed)  # the images again, the model not


def test_another_node_stages_the_inputs_alone_at_the_workers_paths(bucket_env, ws, tiny_models,
                                                                    monkeypatch):
    """A Ray Train rank on a node of its own: the base model and images where the worker put
    them on its node, the job folder not (rank 0 alone writes it); a second staging fetches nothing."""
    monkeypatch.setenv("LORA_LAB_JOBS_URL", f"{bucket_env.url}/jobs")
    job = JobRecord.create("train", {"config": config(tiny_models).to_dict(), "gpus": 2}, ws)
    upload_for_run(job, job_url(job.id), resume=False)
    root = stage_inputs(job_url(job.id))
    try:
        assert root == scratch_root(job.id) and not (root / "ws" / "jobs" / job.id).exists()
        staged = {}
        for source in (tiny_models["sd15"], tiny_models["samples"]):
            there = next(root.glob(f"inputs/*/{source.name}"))
            files = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
            assert files == sorted(p.relative_to(there) for p in there.rglob("*") if p.is_file())
            assert all((there / f).read_bytes() == (source / f).read_bytes() for f in files)
            staged |= {there / f: (there / f).stat().st_mtime_ns for f in files}
        stage_inputs(job_url(job.id))
        assert {path: path.stat().st_mtime_ns for path in staged} == staged
    finally:
        shutil.rmtree(root, ignore_errors=True)
