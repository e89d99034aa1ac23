"""The workspace: one root folder holding datasets, jobs, models, LoRAs and exports.

Every path a user or a request names is resolved inside the root by :meth:`Workspace.resolve`;
anything that escapes it (``..``, an absolute path elsewhere, a symlink pointing out) is refused.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import LoraLabError

FOLDERS = ("datasets", "jobs", "models", "loras", "exports")
POD_VOLUME = Path("/workspace")  # VastAI and RunPod images mount their persistent disk here

# Dataset and job names become folder names: letters, digits, space, dot, dash, underscore;
# no leading dot (hidden) and no separators.
_NAME = re.compile(r"^[^\W_][\w.\- ]{0,99}$")


def default_root() -> Path:
    """``$LORA_LAB_HOME``, else ``/workspace/lora-lab`` on pod images, else ``~/lora-lab``."""
    env = os.environ.get("LORA_LAB_HOME")
    if env:
        return Path(env).expanduser()
    if POD_VOLUME.is_dir():
        return POD_VOLUME / "lora-lab"
    return Path.home() / "lora-lab"


def check_name(name: str, what: str = "dataset") -> str:
    """Return ``name`` if it can be a folder name, else raise a message saying what is allowed."""
    # fullmatch: "$" would let a final newline through; 255 bytes: what a folder name may take
    if (not isinstance(name, str) or not _NAME.fullmatch(name) or name.endswith((" ", "."))
            or len(name.encode("utf-8")) > 255):
        raise LoraLabError(
            f"invalid {what} name {name!r}: use up to 100 letters, digits, spaces, '.', '-' or '_',"
            " starting with a letter or digit"
        )
    return name


class Workspace:
    """A workspace root and its folders (created on first use)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else default_root()
        for folder in FOLDERS:
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self.root = self.root.resolve()

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def loras(self) -> Path:
        return self.root / "loras"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    def resolve(self, path: str | os.PathLike, base: str | os.PathLike | None = None) -> Path:
        """Resolve a user-named ``path`` (relative to ``base``, default the root) inside the root.

        Symlinks are followed before the check, so a link pointing out of the root is refused
        just like ``../..``.
        """
        base_dir = Path(base) if base is not None else self.root
        raw = os.fspath(path)
        if "\x00" in raw:
            raise LoraLabError(f"invalid path {raw!r}: contains a NUL byte")
        target = (base_dir / raw).resolve()
        if target != self.root and self.root not in target.parents:
            raise LoraLabError(f"path {raw!r} is outside the workspace {self.root}; refused")
        return target
