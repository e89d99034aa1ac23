"""The undo journal: one JSONL file per caption edit, holding every caption before and after.

An entry is a header line (label, time, and for caption batches a key and a final ``done``
line) and one ``[file, before, after]`` line per caption. Lines are appended and flushed
before the caption they describe is written, so a batch killed mid-way leaves an entry that
both undo and a restarted batch can read; a torn last line is ignored. A batch holds an flock
on its entry while it writes, so undo and an identical batch leave a running batch's entry alone.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .lock import WriteLock, claim

KEEP = 200  # entries kept; older ones are pruned

Change = tuple[str, "str | None", "str | None"]  # file, caption before, caption after (None: no .txt)


class Entry:
    """An open journal entry that changes are appended to."""

    def __init__(self, path: Path, held: int | None = None):
        self.path = path
        self._held = held  # a descriptor holding the entry's flock while a batch writes it

    def add(self, changes: list[Change]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(list(c), ensure_ascii=False) + "\n" for c in changes)
            f.flush()
            os.fsync(f.fileno())

    def finish(self) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"done": True}) + "\n")
        self.release()

    def release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            os.close(held)

    def __del__(self) -> None:  # a batch that died mid-way: its entry is free for a resume
        self.release()


class Journal:
    def __init__(self, folder: Path, lock: WriteLock):
        self.folder, self.lock = folder, lock
        folder.mkdir(parents=True, exist_ok=True)

    def _entries(self) -> list[Path]:
        return sorted(self.folder.glob("*.jsonl"))

    def begin(self, label: str, key: str | None = None) -> Entry:
        """A new newest entry; with ``key`` (a batch), held until :meth:`Entry.finish`."""
        header = json.dumps({"label": label, "time": time.time(), "key": key}, ensure_ascii=False)
        with self.lock.hold():  # a batch begins outside the write lock: numbers must not clash
            entries = self._entries()
            seq = int(entries[-1].stem) + 1 if entries else 1
            path = self.folder / f"{seq:08d}.jsonl"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(header + "\n", encoding="utf-8")
            # renamed in whole (no reader sees an entry without its header), held before
            # it shows (an identical batch starting now cannot take it over)
            held = claim(tmp) if key is not None else None
            os.replace(tmp, path)
            for old in entries[: max(0, len(entries) + 1 - KEEP)]:
                old.unlink(missing_ok=True)
        return Entry(path, held)

    def record(self, label: str, changes: list[Change]) -> None:
        entry = self.begin(label)
        entry.add(changes)
        entry.finish()

    def last(self) -> tuple[Path, dict[str, Any]] | None:
        while entries := self._entries():
            try:
                return entries[-1], read_entry(entries[-1])
            except FileNotFoundError:  # undone meanwhile (readers do not take the write lock)
                continue
        return None

    def unfinished(self, key: str) -> tuple[Entry, dict[str, Any]] | None:
        """The newest entry, if it is an unfinished batch with this key that no running batch
        holds (to resume it)."""
        last = self.last()
        if last and last[1]["key"] == key and not last[1]["done"]:
            held = claim(last[0])
            if held is not None:
                return Entry(last[0], held), last[1]
        return None

    def history(self) -> list[dict[str, Any]]:
        """Newest first: label, time and how many captions each entry changed."""
        out = []
        for path in reversed(self._entries()):
            try:
                entry = read_entry(path)
            except FileNotFoundError:  # undone or pruned meanwhile
                continue
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
