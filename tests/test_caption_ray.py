"""Captioning across GPUs: a caption job asking for several GPUs on a Ray cluster (a real local
head with 2 logical GPUs) captions through a pool of Ray actors, one captioner per GPU, and every
answer is written through the same journal as a run on one GPU."""
from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from test_caption_batch import assert_each_appended_once, forty_captioned
from test_ray_jobs import _only_job, _wait, folders, on_ray  # noqa: F401 (fixtures)

from lora_lab.captioning.batch import CaptionSettings, caption_dataset
from lora_lab.datasets import Dataset
from lora_lab.errors import LoraLabError
from lora_lab.jobdir import JobRecord
from lora_lab.jobs import cancel, check_params, submit
from lora_lab.jobs.kinds import kind_of

ANSWERED = re.compile(r"captioner actor (\S+) answered (\d+) image")


def _caption_on_two_gpus(ws, cli, tiny_caption, tmp_path: Path) -> JobRecord:
    cli("dataset", "ingest", forty_captioned(tmp_path), "--name", "many")
    cli("jobs", "submit", "caption", "many", "--mode", "append", "--gpus", "2", "--model",
        tiny_caption["caption_model"], "--mmproj", tiny_caption["caption_mmproj"],
        "--max-tokens", "48")
    return _only_job(ws)


def _answered(job: JobRecord) -> dict[str, int]:
    """Images each captioner actor answered, as the job's log events say."""
    counts: dict[str, int] = {}
    for e in job.events():
        if e["type"] == "log" and (m := ANSWERED.match(e.get("message", ""))):
            counts[m[1]] = counts.get(m[1], 0) + int(m[2])
    return counts


def test_a_two_gpu_caption_job_on_ray_captions_every_image_through_two_actors(
        on_ray, folders, cli, tiny_caption, tmp_path):  # noqa: F811
    job = _caption_on_two_gpus(on_ray, cli, tiny_caption, tmp_path)
    assert ("url" in job.view()["handle"]) == (folders == "bucket")
    view = _wait(job, lambda v: v["state"] not in ("queued", "running"))
    assert view["state"] == "succeeded" and view["executor"] == "ray", job.log_path.read_text()[-3000:]
    assert_each_appended_once(Dataset.open("many", on_ray))
    answered = _answered(job)
    assert len(answered) == 2 and all(answered.values()) and sum(answered.values()) == 40, answered
    done = [e for e in job.events() if e["type"] == "done"][-1]
    assert done["captioned"] == 40 and not done["failed"]
    # one actor on each of the cluster's 2 GPUs: the job's own process asked Ray for none
    loaded = [e["message"] for e in job.events() if "loaded its model" in e.get("message", "")]
    assert sorted(m[m.index("(GPU"):] for m in loaded) == ["(GPU 0) loaded its model",
                                                           "(GPU 1) loaded its model"], loaded


@pytest.mark.parametrize("killed, reads", [
    ("driver", "interrupted"),  # the job's own process: Ray ends its actors with it
    ("actor", "failed"),  # one captioner: the job stops, saying so
    ("cancel", "cancelled"),  # SIGINT through Ray, as a cancel on this box
])
def test_a_two_gpu_caption_job_killed_mid_way_resumes_with_nothing_lost_or_doubled(
        on_ray, cli, tiny_caption, tmp_path, killed, reads):  # noqa: F811
    job = _caption_on_two_gpus(on_ray, cli, tiny_caption, tmp_path)
    _wait(job, lambda v: sum(e["type"] == "progress" for e in job.events()) >= 3)
    if killed == "cancel":
        cli("jobs", "cancel", job.id)
    else:
        os.kill(job.status()["pid"] if killed == "driver" else _actor_pids(job)[0], signal.SIGKILL)
    view = _wait(job, lambda v: v["state"] != "running")
    assert view["state"] == reads, view
    if killed == "actor":
        assert "a captioner actor died" in view["error"] and "resume" in view["error"]
    ds = Dataset.open("many", on_ray)
    assert 0 < len(ds.journal.last()[1]["changes"]) < 40, "killed too late to test a resume"

    cli("jobs", "resume", job.id)
    view = _wait(job, lambda v: v["state"] not in ("queued", "running"))
    assert view["state"] == "succeeded", job.log_path.read_text()[-3000:]
    assert_each_appended_once(ds)
    resumed = job.events()[max(i for i, e in enumerate(job.events()) if e["type"] == "resumed"):]
    done = [e for e in resumed if e["type"] == "done"][-1]
    assert done["already_done"] + done["captioned"] == 40 and done["already_done"] > 0


