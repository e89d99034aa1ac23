"""One file from the Hub into a model folder: resumed where an earlier pull stopped, checked by
size and hash, and moved into place only when whole.

huggingface_hub's own downloads start over in a new temporary file each time and delete it when
they fail; a 30 GB model on a pod that restarts needs the bytes it already has kept. So the bytes
go to ``.incomplete/<hash>.part`` in the model's folder, which survives the process, and each
pull asks for the rest only (a ``Range`` request through huggingface_hub's HTTP session, which
carries its headers, offline switch and error types). A connection dropped mid-file is asked
again from where it broke, a few times, before the pull gives up (keeping the bytes).

The body is read as the network hands it over, written in pieces of about 1 MiB and hashed on a
thread of its own: huggingface_hub's ``http_get`` regroups it into 10 MiB pieces first, which
made a local download about twice as slow as curl (and lost up to 10 MiB at a cut).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, NoReturn

from ..errors import LoraLabError
from .hub import Download, RemoteFile

PARTS = ".incomplete"  # in a model's folder: files being downloaded
RETRIES = 5  # attempts in a row without a byte arriving, before the pull gives up
PIECE = 2**20
_BLOCK = 8 * 2**20


def part_path(folder: Path, file: RemoteFile) -> Path:
    """Where ``file``'s bytes gather: named by its hash, so bytes of another version of the
    file are never resumed into it."""
    key = file.sha256 or file.blob_id or file.local.replace("/", "--")
    return folder / PARTS / f"{key}.part"


class _Hasher:
    """The sha256 of a large (LFS) file, or the git blob id of a small one, fed on a thread."""

    def __init__(self, file: RemoteFile):
        self.h = hashlib.sha256() if file.sha256 else hashlib.sha1()
        if not file.sha256 and file.size is not None:
            self.h.update(f"blob {file.size}\0".encode())
        self.q: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        self.thread = threading.Thread(target=self._run, name="lora-lab-hash", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (data := self.q.get()) is not None:
            self.h.update(data)

    def feed(self, data: bytes) -> None:
        self.q.put(data)

    def feed_file(self, path: Path, length: int) -> None:
        with open(path, "rb") as f:
            while length and (chunk := f.read(min(_BLOCK, length))):
                self.feed(chunk)
                length -= len(chunk)

    def hexdigest(self) -> str:
        self.q.put(None)
        self.thread.join()
        return self.h.hexdigest()


class _PartDownload:
    """The part file being filled from the Hub, and the hash of what it holds."""

    def __init__(self, download: Download, file: RemoteFile, f: BinaryIO,
                 on_size: Callable[[int], None]):
        self.download, self.file, self.f, self.on_size = download, file, f, on_size
        self.size = f.tell()  # kept here: tell() on every write costs a system call
        self.hasher = _Hasher(file)
        self.hasher.feed_file(Path(f.name), self.size)

    def get(self) -> None:
        """One GET of the bytes from the part's end on. What arrived before a failure is
        written before the failure is raised, so the next GET asks from that very byte."""
        from huggingface_hub import constants
        from huggingface_hub.utils import get_session, hf_raise_for_status

        headers = {**self.download.headers, "Accept-Encoding": "identity"}
        if self.size:
            headers["Range"] = f"bytes={self.size}-"
        pieces: list[bytes] = []
        held = 0
        try:
            with get_session().stream("GET", self.download.url, headers=headers, follow_redirects=True,
                                      timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as r:
                hf_raise_for_status(r)
                if self.size and r.status_code == 200:  # the Range was ignored: the whole file comes
                    self.restart()
                for piece in r.iter_raw():  # as the network hands them over, gathered to PIECE
                    pieces.append(piece)
                    held += len(piece)
                    if held >= PIECE:
                        self._write(pieces)
                        pieces, held = [], 0
        finally:
            self._write(pieces)

    def _write(self, pieces: list[bytes]) -> None:
        if not pieces:
            return
        data = b"".join(pieces)
        self.f.write(data)
        self.hasher.feed(data)
        self.size += len(data)
        self.on_size(self.size)

    def restart(self) -> None:
        self.hasher.hexdigest()  # ends its thread
        self.f.seek(0)
        self.f.truncate()
        self.size = 0
        self.hasher = _Hasher(self.file)


def _larger_reads() -> None:
    """Let huggingface_hub's HTTP stack read the socket up to :data:`PIECE` at a time.

    httpcore reads 64 KiB at a time and takes each read through h11 in Python, which caps one
    download near 350 MB/s on a fast link (a local mirror, a pod beside the CDN): half of
    curl. ``READ_NUM_BYTES`` is httpcore's own setting for it, read at every read; with 1 MiB
    the same loop runs 16 times less often and keeps up with curl. Nothing else changes."""
    with contextlib.suppress(ImportError, AttributeError):
        from httpcore2._sync.http11 import HTTP11Connection

        HTTP11Connection.READ_NUM_BYTES = max(HTTP11Connection.READ_NUM_BYTES, PIECE)


def fetch(download: Download, file: RemoteFile, part: Path, dest: Path,
          on_size: Callable[[int], None] = lambda n: None) -> None:
    """Download ``file`` into ``dest`` through ``part``: the bytes ``part`` holds are kept and
    only the rest is asked for; the whole is checked against the Hub's size and hash before it
    is moved into place. A download that cannot go on leaves ``part`` for the next pull."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    _larger_reads()
    size = file.size if file.size is not None else download.size
    part.parent.mkdir(parents=True, exist_ok=True)
    if size is not None and part.is_file() and part.stat().st_size > size:
        part.unlink()  # not a beginning of this file
    with open(part, "ab") as f:
        d = _PartDownload(download, file, f, on_size)
        failures, mark = 0, d.size
        while size is None or d.size < size:
            try:
                d.get()
                break
            except httpx2.TransportError as e:  # a dropped connection: ask for the rest again
                failures = 1 if d.size > mark else failures + 1
                mark = d.size
                if failures >= RETRIES:
                    _stopped(d, size, _why(e))
                time.sleep(min(2 ** failures / 4, 4))
            except HfHubHTTPError as e:
                _stopped(d, size, _why(e))
            except OSError as e:  # the disk filled up meanwhile, or went away
                _stopped(d, size, f"writing {part} failed: {e.strerror or e}")
    digest = d.hasher.hexdigest()
    _verify(file, part, size, digest)
    os.replace(part, dest)


