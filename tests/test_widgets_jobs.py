"""The training panels in-process, driven as a user drives them (setting values, clicking), on
real tiny training jobs: TrainingLauncher, TrainingMonitor, JobsPanel; and the charts and
presets under them. No timing assertions: tests wait for states, never for durations."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import threading
import time

import pytest
from test_train import config

from lora_lab.errors import LoraLabError, NotFound
from lora_lab.jobdir import JobRecord
from lora_lab.jobs import submit
from lora_lab.training.config import TrainConfig
from lora_lab.training.presets import PRESETS, apply_preset
from lora_lab.widgets.chart import Curves, Series, line_chart_svg, loss_chart_svg, nice_ticks
from lora_lab.widgets.common import Poller
from lora_lab.widgets.jobs_panel import JobsPanel
from lora_lab.widgets.launcher import TrainingLauncher
from lora_lab.widgets.monitor import CURVE_POINTS, LOG_LINES, TrainingMonitor


def follow(monitor: TrainingMonitor, until, timeout: float = 180.0) -> TrainingMonitor:
    """Refresh ``monitor`` as its poller would, until ``until(monitor)`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        monitor.refresh()
        if until(monitor):
            return monitor
        time.sleep(0.2)
    log = monitor.job.log_path.read_text() if monitor.job.log_path.exists() else ""
    raise AssertionError(f"{monitor.follower.view} after {timeout} s; log:\n{log}")


def state(monitor: TrainingMonitor) -> str:
    return monitor.follower.view["state"]


def ended(monitor: TrainingMonitor) -> bool:
    return state(monitor) not in ("queued", "running")


def stepping(monitor: TrainingMonitor) -> bool:
    return monitor.follower.progress is not None or ended(monitor)


def long_job(ws, tiny_models, **train) -> JobRecord:
    cfg = config(tiny_models, train={"max_steps": 100_000, **train})
    return submit("train", {"config": cfg.to_dict()}, ws)


# -- charts and presets ----------------------------------------------------------------------------
def test_series_stays_bounded_keeps_the_newest_and_rewinds_on_resume():
    s = Series(limit=100)
    for step in range(1, 180_001):  # an hour at 50 events a second
        s.add(step, 1.0 / step)
    points = s.points()
    assert len(points) <= 101 and points[0][0] == 1 and points[-1] == (180_000, 1.0 / 180_000)
    assert [x for x, _ in points] == sorted(x for x, _ in points)
    s.add(90_000, 0.5)  # resumed from a checkpoint at step 90,000: the later points go
    assert s.points()[-1] == (90_000, 0.5) and all(x < 90_000 for x, _ in s.points()[:-1])
    s.add(90_001, float("nan"))  # a NaN loss is not drawn
    assert s.points()[-1][0] == 90_000


def test_line_chart_has_axes_ticks_legend_and_an_empty_state():
    svg = line_chart_svg({"loss": [(1, 0.3), (50, 0.12), (100, 0.08)], "avg": [(1, 0.3), (100, 0.1)]},
                         title="loss <&>", x_label="step", y_label="loss")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<polyline") == 2 and "loss &lt;&amp;&gt;" in svg
    assert ">100<" in svg and ">0.3<" in svg  # round ticks covering both ranges
    assert "no data yet" in line_chart_svg({"loss": []})
    assert nice_ticks(0.0123, 0.2)[1] == (0.0, 0.2)
    # every colour follows JupyterLab's theme (dark included), with a light fallback elsewhere
    assert not re.search(r'(fill|stroke)="', svg) and 'style="fill:var(--jp-ui-font-color1, #333)"' in svg
    texts = re.findall(r"<text[^>]*>", svg)  # the legend too: its names read on any theme
    assert len(texts) > 10 and all('style="fill:var(--jp-ui-font-color1' in t for t in texts)
    assert "var(--jp-layout-color0, #fff)" in svg and "var(--jp-brand-color1, #1f77b4)" in svg
    events = [{"type": "progress", "step": i, "total": 3, "loss": 0.1 * i, "lr": 1e-4} for i in (1, 2, 3)]
    assert loss_chart_svg(events).count("<polyline") == 2
    curves = Curves()
    curves.add({"type": "progress", "step": 1, "total": 9, "images_per_s": 2.0})  # a caption job's
    assert not curves.has_loss and "no data yet" in curves.lr_svg()


def test_every_preset_is_a_valid_config(tiny_models):
    base = config(tiny_models).to_dict()
    for name in PRESETS:
        cfg = TrainConfig.from_dict(apply_preset(name, base))
        assert cfg.model.base == str(tiny_models["sd15"]) and cfg.dataset.trigger == "sks"
    assert TrainConfig.from_dict(apply_preset("sdxl-lowvram", base)).train.gradient_checkpointing
    with pytest.raises(LoraLabError, match="unknown preset 'sd3'"):
        apply_preset("sd3", base)


# -- launcher --------------------------------------------------------------------------------------
def tiny_form(launcher: TrainingLauncher, **values) -> TrainingLauncher:
    """The tiny model's settings over any preset's (a pod preset's GPU-only ones included)."""
    settings = {"dataset.resolution": 64, "train.max_steps": 3, "train.lr": 1e-3,
                "train.optimizer": "adamw", "train.mixed_precision": "no", "network.rank": 4,
                "network.alpha": 4.0, "dataset.trigger": "sks", "save.name": "from_panel",
                "train.device": "auto"}
    for dotted, value in {**settings, **values}.items():
        launcher.fields[dotted].value = value
    return launcher


def test_launcher_counts_steps_saves_toml_trains_and_monitors(ws, tiny_models, tmp_path):
    launcher = TrainingLauncher(str(tiny_models["samples"]), str(tiny_models["sd15"]), workspace=ws,
                                autostart=False)
    assert launcher.fields["dataset.resolution"].value == 512  # from the sd15 preset
    assert launcher.fields["save.name"].value == ""  # the dataset's name and the job's time
    launcher.preset.value = "sdxl"
    assert launcher.fields["dataset.resolution"].value == 1024
    assert launcher.fields["train.gradient_checkpointing"].value is True
    launcher.preset.value = "sd15"
    tiny_form(launcher, **{"train.max_steps": 0, "train.epochs": 2, "dataset.repeats": 3,
                           "train.batch_size": 2})
    assert launcher.problems == {} and not launcher.train_button.disabled
    assert launcher.steps == 24 and "8 images x 3 repeats" in launcher.plan.value  # ceil(24/2) x 2
    launcher.fields["train.max_steps"].value = 3
    assert launcher.steps == 3 and "max steps 3 wins" in launcher.plan.value

    launcher.toml_path.value = str(tmp_path / "cfg" / "run.toml")
    launcher.save_button.click()
    assert launcher.notice.kind == "ok", launcher.notice.text
    assert TrainConfig.load(tmp_path / "cfg" / "run.toml") == launcher.config()

    launcher.train_button.click()
    assert launcher.notice.kind == "ok", launcher.notice.text
    assert launcher.job.spec()["params"]["config"] == launcher.config().to_dict()
    monitor = follow(launcher.monitor, ended)
    assert state(monitor) == "succeeded", monitor.job.log_path.read_text()
    assert monitor.bar.value == 1.0 and monitor.bar.bar_style == "success"
    assert "step 3/3" in monitor.stats.value and "loss " in monitor.stats.value
    assert monitor.charts.value.count("<svg") == 2 and monitor.charts.layout.display is None
    assert "phase phase=training" in monitor.log_view.value
    assert monitor.cancel_button.disabled and monitor.resume_button.disabled
    assert (ws.loras / "from_panel.safetensors").is_file()
    # samples are on by default: the trigger and two captions, about 4 times over the run
    sample = launcher.config().sample
    assert sample.prompts[0] == "sks" and len(sample.prompts) == 3 and sample.every_n_steps == 1
    assert len(list((launcher.job.path / "samples").glob("step-*.png"))) == 3 * 3


def test_launcher_invalid_values_are_marked_inline_and_nothing_is_submitted(ws, tiny_models, tmp_path):
    launcher = tiny_form(TrainingLauncher(str(tiny_models["samples"]), str(tiny_models["sd15"]),
                                          workspace=ws, autostart=False))
    launcher.fields["dataset.resolution"].value = 100
    launcher.fields["train.lr"].value = -1.0
    launcher.fields["save.name"].value = "../escape"
    launcher.fields["sample.prompts"].value = ""  # the default prompts taken out ...
    launcher.fields["sample.every_n_steps"].value = 2  # ... while samples are asked for
    assert set(launcher.problems) == {"dataset.resolution", "train.lr", "save.name", "sample.prompts"}
    assert "not a multiple of 64" in launcher.messages["dataset.resolution"].value
    assert "out of range" in launcher.messages["train.lr"].value
    assert "at least one prompt" in launcher.messages["sample.prompts"].value
    assert launcher.messages["network.rank"].value == "" and launcher.train_button.disabled
    assert launcher.steps is None
    launcher.toml_path.value = str(tmp_path / "bad.toml")
    for button in (launcher.train_button, launcher.save_button):  # click() ignores `disabled`
        button.click()
        assert launcher.notice.kind == "error" and "fix the fields marked" in launcher.notice.text
    assert launcher.job is None and not list(ws.jobs.iterdir()) and not (tmp_path / "bad.toml").exists()

    launcher.fields["dataset.source"].value = "no-such-dataset"
    assert "neither a dataset" in launcher.messages["dataset.source"].value
    empty = tmp_path / "empty"
    empty.mkdir()
    launcher.fields["dataset.source"].value = str(empty)
    assert "has no images" in launcher.messages["dataset.source"].value

    launcher.fields["sample.prompts"].value = "sks, a red circle\n\n"  # fix them all: ready
    for dotted, value in (("dataset.resolution", 64), ("train.lr", 1e-3), ("save.name", "ok"),
                          ("dataset.source", str(tiny_models["samples"]))):
        launcher.fields[dotted].value = value
    assert launcher.problems == {} and not launcher.train_button.disabled
    assert launcher.config().sample.prompts == ("sks, a red circle",)
    assert not list(ws.jobs.iterdir())


def test_launcher_says_at_once_that_8bit_adam_needs_bitsandbytes(ws, tiny_models, monkeypatch):
    real = importlib.util.find_spec  # as on a box without the `memory` extra
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    launcher = TrainingLauncher(str(tiny_models["samples"]), str(tiny_models["sd15"]),
                                preset="sd15-lowvram", workspace=ws, autostart=False)
    assert "needs the bitsandbytes package" in launcher.messages["train.optimizer"].value
    assert launcher.train_button.disabled
    launcher.fields["train.optimizer"].value = "adamw"
    assert "train.optimizer" not in launcher.problems


# -- monitor ---------------------------------------------------------------------------------------
def test_monitor_refuses_a_job_that_does_not_exist(ws):
    with pytest.raises(NotFound, match="no job 20260101-000000-train-abcdef"):
        TrainingMonitor("20260101-000000-train-abcdef", ws, autostart=False)
    with pytest.raises(LoraLabError, match="is not a job id"):
        TrainingMonitor("../../etc", ws, autostart=False)


def test_monitor_shows_a_job_that_fails_while_watched(ws, tiny_models, tmp_path):
    data = shutil.copytree(tiny_models["samples"], tmp_path / "vanishing")
    cfg = config(tiny_models, dataset={"source": str(data)})
    job = submit("train", {"config": cfg.to_dict()}, ws)
    monitor = TrainingMonitor(job.id, ws, autostart=False)
    assert state(monitor) in ("queued", "running") and not monitor.cancel_button.disabled
    shutil.rmtree(data)  # before the job process reads it (it is still importing torch)
    follow(monitor, ended)
    assert state(monitor) == "failed"
    assert monitor.notice.kind == "error" and "does not exist" in monitor.notice.text
    assert monitor.bar.bar_style == "danger" and not monitor.resume_button.disabled
    assert monitor.cancel_button.disabled


def test_a_new_monitor_reattaches_to_a_running_job_and_cancels_it(ws, tiny_models):
    job = long_job(ws, tiny_models)
    first = follow(TrainingMonitor(job, ws, autostart=False),
                   lambda m: stepping(m) and m.follower.progress["step"] >= 3)
    seen = first.follower.progress["step"]
    first.close()  # the kernel restarts: the monitor and its state are gone

    again = TrainingMonitor(job.id, ws, autostart=False)
    assert state(again) == "running"
    assert again.follower.progress["step"] >= seen  # everything so far, read from the files
    assert again.follower.events_read >= first.follower.events_read
    assert again.follower.curves.has_loss and "<polyline" in again.charts.value
    follow(again, lambda m: m.follower.progress["step"] > seen + 2)  # ... and it follows on

    again.cancel_button.click()
    assert again.cancelling is not None and again.cancel_button.disabled
    again.cancelling.join(timeout=120)
    follow(again, ended)
    assert state(again) == "cancelled" and again.bar.bar_style == "warning"
    assert not again.resume_button.disabled
    again.cancel_button.click()  # already cancelled: said at once, no thread
    assert again.notice.kind == "error" and "already cancelled" in again.notice.text


def test_monitor_shows_a_killed_job_as_interrupted_and_resumes_it(ws, tiny_models):
    job = long_job(ws, tiny_models)
    monitor = follow(TrainingMonitor(job.id, ws, autostart=False), stepping)
    os.killpg(job.status()["pgid"], signal.SIGKILL)
    follow(monitor, ended, timeout=30)
    assert state(monitor) == "interrupted" and "resume it to continue" in monitor.notice.text
    assert monitor.bar.bar_style == "danger" and not monitor.resume_button.disabled
    assert not monitor.poller.running  # it never started: autostart=False

    monitor.resume_button.click()
    assert monitor.notice.kind == "ok", monitor.notice.text
    assert state(monitor) in ("queued", "running") and monitor.resume_button.disabled
    before = monitor.follower.events_read
    follow(monitor, lambda m: m.follower.events_read > before and stepping(m) and
           any(e["type"] == "progress" for e in job.events(before)))
    assert monitor.notice.kind != "error"
    monitor.cancel_button.click()
    monitor.cancelling.join(timeout=120)
    assert state(follow(monitor, ended)) == "cancelled"


def hand_written_job(ws, kind: str, events: list[dict], state: str = "running") -> JobRecord:
    """A job directory as a job process writes it, without the process (for the panels' reading)."""
    job = JobRecord.create(kind, {"dataset": "shapes"} if kind == "caption" else {"config": {}}, ws)
    for event in events:
        job.event(event)
    job.set_status(state, phase="captioning" if kind == "caption" else "training")
    return job


def test_a_monitor_follows_a_resume_made_elsewhere(ws):
    """Cancelled, the job is still watched (one stat a tick): a resume from the sidebar or the
    CLI shows as running with Cancel enabled; once it has succeeded, the watch ends."""
    job = hand_written_job(ws, "train", [], state="cancelled")
    monitor = TrainingMonitor(job.id, ws, interval=0, autostart=False)  # every tick shows
    assert monitor.cancel_button.disabled and not monitor.resume_button.disabled
    assert monitor.tick() is True  # resumable: keep watching
    job.event({"type": "log_line", "line": "unseen until the status changes"})
    assert monitor.tick() is True and not monitor.follower.log_lines  # nothing read

    job.set_status("running", phase="training")  # resumed elsewhere (this process: alive)
    assert monitor.tick() is True
    assert state(monitor) == "running" and "running" in monitor.state.value
    assert not monitor.cancel_button.disabled and monitor.resume_button.disabled
    assert list(monitor.follower.log_lines) == ["unseen until the status changes"]

    job.set_status("succeeded", phase="done")
    assert monitor.tick() is False and "succeeded" in monitor.state.value


def test_monitor_copes_with_a_caption_job_and_throttles_and_stays_bounded(ws):
    progress = [{"type": "progress", "step": i, "total": 10, "file": f"{i}.jpg", "captioned": i,
                 "failed": 0, "images_per_s": 2.5, "eta_s": (10 - i) / 2.5} for i in range(1, 4)]
    job = hand_written_job(ws, "caption", [{"type": "phase", "phase": "captioning"}, *progress])
    monitor = TrainingMonitor(job, ws, interval=3600, autostart=False)
    assert "image 3/10" in monitor.stats.value and "2.50 images/s" in monitor.stats.value
    assert monitor.bar.value == pytest.approx(0.3) and monitor.charts.layout.display == "none"

    for i in range(4, 6):
        job.event({**progress[0], "step": i})
    assert monitor.tick() is True  # read, but shown at most once an interval (an hour here)
    assert monitor.follower.progress["step"] == 5 and "image 3/10" in monitor.stats.value
    monitor.refresh()  # an explicit refresh shows it at once
    assert "image 5/10" in monitor.stats.value

    for i in range(20_000):  # a long run's worth of events and log lines
        job.event({"type": "progress", "step": i + 1, "total": 20_000, "loss": 1.0, "lr": 1e-4})
    job.log_path.write_text("".join(f"line {i}\n" for i in range(5000)))
    job.event({"type": "done"})
    job.set_status("succeeded", phase="done", progress=1.0)
    assert monitor.tick() is False  # ended and all read: shown at once, the poller may stop
    assert len(monitor.follower.curves.loss) <= CURVE_POINTS + 1
    assert len(monitor.follower.log_lines) == LOG_LINES
    assert "line 4999" in monitor.log_view.value and "line 4799" not in monitor.log_view.value
    # newest at the bottom, in a box that shows its bottom (column-reverse starts scrolled there)
    shown = re.search(r"<pre[^>]*>(.*)</pre>", monitor.log_view.value, re.S).group(1).splitlines()
    assert shown[-1] == "line 4999" and shown[0] == "line 4800" and len(shown) == LOG_LINES
    assert "flex-direction:column-reverse" in monitor.log_view.value
    assert monitor.bar.bar_style == "success" and "step 20000/20000" in monitor.stats.value


# -- jobs panel ------------------------------------------------------------------------------------
def test_jobs_panel_lists_true_states_and_opens_a_monitor(ws):
    caption = hand_written_job(ws, "caption", [{"type": "progress", "step": 2, "total": 4,
                                                "images_per_s": 1.0, "eta_s": 2.0}])
    caption.set_status("running", phase="captioning", progress=0.5)
    dead = hand_written_job(ws, "train", [], "running")
    dead.set_status("running", pid=2**22 + 7, phase="training")  # a pid that runs nothing
    panel = JobsPanel(ws, autostart=False)
    rows = {r["id"]: r for r in panel.rows}
    assert rows[caption.id]["state"] == "running" and rows[dead.id]["state"] == "interrupted"
    labels = dict((v, k) for k, v in panel.jobs.options)
    assert "caption" in labels[caption.id] and "\u00a050%\u00a0" in labels[caption.id]
    assert "interrupted" in labels[dead.id] and "training" in labels[dead.id]

    panel.open_button.click()  # nothing selected
    assert panel.notice.kind == "error" and "select a job" in panel.notice.text
    panel.jobs.value = caption.id
    panel.open_button.click()
    assert isinstance(panel.monitor, TrainingMonitor) and panel.monitor.job.id == caption.id
    assert "image 2/4" in panel.monitor.stats.value and panel.monitor_box.children == (panel.monitor,)

    newer = hand_written_job(ws, "train", [])  # appears on the next refresh, the selection kept
    panel.refresh_button.click()
    assert newer.id in {r["id"] for r in panel.rows} and panel.jobs.value == caption.id
    panel.close()


def test_jobs_panel_deletes_an_ended_job_and_refuses_a_running_one(ws):
    running = hand_written_job(ws, "train", [])  # its pid is this test's: alive
    lora = ws.root / "loras" / "old.safetensors"
    lora.parent.mkdir(parents=True, exist_ok=True)
    lora.write_bytes(b"not really a LoRA")
    done = hand_written_job(ws, "train", [{"type": "done", "output": str(lora)}], "succeeded")
    done.set_status("succeeded", output=str(lora))
    panel = JobsPanel(ws, autostart=False)

    panel.jobs.value = running.id
    panel.delete_button.click()
    assert panel.notice.kind == "error" and "cancel it first" in panel.notice.text
    assert running.path.is_dir() and running.id in {r["id"] for r in panel.rows}

    panel.jobs.value = done.id
    panel.open_button.click()
    panel.delete_lora.value = True
    panel.delete_button.click()
    assert panel.notice.kind == "info" and "and its LoRA file" in panel.notice.text, panel.notice.text
    assert not done.path.exists() and not lora.exists()
    assert done.id not in {r["id"] for r in panel.rows} and panel.monitor is None
    assert [p.name for p in ws.jobs.iterdir()] == [running.id]  # nothing left aside
    panel.close()


def test_monitor_of_a_job_whose_directory_is_removed_stops_and_says_so(ws):
    job = hand_written_job(ws, "train", [{"type": "progress", "step": 1, "total": 9, "loss": 0.5}])
    monitor = TrainingMonitor(job.id, ws, autostart=False)
    shutil.rmtree(job.path)
    assert monitor.tick() is False
    assert monitor.notice.kind == "error" and "was removed" in monitor.notice.text
    assert monitor.cancel_button.disabled and monitor.resume_button.disabled


# -- cancel, then resume at once -------------------------------------------------------------------
def test_cancel_then_resume_at_once_follows_the_resumed_job(ws, tiny_models):
    job = long_job(ws, tiny_models)
    monitor = follow(TrainingMonitor(job.id, ws, autostart=False), stepping)
    panel = JobsPanel(ws, autostart=False)
    for at_once in (True, False, True):
        assert state(monitor) == "running", monitor.notice.text
        monitor.cancel_button.click()
        first = monitor.cancelling
        monitor.cancel_button.click()  # a quick second click (click() ignores `disabled`)
        assert monitor.cancelling is first and "already" in monitor.notice.text
        if not at_once:  # the moment it reads cancelled, while its process may still be ending
            follow(monitor, lambda m: not m.resume_button.disabled)
        monitor.resume_button.click()
        if monitor.resume_pending:  # clicked while the cancel still waits for the process
            assert monitor.resume_button.disabled and "once the job has stopped" in monitor.notice.text
        monitor.cancelling.join(timeout=120)
        assert monitor.notice.kind == "ok" and "resumed" in monitor.notice.text, monitor.notice.text
        before = monitor.follower.events_read
        follow(monitor, lambda m, n=before: any(e["type"] == "progress" for e in job.events(n)))
        monitor.refresh()
        assert state(monitor) == "running" == job.view()["state"]  # the truth, and shown as such
        assert "<b>running</b>" in monitor.state.value and monitor.bar.bar_style == "info"
        assert not monitor.cancel_button.disabled and monitor.resume_button.disabled
        assert {r["id"]: r["state"] for r in panel.refresh()}[job.id] == "running"
    assert not [e for e in job.events() if e.get("forced")]  # never marked cancelled by force

    monitor.cancel_button.click()
    monitor.cancelling.join(timeout=120)
    assert state(follow(monitor, ended)) == "cancelled" == job.view()["state"]
    assert monitor.cancel_button.disabled and not monitor.resume_button.disabled
    panel.close()


def test_jobs_panel_cancel_then_resume_at_once_ends_running(ws, tiny_models):
    job = long_job(ws, tiny_models)
    panel = JobsPanel(ws, autostart=False)
    panel.jobs.value = job.id
    follow(panel.open_monitor(job.id), stepping)
    for _ in range(2):
        panel.cancel_button.click()
        panel.resume_button.click()  # at once: held back until the job has stopped
        monitor = panel.monitor  # Cancel and Resume went through the selected job's monitor
        assert monitor.job.id == job.id and monitor.cancelling is not None
        monitor.cancelling.join(timeout=120)
        assert monitor.notice.kind == "ok" and "resumed" in monitor.notice.text, monitor.notice.text
        before = monitor.follower.events_read
        follow(monitor, lambda m, n=before: any(e["type"] == "progress" for e in job.events(n)))
        assert {r["id"]: r["state"] for r in panel.refresh()}[job.id] == "running" == job.view()["state"]
        assert not panel.cancel_button.disabled and panel.resume_button.disabled
    panel.cancel_button.click()
    panel.monitor.cancelling.join(timeout=120)
    follow(panel.monitor, ended)
    assert {r["id"]: r["state"] for r in panel.refresh()}[job.id] == "cancelled"
    assert panel.cancel_button.disabled and not panel.resume_button.disabled
    assert not [e for e in job.events() if e.get("forced")]
    panel.close()


def test_poller_started_while_its_last_tick_ends_keeps_polling():
    deciding, resumed, ticks = threading.Event(), threading.Event(), []

    def tick() -> bool:
        ticks.append(1)
        if len(ticks) == 1:  # the job reads ended ... and is resumed before this tick returns
            deciding.set()
            resumed.wait(10)
            return False
        return len(ticks) < 3

    poller = Poller(tick, 0.01)
    poller.start()
    assert deciding.wait(10)
    poller.start()  # Resume clicked now
    resumed.set()
    deadline = time.monotonic() + 10
    while poller.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(ticks) == 3 and not poller.running  # it went on, then stopped when told