def _actor_pids(job: JobRecord) -> list[int]:
    """The captioner actors' process ids, as their "loaded its model" notices name them."""
    return [int(m[1]) for e in job.events()
            if (m := re.match(r"captioner actor \S+:(\d+) .*loaded its model", e.get("message", "")))]


def test_a_caption_job_asking_for_more_gpus_than_the_cluster_has_waits_saying_why(
        on_ray, cli, tiny_caption, tmp_path):  # noqa: F811
    cli("dataset", "ingest", forty_captioned(tmp_path), "--name", "many")
    job = submit("caption", {"dataset": "many", "gpus": 3, "model": str(tiny_caption["caption_model"]),
                             "mmproj": str(tiny_caption["caption_mmproj"])}, on_ray)
    view = _wait(job, lambda v: v.get("reason"))
    assert view["state"] == "queued" and view["phase"] == "waiting for the Ray cluster"
    assert "asks for 3 GPUs" in view["reason"] and "has 2" in view["reason"]
    assert view["handle"]["submission_id"] is None
    assert cancel(job)["state"] == "cancelled"


@pytest.mark.parametrize("gpus, local, says", [
    (0, False, "gpus must be a whole number >= 1, not 0"),
    (-1, True, "gpus must be a whole number >= 1, not -1"),
    ("2", False, "caption parameter gpus: '2' is not a whole number"),
    (2.0, False, "caption parameter gpus: 2.0 is not a whole number"),
    (True, False, "caption parameter gpus: True is not a whole number"),
    (2, True, "2 GPUs caption through a Ray cluster"),  # this box captions with one model
    (10_000, True, "this machine has"),
])
def test_bad_gpus_are_refused_before_the_job_exists(ws, cli, tiny_caption, tmp_path, gpus, local,
                                                     says):
    cli("dataset", "ingest", forty_captioned(tmp_path), "--name", "many")
    params = {"dataset": "many", "gpus": gpus, "model": str(tiny_caption["caption_model"]),
              "mmproj": str(tiny_caption["caption_mmproj"])}
    with pytest.raises(LoraLabError, match=re.escape(says)):
        check_params("caption", params, ws, local=local)


def test_several_gpus_are_for_a_model_of_the_runs_own_not_for_caption_servers(ws, cli, tmp_path):
    cli("dataset", "ingest", forty_captioned(tmp_path), "--name", "many")
    with pytest.raises(LoraLabError, match="a run through caption servers uses theirs"):
        check_params("caption", {"dataset": "many", "server": "http://127.0.0.1:9", "gpus": 2},
                     ws, local=False)


def test_the_gpus_a_caption_job_holds_and_the_ones_its_actors_take():
    caption = kind_of("caption")
    cases = {  # params -> (GPUs the job holds, of those its Ray actors')
        (None, 1): (1, 0), (None, 2): (2, 2), (None, 4): (4, 4), ("http://h:1", 1): (0, 0)}
    for (server, gpus), held in cases.items():
        params = {"server": server, "gpus": gpus}
        assert (caption.gpus(params), caption.actor_gpus(params)) == held, params
    assert caption.gpus({"server": None}) == 1  # a spec written before gpus existed
    train = kind_of("train")  # on Ray, several GPUs are Ray Train's workers', one each
    assert [train.actor_gpus({"gpus": g}) for g in (1, 2, 4)] == [0, 2, 4]


def test_a_cluster_caption_job_may_ask_for_more_gpus_than_this_box_has(ws, cli, tiny_caption,
                                                                      tmp_path):
    cli("dataset", "ingest", forty_captioned(tmp_path), "--name", "many")
    params = check_params("caption", {"dataset": "many", "gpus": 64,
                                      "model": str(tiny_caption["caption_model"]),
                                      "mmproj": str(tiny_caption["caption_mmproj"])}, ws, local=False)
    assert params["gpus"] == 64  # the cluster's queue holds it until it has them
    assert check_params("caption", {**params, "gpus": 1}, ws)["gpus"] == 1


def test_a_pool_outside_a_ray_job_says_where_it_runs(ws, cli, tmp_path, monkeypatch):
    from lora_lab.captioning.pool import CaptionPool

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cli("dataset", "ingest", forty_captioned(tmp_path), "--name", "many")
    pool = CaptionPool(lambda: None, "never-made", 2)
    with pytest.raises(LoraLabError, match="runs as a job on a Ray cluster"):
        caption_dataset(Dataset.open("many", ws), pool, CaptionSettings("Describe.", mode="overwrite"))
