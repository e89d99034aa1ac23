"""The built wheel is the whole product: installed alone into a fresh venv on a machine without
node, it gives JupyterLab lora_lab's labextension and server extension, both enabled and working
(tests/wheel_env.py builds the wheel and the venv)."""
from __future__ import annotations

import json
import re
import urllib.request
import zipfile
from pathlib import Path

from lab import TOKEN, Lab
from wheel_env import REPO

LABEXT = "share/jupyter/labextensions/lora-lab"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def sections(output: str, header: str) -> dict[str, list[list[str]]]:
    """A `jupyter ... list` report as {folder: its lines' words}: a line starting with ``header``
    (any unindented line when ``header`` is empty) opens a folder's section."""
    found: dict[str, list[list[str]]] = {}
    lines: list[list[str]] = []
    for line in ANSI.sub("", output).splitlines():
        if line and not line[0].isspace() and line.startswith(header):
            lines = found.setdefault(line.removeprefix(header).strip(), [])
        elif line.strip():
            lines.append(line.split())
    return found


def test_the_wheel_holds_the_built_extension_the_config_and_the_kit(wheel_venv):
    name, version = wheel_venv.wheel.name.split("-")[:2]
    data = f"{name}-{version}.data/data/"  # what pip puts under the venv's prefix
    with zipfile.ZipFile(wheel_venv.wheel) as whl:
        names = whl.namelist()
        shipped = {n.removeprefix(data) for n in names if n.startswith(data)}
        assert {f"{LABEXT}/package.json", f"{LABEXT}/install.json",
                "etc/jupyter/jupyter_server_config.d/lora_lab.json"} <= shipped, names
        package = json.loads(whl.read(f"{data}{LABEXT}/package.json"))
        install = json.loads(whl.read(f"{data}{LABEXT}/install.json"))
        config = json.loads(whl.read(f"{data}etc/jupyter/jupyter_server_config.d/lora_lab.json"))
    # the bundle `make` built, all of it
    built = REPO / "lora_lab" / "labextension" / "static"
    assert {n for n in shipped if n.startswith(f"{LABEXT}/static/")} == {
        f"{LABEXT}/static/{p.relative_to(built).as_posix()}" for p in built.rglob("*") if p.is_file()}
    assert any(re.fullmatch(rf"{LABEXT}/static/remoteEntry\.\w+\.js", n) for n in shipped), shipped
    assert package["name"] == "lora-lab" and package["jupyterlab"]["_build"]["load"].startswith("static/")
    assert install["packageName"] == "lora-lab" and install["packageManager"] == "python"
    assert config == {"ServerApp": {"jpserver_extensions": {"lora_lab.server_ext": True}}}
    kit = {p.relative_to(REPO).as_posix() for p in (REPO / "notebooks").rglob("*.ipynb")}
    assert kit and {f"lora_lab/{p}" for p in kit} <= set(names)
    # what the build reads is not shipped: only the bundle
    assert not [n for n in names if "node_modules" in n or re.search(r"\.tsx?$", n) or "/src/" in n]


def test_the_venv_runs_the_wheels_lora_lab_without_node(wheel_venv):
    out = wheel_venv.run(str(wheel_venv.python), "-c", "import lora_lab; print(lora_lab.__file__)").stdout
    assert Path(out.strip()).is_relative_to(wheel_venv.site / "lora_lab"), out
    assert wheel_venv.which("node") is None and wheel_venv.which("npm") is None
    assert wheel_venv.which("jupyter") == str(wheel_venv.bin / "jupyter")


def test_labextension_list_shows_lora_lab_enabled_and_ok(wheel_venv):
    report = sections(wheel_venv.run("jupyter", "labextension", "list").stdout, "")
    ours = [(folder, line) for folder, lines in report.items() for line in lines if line[0] == "lora-lab"]
    # exactly one copy, the wheel's, in the fresh venv's prefix
    assert [folder for folder, _ in ours] == [str(wheel_venv.prefix / "share/jupyter/labextensions")], report
    assert "enabled" in ours[0][1] and "OK" in ours[0][1], ours


def test_server_extension_list_shows_lora_lab_enabled_and_ok(wheel_venv):
    out = wheel_venv.run("jupyter", "server", "extension", "list").stdout
    lines = sections(out, "Config dir:")[str(wheel_venv.prefix / "etc/jupyter")]
    ours = [line[1:] for line in lines if line[0] == "lora_lab.server_ext"]
    assert ["enabled"] in ours and any(words[-1] == "OK" for words in ours), out


def test_jupyter_lab_serves_the_extension_and_its_api(wheel_venv, tmp_path):
    root = tmp_path / "lab"
    root.mkdir()
    lab = Lab(root, tmp_path / "ws", python=wheel_venv.python, env=wheel_venv.env)
    try:
        page = urllib.request.urlopen(f"{lab.url}/lab?token={TOKEN}", timeout=30).read().decode()
        config = re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>',
                           page, re.S)
        federated = json.loads(config.group(1))["federated_extensions"]
        ours = [ext for ext in federated if ext["name"] == "lora-lab"]
        assert len(ours) == 1, federated
        bundle = urllib.request.urlopen(f"{lab.url}/lab/extensions/lora-lab/{ours[0]['load']}", timeout=30)
        assert bundle.status == 200 and len(bundle.read()) > 0
        health = urllib.request.urlopen(f"{lab.url}/lora-lab/api/health?token={TOKEN}", timeout=30)
        assert health.status == 200
    finally:
        lab.stop()
