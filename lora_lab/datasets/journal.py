"""The undo journal: one JSON file per caption edit, holding every caption before and after.

Undo restores the "before" texts of the newest entry, but only where the caption still reads
as the entry left it; a caption changed since is never overwritten (the undo is refused).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .. import atomic

KEEP = 200  # entries kept; older ones are pruned

Change = tuple[str, "str | None", "str | None"]  # file, caption before, caption after (None: no .txt)


class Journal:
    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _entries(self) -> list[Path]:
        return sorted(self.folder.glob("*.json"))

    def record(self, label: str, changes: list[Change]) -> None:
        entries = self._entries()
        seq = int(entries[-1].stem) + 1 if entries else 1
        entry = {"label": label, "time": time.time(), "changes": [list(c) for c in changes]}
        atomic.write_text(self.folder / f"{seq:08d}.json", json.dumps(entry, ensure_ascii=False))
        for old in entries[: max(0, len(entries) + 1 - KEEP)]:
            old.unlink(missing_ok=True)

    def last(self) -> tuple[Path, dict[str, Any]] | None:
        entries = self._entries()
        if not entries:
            return None
        return entries[-1], json.loads(entries[-1].read_text(encoding="utf-8"))

    def history(self) -> list[dict[str, Any]]:
        """Newest first: label, time and how many captions each entry changed."""
        out = []
        for path in reversed(self._entries()):
            entry = json.loads(path.read_text(encoding="utf-8"))
            out.append({"label": entry["label"], "time": entry["time"], "changed": len(entry["changes"])})
        return out