def _stopped(d: _PartDownload, size: int | None, why: str) -> NoReturn:
    d.hasher.hexdigest()  # ends its thread
    raise LoraLabError(f"the download of {d.file.local} stopped at {d.size} of {size} bytes "
                       f"({why}); pull again to resume from there")


def _why(e: Exception) -> str:
    response = getattr(e, "response", None)
    if response is not None:
        return f"the server answered HTTP {response.status_code}"
    return f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"


def _verify(file: RemoteFile, part: Path, size: int | None, digest: str) -> None:
    """The bytes are the Hub's (the size it lists and its hash), or the part goes."""
    got = part.stat().st_size
    if size is not None and got != size:
        part.unlink()
        raise LoraLabError(f"{file.local}: {got} bytes arrived where the Hub lists {size}; the "
                           "damaged download was removed: pull again")
    expected = file.sha256 or file.blob_id
    if expected and digest != expected:
        kind = "sha256" if file.sha256 else "git blob id"
        part.unlink()
        raise LoraLabError(f"{file.local}: the download does not match the Hub's {kind} "
                           f"({digest[:12]}... where {expected[:12]}... was expected); the "
                           "damaged download was removed: pull again")


def check_existing(file: RemoteFile, path: Path) -> bool:
    """Whether ``path`` (a file found in place without a record of its pull) is ``file``: same
    size and hash."""
    if file.size is not None and path.stat().st_size != file.size:
        return False
    expected = file.sha256 or file.blob_id
    if expected is None:
        return True
    hasher = _Hasher(file)
    hasher.feed_file(path, path.stat().st_size)
    return hasher.hexdigest() == expected
