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
    """`jupyter lab` serving ``root``, with lora_lab's workspace at ``workspace``."""

    def __init__(self, root: Path, workspace: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.root = root
        settings = root / ".lab-settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True)  # no "get news?" toast over the screenshots
        (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
        env = {**os.environ, "LORA_LAB_HOME": str(workspace),
               "JUPYTERLAB_SETTINGS_DIR": str(root / ".lab-settings"),
               "JUPYTER_CONFIG_DIR": str(root / ".jupyter")}
        cmd = [sys.executable, "-m", "jupyterlab", f"--port={self.port}", "--no-browser",
               "--allow-root", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
               "--LabApp.expose_app_in_browser=True", "--LabApp.extension_manager=readonly"]
        self.log = root / "lab.log"
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/api/status?token={TOKEN}", timeout=5)
                return
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()
                assert time.monotonic() < deadline, "JupyterLab did not start: " + self.log.read_text()
                time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def notebook(self, name: str, cells: list[str]) -> str:
        """Write a notebook of code cells; its URL in the lab."""
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, self.root / name)
        return f"{self.url}/lab/tree/{name}?token={TOKEN}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def run_all(page) -> None:
    """Run every cell of the open notebook once its kernel is connected and idle (cells sent
    before that are lost, and the lab never says so)."""
    page.wait_for_function("""() => {
        const kernel = window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel;
        return kernel?.connectionStatus === "connected" && kernel?.status === "idle";
    }""", timeout=90_000)
    # not awaited: the command's promise only settles when every cell has run
    page.evaluate("void window.jupyterapp.commands.execute('notebook:run-all-cells')")
