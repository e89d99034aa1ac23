"""LoraTryout, in-process: pick LoRAs and jobs of the workspace, click Render and Save grid, read
what the user sees; and its resident pipeline letting go of its memory when a real train job
starts, then loading again on the next Render."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import time

import numpy as np
from PIL import Image
from test_jobs import wait_until
from test_lora_tryout import loras, pixels, trained  # noqa: F401
from test_train import config

from lora_lab.jobdir import open_job
from lora_lab.jobs import cancel
from lora_lab.widgets import LoraTryout


def fill(panel: LoraTryout, **values) -> LoraTryout:
    """The form as a user fills it, small and fast by default."""
    values = {"strengths": "0, 1", "seeds": "0, 1", "steps": 2, "size": "64x64", **values}
    for name, value in values.items():
        getattr(panel, name).value = value
    return panel


def test_render_and_save_a_grid_of_workspace_loras(ws, tiny_models, loras):  # noqa: F811
    mine = shutil.copy(loras.a, ws.loras / "mine.safetensors")
    panel = fill(LoraTryout(str(tiny_models["sd15"]), prompts=["a red circle"], workspace=ws, autostart=False))
    try:
        assert ("mine.safetensors", str(mine)) in panel.loras.options
        panel.loras.value = (str(mine),)
        later = shutil.copy(loras.b, ws.loras / "later.safetensors")
        panel.refresh_button.click()  # a file saved since: listed, the choice kept
        assert ("later.safetensors", str(later)) in panel.loras.options and panel.loras.value == (str(mine),)
        panel.render_button.click()
        assert panel.notice.kind == "ok" and panel.notice.text.startswith(
            "2 x 2 grid: 4 image(s) rendered, 0 from the cache"), panel.notice.text
        shown = Image.open(io.BytesIO(panel.image.value))
        assert np.array_equal(pixels(shown), pixels(panel.grid.image))
        assert [c.path for c, _ in panel.grid.columns if c] == [mine] and not panel.render_button.disabled
        panel.out.value = "exports/mine.png"
        panel.save_button.click()
        saved = ws.root / "exports" / "mine.png"
        assert panel.notice.text == f"saved the grid as {saved} and its inputs as mine.json"
        inputs = json.loads(saved.with_suffix(".json").read_text())
        assert inputs["loras"][0]["sha256"] == hashlib.sha256(mine.read_bytes()).hexdigest()
        assert inputs["strengths"] == [0.0, 1.0] and inputs["seeds"] == [0, 1]
        panel.save_button.click()  # nothing is overwritten
        assert panel.notice.kind == "error" and "mine.png already exists" in panel.notice.text
        panel.render_button.click()  # the same grid again: all from the cache
        assert panel.notice.text.startswith("2 x 2 grid: 0 image(s) rendered, 4 from the cache")
    finally:
        panel.close()


def test_a_job_is_one_choice_its_files_the_checkpoints(trained, tiny_models):  # noqa: F811
    ws, job = trained
    panel = fill(LoraTryout(str(tiny_models["sd15"]), prompts=["sks"], workspace=ws, autostart=False),
                 strengths="1", seeds="0")
    try:
        assert (f"job {job.id} (2 files)", job.id) in panel.loras.options
        panel.loras.value = (job.id,)
        panel.render_button.click()
        assert [c.step for c, _ in panel.grid.columns] == [2, None], panel.notice.text
    finally:
        panel.close()


def test_bad_input_in_the_panel_says_why_and_changes_nothing(ws, tiny_models, loras):  # noqa: F811
    panel = fill(LoraTryout(str(tiny_models["sd15"]), loras=[str(loras.a)], prompts=["a red circle"],
                            workspace=ws, autostart=False))
    try:
        def refused(match: str, **values) -> None:
            fill(panel, **values).render_button.click()
            assert panel.notice.kind == "error" and match in panel.notice.text, panel.notice.text
            assert panel.grid is None and panel.save_button.disabled and not panel.render_button.disabled
            assert not (ws.root / "cache").exists()

        refused("strength 3 is outside -2..2", strengths="0, 3")
        refused("strengths: numbers separated by commas", strengths="half")
        refused("size is WIDTHxHEIGHT", size="64")
        panel.loras.options = [*panel.loras.options, (str(loras.xl), str(loras.xl))]
        panel.loras.value = (str(loras.a), str(loras.xl))
        refused("cannot compare LoRAs of different families in one grid: a.safetensors is sd15, "
                "xl.safetensors is sdxl")
        panel.loras.value = ()
        refused("name at least one LoRA")
        panel.base.value = ""
        refused("choose a base model first")
        panel.save_button.disabled = False  # even if it were clicked without a grid
        panel.save_button.click()
        assert panel.notice.text == "render a grid first"
    finally:
        panel.close()


def test_the_pipeline_lets_go_when_a_train_job_starts_and_loads_again(ws, tiny_models, loras, cli,  # noqa: F811
                                                                       tmp_path):
    panel = fill(LoraTryout(str(tiny_models["sd15"]), loras=[str(loras.a)], prompts=["a red circle"],
                            workspace=ws), strengths="1", seeds="0")
    job = None
    try:
        panel.render_button.click()  # on a thread, like the other panels
        panel.thread.join(120)
        assert panel.tryout.loaded and panel.watch.running, panel.notice.text
        assert panel.make_way() is True  # no training: it stays loaded
        path = config(tiny_models, train={"max_steps": 2000}).write(tmp_path / "run.toml")
        job = open_job(json.loads(cli("jobs", "submit", "train", path, "--json")[1])["id"], ws)
        wait_until(job, lambda v: v["state"] != "queued")
        deadline = time.monotonic() + 60
        while panel.watch.running and time.monotonic() < deadline:  # it ends once it let go
            time.sleep(0.2)
        assert not panel.watch.running and not panel.tryout.loaded and panel.tryout.pipeline is None
        assert panel.notice.text == (f"training job {job.id} started: the tryout pipeline let go of its memory "
                                     "for it and loads again on the next Render")
        fill(panel, strengths="1", seeds="7").render_button.click()  # a new image: the pipeline loads again
        panel.thread.join(120)
        assert panel.tryout.loaded and panel.tryout.loads == 2, panel.notice.text
        assert panel.notice.text.startswith("1 x 1 grid: 1 image(s) rendered"), panel.notice.text
        assert panel.make_way() is True  # a job running when it loaded is no reason to let go
    finally:
        if job is not None and job.view()["state"] in ("queued", "running"):
            cancel(job)
        panel.close()


def test_steps_guidance_and_negative_follow_the_bases_family(ws, tiny_models, tiny_flow, loras):  # noqa: F811
    """The form starts at the base's family's preset sample settings and follows a base of another
    family; a value the user typed stays while the family does."""
    panel = LoraTryout(str(tiny_flow["flux"]), loras=[str(loras.a)], prompts=["a red circle"], workspace=ws,
                       autostart=False)
    try:
        form = lambda: (panel.steps.value, panel.guidance.value, panel.negative.value)  # noqa: E731
        assert form() == (50, 3.5, "")  # FLUX.1 [dev]
        panel.base.value = str(tiny_flow["chroma"])
        assert form()[:2] == (40, 3.0) and form()[2].startswith("low quality, ugly")
        panel.steps.value = 12
        panel.base.value = str(tiny_flow["chroma"])[:-3]  # half typed: kept
        panel.base.value = str(tiny_flow["chroma"])
        assert form()[0] == 12
        panel.base.value = str(tiny_flow["zimage"])
        assert form() == (8, 0.0, "")  # Z-Image Turbo
        panel.base.value = str(tiny_models["sd15"])
        assert form() == (20, 7.0, "")
        fill(panel, strengths="1", seeds="0").render_button.click()
        assert panel.grid.settings["guidance"] == 7.0 and panel.grid.settings["steps"] == 2, panel.notice.text
    finally:
        panel.close()
