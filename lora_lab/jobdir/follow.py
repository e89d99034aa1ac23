"""Following a job as it runs: its new events and log lines, then one ``end`` message.

The WebSocket stream, ``lora-lab jobs logs -f`` and the notebook monitor all follow a job
this way. A follower starts from an event number and a log byte offset, so a reader that
reconnects with the last ``n`` and ``offset`` it saw misses nothing and gets nothing twice.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from .record import JobRecord
from .tail import EventTail, LineTail


class JobFollower:
    """Messages of one job: its events (each with ``n``), ``{"type": "log_line", "line",
    "offset"}`` for each line of log.txt, and, once the job has ended and all of that was
    read, ``{"type": "end", "state", "error", "n", "offset"}``."""

    def __init__(self, job: JobRecord, after: int = 0, log_offset: int = 0):
        self.job = job
        self.events = EventTail(job.path / "events.jsonl", after)
        self.log = LineTail(job.log_path, log_offset)
        self.ended = False

    def read(self, final: bool = False) -> list[dict[str, Any]]:
        """The next piece of what was written (a big backlog comes over several reads): events
        and log lines, without the end message; ``final`` once the job has ended (its last,
        unterminated log line is then complete)."""
        messages = self.events.read()
        messages += [{"type": "log_line", "line": line, "offset": offset}
                     for line, offset in self.log.read(final=final)]
        return messages

    def poll(self) -> list[dict[str, Any]]:
        """What was written since the last poll, then the end message; empty while nothing
        new has come."""
        if self.ended:
            return []
        finished = self.job.finished  # read first: once a job reads as ended, its files are complete
        messages = self.read(final=finished)
        if messages or not finished:
            return messages
        self.ended = True
        view = self.job.view()
        return [{"type": "end", "state": view["state"], "error": view.get("error"),
                 "n": max(self.events.n, self.events.after), "offset": self.log.offset}]

    def follow(self, poll_s: float = 0.25) -> Iterator[dict[str, Any]]:
        """Every message until the job has ended (blocking between polls)."""
        while not self.ended:
            messages = self.poll()
            yield from messages
            if not messages:
                time.sleep(poll_s)
