"""Reading a job's files as another process appends to them: new lines and new events since
the last read, from any byte offset or event number (so a reader can resume where it stopped)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

READ_LIMIT = 2**20  # bytes read per file per call: a huge backlog comes in pieces


class LineTail:
    """The complete lines appended to a file since the last read (a line still being written
    waits for its newline, unless ``final``)."""

    def __init__(self, path: Path, offset: int = 0):
        self.path, self.offset = path, offset

    def read(self, final: bool = False) -> list[tuple[str, int]]:
        """(line, offset after it) pairs; at most :data:`READ_LIMIT` bytes a call."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(READ_LIMIT)
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        if final and len(data) < READ_LIMIT:
            end = len(data)  # the job has ended: its last, unterminated line is complete too
        lines = []
        for raw in data[:end].splitlines(keepends=True):
            self.offset += len(raw)
            lines.append((raw.rstrip(b"\r\n").decode("utf-8", errors="replace"), self.offset))
        return lines


class EventTail:
    """Events of events.jsonl after number ``after``, numbered from 1 by their line."""

    def __init__(self, path: Path, after: int = 0):
        self.tail, self.after, self.n = LineTail(path), after, 0

    def read(self) -> list[dict[str, Any]]:
        """The next events (empty: none yet), past any the client has already seen."""
        while lines := self.tail.read():
            events = [e for e in map(self._parse, lines) if e is not None]
            if events:
                return events
        return []

    def _parse(self, item: tuple[str, int]) -> dict[str, Any] | None:
        line = item[0]
        self.n += 1
        if self.n <= self.after or not line.strip():
            return None
        try:
            event = json.loads(line)
        except json.JSONDecodeError:  # written by hand or damaged: say so, keep going
            event = {"type": "log", "level": "warning", "message": f"unreadable event: {line[:200]}"}
        return {**event, "n": self.n}

    def read_all(self) -> list[dict[str, Any]]:
        events = []
        while batch := self.read():
            events += batch
        return events
