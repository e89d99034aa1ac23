"""The notebook kit (``notebooks/interactive`` and ``notebooks/pipelines``), copied into a workspace.

A copy never replaces a notebook the user changed: a manifest beside the copies remembers what
was copied, so a later copy updates the untouched ones to this version and keeps edited ones
(unless forced).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import atomic
from .errors import LoraLabError

FOLDERS = ("interactive", "pipelines")
MANIFEST = ".lora-lab-kit.json"


def kit_dir() -> Path:
    """The shipped notebooks: in the installed package (the wheel force-includes them as
    ``lora_lab/notebooks``), or in a source checkout, the repository's ``notebooks/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "notebooks", here.parent / "notebooks"):
        if all((candidate / folder).is_dir() for folder in FOLDERS):
            return candidate
    raise LoraLabError(f"the notebook kit is missing from this installation ({here}); "
                       "reinstall lora-lab")


@dataclass
class KitReport:
    dest: str
    copied: list[str] = field(default_factory=list)  # new here
    updated: list[str] = field(default_factory=list)  # an untouched older copy, replaced
    unchanged: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # edited by the user: left alone
    overwritten: list[str] = field(default_factory=list)  # edited, replaced by force

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def copy_kit(dest: str | os.PathLike, force: bool = False) -> KitReport:
    """Copy the kit into ``dest``, keeping notebooks edited there unless ``force``."""
    src, dest = kit_dir(), Path(dest).expanduser()
    if dest.exists() and not dest.is_dir():
        raise LoraLabError(f"{dest} is a file; name a folder for the notebooks")
    dest.mkdir(parents=True, exist_ok=True)
    manifest_path = dest / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        manifest = {}
    except (OSError, ValueError) as e:
        raise LoraLabError(f"{manifest_path} is unreadable ({e}); delete it and copy again") from None
    report = KitReport(str(dest))
    for path in sorted(p for folder in FOLDERS for p in (src / folder).glob("*.ipynb")):
        rel = path.relative_to(src).as_posix()
        data, target = path.read_bytes(), dest / rel
        outcome = _outcome(target, data, manifest.get(rel), force)
        getattr(report, outcome).append(rel)
        if outcome in ("copied", "updated", "overwritten"):
            target.parent.mkdir(exist_ok=True)
            atomic.write_bytes(target, data)
        if outcome != "kept":
            manifest[rel] = _sha256(data)
    atomic.write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True))
    return report


def _outcome(target: Path, data: bytes, copied_sha: str | None, force: bool) -> str:
    if not target.exists():
        return "copied"
    current = _sha256(target.read_bytes())
    if current == _sha256(data):
        return "unchanged"
    if current == copied_sha:
        return "updated"
    return "overwritten" if force else "kept"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
