"""The per-dataset write lock: one writer at a time, whichever thread or process it runs in.

Caption writes, bulk edits with their journal, undo, ingest and index syncs hold it; reads do
not (captions are replaced atomically and the index is SQLite in WAL mode). It is an ``flock``
on ``.lora_lab/write.lock``: the kernel drops it when its holder dies, so a killed writer never
leaves a dataset locked. Every acquisition opens the file anew, and flock locks belong to an
open file, so two threads of one process exclude each other too; a thread that already holds
the lock takes it again at once, so nested writes (ingest's sync, an edit's journal) cannot
deadlock.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import Conflict, NotFound

ENABLED = True  # only bench/bench_datasets.py turns this off, to measure what the lock costs
WAIT_S = 120.0  # longer than any single write holds it (a bulk edit of thousands of captions)

_depth = threading.local()  # lock path -> how many times this thread holds it


class Busy(Conflict):
    """Another writer held the dataset for longer than :data:`WAIT_S`."""


class WriteLock:
    """The write lock of one dataset; see the module docstring."""

    def __init__(self, path: Path, name: str):
        self.path, self.name = path, name
        self._key = os.path.realpath(path)  # one key per file, however a caller spelled its path

    @contextlib.contextmanager
    def hold(self, blocking: bool = True) -> Iterator[bool]:
        """Hold the lock for the ``with`` block. Blocking: wait up to :data:`WAIT_S`, then raise
        :class:`Busy`. Not blocking: yield False at once when another writer holds it."""
        held = getattr(_depth, "held", None)
        if held is None:
            held = _depth.held = {}
        if not ENABLED or held.get(self._key):
            held[self._key] = held.get(self._key, 0) + 1
            try:
                yield True
            finally:
                held[self._key] -= 1
            return
        fd = self._acquire(blocking)
        if fd is None:
            yield False
            return
        held[self._key] = 1
        try:
            yield True
        finally:
            held[self._key] = 0
            os.close(fd)  # closing the last descriptor of the open file releases the flock

    def _acquire(self, blocking: bool) -> int | None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            if not _wait(fd, WAIT_S if blocking else 0.0):
                if blocking:
                    raise Busy(f"dataset {self.name!r} is busy: another write (an ingest or a bulk "
                               f"edit) has held it for over {WAIT_S:.0f} s; try again when it is done")
                os.close(fd)
                return None
            if not self._still_there(fd):
                raise NotFound(f"dataset {self.name!r} was deleted while this write waited for it")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _still_there(self, fd: int) -> bool:
        """Whether the locked file is still the dataset's lock file (a deleted dataset's is not)."""
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False


def _wait(fd: int, timeout: float) -> bool:
    """flock ``fd`` exclusively within ``timeout`` seconds; the free case costs one system call."""
    deadline, pause = time.monotonic() + timeout, 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def claim(path: Path) -> int | None:
    """An open descriptor of ``path`` holding its flock, or None when another open file holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def is_held_elsewhere(path: Path) -> bool:
    """Whether an open file other than ours holds an flock on ``path`` (False when it is gone)."""
    try:
        fd = claim(path)
    except FileNotFoundError:
        return False
    if fd is not None:
        os.close(fd)
    return fd is None
