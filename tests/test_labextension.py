"""The JupyterLab extension as a user gets it: the wheel built from this checkout, installed alone
into a fresh venv (tests/wheel_env.py), JupyterLab under a non-root base_url as behind a pod's
proxy, driven in Debian's chromium. Launcher cards start a run and open the quickstart; the
New training run dialog runs it where the server's setting says, or where its Run on asks; the
sidebar follows the run live (through a dropped WebSocket), cancels and resumes, opens the LoRA
in the file browser, pages 500 jobs, explains each failure it can meet and deletes ended jobs.
A day's work end to end: 20 images captioned with the keyboard alone in the CaptionPanel, a run
from the TrainingLauncher cancelled and resumed in the sidebar, its LoRA files found, an old job
deleted.

With ``LORA_LAB_SCREENSHOTS=DIR`` the tests also save pictures there: the sidebar beside the
launcher, and the captioning panel and the sidebar in the light and the dark theme (`make
screenshots` refreshes docs/screenshots/ this way)."""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from conftest import tree_digest
from lab import CHROMIUM_ARGS, Lab, chromium, run_all, set_theme, type_caption, wait_for_kernel
from test_train import config

from lora_lab.datasets import Dataset, ingest
from lora_lab.jobdir import JobRecord, list_jobs, open_job
from lora_lab.jobs import submit
from lora_lab.tiny.samples import draw

pytestmark = pytest.mark.slow
BASE_URL = "/pod/8888/"  # RunPod and JupyterHub serve JupyterLab under a prefix like this
WAIT_MS = 120_000
RAY_WAIT = "waiting for 4 free GPUs on the Ray cluster (2 free)"
NO_CLUSTER = "no Ray cluster configured: run `lora-lab cluster start`"
JOB_STREAM = re.compile(r".*/lora-lab/api/jobs/[^/]+/stream.*")


@pytest.fixture
def shapes(ws, tiny_models) -> Dataset:
    ingest(tiny_models["samples"], "shapes", workspace=ws)
    ds = Dataset.open("shapes", ws)
    ds.edit([{"op": "prefix", "text": "sks, a simple shape"}])
    return ds


