"""Atomic file writes: a reader sees the old file or the new one, never half of either."""
from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into: a temp file beside it, fsynced and
    renamed into place when the block ends, removed if the block raises."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    # Created as any new file is (0666 less the umask, applied by the kernel, so no process-wide
    # umask is read or changed): a LoRA or caption stays readable by another user of the box.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.fchmod(fd, path.stat().st_mode & 0o7777)  # a replaced file keeps its permissions
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    with writing(path) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write ``text`` as UTF-8."""
    write_bytes(path, text.encode("utf-8"))
