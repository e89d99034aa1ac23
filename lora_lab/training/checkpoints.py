"""Checkpoints: everything a run needs to continue exactly, never half-written.

A checkpoint is a folder ``checkpoints/step-000120/`` holding the adapter weights, the
optimizer and LR-scheduler states, each rank's RNG state (LoRA dropout draws from it) and
``state.json``. It is built as ``step-000120.tmp/`` and renamed into place once complete, so a
kill at any moment leaves the previous checkpoint intact; only folders with ``state.json``
count. The best checkpoint by validation loss is kept whatever ``save.keep_last`` says.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

STATE = "state.json"


def staging(root: Path, step: int) -> Path:
    """A fresh, empty folder to build step ``step``'s checkpoint in."""
    tmp = root / f"step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, state: dict[str, Any], keep_last: int, best: int | None = None) -> Path:
    """Write ``state.json`` last, rename the folder into place, drop all but the newest
    ``keep_last`` and the one of step ``best`` (the best by validation loss)."""
    with open(tmp / STATE, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    final = tmp.with_suffix("")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    kept = tmp.parent / f"step-{best:06d}" if best is not None else None
    for old in complete(tmp.parent)[:-keep_last]:
        if old != kept:
            shutil.rmtree(old, ignore_errors=True)
    return final


def complete(root: Path) -> list[Path]:
    """The complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if p.suffix != ".tmp" and (p / STATE).is_file())


def latest(root: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete checkpoint and its state, after clearing leftovers of a killed save."""
    for tmp in root.glob("step-*.tmp") if root.is_dir() else ():
        shutil.rmtree(tmp, ignore_errors=True)
    done = complete(root)
    if not done:
        return None
    return done[-1], json.loads((done[-1] / STATE).read_text(encoding="utf-8"))
