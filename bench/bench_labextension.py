"""JupyterLab extension benchmark: its bundle size, what it adds to JupyterLab's time to a ready
page, and the sidebar's time to first paint with 500 jobs.

    .venv/bin/python bench/bench_labextension.py              # 5 page loads a side (~2 min)
    .venv/bin/python bench/bench_labextension.py --repeats 2  # quicker

A real `jupyter lab` runs in a subprocess from the project's venv, with Debian's chromium
driven by playwright ($CHROMIUM, default /usr/bin/chromium). "Without" serves the same lab with
lora_lab's labextension off its extension path and the server extension disabled, so the two
sides differ by exactly lora_lab. Page loads alternate between the sides, each in a fresh
browser context (no cache), and the medians are compared.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchlib import Row, Target, p50, print_machine, print_table

import lora_lab
from lora_lab.jobdir import JobRecord
from lora_lab.workspace import Workspace

TOKEN = "bench-token"
READY_TARGET = Target(ratio=1.10)  # the extension adds at most 10% to a ready page
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"]
EXTENSIONS = Path(sys.prefix) / "share" / "jupyter" / "labextensions"
BUNDLE = Path(lora_lab.__file__).parent / "labextension" / "static"
PAGE_ROWS = 50  # the sidebar's first page of jobs


class JupyterLab:
    """`jupyter lab` on a free port serving ``root``; ``with_lora_lab`` False removes both halves."""

    def __init__(self, root: Path, workspace: Path, with_lora_lab: bool):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        name = "on" if with_lora_lab else "off"
        ext_path = root / f"labextensions-{name}"  # the same extensions, lora_lab's or not
        ext_path.mkdir()
        for ext in [*EXTENSIONS.glob("[!@]*"), *EXTENSIONS.glob("@*/*")]:
            if with_lora_lab or ext.name != "lora-lab":
                link = ext_path / ext.relative_to(EXTENSIONS)
                link.parent.mkdir(exist_ok=True)
                link.symlink_to(ext)
        config = root / f"config-{name}.json"
        config.write_text(json.dumps({
            "ServerApp": {"jpserver_extensions": {"lora_lab.server_ext": with_lora_lab}},
            "LabApp": {"labextensions_path": [str(ext_path)], "extra_labextensions_path": []}}))
        settings = root / f"settings-{name}" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True)
        (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
        env = {**os.environ, "LORA_LAB_HOME": str(workspace), "JUPYTER_PLATFORM_DIRS": "1",
               "JUPYTERLAB_SETTINGS_DIR": str(settings.parent.parent),
               "JUPYTERLAB_WORKSPACES_DIR": str(root / f"workspaces-{name}")}
        cmd = [sys.executable, "-m", "jupyterlab", f"--config={config}", f"--port={self.port}",
               "--no-browser", "--allow-root", f"--IdentityProvider.token={TOKEN}",
               f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
               "--LabApp.extension_manager=readonly"]
        self.proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{self.url}api/status?token={TOKEN}", timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("jupyter lab did not start") from None
                time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def ready_ms(browser, lab: JupyterLab) -> float:
    """Milliseconds from navigation to a restored JupyterLab showing its launcher, in a fresh
    browser context (nothing cached)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{lab.url}lab?reset&token={TOKEN}")
    page.wait_for_function("window.jupyterapp !== undefined", timeout=90_000)
    page.evaluate("window.jupyterapp.restored")
    page.locator(".jp-LauncherCard").first.wait_for(timeout=90_000)
    ms = page.evaluate("performance.now()")
    context.close()
    return ms


def sidebar_paint_ms(browser, lab: JupyterLab, rows: int) -> float:
    """Milliseconds from opening the LoRA Lab sidebar to its first ``rows`` jobs painted."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{lab.url}lab?reset&token={TOKEN}")
    page.wait_for_function("window.jupyterapp !== undefined", timeout=90_000)
    page.evaluate("window.jupyterapp.restored")
    ms = page.evaluate("""async (rows) => {
        const start = performance.now();
        await window.jupyterapp.commands.execute('lora-lab:open-sidebar');
        await new Promise(resolve => {
            const painted = () => document.querySelectorAll('.lora-lab-sidebar .lora-lab-job').length >= rows;
            const check = () => painted() ? resolve() : requestAnimationFrame(check);
            check();
        });
        await new Promise(requestAnimationFrame);  // the frame that shows them
        return performance.now() - start;
    }""", rows)
    context.close()
    return ms


def add_jobs(ws: Workspace, count: int) -> None:
    """``count`` finished training jobs, as a workspace that has trained for months holds."""
    for i in range(count):
        job = JobRecord.create("train", {"config": {}, "gpus": 1}, ws)
        job.set_status("succeeded", phase="done", progress=1.0, steps=100 + i, loss=0.1)


def bundle_sizes() -> tuple[int, int]:
    """The bytes of the extension's JavaScript, as served and gzipped."""
    files = sorted(BUNDLE.glob("*.js"))
    if not files:
        raise SystemExit(f"no bundle in {BUNDLE}: run make first")
    raw = b"".join(p.read_bytes() for p in files)
    return len(raw), sum(len(gzip.compress(p.read_bytes())) for p in files)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="page loads per side")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    print_machine()
    size, gzipped = bundle_sizes()
    print(f"\n## bundle\nlora_lab/labextension/static/*.js: {size / 1024:.1f} KiB "
          f"({gzipped / 1024:.1f} KiB gzipped)")
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    with tempfile.TemporaryDirectory(prefix="lora-lab-bench-") as tmp, sync_playwright() as p:
        root = Path(tmp)
        ws = Workspace(root / "ws")
        add_jobs(ws, 5)
        labs = {on: JupyterLab(root, ws.root, on) for on in (True, False)}
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            for lab in labs.values():  # first loads warm the server's caches: not timed
                ready_ms(browser, lab)
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(args.repeats):
                for on, lab in labs.items():
                    times[on].append(ready_ms(browser, lab) / 1000)
            print_table("time to a ready JupyterLab (median of page loads, fresh context each)",
                        f"the same lab without lora_lab (both extensions off), median of {args.repeats}",
                        [Row("with lora_lab", p50(times[True]), p50(times[False]), READY_TARGET)])

            few = [sidebar_paint_ms(browser, labs[True], 5) / 1000 for _ in range(args.repeats)]
            add_jobs(ws, 495)
            many = [sidebar_paint_ms(browser, labs[True], PAGE_ROWS) / 1000 for _ in range(args.repeats)]
            print_table("LoRA Lab sidebar: open to first paint of the jobs",
                        f"the same sidebar with 5 jobs, median of {args.repeats}",
                        [Row(f"500 jobs (first {PAGE_ROWS} painted)", p50(many), p50(few))])
        finally:
            browser.close()
            for lab in labs.values():
                lab.stop()


if __name__ == "__main__":
    main()
