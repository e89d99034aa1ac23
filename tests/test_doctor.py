"""`lora-lab doctor` on this GPU-less box: through the CLI (text and --json), over REST from a
real Jupyter server, with the disk nearly full, with the tiny models in the workspace, with the
server extension enabled and disabled by jupyter_server's own config writer, and with a check
that raises. torch must stay unimported where there is no GPU."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from jupyter_core.paths import jupyter_config_path
from jupyter_server.extension.config import ExtensionConfigManager
from jupyter_server.extension.serverextension import toggle_server_extension_python
from server_api import server_config

from lora_lab import doctor
from lora_lab.devices import NVIDIA_GPUS
from lora_lab.doctor import EXTENSION
from lora_lab.tiny import gguf_models

NAMES = ["gpu", "torch", "bf16", "llama.cpp", "disk", "base models", "catalogue", "caption model", "server extension",
         "cluster"]
REPO = Path(__file__).resolve().parent.parent
no_gpu = pytest.mark.skipif(NVIDIA_GPUS.is_dir(), reason="this box has an NVIDIA GPU")


def doctor_json(cli, *extra: str, rc: int = 0) -> dict[str, dict]:
    code, out, err = cli("doctor", "--json", *extra, ok=False)
    assert code == rc and err == "", (code, err)
    lines = json.loads(out)
    assert all(set(line) == {"check", "status", "found", "fix"} for line in lines)
    return {line["check"]: line for line in lines}


# -- a box without a GPU -------------------------------------------------------------------------
@no_gpu
def test_a_box_without_a_gpu_says_so_plainly_and_exits_0(cli):
    code, text, err = cli("doctor")
    assert code == 0 and err == "" and "Traceback" not in text
    rows = [re.match(r"(ok|warn|fail) +(\S+(?: \S+)?) {2,}(.*)", line) for line in text.splitlines()
            if not line.startswith(" ")]
    assert [(r.group(2)) for r in rows] == NAMES  # one aligned row per check, fixes indented under
    assert len({r.start(3) for r in rows}) == 1
    lines = doctor_json(cli)
    assert list(lines) == NAMES
    assert lines["gpu"]["status"] == "warn" and "no NVIDIA GPU" in lines["gpu"]["found"]
    assert "nvidia-smi" in lines["gpu"]["fix"]
    assert lines["torch"]["status"] == "ok" and "not imported" in lines["torch"]["found"]
    assert lines["bf16"]["status"] == "ok" and "no GPU" in lines["bf16"]["found"]
    # a CPU build of llama.cpp is right here: ok, with a note, not a failure
    assert lines["llama.cpp"]["status"] == "ok" and "CPU build" in lines["llama.cpp"]["found"]
    assert all(line["fix"] is None for line in lines.values() if line["status"] == "ok")
    assert all(line["fix"] for line in lines.values() if line["status"] != "ok")


@no_gpu
def test_doctor_does_not_import_torch_without_a_gpu(ws):
    """In its own process (this one may have imported torch for other tests), traced with
    -X importtime: llama_cpp is imported (its line needs it), torch is not."""
    code = "from lora_lab.cli import main; raise SystemExit(main(['doctor', '--json']))"
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True,
                          text=True, env={**os.environ, "LORA_LAB_HOME": str(ws.root)}, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "llama_cpp" in imported and "lora_lab.doctor" in imported
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}
    assert [line["check"] for line in json.loads(done.stdout)] == NAMES


# -- disk ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("free_gb", "status", "rc"), [(30, "warn", 0), (5, "fail", 1)])
def test_a_nearly_full_workspace_disk(cli, ws, monkeypatch, free_gb, status, rc):
    real = shutil.disk_usage

    def disk_usage(path):
        usage = real(path)
        if Path(path) == ws.root:  # the workspace's volume: nearly full; any other as it is
            return usage._replace(free=free_gb * 10**9, total=100 * 10**9)
        return usage

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    disk = doctor_json(cli, rc=rc)["disk"]
    assert disk["status"] == status and f"{free_gb} GB free of 100 GB" in disk["found"]
    assert str(ws.root) in disk["found"] and "$LORA_LAB_HOME" in disk["fix"]
    code, text, _ = cli("doctor", ok=False)
    assert code == rc and re.search(rf"^{status} +disk ", text, re.M)


# -- models --------------------------------------------------------------------------------------
def test_models_present_after_lora_lab_tiny(cli, ws, monkeypatch):
    before = doctor_json(cli)
    assert before["base models"]["status"] == "warn" and "none in" in before["base models"]["found"]
    assert "lora-lab models pull" in before["base models"]["fix"]
    cli("tiny", ws.models, "--only", "sd15", "caption")
    after = doctor_json(cli)
    assert after["base models"]["status"] == "ok"
    assert after["base models"]["found"].startswith(f"2 in {ws.models}: sd15 (StableDiffusionPipeline), "
                                                    "sd15.safetensors (")
    caption = after["caption model"]  # not the default Qwen2.5-VL-7B pair, but the GGUFs are named
    assert caption["status"] == "warn" and "Qwen2.5-VL-7B-Instruct-Q8_0.gguf" in caption["found"]
    assert "models/caption/ holds tiny-qwen25vl-mmproj.gguf, tiny-qwen25vl.gguf" in caption["found"]
    monkeypatch.setenv("LORA_LAB_CAPTION_MODEL", str(ws.models / "caption" / "tiny-qwen25vl.gguf"))
    monkeypatch.setenv("LORA_LAB_CAPTION_MMPROJ", str(ws.models / "caption" / "tiny-qwen25vl-mmproj.gguf"))
    caption = doctor_json(cli)["caption model"]
    assert caption["status"] == "ok" and caption["fix"] is None
    assert caption["found"].startswith("tiny-qwen25vl.gguf + tiny-qwen25vl-mmproj.gguf (")
    assert caption["found"].endswith(" in models/caption")


# -- the server extension ------------------------------------------------------------------------
@pytest.fixture
def jupyter_config(tmp_path, monkeypatch) -> Path:
    """A user config folder of its own, searched first (before the environment's)."""
    folder = tmp_path / "jupyter-config"
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(folder))
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "0")
    monkeypatch.delenv("JUPYTER_CONFIG_PATH", raising=False)
    return folder


