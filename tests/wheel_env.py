"""lora_lab as a user gets it: the wheel built offline from this checkout, installed alone into a
fresh venv, with nothing of the checkout or of .venv's editable lora_lab in sight.

The fresh venv downloads nothing: it borrows the locked dependencies from .venv through a ``.pth``
line to a folder of links to .venv's site-packages (every entry but lora_lab's own), and
JupyterLab's app files (JUPYTERLAB_DIR) and the ipywidgets frontend (JUPYTER_PATH) from .venv's
share/jupyter. Its PATH has no node or npm: the labextension must arrive prebuilt. Jupyter's
config, data and runtime folders are its own, so no user or .venv setting leaks in.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEPS = Path(sysconfig.get_paths()["purelib"])  # .venv's site-packages (the interpreter running pytest)
SHARE = Path(sys.prefix) / "share" / "jupyter"
WIDGETS = "@jupyter-widgets/jupyterlab-manager"
# .venv's editable lora_lab (its .pth, dist-info and the folder hatchling leaves): never seen
OWN = re.compile(r"^(_editable_impl_|__editable__[._]|_)?lora_lab\b")
NODE_TOOLS = {"node", "nodejs", "npm", "npx", "corepack", "yarn", "yarnpkg", "pnpm", "jlpm"}
SYSTEM_BIN = ("/usr/local/bin", "/usr/bin", "/bin")
SCRIPT = "#!{python}\nimport sys\nfrom {module} import {head}\nsys.exit({attr}())\n"


def build_wheel(out: Path, repo: Path = REPO) -> Path:
    """``pip wheel`` of ``repo`` without the index, build isolation or node: the labextension
    must already be built (``make`` builds it), as on a machine that only has Python."""
    out.mkdir(parents=True, exist_ok=True)
    tools = system_bin(out.parent / "build-bin")
    env = {**clean_environ(), "PATH": str(tools), "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-w", str(out), str(repo)], env=env, cwd=out, capture_output=True, text=True)
    assert proc.returncode == 0, ("the wheel did not build offline without node (is the labextension "
                                  f"built? `make` builds it):\n{proc.stdout}\n{proc.stderr}")
    (wheel,) = out.glob("lora_lab-*.whl")
    return wheel


def clean_environ() -> dict[str, str]:
    """os.environ without what would point a Python or Jupyter at another installation."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("JUPYTER", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LORA_LAB_"))}


def system_bin(folder: Path) -> Path:
    """A folder of links to the system's commands, less node and its package managers."""
    folder.mkdir(parents=True, exist_ok=True)
    for directory in map(Path, SYSTEM_BIN):
        for exe in directory.iterdir() if directory.is_dir() else ():
            link = folder / exe.name
            if exe.name not in NODE_TOOLS and not link.exists() and not link.is_symlink():
                link.symlink_to(exe)
    return folder


class WheelEnv:
    """A fresh venv under ``root``; ``create(root, wheel)`` installs the wheel into it."""

    def __init__(self, root: Path):
        self.root = root
        self.prefix = root / "venv"
        self.bin = self.prefix / "bin"
        self.python = self.bin / "python"
        self.site = self.prefix / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
        self.wheel: Path | None = None
        jupyter = root / "jupyter"
        self.env = {**clean_environ(),
                    "PATH": f"{self.bin}{os.pathsep}{root / 'system-bin'}",
                    "JUPYTERLAB_DIR": str(SHARE / "lab"),
                    "JUPYTER_PATH": str(jupyter / "path"),
                    "JUPYTER_CONFIG_DIR": str(jupyter / "config"),
                    "JUPYTER_DATA_DIR": str(jupyter / "data"),
                    "JUPYTER_RUNTIME_DIR": str(jupyter / "runtime"),
                    "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

    @classmethod
    def create(cls, root: Path, wheel: Path | None = None) -> WheelEnv:
        self = cls(root)
        venv.create(self.prefix, with_pip=False, symlinks=True)
        deps = root / "deps"
        deps.mkdir()
        for entry in DEPS.iterdir():
            if not OWN.match(entry.name):
                (deps / entry.name).symlink_to(entry)
        (self.site / "_lora_lab_test_deps.pth").write_text(f"{deps}\n")
        system_bin(root / "system-bin")
        labextensions = root / "jupyter" / "path" / "labextensions"
        (labextensions / WIDGETS).parent.mkdir(parents=True)
        (labextensions / WIDGETS).symlink_to(SHARE / "labextensions" / WIDGETS)
        if wheel is not None:
            self.run(str(self.python), "-m", "pip", "install", "-q", "--no-deps", str(wheel))
            self.wheel = wheel
        self._write_scripts(deps)
        return self

    def _write_scripts(self, deps: Path) -> None:
        """The dependencies' commands (jupyter, jupyter-lab ...), run by this venv's Python."""
        for dist in importlib.metadata.distributions(path=[str(deps)]):
            for ep in dist.entry_points.select(group="console_scripts"):
                script = self.bin / ep.name
                if not script.exists():
                    script.write_text(SCRIPT.format(python=self.python, module=ep.module,
                                                    head=ep.attr.split(".")[0], attr=ep.attr))
                    script.chmod(0o755)

    def run(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run a command of this venv from outside the checkout (``python -m`` puts the working
        directory first on sys.path); stdout and stderr together in ``.stdout``."""
        proc = subprocess.run(list(args), cwd=cwd or self.root, env={**self.env, **(env or {})},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if check:
            assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}"
        return proc

    def which(self, name: str) -> str | None:
        return shutil.which(name, path=self.env["PATH"])
