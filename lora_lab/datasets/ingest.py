"""Ingest images from a zip, a folder or a list of files into a dataset, with a report.

Every image is decoded to be validated (on all cores); unsafe zip entries, non-images, broken
images and exact duplicates are skipped with their reason; near-duplicates are kept and
flagged; ``.txt`` captions beside images come along. The source is only ever read, and nothing
is written outside the dataset folder. Names are flattened to the dataset's single folder,
made unique by stem so each image keeps its own caption file.

Images are decoded and copied into a private staging folder first, without the dataset's write
lock (the slow part: edits go on meanwhile); placing, deduplicating and indexing them then
happens under it, so concurrent ingests and edits into one dataset never interleave.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import shutil
import stat
import tempfile
import unicodedata
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .. import atomic
from ..errors import LoraLabError
from ..workspace import Workspace
from . import workers
from .dataset import Dataset
from .images import EXTENSIONS, MAX_PIXELS, ImageInfo
from .lock import claim, is_held_elsewhere


@dataclass(frozen=True)
class Limits:
    """What a source may hold before it is refused as a zip bomb or skipped entry by entry."""
    max_entries: int = 100_000
    max_total_bytes: int = 50 * 2**30
    max_ratio: int = 100  # uncompressed/compressed, checked for entries over 1 MiB
    max_pixels: int = MAX_PIXELS
    max_caption_bytes: int = 2**20


@dataclass
class IngestReport:
    dataset: str
    added: list[dict[str, Any]] = field(default_factory=list)  # file, source, caption
    skipped: list[dict[str, str]] = field(default_factory=list)  # source, reason
    duplicates: list[dict[str, str]] = field(default_factory=list)  # source, duplicate_of
    near_duplicates: list[dict[str, str]] = field(default_factory=list)  # file, similar_to

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Member:
    source: str  # how the user knows it: the path inside the zip or folder
    path: str  # the file, or the zip holding ``member``
    member: str | None = None


@dataclass
class _Listing:
    images: list[_Member] = field(default_factory=list)
    captions: dict[str, _Member] = field(default_factory=dict)  # "dir/stem" -> caption file
    skipped: list[dict[str, str]] = field(default_factory=list)
    total_bytes: int = 0
    _zip: zipfile.ZipFile | None = None

    def read(self, m: _Member, max_bytes: int) -> bytes:
        """A small member's bytes (captions), refusing anything over ``max_bytes``."""
        if m.member is None:
            size = Path(m.path).stat().st_size
        else:
            if self._zip is None:
                self._zip = zipfile.ZipFile(m.path)
            size = self._zip.getinfo(m.member).file_size
        if size > max_bytes:
            raise ValueError(f"caption file too large ({size} bytes)")
        return Path(m.path).read_bytes() if m.member is None else self._zip.read(m.member)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def skip(self, source: str, reason: str) -> None:
        self.skipped.append({"source": source, "reason": reason})

    def add(self, m: _Member, size: int) -> None:
        suffix = PurePosixPath(m.source).suffix.lower()
        if suffix in EXTENSIONS:
            self.images.append(m)
            self.total_bytes += size
        elif suffix == ".txt":
            self.captions[_stem_key(m.source)] = m
        else:
            self.skip(m.source, f"not an image ({suffix or 'no extension'}; use jpg, png, webp or bmp)")


def ingest(source: str | os.PathLike | Iterable[str | os.PathLike], name: str, *,
           workspace: Workspace | None = None, add: bool = False, limits: Limits = Limits(),
           processes: int | None = None) -> IngestReport:
    """Ingest ``source`` (a zip, a folder, or a list of image/caption files) into dataset ``name``.

    A new dataset is created unless ``add`` is set, in which case the images join the existing
    one. Raises :class:`LoraLabError` (and leaves nothing behind) when no image could be added.
    """
    ws = workspace or Workspace()
    listing = _list_source(source, limits)
    if add:
        ds = Dataset.open(name, ws)
    else:
        ds = Dataset.create(name, ws)
    try:
        report = _ingest_listing(ds, listing, limits, processes)
    except BaseException:
        if not add:
            ds.delete()
        raise
    finally:
        listing.close()
    if not report.added and not add:
        ds.delete()
        reasons = "; ".join(f"{s['source']}: {s['reason']}" for s in report.skipped[:3])
        raise LoraLabError(f"no images added to {name!r}, so it was not created"
                           + (f" ({reasons})" if reasons else " (the source holds no images)"))
    return report