def jupyter_server_says() -> bool:
    return bool(ExtensionConfigManager(read_config_path=jupyter_config_path()).enabled(EXTENSION))


def test_the_extension_check_reads_the_config_as_jupyter_server_does(cli, jupyter_config):
    written = jupyter_config / "jupyter_server_config.d" / f"{EXTENSION}.json"
    toggle_server_extension_python(EXTENSION, False, user=True)  # `... extension disable --user`
    line = doctor_json(cli)["server extension"]
    assert not jupyter_server_says() and line["status"] == "warn"
    assert line["found"].startswith(f"{EXTENSION} is disabled in {written}")
    assert line["fix"] == f"jupyter server extension enable {EXTENSION}, then restart JupyterLab"
    toggle_server_extension_python(EXTENSION, True, user=True)
    line = doctor_json(cli)["server extension"]
    assert jupyter_server_says() and line == {"check": "server extension", "status": "ok",
                                              "found": f"{EXTENSION} enabled in {written}", "fix": None}


def test_without_the_wheels_config_file_the_extension_is_not_enabled(cli, jupyter_config, monkeypatch):
    """A box where only our config folder exists: nothing enables the extension until the
    wheel's own file (jupyter-config/) is there."""
    monkeypatch.setattr("jupyter_core.paths.jupyter_config_path", lambda: [str(jupyter_config)])
    line = doctor_json(cli)["server extension"]
    assert line["status"] == "warn" and "enabled in no Jupyter config" in line["found"]
    installed = jupyter_config / "jupyter_server_config.d" / "lora_lab.json"
    installed.parent.mkdir(parents=True)
    shutil.copy(REPO / "jupyter-config" / "server-config" / "lora_lab.json", installed)
    assert doctor_json(cli)["server extension"]["found"] == f"{EXTENSION} enabled in {installed}"


# -- a check that raises -------------------------------------------------------------------------
def test_a_check_that_raises_is_a_fail_line_not_a_traceback(cli, monkeypatch):
    def broken():
        raise PermissionError("[Errno 13] Permission denied: '/etc/jupyter'\nand a second line")

    monkeypatch.setattr(doctor, "extension_enabled", broken)
    code, text, err = cli("doctor", ok=False)
    assert code == 1 and err == "" and "Traceback" not in text and "second line" not in text
    assert re.search(r"^fail +server extension +the check failed: PermissionError: \[Errno 13\] "
                     r"Permission denied: '/etc/jupyter'$", text, re.M)
    lines = doctor_json(cli, rc=1)
    assert list(lines) == NAMES and [c for c, line in lines.items() if line["status"] == "fail"] == [
        "server extension"]  # the other checks still ran


# -- REST ----------------------------------------------------------------------------------------
@pytest.fixture
def caption_pair(tmp_path) -> tuple[Path, Path]:
    return gguf_models.write_caption_pair(tmp_path / "caption")


@pytest.fixture
def jp_server_config(ws, caption_pair):
    model, mmproj = caption_pair
    return server_config(ws, caption_model=str(model), caption_mmproj=str(mmproj))


@no_gpu
async def test_get_doctor_over_rest(jp_fetch, ws, caption_pair):
    loaded = "llama_cpp" in sys.modules
    r = await jp_fetch("lora-lab", "api", "doctor")
    checks = json.loads(r.body)["checks"]
    assert r.code == 200 and [c["check"] for c in checks] == NAMES
    lines = {c["check"]: c for c in checks}
    assert lines["gpu"]["status"] == "warn" and "no NVIDIA GPU" in lines["gpu"]["found"]
    assert str(ws.root) in lines["disk"]["found"]
    # the server's own caption model setting, not the default
    assert lines["caption model"]["status"] == "ok"
    assert lines["caption model"]["found"].endswith(f" in {caption_pair[0].parent}")
    assert ("llama_cpp" in sys.modules) == loaded  # checked in a child process, not the server's
