"""A dataset: a folder of images with ``.txt`` caption sidecars, and its index beside them.

    workspace/datasets/NAME/
        photo1.jpg  photo1.txt  ...
        .lora_lab/index.sqlite  .lora_lab/journal/  .lora_lab/thumbs/
        .lora_lab/caption_sources.jsonl   (which model and prompt wrote each caption)
        .lora_lab/write.lock   (held by whoever writes: see :mod:`.lock`)
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import atomic
from ..errors import Conflict, LoraLabError, NotFound
from ..workspace import Workspace, check_name
from . import captions as caption_ops
from . import workers
from .images import EXTENSIONS, hamming_pairs
from .index import ImageQuery, Index
from .journal import Entry, Journal
from .lock import WriteLock, is_held_elsewhere

META = ".lora_lab"
NEAR_DUP_BITS = 5  # dHash distance at or below which two images count as near-duplicates


def etag(caption: str | None) -> str:
    """A tag for a caption's current text, for If-Match style writes (``"none"``: no caption)."""
    if caption is None:
        return "none"
    return hashlib.sha1(caption.encode("utf-8")).hexdigest()[:16]


def read_caption(path: Path) -> str:
    """A caption file's text (UTF-8, BOM and surrounding whitespace dropped)."""
    try:
        return path.read_bytes().decode("utf-8-sig").strip()
    except UnicodeDecodeError as e:
        raise LoraLabError(f"caption {path.name} is not UTF-8 ({e.reason} at byte {e.start}); "
                           "save it as UTF-8") from None


class StaleCaption(Conflict):
    """An If-Match write whose etag no longer names the caption on disk."""


@dataclass
class Page:
    items: list[dict[str, Any]]
    total: int
    offset: int
    limit: int


