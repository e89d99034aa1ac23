"""What the workspace's ``models/`` holds: one folder per pulled model, each with a record of its
pull (``.lora-lab-model.json``: the repo, the commit, every file with its size and hash, and
whether the pull finished), plus whatever else a user put there.

Light on purpose (no huggingface_hub): the caption defaults, ``lora-lab doctor`` and GET models
read it.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from ..jobdir.record import folder_bytes
from ..workspace import Workspace
from .catalogue import CAPTION_MODELS, CATALOGUE, CatalogueModel, caption_files

RECORD = ".lora-lab-model.json"


def read_record(folder: Path) -> dict[str, Any] | None:
    """The folder's pull record; None when there is none (or it was damaged by hand)."""
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("files"), dict) else None


def write_record(folder: Path, record: dict[str, Any]) -> None:
    """Replace the record (renamed into place, never half-written). Not fsynced: that would
    flush the gigabytes just downloaded through the file system's journal with it, and a
    record lost to a power cut only makes the next pull hash the files again."""
    path = folder / RECORD
    tmp = folder / f".{RECORD}.{secrets.token_hex(4)}.tmp"
    try:
        tmp.write_text(json.dumps({**record, "updated": time.time()}, indent=2), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _complete(folder: Path, record: dict[str, Any] | None) -> bool:
    """A finished pull whose files are all still there, at their sizes."""
    if not record or not record.get("complete"):
        return False
    for local, meta in record["files"].items():
        try:
            if (folder / local).stat().st_size != meta.get("size", -1):
                return False
        except (OSError, TypeError, AttributeError):
            return False
    return True


def _caption_files_there(folder: Path, model: CatalogueModel) -> bool:
    """Both GGUFs in place (pulled, or copied there by hand as older versions documented)."""
    return all((folder / f).is_file() for f in caption_files(model))


def state_of(ws: Workspace, model: CatalogueModel) -> str:
    """``present``, ``partial`` (a pull started and not finished: pull again to resume) or
    ``absent``."""
    folder = ws.models / model.name
    if not folder.is_dir():
        return "absent"
    record = read_record(folder)
    if record is not None and record.get("repo") not in (None, model.repo):
        return "absent"  # another repo's folder under that name
    if _complete(folder, record) or (model.kind == "caption" and _caption_files_there(folder, model)):
        return "present"
    return "partial"


def present(ws: Workspace | None = None) -> dict[str, Path | None]:
    """Each catalogue model's folder when it is there whole, else None (for ``lora-lab doctor``)."""
    ws = ws or Workspace()
    return {name: ws.models / name if state_of(ws, model) == "present" else None
            for name, model in CATALOGUE.items()}


def caption_pair(ws: Workspace) -> tuple[Path, Path]:
    """The caption model and mmproj to use when none is named: the first pulled of ``caption``
    and ``caption-small``, else where ``caption`` would be (so a missing-file message names it)."""
    pulled = [name for name in CAPTION_MODELS
              if _caption_files_there(ws.models / name, CATALOGUE[name])]
    name = (pulled or CAPTION_MODELS)[0]
    model, mmproj = caption_files(CATALOGUE[name])
    return ws.models / name / model, ws.models / name / mmproj


def list_models(ws: Workspace | None = None) -> dict[str, Any]:
    """The catalogue with each model's state and size on disk, and the other folders and files
    in ``models/`` with theirs."""
    ws = ws or Workspace()
    catalogue = []
    for name, model in CATALOGUE.items():
        folder = ws.models / name
        state = state_of(ws, model)
        catalogue.append({
            "name": name, "title": model.title, "kind": model.kind, "family": model.family or None,
            "repo": model.repo, "gated": model.gated, "licence": model.licence,
            "size_gb": model.size_gb, "state": state,
            "path": str(folder) if state != "absent" else None,
            "bytes": folder_bytes(folder) if state != "absent" else 0})
    taken = {e["name"] for e in catalogue if e["state"] != "absent"}
    other = []
    for path in sorted(ws.models.iterdir()) if ws.models.is_dir() else []:
        if path.name.startswith(".") or path.name in taken:
            continue
        record = read_record(path) if path.is_dir() else None
        other.append({"name": path.name, "path": str(path), "folder": path.is_dir(),
                      "bytes": folder_bytes(path) if path.is_dir() else _size(path),
                      "repo": record.get("repo") if record else None,
                      "complete": _complete(path, record) if record else None})
    return {"folder": str(ws.models), "free_bytes": free_bytes(ws.models),
            "catalogue": catalogue, "other": other}


def free_bytes(folder: Path) -> int:
    """Free space where ``folder`` is (or would be made)."""
    for path in (folder, *folder.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(path).free
    return 0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
