"""``pull``: a catalogue model, a whole Hub repo or one file of it into ``models/NAME/``.

What a pull would refuse is refused before a byte is written: an unknown name (with the closest
ones), offline, a repo that is missing or gated without a token, a file in the way that differs
from the Hub's, another pull into the same folder, too little disk for what is left to download.
Then each file is downloaded (resumed from an earlier pull's bytes), checked and moved into
place, and the folder's record lists it; the record says ``complete`` once every file is in.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..confine import HUB_ID
from ..errors import Conflict, LoraLabError, NoSpace
from ..jobdir.record import folder_bytes
from ..workspace import Workspace, check_name
from .catalogue import CatalogueModel, catalogue_model
from .fetch import PARTS, check_existing, fetch, part_path
from .hub import RemoteFile, RepoFiles, check_online, locate, repo_files
from .local import free_bytes, read_record, write_record

OnEvent = Callable[[dict[str, Any]], None] | None
RESERVE = 256 * 2**20  # left free after a pull: a full disk breaks checkpoints and the index
PROGRESS_EVERY_S = 0.5


@dataclass(frozen=True)
class PullRequest:
    """What to pull, read from a name: ``NAME`` (the catalogue), ``ORG/NAME`` (a whole repo, or
    the files ``include`` selects) or ``ORG/NAME/PATH`` (one file)."""
    spec: str
    repo: str
    folder: str  # under models/
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    variant: str = ""
    catalogue: CatalogueModel | None = None


def parse(spec: str, name: str | None = None, include: tuple[str, ...] = ()) -> PullRequest:
    spec = spec.strip()
    if name is not None:
        check_name(name, "model folder")
    if "/" not in spec:
        model = catalogue_model(spec)
        if include:
            raise LoraLabError(f"--include is for a Hub repo; the catalogue model {spec} "
                               "takes the files it needs")
        return PullRequest(spec, model.repo, name or model.name, model.include, model.exclude,
                           model.variant, model)
    parts = spec.split("/", 2)
    repo, path = "/".join(parts[:2]), parts[2] if len(parts) > 2 else ""
    if not HUB_ID.fullmatch(repo) or path.startswith("/") or ".." in path.split("/"):
        raise LoraLabError(f"{spec!r} is not a model name, a Hub repo (ORG/NAME) or a file in "
                           "one (ORG/NAME/PATH)")
    if path and include:
        raise LoraLabError(f"{spec} names one file already; --include is for a whole repo")
    return PullRequest(spec, repo, name or check_name(repo.split("/")[1], "model folder"),
                       (path,) if path else tuple(include))


@dataclass
class PullPlan:
    request: PullRequest
    folder: Path
    remote: RepoFiles
    todo: list[RemoteFile] = field(default_factory=list)  # to download (maybe partly there)
    kept: list[RemoteFile] = field(default_factory=list)  # already in place
    resumed: dict[str, int] = field(default_factory=dict)  # bytes an earlier pull left, by file

    @property
    def total_bytes(self) -> int:
        return sum(f.size or 0 for f in self.todo)

    @property
    def resumed_bytes(self) -> int:
        return sum(self.resumed.values())


def plan(spec: str, ws: Workspace | None = None, *, name: str | None = None,
         include: tuple[str, ...] = ()) -> PullPlan:
    """Everything checked, nothing written: what a pull of ``spec`` would download."""
    ws = ws or Workspace()
    request = parse(spec, name, include)
    check_online(request.spec)
    folder = ws.models / request.folder
    _check_folder(folder, request)
    remote = repo_files(request.repo, request.include, request.exclude, request.variant)
    record = read_record(folder) or {"files": {}}
    p = PullPlan(request, folder, remote)
    for f in remote.files:
        dest = folder / f.local
        if not dest.exists():
            p.todo.append(f)
            part = part_path(folder, f)
            p.resumed[f.local] = part.stat().st_size if part.is_file() else 0
        elif _recorded(record, f, dest) or (dest.is_file() and check_existing(f, dest)):
            p.kept.append(f)
        else:
            raise Conflict(f"{dest} is in the way: it is not {request.repo}'s {f.path}; move it "
                           f"away, or pull into another folder with --name")
    _check_space(p)
    return p


def _check_folder(folder: Path, request: PullRequest) -> None:
    record = read_record(folder)
    if record and record.get("repo") != request.repo:
        raise Conflict(f"{folder} holds {record.get('repo')}; pull {request.repo} into another "
                       "folder with --name")
    if folder.is_dir():
        with _locked(folder):  # only to see that no other pull holds it
            pass


def _recorded(record: dict[str, Any], f: RemoteFile, dest: Path) -> bool:
    meta = record["files"].get(f.local)
    return (isinstance(meta, dict) and meta.get("sha256") == f.sha256
            and meta.get("blob_id") == f.blob_id and dest.stat().st_size == meta.get("size"))


def _check_space(p: PullPlan) -> None:
    need = p.total_bytes - p.resumed_bytes
    if p.request.catalogue and any(f.size is None for f in p.todo):  # the Hub did not say
        need = max(need, int(p.request.catalogue.size_gb * 1e9))
    free = free_bytes(p.folder)
    if need + RESERVE > free:
        raise NoSpace(
            f"not enough disk space for {p.request.spec}: {_gb(need)} to download, "
            f"{_gb(free)} free in {p.folder.parent} (and {_gb(RESERVE)} is kept free); free "
            "some space or use a larger volume, then pull again")


def pull(spec: str, ws: Workspace | None = None, *, name: str | None = None,
         include: tuple[str, ...] = (), on_event: OnEvent = None) -> dict[str, Any]:
    """Pull ``spec`` into the workspace's ``models/``; a summary of what was done."""
    return run(plan(spec, ws, name=name, include=include), on_event)