class Dataset:
    """Open an existing dataset with :meth:`open`, make a new one with :meth:`create`."""

    def __init__(self, path: Path):
        self.path = path
        self.name = path.name
        self.meta_dir = path / META
        self.meta_dir.mkdir(exist_ok=True)
        self.lock = WriteLock(self.meta_dir / "write.lock", self.name)
        self.index = Index(self.meta_dir / "index.sqlite")
        self.journal = Journal(self.meta_dir / "journal", self.lock)
        # The index is a cache; where a caption came from cannot be read back from the .txt
        # files, so it is kept here too, for a rebuilt index.
        self.sources_path = self.meta_dir / "caption_sources.jsonl"

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, {self.index.count()} images)"

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, name: str, workspace: Workspace | None = None) -> Dataset:
        path = dataset_path(name, workspace)
        if not path.is_dir():
            raise NotFound(f"dataset {name!r} does not exist (see `lora-lab dataset list`)")
        ds = cls(path)
        ds.sync_if_changed()
        return ds

    @classmethod
    def create(cls, name: str, workspace: Workspace | None = None) -> Dataset:
        path = dataset_path(name, workspace)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir()  # atomic: of two creators at once, exactly one gets here
        except FileExistsError:
            raise Conflict(f"dataset {name!r} already exists; use another name, or --add to add "
                           "images to it") from None
        return cls(path)

    def delete(self) -> None:
        with self.writing():  # a writer waiting for the lock then finds the dataset gone
            self.index.close()
            shutil.rmtree(self.path)

    def writing(self) -> contextlib.AbstractContextManager[bool]:
        """``with ds.writing():`` — hold the dataset's write lock (re-entrant in one thread).

        Every write to captions, the journal or the index holds it, so a check (an etag, an
        undo's "changed since") and the write it guards see no other writer in between."""
        return self.lock.hold()

    # -- files -----------------------------------------------------------------------------------
    def image_path(self, file: str) -> Path:
        """The path of image ``file``; refuses names that are not a plain file in this dataset."""
        if not isinstance(file, str) or not file or file != Path(file).name or file.startswith("."):
            raise LoraLabError(f"invalid image name {file!r}: give a file name in the dataset")
        path = self.path / file
        if path.suffix.lower() not in EXTENSIONS or not path.is_file():
            raise NotFound(f"image {file!r} is not in dataset {self.name!r}")
        if path.resolve().parent != self.path.resolve():
            raise LoraLabError(f"image {file!r} points outside dataset {self.name!r}; refused")
        return path

    def caption_path(self, file: str) -> Path:
        return self.image_path(file).with_suffix(".txt")

    # -- listing ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.index.count()

    def images(self, offset: int = 0, limit: int = 100, **query: Any) -> Page:
        """A page of image records; ``query`` filters and sorts them (see :class:`ImageQuery`:
        ``q``, ``tag``, ``captioned``, ``truncated``, ``shape``, ``min_side``, ``duplicates``,
        ``sort``). Any page costs about the same, however far in."""
        if offset < 0 or not 1 <= limit <= 1000:
            raise LoraLabError("offset must be >= 0 and limit between 1 and 1000")
        rows, total = self.index.page(offset, limit, ImageQuery(**query))
        return Page(rows, total, offset, limit)

    def image(self, file: str) -> dict[str, Any]:
        self.image_path(file)
        row = self.index.get(file)
        if row is None:
            self.sync()
            row = self.index.get(file)
        return row

    def select(self, files: list[str] | None = None, q: str | None = None) -> list[str]:
        """The files an operation applies to: the named ones, those matching ``q``, or all."""
        if files:
            for f in files:
                self.image_path(f)
            return list(dict.fromkeys(files))
        return self.index.files(ImageQuery(q=q))

    # -- captions --------------------------------------------------------------------------------
    def caption(self, file: str) -> str | None:
        """The caption on disk (``None`` when the image has no ``.txt``)."""
        path = self.caption_path(file)
        if not path.exists():
            return None
        if not self._own(path):
            raise LoraLabError(f"caption of {file!r} is a link out of dataset {self.name!r}; "
                               "refused (replace it with a plain .txt file)")
        return read_caption(path)

    def _own(self, path: Path) -> bool:
        """Whether ``path`` is a file of this dataset, not a link to one elsewhere."""
        return path.is_file() and path.resolve().parent == self.path.resolve()

    def set_caption(self, file: str, text: str, if_match: str | None = None) -> str:
        """Write one caption atomically; with ``if_match``, only over the version it names.

        Returns the new caption's etag.
        """
        text = text.strip()
        with self.writing():
            before = self.caption(file)
            if if_match is not None and if_match != etag(before):
                raise StaleCaption(f"caption of {file!r} changed since you read it; reload and "
                                   "edit again")
            if text != before:
                self._write_captions(f"set {file}", {file: (before, text)})
        return etag(text)

    def edit(self, ops: list[dict[str, Any]], files: list[str] | None = None,
             q: str | None = None) -> dict[str, Any]:
        """Apply bulk caption operations to a selection (default: every image), as one undo step."""
        ops = caption_ops.check_ops(ops)
        label = caption_ops.describe(ops)
        with self.writing():
            selected = self.select(files, q)
            changes = {}
            for f in selected:
                before = self.caption(f)
                after = caption_ops.apply_ops(before or "", ops)
                if after != (before or ""):
                    changes[f] = (before, after)
            if changes:
                self._write_captions(label, changes)
        return {"operation": label, "selected": len(selected), "changed": len(changes)}

    def undo(self) -> dict[str, Any]:
        """Revert the newest caption edit exactly, unless a caption it touched changed since."""
        with self.writing():
            return self._undo()

    def _undo(self) -> dict[str, Any]:
        last = self.journal.last()
        if last is None:
            raise LoraLabError(f"nothing to undo in dataset {self.name!r}")
        entry_path, entry = last
        if not entry["done"] and is_held_elsewhere(entry_path):
            raise Conflict(f"cannot undo {entry['label']!r}: it is still running; wait for it to "
                           "finish (or cancel it), then undo")
        # "before" still on disk: that change never landed (a batch killed mid-way), fine.
        changed_since = [f for f, before, after in entry["changes"]
                         if self.caption_or_none(f) not in (before, after)]
        if changed_since:
            shown = ", ".join(changed_since[:3]) + (" ..." if len(changed_since) > 3 else "")
            raise Conflict(f"cannot undo {entry['label']!r}: {len(changed_since)} caption(s) changed "
                           f"since ({shown}); nothing was reverted")
        self._write_caption_files([(f, before) for f, before, _ in reversed(entry["changes"])])
        entry_path.unlink()
        self._mark_synced()
        return {"undone": entry["label"], "restored": len(entry["changes"])}

    def write_caption(self, entry: Entry, file: str, before: str | None, after: str,
                      source: dict[str, Any]) -> bool:
        """One caption of a batch: journaled first, then written atomically, with its source
        (the model and prompt that made it, ``"truncated": True`` when the token limit cut it)
        recorded in the index and in the sources log, which a re-sync restores it from.

        Returns False, writing nothing, when the caption is no longer ``before`` (someone edited
        it while the model worked: that newer edit wins)."""
        with self.writing():
            if self.caption_or_none(file) != before:
                return False
            entry.add([(file, before, after)])
            self._write_caption_files([(file, after)], source)
            with open(self.sources_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"file": file, "etag": etag(after.strip()), **source},
                                   ensure_ascii=False) + "\n")
            self._mark_synced()
        return True

    def caption_or_none(self, file: str) -> str | None:
        """The caption, or ``None`` when the image (or its caption) is not there."""
        try:
            return self.caption(file)
        except NotFound:
            return None

    def _write_captions(self, label: str, changes: dict[str, tuple[str | None, str]]) -> None:
        # The journal entry goes first: a crash mid-way leaves an entry whose undo is refused
        # for the captions not yet written, never a change that cannot be undone.
        self.journal.record(label, [(f, b, a) for f, (b, a) in changes.items()])
        self._write_caption_files([(f, after) for f, (_, after) in changes.items()])
        self._mark_synced()

    def _write_caption_files(self, texts: list[tuple[str, str | None]],
                             source: dict[str, Any] | None = None) -> None:
        """Write each caption file atomically (None: remove it), then index them all in one
        transaction: a bulk edit's thousands of captions cost the index one commit."""
        indexed = []
        for file, text in texts:
            path = self.caption_path(file)
            if text is None:
                path.unlink(missing_ok=True)
                indexed.append((file, None, None, None))
            else:
                atomic.write_text(path, text)
                indexed.append((file, text, path.stat().st_mtime_ns, source))
        self.index.set_captions(indexed)

    # -- index -----------------------------------------------------------------------------------
    def _dir_mtime(self) -> str:
        return str(self.path.stat().st_mtime_ns)

    def _mark_synced(self) -> None:
        self.index.set_meta("dir_mtime_ns", self._dir_mtime())

    def sync_if_changed(self) -> None:
        """Re-sync when files were added, removed or renamed behind our back (folder mtime).

        Skipped while another writer holds the dataset: it brings the index in step itself,
        and a reader is not kept waiting for it."""
        if self.index.meta("dir_mtime_ns") != self._dir_mtime():
            with self.lock.hold(blocking=False) as held:
                if held:
                    self.sync()

    def sync(self) -> dict[str, int]:
        """Bring the index in line with the files: new, changed and removed images and captions."""
        with self.writing():
            return self._sync()

    def _sync(self) -> dict[str, int]:
        on_disk = {}
        with os.scandir(self.path) as it:
            for e in it:
                if (not e.name.startswith(".") and Path(e.name).suffix.lower() in EXTENSIONS
                        and e.is_file(follow_symlinks=False)):
                    on_disk[e.name] = e.stat().st_mtime_ns
        rows = {r["file"]: r for r in self.index.all()}
        gone = [f for f in rows if f not in on_disk]
        stale = sorted(f for f, m in on_disk.items() if f not in rows or rows[f]["mtime_ns"] != m)
        self.index.delete(gone)
        new_rows = []
        for f, info in zip(stale, workers.run_all(workers.file_tasks([self.path / f for f in stale]))):
            if not isinstance(info, str):  # an unreadable file stays out of the index
                new_rows.append({"file": f, **info.__dict__, "mtime_ns": on_disk[f]})
        self.add_rows(new_rows)
        recaptioned = self._sync_captions()
        self._mark_synced()
        return {"added": len(new_rows), "removed": len(gone), "captions": recaptioned}

    def _caption_sources(self) -> dict[str, dict[str, Any]]:
        """file -> the source of its last batch caption (a torn last line is ignored)."""
        sources = {}
        try:
            lines = self.sources_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return {}
        for line in lines:
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                continue
            sources[item.pop("file")] = item
        return sources

    def _sync_captions(self) -> int:
        updated, sources = [], None
        for row in self.index.all():
            txt = self.path / Path(row["file"]).with_suffix(".txt")
            mtime = txt.stat().st_mtime_ns if self._own(txt) else None  # a link out: none
            if mtime != row["caption_mtime_ns"]:
                try:
                    text = read_caption(txt) if mtime is not None else None
                except LoraLabError:
                    text = None  # not UTF-8: shown as uncaptioned, the file is left as it is
                sources = self._caption_sources() if sources is None else sources
                source = sources.get(row["file"], {})
                # The batch's source holds while the text is what the batch wrote.
                updated.append((row["file"], text, mtime,
                                source if source.get("etag") == etag(text) else None))
        self.index.set_captions(updated)  # one transaction for them all
        return len(updated)

    def add_rows(self, rows: list[dict[str, Any]]) -> None:
        """Index new image rows, flagging near-duplicates of earlier images."""
        incoming = {r["file"] for r in rows}
        existing = [(r["file"], r["phash"]) for r in self.index.all() if r["file"] not in incoming]
        names = [f for f, _ in existing] + [r["file"] for r in rows]
        hashes = [h for _, h in existing] + [r["phash"] for r in rows]
        for i, j in hamming_pairs(hashes, len(existing), NEAR_DUP_BITS):
            row = rows[j - len(existing)]
            row.setdefault("near_dup_of", names[i])
        self.index.upsert(rows)


def dataset_path(name: str, workspace: Workspace | None) -> Path:
    """The folder of dataset ``name`` in the workspace (a name that leads out of it is refused)."""
    ws = workspace or Workspace()
    return ws.resolve(check_name(name), ws.datasets)


def list_datasets(workspace: Workspace | None = None) -> list[dict[str, Any]]:
    """Every dataset in the workspace with its image and caption counts."""
    ws = workspace or Workspace()
    out = []
    for path in sorted(p for p in ws.datasets.iterdir() if p.is_dir()):
        try:
            ds = Dataset.open(path.name, ws)
        except LoraLabError:  # a folder made by hand whose name is not a dataset name
            continue
        captioned = ds.index.page(0, 1, ImageQuery(captioned=True))[1]
        out.append({"name": ds.name, "images": len(ds), "captioned": captioned})
        ds.index.close()
    return out
