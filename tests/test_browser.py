"""The panels in a real JupyterLab in a real browser: they render, a search typed into the
browser filters it, a caption typed into the editor lands on disk, the monitor draws its curves.

With ``LORA_LAB_SCREENSHOTS=DIR`` the test also saves each panel's picture there, and the
monitor's in the dark theme too (`make screenshots` refreshes the README's pictures in
docs/screenshots/ this way)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from lab import CHROMIUM_ARGS, Lab, chromium, contrast, luminance, rgba, run_all, set_theme, type_caption
from test_train import config

from lora_lab.datasets import Dataset, ingest
from lora_lab.jobs import submit

pytestmark = pytest.mark.slow
WAIT_MS = 90_000


@pytest.fixture
def trained(ws, tiny_models) -> str:
    """The sample dataset, captioned, and a finished training job with samples: its id."""
    ingest(tiny_models["samples"], "shapes", workspace=ws)
    ds = Dataset.open("shapes", ws)
    ds.edit([{"op": "prefix", "text": "sks, a simple shape"}])
    cfg = config(tiny_models, train={"max_steps": 60, "lr": 1e-3}, save={"name": "shapes"},
                 sample={"every_n_steps": 30, "prompts": ["sks, a red circle"], "steps": 4})
    job = submit("train", {"config": cfg.to_dict()}, ws)
    deadline = time.monotonic() + 300
    while job.view()["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job.log_path.read_text()
        time.sleep(0.5)
    assert job.view()["state"] == "succeeded", job.log_path.read_text()
    return job.id


@pytest.fixture
def page(tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        yield browser.new_page(viewport={"width": 1280, "height": 900})
        browser.close()


def test_the_panels_work_in_jupyterlab(ws, tiny_models, trained, page, tmp_path):
    shots = Path(os.environ.get("LORA_LAB_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    lab = Lab(tmp_path / "lab", ws.root)
    try:
        page.goto(lab.notebook("panels.ipynb", [
            "from lora_lab.widgets import CaptionEditor, DatasetBrowser, JobsPanel, "
            "TrainingLauncher, TrainingMonitor",
            'browser = DatasetBrowser("shapes", page_size=8, thumb_size=112)\nbrowser',
            "CaptionEditor(browser)",
            f'TrainingLauncher(dataset="shapes", base={str(tiny_models["sd15"])!r})',
            f"TrainingMonitor({trained!r})",
            "JobsPanel()",
        ]))
        run_all(page)
        tiles = page.locator(".lora-lab-browser .lora-lab-tile:visible")
        tiles.nth(7).locator("img").wait_for(timeout=WAIT_MS)
        assert tiles.count() == 8 and "sks, a simple shape" in tiles.first.inner_text()
        page.locator(".lora-lab-browser").screenshot(path=shots / "browser.png")  # all of them

        search = page.get_by_placeholder("search captions and file names")
        search.fill("circle")
        search.press("Enter")
        page.wait_for_function("document.querySelectorAll('.lora-lab-browser "
                               ".lora-lab-tile:not([style*=\"display: none\"])').length === 3",
                               timeout=WAIT_MS)
        assert all("circle" in t.inner_text() for t in tiles.all())

        first = tiles.first.locator("button").inner_text().strip()
        tiles.first.locator("button").click()
        page.wait_for_function("document.querySelector('.lora-lab-caption-editor textarea')"
                               ".value.startsWith('sks')", timeout=WAIT_MS)
        type_caption(page, ws, "shapes", first, "sks, typed in the browser")

        monitor = page.locator(".lora-lab-monitor")
        monitor.scroll_into_view_if_needed()  # an off-screen cell renders no text (content-visibility)
        monitor.locator("svg polyline").first.wait_for(timeout=WAIT_MS)
        monitor.locator("img").first.wait_for(timeout=WAIT_MS)  # a sample image
        # its text as the page holds it: a cell scrolled off meanwhile renders none (inner_text)
        assert "succeeded" in monitor.text_content()
        jobs = page.locator(".lora-lab-jobs")
        listing = jobs.locator(".lora-lab-jobs-list select")  # (the filters are selects too)
        listing.locator("option", has_text=trained).wait_for(state="attached", timeout=WAIT_MS)
        jobs.screenshot(path=shots / "jobs.png")  # the list, before a monitor opens under it
        listed = listing.locator("option").all_text_contents()
        listing.select_option(index=next(
            i for i, text in enumerate(listed) if trained in text and "succeeded" in text))
        jobs.get_by_text("Open monitor").click()
        jobs.locator(".lora-lab-monitor svg polyline").first.wait_for(timeout=WAIT_MS)
        assert "steps" in page.locator(".lora-lab-launcher").inner_text()

        page.set_viewport_size({"width": 1280, "height": 1400})  # the monitor whole, for its picture
        for name in ("caption-editor", "launcher", "monitor"):
            page.locator(f".lora-lab-{name}").first.screenshot(path=shots / f"{name}.png")
        assert all((shots / f"{n}.png").stat().st_size > 5_000 for n in ("browser", "monitor", "jobs"))
        monitor = monitor.first  # (the JobsPanel shows one too now)
        assert_charts_readable(monitor, dark=False)

        # the dark theme: the charts follow it, their labels as readable as in the light one
        set_theme(page, "JupyterLab Dark")
        assert_charts_readable(monitor, dark=True)
        monitor.screenshot(path=shots / "monitor-dark.png")
    finally:
        lab.stop()


def assert_charts_readable(monitor, dark: bool) -> None:
    """Every label of the monitor's charts (titles, ticks, legend) stands out from the chart's
    background, and that background is the theme's: dark in the dark theme."""
    labels = monitor.locator("svg text").evaluate_all("""texts => texts.map(t => [t.textContent,
        getComputedStyle(t).fill, getComputedStyle(t.ownerSVGElement.querySelector('rect')).fill])""")
    assert len(labels) > 10, labels
    for text, fill, background in labels:
        assert contrast(fill, background) >= 3, (text, fill, background)
    backgrounds = {background for _, _, background in labels}
    assert all((luminance(rgba(b)) < 0.18) == dark for b in backgrounds), backgrounds
