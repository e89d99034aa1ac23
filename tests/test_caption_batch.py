"""Captioning a dataset on the tiny GGUF model: modes, resume, and the batch's bad inputs."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import jpeg_bytes

from lora_lab.captioning import Answer
from lora_lab.captioning.batch import CaptionSettings, caption_dataset
from lora_lab.datasets import Dataset
from lora_lab.errors import LoraLabError
from lora_lab.jobdir import list_jobs


@pytest.fixture
def ds(cli, ws, tiny_caption) -> Dataset:
    cli("dataset", "ingest", tiny_caption["samples"], "--name", "shapes")
    return Dataset.open("shapes", ws)


def captions(ds):
    return {r["file"]: ds.caption(r["file"]) for r in ds.index.all()}


class Interrupting:
    """The real tiny model, interrupted (as by Ctrl-C) after ``n`` captions."""

    def __init__(self, caption_model, n):
        self.caption_model, self.n, self.name = caption_model, n, caption_model.name

    def caption(self, image, prompt):
        if self.n == 0:
            raise KeyboardInterrupt
        self.n -= 1
        return self.caption_model.caption(image, prompt)


def test_cli_captions_only_uncaptioned_by_default(cli, ds, tiny_caption):
    before = captions(ds)
    out = json.loads(cli("caption", "shapes", "--model", tiny_caption["caption_model"], "--mmproj",
                         tiny_caption["caption_mmproj"], "--trigger", "sks", "--max-tokens", "8",
                         "--json")[1])
    assert (out["captioned"], out["already_done"], out["failed"]) == (3, 5, [])
    after = captions(ds)
    for f, text in before.items():
        assert after[f] == text if text else after[f].startswith("sks, ")
    row = ds.image("purple_square.jpg")
    assert row["caption_model"] == out["model"] and "{trigger}" in row["caption_prompt"]
    job = ds.path.parent.parent / "jobs" / out["job"]
    assert json.loads((job / "status.json").read_text())["state"] == "succeeded"
    events = [json.loads(line) for line in (job / "events.jsonl").read_text().splitlines()]
    # the tiny model never stops by itself: each new caption also logs that it was cut
    assert [e["type"] for e in events if e["type"] != "log"] == ["progress"] * 8 + ["done"]
    assert [e["file"] for e in events if e["type"] == "log"] == out["truncated"]


def test_a_model_that_always_hits_the_token_limit(cli, ws, ds, tiny_caption):
    """Each answer is asked again at double the limit, then saved marked truncated: the index
    filters them, a reindex keeps the mark, a hand edit clears it, and the job says so."""
    rc, text, _ = cli("caption", "shapes", "--model", tiny_caption["caption_model"], "--mmproj",
                      tiny_caption["caption_mmproj"], "--max-tokens", "8")
    cut = ["purple_square.jpg", "white_circle.webp", "yellow_triangle.webp"]  # the uncaptioned
    assert "3 answer(s) hit the token limit (--max-tokens) and were asked again" in text
    assert "3 caption(s) still hit it: saved but marked truncated" in text
    assert [line.strip() for line in text.splitlines() if "truncated " in line] == [
        f"truncated {f}" for f in cut]
    [job] = list_jobs(ws)
    status = job.view()
    assert (status["captioned"], status["retried"], status["truncated"]) == (3, 3, 3)
    events = job.events()
    logs = [e for e in events if e["type"] == "log"]
    assert [e["file"] for e in logs] == cut and all(e["truncated"] for e in logs)
    assert "may end mid-sentence, and is marked truncated" in logs[0]["message"]
    assert (events[-2]["retried"], events[-2]["truncated"]) == (3, 3)  # the last progress
    assert (events[-1]["retried"], events[-1]["truncated"]) == (3, cut)  # done

    def marked():
        return sorted(r["file"] for r in Dataset.open("shapes", ws).images(truncated=True).items)

    assert marked() == cut and ds.images(truncated=False).total == 5
    assert all(ds.image(f)["caption_truncated"] == 1 for f in cut)
    cli("dataset", "reindex", "shapes")  # the index is a cache: the sources log restores the mark
    assert marked() == cut
    ds.set_caption("purple_square.jpg", "a purple square, whole now")
    assert marked() == ["white_circle.webp", "yellow_triangle.webp"]


@pytest.mark.parametrize("mode", ["overwrite", "append", "prepend"])
def test_modes(ds, caption_model, mode):
    before = captions(ds)
    caption_dataset(ds, caption_model, CaptionSettings("Describe.", mode=mode))
    for f, text in captions(ds).items():
        old = before[f]
        if mode == "overwrite" or not old:
            assert text and text != old
        elif mode == "append":
            assert text.startswith(old) and len(text) > len(old)
        else:
            assert text.endswith(old) and len(text) > len(old)
    ds.undo()  # the whole batch is one undo step
    assert captions(ds) == before


def test_interrupted_batch_resumes_without_duplicating(ds, caption_model):
    before = captions(ds)
    settings = CaptionSettings("Describe.", mode="append")
    with pytest.raises(KeyboardInterrupt):
        caption_dataset(ds, Interrupting(caption_model, 3), settings)
    half = captions(ds)
    assert sum(half[f] != before[f] for f in before) == 3
    report = caption_dataset(ds, caption_model, settings)
    assert (report.already_done, report.captioned) == (3, 5)
    final = captions(ds)
    for f, old in before.items():
        if half[f] != old:
            assert final[f] == half[f]  # done before the interruption: not appended twice
        assert final[f].startswith(old or "") and final[f] != old
    entry = ds.journal.last()[1]
    assert len(entry["changes"]) == 8 and entry["done"]


def test_a_broken_image_mid_batch_is_reported_and_the_rest_go_on(ds, caption_model):
    (ds.path / "purple_square.jpg").write_bytes(b"broken after ingest")
    events = []
    report = caption_dataset(ds, caption_model, CaptionSettings("Describe.", mode="overwrite"),
                             on_event=events.append)
    assert [f["file"] for f in report.failed] == ["purple_square.jpg"]
    assert "cannot read" in report.failed[0]["error"] and report.captioned == 7
    [log] = [e for e in events if e["type"] == "log" and not e.get("truncated")]
    assert log["level"] == "warning" and log["file"] == "purple_square.jpg"
    assert log["message"].startswith("purple_square.jpg: cannot read")
    assert [e["step"] for e in events if e["type"] == "progress"] == list(range(1, 9))


def test_which_model_and_prompt_made_a_caption_survives_a_reindex(cli, ws, ds, caption_model):
    caption_dataset(ds, caption_model, CaptionSettings("Describe {filename}.", mode="overwrite"))
    (ds.path / "red_circle.txt").write_text("edited by hand")
    cli("dataset", "reindex", "shapes")
    ds = Dataset.open("shapes", ws)
    sources = {r["file"]: (r["caption_model"], r["caption_prompt"]) for r in ds.index.all()}
    assert sources.pop("red_circle.jpg") == (None, None)
    assert set(sources.values()) == {(caption_model.name, "Describe {filename}.")}


class Boilerplate(Interrupting):
    """The real model, whose answer is replaced by an opener that cleans up to nothing."""

    def caption(self, image, prompt):
        self.caption_model.caption(image, prompt)
        return Answer("The image shows")


def test_an_empty_answer_is_a_failure_not_an_empty_caption(ds, caption_model):
    before = captions(ds)
    settings = CaptionSettings("Describe.", mode="overwrite")
    report = caption_dataset(ds, Boilerplate(caption_model, 0), settings)
    assert {f["error"] for f in report.failed} == {"the model returned an empty caption"}
    assert captions(ds) == before


class Vanishing(Interrupting):
    """The real model; the dataset folder is deleted while it captions the second image."""

    def __init__(self, caption_model, ds):
        super().__init__(caption_model, 0)
        self.ds, self.calls = ds, 0

    def caption(self, image, prompt):
        self.calls += 1
        if self.calls == 2:
            shutil.rmtree(self.ds.path)
        return self.caption_model.caption(image, prompt)


def test_dataset_folder_disappearing_mid_batch(ds, caption_model):
    with pytest.raises(LoraLabError, match="disappeared mid-batch"):
        caption_dataset(ds, Vanishing(caption_model, ds),
                        CaptionSettings("Describe.", mode="overwrite"))


def test_empty_dataset_and_bad_settings(cli, ds, caption_model, tiny_caption):
    with pytest.raises(LoraLabError, match="unknown caption mode"):
        caption_dataset(ds, caption_model, CaptionSettings("Describe.", mode="sideways"))
    # both refused before any model is loaded (the default model files do not exist)
    assert "bad placeholder {name}" in cli.fails("caption", "shapes", "--prompt", "a {name}")
    assert "empty without a value for {trigger}" in cli.fails("caption", "shapes",
                                                              "--prompt", "Caption {trigger}.")
    for f in ds.path.glob("[!.]*"):
        f.unlink()
    assert "no images to caption" in cli.fails(
        "caption", "shapes", "--model", tiny_caption["caption_model"],
        "--mmproj", tiny_caption["caption_mmproj"])


def test_caption_killed_with_sigkill_resumes_with_nothing_lost_or_doubled(cli, ws, tmp_path,
                                                                          tiny_caption):
    cli("dataset", "ingest", forty_captioned(tmp_path), "--name", "many")
    argv = [str(Path(sys.executable).parent / "lora-lab"), "caption", "many", "--mode", "append",
            "--model", str(tiny_caption["caption_model"]), "--mmproj",
            str(tiny_caption["caption_mmproj"]), "--max-tokens", "48", "--json"]
    env = {**os.environ, "LORA_LAB_HOME": str(ws.root)}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        events = _wait_for_events(ws, proc, at_least=5)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    ds = Dataset.open("many", ws)
    assert 0 < len(ds.journal.last()[1]["changes"]) < 40, "killed too late to test a resume"
    assert events and {e["type"] for e in events} <= {"progress", "log"}  # killed mid-way

    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["already_done"] + report["captioned"] == 40 and report["failed"] == []
    assert_each_appended_once(ds)
    assert not [p for p in ds.path.rglob("*") if p.name.endswith(".tmp")]


def forty_captioned(tmp_path: Path) -> Path:
    """A folder of 40 images, each with its caption ``origNN``: a run killed mid-way leaves
    some appended to and some not."""
    src = tmp_path / "many"
    src.mkdir()
    for i in range(40):
        (src / f"img{i:02d}.jpg").write_bytes(jpeg_bytes((96, 96), seed=i))
        (src / f"img{i:02d}.txt").write_text(f"orig{i:02d}")
    return src


def assert_each_appended_once(ds: Dataset) -> None:
    """The last caption run, killed and resumed, appended to each of the 40 captions once."""
    entry = ds.journal.last()[1]
    assert entry["done"] and sorted(f for f, _, _ in entry["changes"]) == sorted(
        f"img{i:02d}.jpg" for i in range(40))
    for file, before, after in entry["changes"]:
        assert before == f"orig{file[3:5]}"  # appended once, to the original caption
        assert after.startswith(before + ", ") and ds.caption(file) == after


def _wait_for_events(ws, proc, at_least: int) -> list[dict]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        for job in Path(ws.root, "jobs").glob("*/events.jsonl"):
            lines = job.read_text().splitlines()
            if len(lines) >= at_least:
                return [json.loads(line) for line in lines[:-1]]  # the last may be torn
        time.sleep(0.01)
    raise AssertionError("the caption job made no progress")