def add_uploads(files: list[tuple[str, bytes]], name: str, *,
                workspace: Workspace | None = None) -> IngestReport:
    """Add uploaded files, each (file name, content), to the existing dataset ``name``: zips,
    images and their ``.txt`` captions. All are checked before any is read: one that is none of
    these, or a ``.zip`` that is not a zip, refuses the whole upload and nothing is added."""
    refused = [reason for fname, data in files if (reason := _not_uploadable(fname, data))]
    if refused:
        raise LoraLabError(f"upload refused, nothing was added: {'; '.join(refused)}")
    ws = workspace or Workspace()
    Dataset.open(name, ws).index.close()  # NotFound before anything is staged
    staging = ws.root / ".uploads"
    staging.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{name}-", dir=staging) as tmp:
        paths = []
        for i, (fname, data) in enumerate(files):  # a folder each: two uploads may share a name
            path = Path(tmp) / str(i) / _upload_name(fname)
            path.parent.mkdir()
            path.write_bytes(data)
            paths.append(path)
        zips = [p for p in paths if p.suffix.lower() == ".zip"]
        loose = [p for p in paths if p.suffix.lower() != ".zip"]
        reports = [ingest(z, name, workspace=ws, add=True) for z in zips]
        if loose:
            reports.append(ingest(loose, name, workspace=ws, add=True))
    merged = IngestReport(name)
    for r in reports:
        for key in ("added", "skipped", "duplicates", "near_duplicates"):
            getattr(merged, key).extend(getattr(r, key))
    return merged


def _upload_name(fname: str) -> str:
    return PurePosixPath(fname.replace("\\", "/")).name or "upload"


def _not_uploadable(fname: str, data: bytes) -> str | None:
    suffix = Path(_upload_name(fname)).suffix.lower()
    if suffix == ".zip":
        return None if zipfile.is_zipfile(io.BytesIO(data)) else f"{fname} is not a zip file"
    if suffix in EXTENSIONS or suffix == ".txt":
        return None  # an image is decoded by the ingest, which skips a broken one with why
    return (f"{fname} is not a zip or an image ({', '.join(sorted(EXTENSIONS))}) or a caption "
            "(.txt)")


# -- listing sources -------------------------------------------------------------------------------
def _list_source(source: Any, limits: Limits) -> _Listing:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.exists():
            raise LoraLabError(f"source {str(source)!r} does not exist")
        if path.is_dir():
            return _list_folder(path)
        if zipfile.is_zipfile(path) or path.suffix.lower() == ".zip":
            return _list_zip(path, limits)
        return _list_files([path])
    return _list_files([Path(p) for p in source])


def _list_folder(root: Path) -> _Listing:
    listing = _Listing()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            rel = path.relative_to(root).as_posix()
            _add_file(listing, path, rel)
    return listing


def _list_files(paths: list[Path]) -> _Listing:
    listing = _Listing()
    for path in paths:
        _add_file(listing, path, path.name)
    return listing


def _add_file(listing: _Listing, path: Path, rel: str) -> None:
    if PurePosixPath(rel).name.startswith("."):
        return listing.skip(rel, "hidden file")
    if path.is_symlink():
        return listing.skip(rel, "symbolic link (not followed)")
    if not path.is_file():
        return listing.skip(rel, "not a regular file")
    listing.add(_Member(rel, str(path)), path.stat().st_size)


def _list_zip(path: Path, limits: Limits) -> _Listing:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise LoraLabError(f"{path.name} is not a readable zip file (truncated or corrupt: {e})") from None
    if len(infos) > limits.max_entries:
        raise LoraLabError(f"{path.name} has {len(infos)} entries (limit {limits.max_entries}); "
                           "refused as a possible zip bomb")
    total = sum(i.file_size for i in infos)
    if total > limits.max_total_bytes:
        raise LoraLabError(f"{path.name} would unpack to {total / 2**30:.1f} GiB (limit "
                           f"{limits.max_total_bytes / 2**30:.0f} GiB); refused as a possible zip bomb")
    listing = _Listing()
    for info in infos:
        if info.is_dir():
            continue
        name = _zip_name(info)
        reason = _unsafe_zip_entry(info, name, limits)
        if reason:
            listing.skip(name, reason)
        elif PurePosixPath(name).name.startswith(".") or name.startswith("__MACOSX/"):
            listing.skip(name, "hidden or macOS metadata file")
        else:
            listing.add(_Member(name, str(path), info.filename), info.file_size)
    return listing


def _zip_name(info: zipfile.ZipInfo) -> str:
    """The entry's name; zips without the UTF-8 flag often still hold UTF-8 (not cp437)."""
    if info.flag_bits & 0x800:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename


def _unsafe_zip_entry(info: zipfile.ZipInfo, name: str, limits: Limits) -> str | None:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        return "unsafe path (absolute or containing '..'); not extracted"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link; not extracted"
    if info.flag_bits & 0x1:
        return "encrypted; unzip it with its password first"
    if info.file_size > 2**20 and info.file_size > limits.max_ratio * max(info.compress_size, 1):
        return (f"compression ratio {info.file_size // max(info.compress_size, 1)}:1 is suspicious "
                "(possible zip bomb); not extracted")
    return None


