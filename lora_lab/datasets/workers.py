"""Work on many images on all cores: read, hash and decode each, optionally copying it in.

A task names where the bytes come from (a file, or a member of a zip that each worker opens
once) and, for ingest, a temp path to write them to, so the parent never ships image bytes
between processes.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .images import MAX_PIXELS, BadImage, ImageInfo, probe

T = TypeVar("T")
R = TypeVar("R")

SERIAL_BELOW = 24  # fewer tasks than this run in-process: a pool costs more than it saves


@dataclass(frozen=True)
class Task:
    path: str  # a file, or the zip holding ``member``
    member: str | None = None
    copy_to: str | None = None
    max_pixels: int = MAX_PIXELS


_zips: dict[str, zipfile.ZipFile] = {}


def _read(task: Task) -> bytes:
    if task.member is None:
        with open(task.path, "rb") as f:
            return f.read()
    zf = _zips.get(task.path)
    if zf is None:
        zf = _zips[task.path] = zipfile.ZipFile(task.path)
    return zf.read(task.member)


def run(task: Task) -> ImageInfo | str:
    """Probe one image; a string result is the reason it was rejected."""
    try:
        data = _read(task)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError) as e:
        return f"cannot read: {e}"
    try:
        info = probe(data, task.max_pixels)
    except BadImage as e:
        return str(e)
    if task.copy_to:
        with open(task.copy_to, "wb") as f:
            f.write(data)
    return info


def parallel_map(fn: Callable[[T], R], items: list[T], processes: int | None = None) -> list[R]:
    """``[fn(x) for x in items]`` on every core for big batches; ``fn`` must be importable."""
    processes = processes or os.cpu_count() or 1
    if len(items) < SERIAL_BELOW or processes == 1 or not _main_is_importable():
        return [fn(x) for x in items]
    chunk = max(1, min(64, len(items) // (processes * 8)))
    # forkserver, not fork: ingest also runs inside the threaded Jupyter server.
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=processes, mp_context=ctx) as pool:
        return list(pool.map(fn, items, chunksize=chunk))


def _main_is_importable() -> bool:
    """Pool workers re-import ``__main__`` from its file; a script read from stdin has none."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or os.path.exists(main_file)


def run_all(tasks: list[Task], processes: int | None = None) -> list[ImageInfo | str]:
    """Probe results in task order."""
    return parallel_map(run, tasks, processes)


def file_tasks(paths: list[Path], max_pixels: int = MAX_PIXELS) -> list[Task]:
    return [Task(str(p), max_pixels=max_pixels) for p in paths]
