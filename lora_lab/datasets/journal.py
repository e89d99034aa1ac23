"""The undo journal: one JSONL file per caption edit, holding every caption before and after.

An entry is a header line (label, time, and for caption batches a key and a final ``done``
line) and one ``[file, before, after]`` line per caption. Lines are appended and flushed
before the caption they describe is written, so a batch killed mid-way leaves an entry that
both undo and a restarted batch can read; a torn last line is ignored.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

KEEP = 200  # entries kept; older ones are pruned

Change = tuple[str, "str | None", "str | None"]  # file, caption before, caption after (None: no .txt)


class Entry:
    """An open journal entry that changes are appended to."""

    def __init__(self, path: Path):
        self.path = path

    def add(self, changes: list[Change]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(list(c), ensure_ascii=False) + "\n" for c in changes)
            f.flush()
            os.fsync(f.fileno())

    def finish(self) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"done": True}) + "\n")


class Journal:
    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _entries(self) -> list[Path]:
        return sorted(self.folder.glob("*.jsonl"))

    def begin(self, label: str, key: str | None = None) -> Entry:
        entries = self._entries()
        seq = int(entries[-1].stem) + 1 if entries else 1
        path = self.folder / f"{seq:08d}.jsonl"
        header = {"label": label, "time": time.time(), "key": key}
        path.write_text(json.dumps(header, ensure_ascii=False) + "\n", encoding="utf-8")
        for old in entries[: max(0, len(entries) + 1 - KEEP)]:
            old.unlink(missing_ok=True)
        return Entry(path)

    def record(self, label: str, changes: list[Change]) -> None:
        entry = self.begin(label)
        entry.add(changes)
        entry.finish()

    def last(self) -> tuple[Path, dict[str, Any]] | None:
        entries = self._entries()
        return (entries[-1], read_entry(entries[-1])) if entries else None

    def unfinished(self, key: str) -> tuple[Entry, dict[str, Any]] | None:
        """The newest entry, if it is an unfinished batch with this key (to resume it)."""
        last = self.last()
        if last and last[1]["key"] == key and not last[1]["done"]:
            return Entry(last[0]), last[1]
        return None

    def history(self) -> list[dict[str, Any]]:
        """Newest first: label, time and how many captions each entry changed."""
        out = []
        for path in reversed(self._entries()):
            entry = read_entry(path)
            out.append({"label": entry["label"], "time": entry["time"], "changed": len(entry["changes"])})
        return out


def read_entry(path: Path) -> dict[str, Any]:
    lines = path.read_text(encoding="utf-8").splitlines()
    entry = {**json.loads(lines[0]), "changes": [], "done": False}
    for line in lines[1:]:
        try:
            item = json.loads(line)
        except json.JSONDecodeError:  # torn by a kill mid-write: that change never happened
            break
        if isinstance(item, dict):
            entry["done"] = True
        else:
            entry["changes"].append(item)
    return entry
