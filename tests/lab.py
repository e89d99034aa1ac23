"""A real JupyterLab and a real browser for the browser tests: `jupyter lab` on a free port with
the extension on the test's workspace, and Debian's chromium driven by playwright (never
`playwright install`: it downloads a browser, which fails offline)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

TOKEN = "browser-test"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"]


def chromium() -> str:
    """The browser: $CHROMIUM (set by `make test`, so a missing one fails), else the system's."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if path is None:
        pytest.skip("no chromium (`make test` installs it)")
    assert Path(path).is_file(), f"CHROMIUM={path} does not exist; `make test` installs it"
    return path


class Lab:
    """`jupyter lab` serving ``root``, with lora_lab's workspace at ``workspace``; by default
    .venv's, or ``python`` with ``env`` (say a fresh venv's: tests/wheel_env.py). It runs from
    ``root``, outside the checkout: ``python -m`` puts the working directory first on sys.path."""

    def __init__(self, root: Path, workspace: Path, python: str | os.PathLike | None = None,
                 env: dict[str, str] | None = None, base_url: str = "/"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.root, self.base_url, self.token = root, base_url, TOKEN
        self.python = str(python or sys.executable)
        settings = root / ".lab-settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True)  # no "get news?" toast over the screenshots
        (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
        self.env = {**(os.environ if env is None else env), "LORA_LAB_HOME": str(workspace),
                    "JUPYTERLAB_SETTINGS_DIR": str(root / ".lab-settings"),
                    "JUPYTER_CONFIG_DIR": str(root / ".jupyter")}
        self.log = root / "lab.log"
        self._start()

    def _start(self) -> None:
        cmd = [self.python, "-m", "jupyterlab", f"--port={self.port}", "--no-browser",
               "--allow-root", f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
               f"--ServerApp.base_url={self.base_url}", "--LabApp.expose_app_in_browser=True",
               "--LabApp.extension_manager=readonly"]
        self.proc = subprocess.Popen(cmd, env=self.env, cwd=self.root, stdout=self.log.open("a"),
                                     stderr=subprocess.STDOUT)
        self._wait_ready()

    def restart(self, token: str) -> None:
        """Restart on the same port with a new token and new cookie secret (a fresh runtime
        folder): what the open page holds is no longer a valid login."""
        self.stop()
        self.token = token
        self.env = {**self.env, "JUPYTER_RUNTIME_DIR": str(self.root / f".runtime-{token}")}
        self._start()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.page("api/status"), timeout=5)
                return
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()
                assert time.monotonic() < deadline, "JupyterLab did not start: " + self.log.read_text()
                time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def page(self, path: str) -> str:
        """The URL of ``path`` under the base URL, with the token."""
        return f"{self.url}{self.base_url}{path}{'&' if '?' in path else '?'}token={self.token}"

    def notebook(self, name: str, cells: list[str]) -> str:
        """Write a notebook of code cells; its URL in the lab."""
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, self.root / name)
        return self.page(f"lab/tree/{name}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # seen once in a full run on a loaded box: killed, said
            with self.log.open("a") as log:
                log.write("lab.py: JupyterLab did not stop within 30 s of SIGTERM; killed\n")
            self.proc.kill()
            self.proc.wait(timeout=30)


def wait_for_kernel(page) -> None:
    """Wait until the open notebook's kernel is connected and idle (cells sent before that are
    lost, and the lab never says so)."""
    page.wait_for_function("""() => {
        const kernel = window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel;
        return kernel?.connectionStatus === "connected" && kernel?.status === "idle";
    }""", timeout=90_000)


def run_all(page) -> None:
    """Run every cell of the open notebook once its kernel is ready."""
    wait_for_kernel(page)
    # not awaited: the command's promise only settles when every cell has run
    page.evaluate("void window.jupyterapp.commands.execute('notebook:run-all-cells')")


def type_caption(page, ws, dataset: str, file: str, text: str) -> None:
    """Type ``text`` into the open caption editor and wait until it is ``file``'s caption on disk."""
    from lora_lab.datasets import Dataset

    editor = page.locator(".lora-lab-caption-editor textarea")
    editor.fill(text)
    editor.blur()  # the editor saves when the text box loses focus
    deadline = time.monotonic() + 60
    while Dataset.open(dataset, ws).caption(file) != text:
        assert time.monotonic() < deadline, f"the caption of {file} was not saved"
        time.sleep(0.2)


def set_theme(page, theme: str) -> None:
    """Switch JupyterLab to ``theme`` ("JupyterLab Light", "JupyterLab Dark") as its Settings
    menu does, and wait until the theme's stylesheet applies."""
    page.evaluate("t => window.jupyterapp.commands.execute('apputils:change-theme', {theme: t})", theme)
    # the splash screen JupyterLab shows while it loads a theme must have faded out too
    page.wait_for_function("t => document.body.dataset.jpThemeName === t && "
                           "!document.querySelector('#jupyterlab-splash')", arg=theme, timeout=60_000)
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def rgba(css: str) -> tuple[float, float, float, float]:
    """A computed CSS colour, ``rgb(...)`` or ``rgba(...)``, as 0-1 channels and alpha."""
    values = [float(v) for v in css[css.index("(") + 1:css.index(")")].split(",")]
    return values[0] / 255, values[1] / 255, values[2] / 255, values[3] if len(values) > 3 else 1.0


def luminance(rgb: tuple[float, ...]) -> float:
    """The relative luminance (WCAG) of 0-1 channels."""
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3]]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(fg: str, bg: str) -> float:
    """The WCAG contrast ratio of computed colour ``fg`` drawn over ``bg`` (1: invisible,
    21: black on white); a translucent ``fg`` is blended over ``bg`` first, as it shows."""
    *f, alpha = rgba(fg)
    b = rgba(bg)[:3]
    shown = [alpha * c + (1 - alpha) * d for c, d in zip(f, b)]
    hi, lo = sorted((luminance(shown), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)