def _stem_key(source: str) -> str:
    p = PurePosixPath(source.replace("\\", "/"))
    return str(p.parent / p.stem)


# -- processing ------------------------------------------------------------------------------------
def _ingest_listing(ds: Dataset, listing: _Listing, limits: Limits,
                    processes: int | None) -> IngestReport:
    free = shutil.disk_usage(ds.path).free
    if listing.total_bytes > free:
        raise LoraLabError(f"not enough disk space: the images need {listing.total_bytes / 2**20:.0f} "
                           f"MiB, {free / 2**20:.0f} MiB free")
    report = IngestReport(ds.name, skipped=list(listing.skipped))
    with _staging(ds.meta_dir / "incoming") as incoming:
        tasks = [workers.Task(m.path, m.member, str(incoming / f"{i}.part"), limits.max_pixels)
                 for i, m in enumerate(listing.images)]
        results = workers.run_all(tasks, processes)
        with ds.writing():
            rows = _place_images(ds, listing, results, tasks, report, limits)
            ds.add_rows(rows)
            ds.sync()  # picks up the caption sidecars just written; cheap for unchanged images
    report.near_duplicates = [{"file": r["file"], "similar_to": r["near_dup_of"]}
                              for r in rows if r.get("near_dup_of")]
    return report


@contextlib.contextmanager
def _staging(root: Path) -> Iterator[Path]:
    """A folder of this ingest's own under ``root``, removed afterwards. Its lock file stays
    flocked while the ingest runs, so leftovers of killed ingests are told apart and removed."""
    root.mkdir(exist_ok=True)
    _remove_abandoned(root)
    token = secrets.token_hex(8)
    lock, folder = root / f"{token}.lock", root / token
    lock.touch()
    held = claim(lock)  # a fresh name: nobody else holds it
    try:
        folder.mkdir()
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        lock.unlink(missing_ok=True)
        os.close(held)


def _remove_abandoned(root: Path) -> None:
    """Remove what killed ingests left in ``root``: folders whose lock file nobody holds (a
    running ingest holds its lock from before its folder exists until after it is gone)."""
    for entry in root.iterdir():
        lock = root / f"{entry.name}.lock"
        if entry.suffix == ".lock" or is_held_elsewhere(lock):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:  # a file an older version staged straight into incoming/
            entry.unlink(missing_ok=True)
        lock.unlink(missing_ok=True)


def _place_images(ds: Dataset, listing: _Listing, results: list[ImageInfo | str],
                  tasks: list[workers.Task], report: IngestReport, limits: Limits) -> list[dict]:
    seen = ds.index.by_sha256()
    taken = {p.stem.casefold() for p in ds.path.iterdir()}
    rows = []
    for member, task, info in zip(listing.images, tasks, results):
        if isinstance(info, str):
            report.skipped.append({"source": member.source, "reason": info})
            continue
        if info.sha256 in seen:
            report.duplicates.append({"source": member.source, "duplicate_of": seen[info.sha256]})
            continue
        file = _unique_name(member.source, taken)
        target = ds.path / file
        os.replace(task.copy_to, target)
        seen[info.sha256] = file
        caption = _import_caption(listing, listing.captions.get(_stem_key(member.source)), target,
                                  limits, report)
        rows.append({"file": file, **info.__dict__, "mtime_ns": target.stat().st_mtime_ns})
        report.added.append({"file": file, "source": member.source, "caption": caption})
    return rows


def _import_caption(listing: _Listing, member: _Member | None, image: Path, limits: Limits,
                    report: IngestReport) -> bool:
    if member is None:
        return False
    try:
        data = listing.read(member, limits.max_caption_bytes)
        text = data.decode("utf-8-sig").strip()
    except UnicodeDecodeError as e:
        report.skipped.append({"source": member.source, "reason": f"caption not UTF-8 ({e.reason} "
                               f"at byte {e.start}); image added uncaptioned, re-save it as UTF-8"})
        return False
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        report.skipped.append({"source": member.source, "reason": f"caption unreadable: {e}"})
        return False
    atomic.write_text(image.with_suffix(".txt"), text)
    return True


_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')


def _unique_name(source: str, taken: set[str]) -> str:
    """A safe, flat file name for ``source`` whose stem no other file in the dataset has."""
    base = unicodedata.normalize("NFC", PurePosixPath(source.replace("\\", "/")).name)
    stem, suffix = os.path.splitext(base)
    stem = _UNSAFE_CHARS.sub("_", stem).strip(" .") or "image"
    stem = stem.encode("utf-8")[:120].decode("utf-8", "ignore")
    candidate, n = stem, 1
    while candidate.casefold() in taken:
        n += 1
        candidate = f"{stem}-{n}"
    taken.add(candidate.casefold())
    return candidate + suffix.lower()
