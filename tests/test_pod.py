"""pod/: the VastAI provisioning script and the RunPod start script, run with bash in a temporary
root (LORA_LAB_POD_ROOT stands for /), offline, up to the model download.

The Python they are given is this venv's, whose lora_lab has the checkout's version, so they
install nothing (pip could fetch nothing anyway: no index), and PATH has no nvcc, so the CPU
llama.cpp build is the right one. The model pull runs for real in the background and fails
offline with the models command's message, which fails nothing else. The RunPod script starts a
real JupyterLab, which the tests ask over HTTP and stop. A second run changes nothing but the
logs. The install step itself runs in test_a_fresh_python_gets_lora_lab_and_keeps_its_torch, into
a fresh venv.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import tree_digest
from wheel_env import REPO, WheelEnv, build_wheel, clean_environ

POD = REPO / "pod"
SCRIPTS = ("vastai-provisioning.sh", "runpod-start.sh")
TOKEN = "pod-test-token"


def system_bin_without_nvcc(folder: Path) -> Path:
    """Links to the system's commands less nvcc: this machine has a CUDA toolkit, and with nvcc
    on PATH the scripts would rebuild llama.cpp for CUDA."""
    folder.mkdir(parents=True, exist_ok=True)
    for directory in map(Path, ("/usr/local/bin", "/usr/bin", "/bin")):
        for exe in directory.iterdir() if directory.is_dir() else ():
            link = folder / exe.name
            if exe.name != "nvcc" and not link.exists() and not link.is_symlink():
                link.symlink_to(exe)
    return folder


@dataclass
class Pod:
    root: Path  # what the scripts take for /
    env: dict[str, str]

    @property
    def ws(self) -> Path:
        return self.root / "workspace" / "lora-lab"

    @property
    def state(self) -> Path:
        return self.ws / ".pod"

    def run(self, script: str | Path, ok: bool = True, **env: str) -> subprocess.CompletedProcess:
        """Run a script of pod/ (or one copied elsewhere, given by its path) with bash."""
        proc = subprocess.run(["bash", str(POD / script)], env={**self.env, **env}, cwd=self.root,
                              capture_output=True, text=True, timeout=600)
        if ok:
            assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        return proc

    def pulled(self) -> str:
        """Wait for the background model pull to end; its log."""
        deadline = time.monotonic() + 180
        while ((self.state / "models-pull.pid").exists()
               or not any((self.state / m).exists() for m in ("models-pull.done", "models-pull.failed"))):
            assert time.monotonic() < deadline, "the model pull did not end"
            time.sleep(0.2)
        return (self.ws / "logs" / "models-pull.log").read_text()

    def files(self) -> dict[str, str]:
        """Every file under the root with its sha256, less the logs (each start appends to them)."""
        return {k: v for k, v in tree_digest(self.root).items() if not k.startswith("workspace/lora-lab/logs/")}


@pytest.fixture
def pod(tmp_path) -> Pod:
    root = tmp_path / "root"
    root.mkdir()
    jupyter = tmp_path / "jupyter"
    env = {**clean_environ(),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{system_bin_without_nvcc(tmp_path / 'bin')}",
           "HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "",
           "JUPYTER_CONFIG_DIR": str(jupyter / "config"), "JUPYTER_DATA_DIR": str(jupyter / "data"),
           "JUPYTER_RUNTIME_DIR": str(jupyter / "runtime"),
           "LORA_LAB_POD_ROOT": str(root), "LORA_LAB_PYTHON": sys.executable, "LORA_LAB_SOURCE": str(REPO)}
    return Pod(root, env)


def offline_refusals(log: str, names: list[str]) -> None:
    """Each `lora-lab models pull NAME` in a pull log was refused with the models command's one
    line saying the Hub is offline."""
    assert re.findall(r"^== \S+ lora-lab models pull (\S+)$", log, re.MULTILINE) == names, log
    errors = [line for line in log.splitlines() if line.startswith("lora-lab: error: ")]
    assert len(errors) == len(names) and all("offline" in e.lower() for e in errors), log
    assert log.endswith(f"== not pulled: {' '.join(names)}; run lora-lab models pull NAME again "
                        "(it resumes where it stopped)\n"), log


def test_vastai_provisions_the_workspace_and_a_restart_changes_nothing(pod):
    first = pod.run("vastai-provisioning.sh").stdout
    assert "lora_lab 0.1.0 is installed: kept" in first
    assert "llama-cpp-python is installed (cpu build): kept" in first
    assert "with the lora_lab server extension enabled" in first
    quickstart = pod.ws / "notebooks" / "interactive" / "quickstart.ipynb"
    assert quickstart.read_bytes() == (REPO / "notebooks" / "interactive" / "quickstart.ipynb").read_bytes()
    assert "pulling caption sdxl in the background with lora-lab models pull" in first
    offline_refusals(pod.pulled(), ["caption", "sdxl"])
    assert (pod.state / "models-pull.failed").read_text() == "caption sdxl\n"
    assert not (pod.state / "models-pull.done").exists()
    # Vast's Jupyter launch mode runs JupyterLab: this script starts none
    assert not (pod.state / "jupyter.pid").exists() and not (pod.ws / "logs" / "jupyter.log").exists()
    assert (pod.ws / "logs" / "pod-setup.log").read_text() == first

    # the user's work between two starts: an edited notebook, a file of their own
    quickstart.write_text(quickstart.read_text().replace("quickstart", "my quickstart"))
    mine = pod.ws / "datasets" / "cats" / "a.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("a cat")
    before = pod.files()
    second = pod.run("vastai-provisioning.sh").stdout
    log = pod.pulled()  # the failed pull is tried again, and fails again the same way
    assert pod.files() == before
    assert "kept, you edited them (--force overwrites): interactive/quickstart.ipynb" in second
    offline_refusals(log[log.index("\n", log.index("== not pulled")) + 1:], ["caption", "sdxl"])
    assert (pod.ws / "logs" / "pod-setup.log").read_text() == first + second


def test_runpod_starts_jupyterlab_with_the_extension_and_not_twice(pod, tmp_path):
    port = free_port()
    # the image's own start script (SSH, nginx), which must start no second JupyterLab
    start = tmp_path / "start.sh"
    start.write_text('echo "start.sh ran with JUPYTER_PASSWORD=[$JUPYTER_PASSWORD]"\n')
    env = {"LORA_LAB_JUPYTER_PORT": str(port), "JUPYTER_PASSWORD": TOKEN, "LORA_LAB_HANDOFF": str(start)}
    try:
        out = pod.run("runpod-start.sh", **env).stdout
        pid = int((pod.state / "jupyter.pid").read_text())
        started = [line for line in out.splitlines() if "starting JupyterLab:" in line]
        assert len(started) == 1 and f"--port={port} --ServerApp.port_retries=0" in started[0], out
        assert TOKEN not in started[0] and TOKEN not in Path(f"/proc/{pid}/cmdline").read_text()
        assert out.rstrip().endswith("start.sh ran with JUPYTER_PASSWORD=[]"), out

        status, _ = get(port, "api/status", token=None)
        assert status == 403
        status, _ = get(port, "api/status")
        assert status == 200
        status, health = get(port, "lora-lab/api/health")
        assert status == 200 and health["workspace"] == str(pod.ws), health
        assert health["contents"] == {"root": str(pod.root), "workspace": "workspace/lora-lab"}
        offline_refusals(pod.pulled(), ["caption", "sdxl"])

        before = pod.files()
        again = pod.run("runpod-start.sh", **env).stdout
        pod.pulled()
        assert f"JupyterLab is running already (pid {pid}): not starting another" in again
        assert "starting JupyterLab" not in again
        assert pod.files() == before
        assert get(port, "api/status")[0] == 200
    finally:
        stop_jupyter(pod)


def test_a_finished_pull_is_not_started_again_but_a_new_base_model_is(pod, tmp_path):
    # run as Vast runs it: downloaded alone to /provisioning.sh, the shared part fetched from
    # beside PROVISIONING_SCRIPT's URL
    alone = tmp_path / "vast" / "provisioning.sh"
    alone.parent.mkdir()
    shutil.copy(POD / "vastai-provisioning.sh", alone)
    vast = {"PROVISIONING_SCRIPT": (POD / "vastai-provisioning.sh").as_uri()}
    pod.state.mkdir(parents=True)
    (pod.state / "models-pull.done").write_text("caption sdxl\n")  # what a finished pull leaves
    out = pod.run(alone, **vast).stdout
    assert "models already pulled: caption sdxl" in out
    assert not (pod.ws / "logs" / "models-pull.log").exists()

    base = "stabilityai/stable-diffusion-xl-base-1.0"
    out = pod.run(alone, LORA_LAB_BASE_MODEL=base, **vast).stdout
    assert f"pulling caption {base} in the background" in out
    offline_refusals(pod.pulled(), ["caption", base])
    assert not (pod.state / "models-pull.done").exists()


def test_runpod_script_alone_fetches_the_shared_part_from_its_url(pod, tmp_path):
    alone = tmp_path / "lora-lab-start.sh"  # where the template's start command puts it
    shutil.copy(POD / "runpod-start.sh", alone)
    proc = pod.run(alone, ok=False)
    assert proc.returncode == 1 and proc.stderr == (
        "lora-lab: error: cannot fetch lora-lab-common.sh: set LORA_LAB_POD_URL to the URL of "
        "lora_lab's pod/ folder (now: '')\n")
    # fetched: its checks run, and refuse a bad port before anything is written
    proc = pod.run(alone, ok=False, LORA_LAB_POD_URL=POD.as_uri(), LORA_LAB_JUPYTER_PORT="http")
    assert proc.returncode == 1 and proc.stderr.endswith("] error: LORA_LAB_JUPYTER_PORT=http is not a port number\n")
    assert list(pod.root.iterdir()) == []


@pytest.mark.parametrize("script, env, message", [
    ("vastai-provisioning.sh", {"LORA_LAB_SOURCE": "/nowhere"},
     "LORA_LAB_SOURCE=/nowhere is not pypi, a URL, a wheel or a checkout with a pyproject.toml"),
    ("runpod-start.sh", {"LORA_LAB_SOURCE": "/nowhere/lora_lab-9.9-py3-none-any.whl"},
     "LORA_LAB_SOURCE=/nowhere/lora_lab-9.9-py3-none-any.whl: no such wheel"),
    ("runpod-start.sh", {"LORA_LAB_PYTHON": "/nowhere/python"},
     "no Python at /nowhere/python: set LORA_LAB_PYTHON to the Python that runs JupyterLab"),
    ("runpod-start.sh", {"LORA_LAB_JUPYTER_PORT": "http"}, "LORA_LAB_JUPYTER_PORT=http is not a port number"),
])
def test_bad_settings_are_refused_before_anything_is_written(pod, script, env, message):
    proc = pod.run(script, ok=False, **env)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"] error: {message}"), proc.stderr
    assert list(pod.root.iterdir()) == []


@pytest.mark.slow
def test_a_fresh_python_gets_lora_lab_and_keeps_its_torch(pod, tmp_path):
    """The install step for real: a fresh venv without lora_lab, whose other packages (torch
    among them) come from .venv (tests/wheel_env.py), gets lora_lab from its wheel. Offline, pip
    can fetch nothing, so this also shows that nothing but lora_lab is installed. A Jupyter
    server already up, as Vast's Jupyter launch mode starts one beside provisioning, is named."""
    wheel = build_wheel(tmp_path / "wheel")
    env = WheelEnv.create(tmp_path / "env")
    torch_before = env.run(str(env.python), "-c", "import torch; print(torch.__version__, torch.__file__)").stdout
    settings = {"LORA_LAB_PYTHON": str(env.python), "LORA_LAB_SOURCE": str(wheel), "PYTHONPATH": "",
                "PATH": f"{env.bin}{os.pathsep}{tmp_path / 'bin'}"}
    port = free_port()
    early_log = tmp_path / "early.log"
    with early_log.open("w") as log:
        early = subprocess.Popen([str(env.python), "-m", "jupyter_server", f"--port={port}", "--no-browser",
                                  "--allow-root", f"--IdentityProvider.token={TOKEN}",
                                  f"--ServerApp.root_dir={pod.root}"],
                                 env={**env.env, **{k: v for k, v in pod.env.items() if k.startswith("JUPYTER_")}},
                                 cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while not answers(port):
            assert early.poll() is None and time.monotonic() < deadline, early_log.read_text()
            time.sleep(0.2)
        out = pod.run("vastai-provisioning.sh", **settings).stdout
        assert "JupyterLab started before lora_lab was installed: restart the instance once" in out
        assert get(port, "lora-lab/api/health")[0] == 404  # indeed without the extension
    finally:
        early.terminate()
        early.wait(timeout=60)
    version = torch_before.split()[0]
    assert f"installing lora_lab 0.1.0 from {wheel}, keeping torch {version}" in out
    assert "lora_lab 0.1.0 installed" in out
    found = env.run(str(env.python), "-c", "import lora_lab, torch; print(lora_lab.__file__); "
                    "print(torch.__version__, torch.__file__)").stdout.splitlines()
    assert Path(found[0]).is_relative_to(env.site) and found[1] == torch_before.strip()
    constraints = (pod.root / "workspace" / ".cache" / "lora-lab-pod" / "constraints.txt").read_text()
    assert f"torch=={version}\n" in constraints
    assert (pod.ws / "notebooks" / "interactive" / "quickstart.ipynb").is_file()
    pod.pulled()
    again = pod.run("vastai-provisioning.sh", **settings).stdout
    assert "lora_lab 0.1.0 is installed: kept" in again and "restart the instance" not in again
    pod.pulled()


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="no shellcheck (apt-get install shellcheck)")
def test_the_scripts_pass_shellcheck():
    proc = subprocess.run(["shellcheck", "-x", *(str(POD / s) for s in SCRIPTS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str, token: str | None = TOKEN) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/{path}",
                                     headers={"Authorization": f"token {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, {}


def answers(port: int) -> bool:
    try:
        return get(port, "api/status")[0] == 200
    except OSError:  # not listening yet
        return False


def stop_jupyter(pod: Pod) -> None:
    """SIGTERM to the JupyterLab the script started (its own session), then wait until it is gone."""
    try:
        pid = int((pod.state / "jupyter.pid").read_text())
        os.killpg(pid, signal.SIGTERM)
    except (FileNotFoundError, ProcessLookupError):
        return
    deadline = time.monotonic() + 60
    while alive(pid):
        assert time.monotonic() < deadline, "JupyterLab did not stop"
        time.sleep(0.2)


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent that is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