def run(p: PullPlan, on_event: OnEvent = None) -> dict[str, Any]:
    """Download what ``p`` lists, resuming and verifying each file, recording each in the
    folder's record as it lands."""
    start = time.monotonic()
    p.folder.mkdir(parents=True, exist_ok=True)
    with _locked(p.folder):
        record = read_record(p.folder) or {"files": {}}
        record.update(source=p.request.spec, repo=p.remote.repo, revision=p.remote.revision,
                      catalogue=p.request.catalogue.name if p.request.catalogue else None,
                      complete=False)
        for f in p.kept:
            record["files"][f.local] = _entry(f)
        write_record(p.folder, record)
        progress = _Progress(p, on_event)
        for f in p.todo:
            dest = p.folder / f.local
            dest.parent.mkdir(parents=True, exist_ok=True)
            download = locate(p.remote.repo, p.remote.revision, f.path)
            fetch(download, f, part_path(p.folder, f), dest, progress.on_size(f))
            progress.file_done(f)
            record["files"][f.local] = _entry(f)
            record["complete"] = f is p.todo[-1]
            write_record(p.folder, record)  # a pull cut later keeps this file: it is recorded
        if not p.todo:
            record["complete"] = True
            write_record(p.folder, record)
        with contextlib.suppress(OSError):
            (p.folder / PARTS).rmdir()  # empty now, unless another version's bytes wait there
    return {"model": p.request.spec, "name": p.folder.name, "path": str(p.folder),
            "repo": p.remote.repo, "revision": p.remote.revision, "files": len(p.remote.files),
            "downloaded": len(p.todo), "kept": len(p.kept),
            "downloaded_bytes": p.total_bytes - p.resumed_bytes, "resumed_bytes": p.resumed_bytes,
            "bytes": folder_bytes(p.folder), "seconds": round(time.monotonic() - start, 2)}


def _entry(f: RemoteFile) -> dict[str, Any]:
    return {"path": f.path, "size": f.size, "sha256": f.sha256, "blob_id": f.blob_id}


class _Progress:
    """Bytes of the whole pull held so far (resumed ones included), reported at most every
    :data:`PROGRESS_EVERY_S` and at each file's end: ``progress`` events with ``step``/``total``
    in bytes, the rate of this pull and the ETA."""

    def __init__(self, p: PullPlan, on_event: OnEvent):
        self.on_event, self.total, self.resumed = on_event, p.total_bytes, dict(p.resumed)
        self.done = 0  # bytes of the files finished
        self.held_before, self.now = p.resumed_bytes, p.resumed_bytes
        self.start = self.last = time.monotonic()

    def on_size(self, f: RemoteFile) -> Callable[[int], None]:
        """The callback of ``f``'s download, which reports the size of its part file."""
        waiting = sum(n for local, n in self.resumed.items() if local != f.local)
        self.resumed.pop(f.local, None)

        def report(size: int) -> None:
            self.now = self.done + size + waiting
            if time.monotonic() - self.last >= PROGRESS_EVERY_S:
                self._emit(f)
        return report

    def file_done(self, f: RemoteFile) -> None:
        self.done += f.size or 0
        self.now = self.done + sum(self.resumed.values())
        self._emit(f)

    def _emit(self, f: RemoteFile) -> None:
        self.last = time.monotonic()
        if self.on_event is None:
            return
        elapsed = max(self.last - self.start, 1e-6)
        rate = max(self.now - self.held_before, 0) / elapsed
        eta = (self.total - self.now) / rate if rate > 0 and elapsed >= 1 else None
        self.on_event({"type": "progress", "step": self.now, "total": self.total, "file": f.local,
                       "bytes_per_s": round(rate), "eta_s": round(eta, 1) if eta is not None else None})


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """The folder to this pull alone (the OS lets go when the process ends, however it ends)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict(f"{folder} is being pulled already (another `lora-lab models pull` "
                           "or a pull job); wait for it to end") from None
        yield
    finally:
        os.close(fd)


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
