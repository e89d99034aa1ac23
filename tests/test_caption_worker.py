"""The resident caption worker: one model load, one-image requests, crashes become errors."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from lora_lab.captioning import CaptionError, CaptionSettings, caption_dataset, prepare_image
from lora_lab.captioning.worker import CaptionWorker
from lora_lab.datasets import Dataset


@pytest.fixture(scope="module")
def worker(tiny_caption):
    w = CaptionWorker(tiny_caption["caption_model"], tiny_caption["caption_mmproj"], max_tokens=8)
    yield w
    w.close()


@pytest.fixture(scope="module")
def image(tiny_caption):
    return prepare_image(tiny_caption["samples"] / "red_circle.jpg")


def test_answers_like_the_model_in_process(worker, caption_model, image):
    answer = worker.caption(image, "Describe.")  # text, retried and truncated, across the pipe
    assert answer == caption_model.caption(image, "Describe.") and answer.truncated
    assert worker.name == caption_model.name
    pid = worker.pid
    worker.caption(image, "Describe again.")
    assert worker.pid == pid  # the model stays loaded between requests


def test_recaptions_one_dataset_image(cli, ws, worker, tiny_caption):
    cli("dataset", "ingest", tiny_caption["samples"], "--name", "shapes")
    ds = Dataset.open("shapes", ws)
    before = ds.caption("green_circle.jpg")
    report = caption_dataset(ds, worker, CaptionSettings("Describe.", trigger="sks",
                                                         mode="overwrite"),
                             files=["green_circle.jpg"])
    assert report.captioned == 1 and report.truncated == ["green_circle.jpg"]  # max_tokens=8
    after = ds.caption("green_circle.jpg")
    assert after != before and after.startswith("sks, ")
    assert ds.image("green_circle.jpg")["caption_model"] == worker.name
    ds.undo()
    assert ds.caption("green_circle.jpg") == before


def test_a_crash_mid_request_is_an_error_then_a_fresh_worker(worker, image):
    worker.caption(image, "Describe.")
    starts, pid = worker.starts, worker.pid
    os.kill(pid, signal.SIGSTOP)  # the request below is surely in flight when the kill lands
    threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
    t0 = time.monotonic()
    with pytest.raises(CaptionError, match=r"caption worker died \(exit code -9\) while "
                                           "captioning; it restarts with the next request"):
        worker.caption(image, "Describe.")
    assert time.monotonic() - t0 < 10
    assert worker.caption(image, "Describe.").text
    assert worker.starts == starts + 1 and worker.pid != pid


def test_a_request_that_hangs_times_out(worker, image):
    worker.caption(image, "Describe.")
    pid, worker.timeout = worker.pid, 1.0
    try:
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(CaptionError, match="took longer than 1 s captioning; it was stopped"):
            worker.caption(image, "Describe.")
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        worker.timeout = 300.0
    assert worker.caption(image, "Describe.").text


def test_a_worker_that_died_idle_restarts_without_an_error(worker, image):
    worker.start()
    starts, pid = worker.starts, worker.pid
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    assert worker.caption(image, "Describe.").text
    assert worker.starts == starts + 1


def test_bad_model_files_are_reported_and_nothing_keeps_running(tmp_path, tiny_caption, image):
    empty = tmp_path / "empty.gguf"
    empty.touch()
    for model, mmproj, message in [
        (tmp_path / "missing.gguf", tiny_caption["caption_mmproj"], "caption model file not found"),
        (empty, tiny_caption["caption_mmproj"], "is empty"),
        (tiny_caption["caption_model"], tiny_caption["caption_model"], "not a vision projector"),
    ]:
        w = CaptionWorker(model, mmproj)
        with pytest.raises(CaptionError, match=message):
            w.caption(image, "Describe.")
        assert w.pid is None


def test_close_ends_the_process(tiny_caption, image):
    w = CaptionWorker(tiny_caption["caption_model"], tiny_caption["caption_mmproj"], max_tokens=4)
    w.start()
    pid = w.pid
    w.close()
    assert w.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