@pytest.fixture
def base(ws, tiny_models) -> Path:
    """The tiny SD1.5 in the workspace's models/, where a request to the server may name it."""
    return Path(shutil.copytree(tiny_models["sd15"], ws.models / "sd15"))


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def lab(tmp_path, ws, wheel_venv):
    """JupyterLab from the wheel's venv, serving tmp_path, with the workspace inside it (ws/)."""
    lab = Lab(tmp_path, ws.root, python=wheel_venv.python, env=wheel_venv.env, base_url=BASE_URL)
    yield lab
    lab.stop()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("LORA_LAB_SCREENSHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_lab(browser, lab: Lab, routes=lambda page: None, url: str | None = None):
    """A page on JupyterLab (at ``url``, say a notebook's), restored; ``routes(page)`` runs before
    it loads (JupyterLab keeps the WebSocket class it finds at load, so a WebSocket route must be
    in place by then)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    routes(page)
    page.goto(url or lab.page("lab?reset"))
    page.wait_for_function("window.jupyterapp !== undefined", timeout=WAIT_MS)
    page.evaluate("window.jupyterapp.restored")
    return page


def open_sidebar(page):
    page.evaluate("async () => { await window.jupyterapp.commands.execute('lora-lab:open-sidebar'); }")
    page.locator(".lora-lab-sidebar").wait_for(timeout=WAIT_MS)


def wait_text(page, selector: str, text: str) -> None:
    page.wait_for_function("([s, t]) => document.querySelector(s)?.textContent.includes(t)",
                           arg=[selector, text], timeout=WAIT_MS)


def row(page, job_id: str):
    return page.locator(f'.lora-lab-job[data-job-id="{job_id}"]')


def wait_state(page, job_id: str, state: str, timeout: int = WAIT_MS) -> None:
    page.locator(f'.lora-lab-job[data-job-id="{job_id}"][data-state="{state}"]').wait_for(timeout=timeout)


def fill_run(page, base: Path, name: str, steps: int, prompt: str = ""):
    """Fill the open New training run dialog (Run on left as it is); the dialog."""
    dialog = page.locator(".jp-Dialog")
    dialog.locator('select[name="dataset"]').wait_for(timeout=WAIT_MS)
    dialog.locator('select[name="dataset"]').select_option("shapes")
    dialog.locator('select[name="preset"]').select_option("sd15")
    for field, value in {"base": str(base), "resolution": "64", "max_steps": str(steps), "rank": "4",
                         "lr": "0.001", "trigger": "sks", "name": name, "prompt": prompt}.items():
        dialog.locator(f'input[name="{field}"]').fill(value)
    return dialog


def start_run(page, ws, base: Path, name: str, steps: int, prompt: str = "",
              run_on: str | None = None) -> str:
    """Fill the New training run dialog (``run_on``: its Run on choice) and start it; the id of
    the job it selects."""
    dialog = fill_run(page, base, name, steps, prompt)
    if run_on:
        dialog.locator('select[name="executor"]').select_option(run_on)
    before = {job.id for job in list_jobs(ws)}
    dialog.get_by_role("button", name="Start training").click()
    page.wait_for_function("!document.querySelector('.jp-Dialog') || "
                           "document.querySelector('.lora-lab-dialog-error')?.textContent", timeout=WAIT_MS)
    assert dialog.count() == 0, dialog.locator(".lora-lab-dialog-error").inner_text()
    selected = page.locator(".lora-lab-job.lora-lab-selected")
    selected.wait_for(timeout=WAIT_MS)
    job_id = selected.get_attribute("data-job-id")
    assert job_id not in before
    return job_id


def drop_the_first_job_stream(page, after_messages: int, dropped: list[int]) -> None:
    """Cut the first job WebSocket after ``after_messages`` messages, from the server's side;
    later ones pass untouched. ``dropped`` fills once the cut happened."""

    def route(ws_route):
        server = ws_route.connect_to_server()
        if dropped:
            return
        seen = [0]

        def forward(message):
            ws_route.send(message)
            seen[0] += 1
            if seen[0] == after_messages and not dropped:
                dropped.append(seen[0])
                server.close()
                ws_route.close()

        server.on_message(forward)

    page.route_web_socket(JOB_STREAM, route)


def test_a_run_from_the_launcher_card_followed_in_the_sidebar(ws, shapes, base, lab, browser, shots):
    dropped: list[int] = []
    page = open_lab(browser, lab, lambda page: drop_the_first_job_stream(page, 15, dropped))
    open_sidebar(page)
    sidebar = page.locator(".lora-lab-sidebar")
    wait_text(page, ".lora-lab-gpus", "CPU only")
    wait_text(page, '.lora-lab-dataset[data-name="shapes"]', "8 images · 8 captioned")
    page.locator(".jp-LauncherCard", has_text="New Training Run").click()
    job_id = start_run(page, ws, base, "lab-run", 40, prompt="sks, a red circle")
    wait_state(page, job_id, "succeeded", timeout=300_000)
    assert row(page, job_id).locator(".lora-lab-progress").get_attribute("aria-valuenow") == "100"
    view = sidebar.locator(".lora-lab-jobview")
    view.locator(".lora-lab-loss svg polyline").first.wait_for(timeout=WAIT_MS)
    page.wait_for_function("document.querySelector('.lora-lab-sample img')?.naturalWidth > 0",
                           timeout=WAIT_MS)

    # the stream was cut mid-run; the log shows every line of log.txt once, in order
    assert dropped, "the job stream was never cut: the test proved nothing"
    log_txt = open_job(job_id, ws).log_path.read_text().splitlines()
    page.wait_for_function("n => document.querySelectorAll('.lora-lab-log > div').length >= n",
                           arg=len(log_txt), timeout=WAIT_MS)
    assert view.locator(".lora-lab-log > div").all_inner_texts() == log_txt
    page.screenshot(path=shots / "lab.png")  # the sidebar beside the launcher

    view.locator(".lora-lab-open-lora").click()
    selected = page.locator(".jp-DirListing-item.jp-mod-selected")
    selected.wait_for(timeout=WAIT_MS)
    assert "lab-run.safetensors" in selected.inner_text()
    assert (ws.root / "loras" / "lab-run.safetensors").is_file()

    # a second run, cancelled in mid-flight and resumed from the sidebar (back from the files)
    open_sidebar(page)
    sidebar.get_by_role("button", name="New training run").click()
    second = start_run(page, ws, base, "lab-run-2", 200)
    page.wait_for_function(
        "id => Number(document.querySelector(`.lora-lab-job[data-job-id='${id}'] .lora-lab-progress`)"
        "?.getAttribute('aria-valuenow')) >= 5", arg=second, timeout=WAIT_MS)
    view.locator(".lora-lab-cancel").click()
    wait_state(page, second, "cancelled")
    assert view.locator(".lora-lab-cancel").is_disabled()
    stopped_at = open_job(second, ws).status().get("steps") or 0
    view.locator(".lora-lab-resume").click()
    wait_state(page, second, "succeeded", timeout=300_000)
    status = open_job(second, ws).status()
    assert status["steps"] == 200 and stopped_at < 200, status

    # the Quickstart card copies the notebook kit into the workspace and opens the quickstart
    page.evaluate("async () => { await window.jupyterapp.commands.execute('launcher:create'); }")
    page.locator(".jp-LauncherCard:visible", has_text="Quickstart").first.click()
    page.wait_for_function("window.jupyterapp.shell.currentWidget?.context?.path?.endsWith('quickstart.ipynb')",
                           timeout=WAIT_MS)
    assert (ws.root / "notebooks" / "interactive" / "quickstart.ipynb").is_file()
    run_above_the_first_training_cell(page)
    tile = page.locator(".lora-lab-browser .lora-lab-tile").first
    tile.locator("button").wait_for(timeout=WAIT_MS)
    first = tile.locator("button").inner_text().strip()
    tile.locator("button").click()
    page.locator(".lora-lab-caption-editor textarea").wait_for(timeout=WAIT_MS)
    type_caption(page, ws, "quickstart", first, "typed in the quickstart")


def test_the_new_training_run_dialog_runs_where_the_server_says_or_where_asked(
        tmp_path, ws, shapes, base, wheel_venv, browser):
    """Run on starts at the server's setting (LoraLabApp.executor, here ray); ray with no Ray
    cluster is refused in the dialog with the server's message, no job created; on this box the
    run goes ahead and says local."""
    config = tmp_path / ".jupyter"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(json.dumps({"LoraLabApp": {"executor": "ray"}}))
    lab = Lab(tmp_path, ws.root, python=wheel_venv.python, env=wheel_venv.env, base_url=BASE_URL)
    try:
        page = open_lab(browser, lab)
        open_sidebar(page)
        page.locator(".lora-lab-sidebar").get_by_role("button", name="New training run").click()
        dialog = fill_run(page, base, "refused-run", 4)
        run_on = dialog.locator('select[name="executor"]')
        assert run_on.input_value() == "ray"
        assert run_on.locator("option").all_inner_texts() == ["This box", "Ray cluster"]
        assert dialog.locator('label:has(select[name="executor"]) > span').inner_text() == "Run on"
        before = tree_digest(ws.jobs), sorted(ws.jobs.iterdir())
        dialog.get_by_role("button", name="Start training").click()
        wait_text(page, ".lora-lab-dialog-error", NO_CLUSTER)  # the server's 503 message
        assert dialog.count() == 1 and dialog.locator(".lora-lab-dialog-error").is_visible()
        assert (tree_digest(ws.jobs), sorted(ws.jobs.iterdir())) == before

        job_id = start_run(page, ws, base, "local-run", 4, run_on="local")
        wait_state(page, job_id, "succeeded", timeout=300_000)
        assert open_job(job_id, ws).view()["executor"] == "local"
        assert row(page, job_id).locator(".lora-lab-where").is_hidden()  # no ray badge
        wait_text(page, ".lora-lab-jobview-where", "Runs on: this box")
    finally:
        lab.stop()


def run_above_the_first_training_cell(page) -> None:
    """Run the quickstart's cells up to its training cell: the dataset, the browser and the
    caption editor (the rest builds the launcher and the jobs list, which this test does not need)."""
    wait_for_kernel(page)
    index = page.evaluate("""() => {
        const cells = window.jupyterapp.shell.currentWidget.content.widgets;
        return cells.findIndex(c => c.model.sharedModel.getSource().includes('TrainingLauncher(dataset'));
    }""")
    assert index > 0
    page.evaluate(f"""() => {{
        const notebook = window.jupyterapp.shell.currentWidget.content;
        notebook.activeCellIndex = {index};
        void window.jupyterapp.commands.execute('notebook:run-all-above');
    }}""")


def broken_base(tiny_models, tmp_path) -> Path:
    """A copy of the tiny SD1.5 whose UNet weights are cut short: it passes the checks made
    before a job exists (its config reads fine) and fails when the job loads it."""
    base = tmp_path / "broken-sd15"
    shutil.copytree(tiny_models["sd15"], base)
    for weights in (base / "unet").glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:100])
    return base


def test_the_job_view_draws_the_validation_loss_beside_the_loss(ws, shapes, tiny_models, lab, browser):
    cfg = config(tiny_models, dataset={"source": "shapes"}, train={"max_steps": 4},
                 sample={"steps": 2},
                 validation={"split": 0.25, "every_n_steps": 2, "prompts": ["sks, a red circle"]})
    job = submit("train", {"config": cfg.to_dict()}, ws)
    while not job.finished:
        time.sleep(0.2)
    assert job.view()["state"] == "succeeded", job.view().get("error")
    status = job.status()
    page = open_lab(browser, lab)
    open_sidebar(page)
    wait_state(page, job.id, "succeeded")
    row(page, job.id).click()
    view = page.locator(".lora-lab-sidebar .lora-lab-jobview")
    wait_text(page, ".lora-lab-val-caption", "validation loss")
    caption = view.locator(".lora-lab-val-caption").inner_text()
    best = page.evaluate("x => x.toPrecision(3)", status["best_val_loss"])
    assert f"at step 4 · best {best} at step {status['best_step']}" in caption
    points = view.locator(".lora-lab-loss polyline.lora-lab-val").get_attribute("points")
    assert len(points.split()) == 2  # validations at steps 2 and 4
    wait_text(page, ".lora-lab-sample figcaption", "step 4: validation: sks, a red circle")


def test_the_sidebar_explains_what_went_wrong(ws, shapes, tiny_models, tmp_path, lab, browser):
    for i in range(500):  # a workspace that has trained for months
        JobRecord.create("train", {"config": {}, "gpus": 1}, ws).set_status(
            "succeeded", phase="done", progress=1.0, steps=i)
    cfg = config(tiny_models, model={"base": str(broken_base(tiny_models, tmp_path))},
                 dataset={"source": "shapes"})
    failed = submit("train", {"config": cfg.to_dict()}, ws)
    while not failed.finished:
        time.sleep(0.2)
    error = failed.view()["error"]
    assert failed.view()["state"] == "failed" and error

    page = open_lab(browser, lab)
    open_sidebar(page)
    rows = page.locator(".lora-lab-sidebar .lora-lab-job")
    wait_state(page, failed.id, "failed")
    assert error[:60] in row(page, failed.id).locator(".lora-lab-error").inner_text()
    ids = [r.get_attribute("data-job-id") for r in rows.all()]
    newest = [job.id for job in list_jobs(ws)]
    assert ids == newest[:len(ids)] and 0 < len(ids) < 100, "newest first, one page"
    page.locator(".lora-lab-more").click()
    page.wait_for_function(f"document.querySelectorAll('.lora-lab-job').length > {len(ids)}",
                           timeout=WAIT_MS)
    more = [r.get_attribute("data-job-id") for r in rows.all()]
    assert more == newest[:len(more)]

    # the login expires (a new token, new cookies): a clear message, not a blank panel
    lab.restart(token="a-new-token")
    notice = page.locator(".lora-lab-notice")
    page.wait_for_function("/log in again/i.test(document.querySelector('.lora-lab-notice')?.textContent ?? '')",
                           timeout=WAIT_MS)
    assert notice.is_visible()


def test_without_the_server_extension_the_sidebar_names_the_fix(tmp_path, ws, wheel_venv, browser):
    config = tmp_path / ".jupyter"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(json.dumps(
        {"ServerApp": {"jpserver_extensions": {"lora_lab.server_ext": False}}}))
    lab = Lab(tmp_path, ws.root, python=wheel_venv.python, env=wheel_venv.env, base_url=BASE_URL)
    try:
        page = open_lab(browser, lab)
        open_sidebar(page)
        wait_text(page, ".lora-lab-notice", "jupyter server extension enable lora_lab.server_ext")
        assert page.locator(".lora-lab-notice").is_visible()
    finally:
        lab.stop()


def ended_run(ws, name: str) -> tuple[JobRecord, Path]:
    """A training job that has ended: a checkpoint in its folder, and its LoRA files in loras/
    (an intermediate save, then the final file), as the trainer records them."""
    job = JobRecord.create("train", {"config": {}, "gpus": 1}, ws)
    (job.path / "checkpoints").mkdir()
    (job.path / "checkpoints" / "state.bin").write_bytes(os.urandom(250_000))
    ws.loras.mkdir(parents=True, exist_ok=True)
    step, final = ws.loras / f"{name}-000005.safetensors", ws.loras / f"{name}.safetensors"
    for path in (step, final):
        path.write_bytes(os.urandom(2_000))
    job.set_status("succeeded", phase="done", progress=1.0, steps=10, output=str(final),
                   loras=[{"path": str(step), "step": 5}, {"path": str(final), "step": None}])
    return job, final


def delete_selected(page, remove_lora: bool | None) -> None:
    """Click Delete in the job view and confirm; ``remove_lora`` ticks (or not) the box that the
    dialog shows for a job with a LoRA file (None: it must show none)."""
    page.locator(".lora-lab-jobview .lora-lab-delete").click()
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for(timeout=WAIT_MS)
    box = dialog.locator('input[name="remove-lora"]')
    assert box.is_visible() == (remove_lora is not None)
    if remove_lora:
        box.check()
    dialog.get_by_role("button", name="Delete", exact=True).click()
    dialog.wait_for(state="detached", timeout=WAIT_MS)


def test_the_sidebar_deletes_ended_jobs_and_refuses_a_running_one(ws, lab, browser):
    kept, kept_lora = ended_run(ws, "kept")
    gone, gone_lora = ended_run(ws, "gone")
    running = JobRecord.create("train", {"config": {}, "gpus": 1}, ws)
    running.set_status("running", phase="training", progress=0.3)  # this process: alive
    ray = JobRecord.create("train", {"config": {}, "gpus": 4}, ws)  # as the Ray dispatcher leaves it
    ray.set_status("queued", executor="ray", phase="waiting for the Ray cluster", reason=RAY_WAIT,
                   handle={"address": "http://127.0.0.1:8265", "submission_id": None})
    with running.heartbeat(), ray.heartbeat():
        page = open_lab(browser, lab)
        open_sidebar(page)
        view = page.locator(".lora-lab-jobview")
        wait_state(page, kept.id, "succeeded")
        page.locator(".lora-lab-heading", has_text="Jobs (4)").wait_for(timeout=WAIT_MS)

        # a job on the Ray cluster has a badge; its view says where it runs and why it waits
        assert row(page, ray.id).locator(".lora-lab-where").inner_text() == "ray"
        assert row(page, kept.id).locator(".lora-lab-where").is_hidden()
        assert row(page, ray.id).locator(".lora-lab-waiting").inner_text() == RAY_WAIT
        row(page, ray.id).click()
        wait_text(page, ".lora-lab-jobview-where", f"Reason: {RAY_WAIT}")
        where = view.locator(".lora-lab-jobview-where").inner_text()
        assert "Runs on: Ray cluster" in where and "Ray submission id: none yet" in where

        # selected, an ended job shows its folder's size (in its row too) and its LoRA files
        row(page, kept.id).click()
        size = f"{kept.disk_bytes() / 1000:.1f} KB"
        wait_text(page, ".lora-lab-jobview-header", size)
        assert size in row(page, kept.id).locator(".lora-lab-job-numbers").inner_text()
        loras = view.locator(".lora-lab-jobview-lora")
        assert [" ".join(text.split()) for text in loras.all_inner_texts()] == [
            "kept-000005.safetensors step 5 · 2.0 KB", "kept.safetensors final · 2.0 KB"]
        loras.first.locator(".lora-lab-open-lora-file").click()
        selected = page.locator(".jp-DirListing-item.jp-mod-selected")
        selected.wait_for(timeout=WAIT_MS)
        assert "kept-000005.safetensors" in selected.inner_text()

        # deleted, keeping its LoRA (the default)
        open_sidebar(page)
        delete_selected(page, remove_lora=False)
        row(page, kept.id).wait_for(state="detached", timeout=WAIT_MS)
        notice = f"Deleted job {kept.id} (its LoRA file kept.safetensors is kept)"
        page.get_by_text(notice).first.wait_for(timeout=WAIT_MS)
        assert not kept.path.exists() and kept_lora.is_file()
        assert view.is_hidden()

        # deleted with its LoRA file
        row(page, gone.id).click()
        delete_selected(page, remove_lora=True)
        row(page, gone.id).wait_for(state="detached", timeout=WAIT_MS)
        assert not gone.path.exists() and not gone_lora.exists()

        # a running job is refused with the server's reason, and nothing of it is touched
        files = sorted(p.name for p in running.path.iterdir())
        row(page, running.id).click()
        delete_selected(page, remove_lora=None)
        wait_text(page, ".lora-lab-jobview-message", "is still running; cancel it first")
        assert row(page, running.id).is_visible()
        assert sorted(p.name for p in running.path.iterdir()) == files
        page.locator(".lora-lab-heading", has_text="Jobs (2)").wait_for(timeout=WAIT_MS)
        running.set_status("cancelled")
        ray.set_status("cancelled")


SCENES = [(f"scene-{i:02d}.jpg", ((256, 192), (192, 256), (224, 224))[i % 3],
           ("circle", "square", "triangle")[i % 3],
           ("red", "blue", "yellow", "green", "purple", "orange", "white", "cyan")[i % 8])
          for i in range(22)]


@pytest.fixture
def scenes(ws, tmp_path) -> Dataset:
    """22 drawn scenes (a coloured shape over hills and sky, in three aspect ratios), none
    captioned."""
    folder = tmp_path / "scenes-in"
    folder.mkdir()
    for seed, (name, size, shape, colour) in enumerate(SCENES):
        draw(size, shape, colour, seed).save(folder / name, quality=85)
    ingest(folder, "scenes", workspace=ws)
    return Dataset.open("scenes", ws)


def caption_of(name: str, size: tuple[int, int], shape: str, colour: str) -> str:
    """What the test types for a scene: tags, as a user would."""
    return f"sks, a {colour} {shape}, blue sky, green hills"


def test_keyboard_captioning_then_a_run_cancelled_resumed_and_cleaned_up(ws, scenes, base, lab,
                                                                         browser, shots):
    """The day the issue asks for, in chromium: 20 images captioned in the CaptionPanel with
    the keyboard alone, a run started from the TrainingLauncher, cancelled and resumed in the
    sidebar, its LoRA files found there, and an old job deleted. The panel and the sidebar are
    pictured in the light and the dark theme."""
    old, old_lora = ended_run(ws, "old")
    cells = ['from lora_lab.widgets import CaptionPanel, TrainingLauncher\nCaptionPanel("scenes")',
             f'TrainingLauncher("scenes", base={str(base)!r})']
    page = open_lab(browser, lab, url=lab.notebook("day.ipynb", cells))
    page.set_viewport_size({"width": 1400, "height": 1300})  # the whole panel, for its picture
    page.evaluate("window.jupyterapp.shell.collapseLeft()")  # and the page's width
    run_all(page)
    panel = page.locator(".lora-lab-caption-panel")
    caption_by_keyboard(page, panel, scenes)
    picture(page, panel, shots / "caption-panel-light.png")

    job_id = train_from_the_launcher(page)
    open_sidebar(page)
    view = page.locator(".lora-lab-jobview")
    wait_state(page, job_id, "running")
    row(page, job_id).click()
    # cancelled once it has saved an intermediate LoRA, then resumed, from the sidebar
    view.locator(".lora-lab-jobview-lora").first.wait_for(timeout=WAIT_MS)
    view.locator(".lora-lab-cancel").click()
    wait_state(page, job_id, "cancelled")
    assert view.locator(".lora-lab-cancel").is_disabled()
    stopped_at = open_job(job_id, ws).status().get("steps") or 0
    view.locator(".lora-lab-resume").click()
    wait_state(page, job_id, "succeeded", timeout=300_000)
    assert stopped_at < STEPS == open_job(job_id, ws).status()["steps"]
    find_the_lora(page, ws)

    # an old job deleted from the sidebar; its LoRA file stays (the default)
    row(page, old.id).click()
    delete_selected(page, remove_lora=False)
    row(page, old.id).wait_for(state="detached", timeout=WAIT_MS)
    assert not old.path.exists() and old_lora.is_file()
    assert open_job(job_id, ws).path.is_dir()

    row(page, job_id).click()
    view.locator(".lora-lab-sample img").wait_for(timeout=WAIT_MS)
    picture(page, panel, shots / "sidebar-light.png", whole_page=True)  # the sidebar beside the panel
    set_theme(page, "JupyterLab Dark")
    picture(page, panel, shots / "sidebar-dark.png", whole_page=True)
    page.evaluate("window.jupyterapp.shell.collapseLeft()")
    picture(page, panel, shots / "caption-panel-dark.png")

    # the launcher's monitor followed the run through the cancel and the resume made elsewhere
    saves = len(range(SAVE_EVERY, STEPS, SAVE_EVERY))
    wait_text(page, ".lora-lab-launcher .lora-lab-loras", f"intermediate saves ({saves})")
    monitor = page.locator(".lora-lab-launcher .lora-lab-monitor")
    assert "succeeded" in monitor.inner_text() and "scenes-lora.safetensors" in monitor.inner_text()


def picture(page, panel, path: Path, whole_page: bool = False) -> None:
    """A screenshot of the caption panel (or the whole page), the panel at the top of the
    notebook and no notification over it."""
    page.evaluate("window.jupyterapp.commands.execute('apputils:dismiss-notification')")
    page.locator(".Toastify__toast").first.wait_for(state="detached", timeout=WAIT_MS)
    panel.evaluate("el => el.scrollIntoView({block: 'start'})")
    (page if whole_page else panel).screenshot(path=path)


IN_CAPTION_BOX = "document.activeElement.closest('.lora-lab-caption-text') !== null"


def wait_open(page, file: str) -> None:
    """Wait until the caption panel shows ``file`` in its editor."""
    page.wait_for_function("f => document.querySelector('.lora-lab-caption-panel .lora-lab-current b')"
                           "?.textContent === f", arg=file, timeout=WAIT_MS)


def caption_by_keyboard(page, panel, scenes: Dataset) -> None:
    """Caption the first 20 scenes with keys only: Tab to the caption box, then type and
    Ctrl+Enter (save and next; not the notebook's: it would run the cell again) for each; then
    Alt+arrows move, Alt+C captions with AI, and a click on a tile's picture opens it."""
    tiles = panel.locator(".lora-lab-tile:visible")
    tiles.nth(len(SCENES) - 1).locator("img").wait_for(timeout=WAIT_MS)
    files = [tile.locator(".lora-lab-open").inner_text().strip() for tile in tiles.all()]
    assert files == [name for name, *_ in SCENES]
    wait_open(page, files[0])  # the panel opens the first image by itself
    for _ in range(300):  # the only way in without a pointer: through the page's controls
        if page.evaluate(IN_CAPTION_BOX):
            break
        page.keyboard.press("Tab")
    assert page.evaluate(IN_CAPTION_BOX), "Tab never reached the caption box"
    for i, scene in enumerate(SCENES[:20]):
        if i == 2:  # the kernel busy a moment (as with a thumbnail): the text still goes first
            page.evaluate("window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
                          ".requestExecute({code: 'import time; time.sleep(2)', silent: true})")
        page.keyboard.type(caption_of(*scene))
        page.keyboard.press("Control+Enter")
        wait_open(page, files[i + 1])
    written = {p.name: p.read_text(encoding="utf-8").strip() for p in scenes.path.glob("*.txt")}
    assert written == {Path(scene[0]).with_suffix(".txt").name: caption_of(*scene) for scene in SCENES[:20]}
    assert page.locator(".jp-InputPrompt").first.inner_text().strip() == "[1]:", "the cell ran again"

    page.keyboard.press("Alt+C")  # no caption model in this workspace: the panel says so
    wait_text(page, ".lora-lab-caption-panel .lora-lab-notice", "no caption model")
    # Alt+arrows move, and Alt+Left is not the browser's Back
    url = page.url
    page.keyboard.press("Alt+ArrowLeft")
    wait_open(page, files[19])
    assert page.url == url
    page.keyboard.press("Alt+ArrowRight")
    wait_open(page, files[20])
    # a button of the panel focused (the notebook's command mode): the keys are still the panel's
    panel.locator(".lora-lab-next").focus()
    page.keyboard.press("Control+Enter")
    wait_open(page, files[21])
    assert page.locator(".jp-InputPrompt").first.inner_text().strip() == "[1]:"
    assert not (scenes.path / files[20]).with_suffix(".txt").exists(), "unedited: nothing saved"
    # a click on a tile's picture opens it, with the focus in the caption box for the keys
    tiles.nth(18).locator("img").click()
    wait_open(page, files[18])
    assert page.evaluate(IN_CAPTION_BOX)


STEPS, SAVE_EVERY = 60, 10


def train_from_the_launcher(page) -> str:
    """Fill in the TrainingLauncher below the panel for a short run on the tiny SD1.5 with an
    intermediate LoRA every SAVE_EVERY steps, click Train; the job's id."""
    launcher = page.locator(".lora-lab-launcher")
    launcher.scroll_into_view_if_needed()
    for label, value in {"Trigger word": "sks", "Resolution": "64", "Max steps (0 = epochs)": str(STEPS),
                         "Rank": "4", "Learning rate": "0.001", "Save name": "scenes-lora",
                         "Save every N steps": str(SAVE_EVERY), "Sample every N steps": str(STEPS),
                         "Sample prompts (one a line)": "sks, a red circle, blue sky, green hills"}.items():
        field = launcher.get_by_label(label, exact=True)
        field.fill(value)
        field.press("Tab")  # the form checks a field once it is left
    launcher.get_by_label("Precision", exact=True).select_option("no")  # bf16 crawls on a CPU
    wait_text(page, ".lora-lab-launcher", f"{STEPS} steps:")
    launcher.locator("button", has_text=re.compile("^Train$")).click()
    wait_text(page, ".lora-lab-launcher", "submitted job ")
    return re.search(r"submitted job (\S+)", launcher.inner_text())[1]


def find_the_lora(page, ws) -> None:
    """The sidebar lists the run's intermediate saves, from before the cancel and after the
    resume alike, then its final file, each on disk."""
    page.wait_for_function("document.querySelector('.lora-lab-jobview-loras')?.textContent"
                           ".includes('final')", timeout=WAIT_MS)
    listed = page.locator(".lora-lab-jobview .lora-lab-jobview-lora").all_inner_texts()
    steps = range(SAVE_EVERY, STEPS, SAVE_EVERY)
    names = [f"scenes-lora-{step:06d}.safetensors" for step in steps] + ["scenes-lora.safetensors"]
    assert [" ".join(text.split()).split(" · ")[0] for text in listed] == [
        *(f"{name} step {step}" for name, step in zip(names, steps)), f"{names[-1]} final"]
    assert all((ws.loras / name).is_file() for name in names)
