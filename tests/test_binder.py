"""binder/ as repo2docker runs it: postBuild runs for real in a copy of the repository that is also
$HOME (repo2docker's default), with a fresh venv holding the locked requirements first on PATH and
no node (tests/wheel_env.py); then the workspace has what the Quickstart needs, the README's Binder
link opens the quickstart, and start points the server and kernels at that workspace."""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from wheel_env import REPO, WheelEnv

from lora_lab.tiny.samples import SAMPLES

pytestmark = pytest.mark.slow
LINK = re.compile(r"https://mybinder\.org/v2/gh/[^/\s]+/[^/\s]+/HEAD\?urlpath=lab/tree/(\S+?\.ipynb)")
# what a clone lacks, or what no build reads
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "node_modules", "__pycache__", ".pytest_cache",
                                    ".hypothesis", ".tools", "demo-workspace")


@dataclass
class Built:
    env: WheelEnv
    home: Path  # the copy of the repository, as repo2docker's $HOME
    log: str  # postBuild's output

    @property
    def ws(self) -> Path:
        return self.home / "lora-lab"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    root = tmp_path_factory.mktemp("binder")
    env = WheelEnv.create(root / "env")  # no wheel: postBuild installs the package itself
    home = root / "home"
    shutil.copytree(REPO, home, ignore=NOT_COPIED, symlinks=True)
    # LORA_LAB_HOME elsewhere: postBuild must choose the binder workspace itself
    log = env.run(str(home / "binder" / "postBuild"), cwd=home,
                  env={"HOME": str(home), "LORA_LAB_HOME": str(root / "elsewhere")}).stdout
    return Built(env, home, log)


def test_postbuild_installs_the_package_with_both_extensions(built):
    out = built.env.run(str(built.env.python), "-c", "import lora_lab; print(lora_lab.__file__)").stdout
    assert Path(out.strip()).is_relative_to(built.env.site), out
    assert re.search(r"lora_lab\.server_ext.*OK", built.log) and re.search(r"lora-lab.*enabled.*OK", built.log)


def test_the_workspace_holds_the_tiny_models_and_the_sample_dataset(built):
    tiny = built.ws / "models" / "tiny"
    for family in ("sd15", "sdxl"):
        assert (tiny / family / "model_index.json").is_file()
    for gguf in ("tiny-qwen25vl.gguf", "tiny-qwen25vl-mmproj.gguf"):
        assert (tiny / "caption" / gguf).stat().st_size > 0
    dataset = built.ws / "datasets" / "quickstart"
    assert {p.name for p in dataset.iterdir() if p.is_file() and p.suffix != ".txt"} == {s[0] for s in SAMPLES}
    captioned = {Path(name).with_suffix(".txt").name for name, *_, caption in SAMPLES if caption}
    assert {p.name for p in dataset.glob("*.txt")} == captioned
    assert not (built.home.parent / "elsewhere").exists()


def test_the_readme_binder_link_opens_the_quickstart(built):
    links = LINK.findall((REPO / "README.md").read_text(encoding="utf-8"))
    assert links and set(links) == {links[0]}, links
    # Binder's Jupyter serves $HOME, the repository: urlpath is relative to it
    opened = built.home / links[0]
    assert opened.read_bytes() == (REPO / "notebooks" / "interactive" / "quickstart.ipynb").read_bytes()
    assert opened.is_relative_to(built.ws)


def test_start_runs_the_command_on_the_binder_workspace(built):
    out = built.env.run(str(built.home / "binder" / "start"), "lora-lab", "dataset", "list", "--json",
                        cwd=built.home, env={"HOME": str(built.home), "LORA_LAB_HOME": "/nowhere"}).stdout
    assert [(d["name"], d["images"]) for d in json.loads(out)] == [("quickstart", len(SAMPLES))], out
