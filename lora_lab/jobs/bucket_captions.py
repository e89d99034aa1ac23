"""The captions of a caption job whose folder is in the bucket, on their way back to this box.

The worker captions its own copy of the dataset, so a batch there journals and writes each
caption as on this box (:mod:`lora_lab.captioning.batch`). Its journal entry and its log of
caption sources go into the job's folder in the bucket (``captions/journal.jsonl``,
``captions/sources.jsonl``); the dispatcher here writes each caption into this box's dataset
through its own journal entry with the same key, the way the batch would have written it here:
only over the caption it was made from (an edit made here meanwhile wins), each once. A resumed
worker first puts the captions of the runs before it back into its copy, with their entry, so
the batch continues where it stopped: nothing lost or doubled.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .. import atomic
from ..datasets import Dataset
from ..datasets.dataset import etag
from ..datasets.journal import Entry, read_entry
from ..jobdir import JobRecord
from ..workspace import Workspace

JOURNAL, SOURCES = "captions/journal.jsonl", "captions/sources.jsonl"
ENTRY = "00000001.jsonl"  # the batch's entry in the worker's copy: its only one


def dataset_of(spec: dict[str, Any], ws: Workspace) -> Dataset:
    return Dataset.open(spec["params"]["dataset"], ws)


def worker_files(ds: Dataset) -> dict[str, Path]:
    """What the worker pushes besides the job folder: its batch's entry, then the sources (a
    caption's source line is written after its entry line)."""
    return {JOURNAL: ds.journal.folder / ENTRY, SOURCES: ds.sources_path}


def restore(job_folder: Path, ds: Dataset) -> None:
    """Make the worker's copy of the dataset hold what earlier runs of the job captioned (in
    ``job_folder``, as downloaded from the bucket), their entry its only one, unfinished."""
    for old in ds.journal.folder.glob("*.jsonl"):
        old.unlink()
    ds.sources_path.unlink(missing_ok=True)
    journal = job_folder / JOURNAL
    if not journal.is_file():
        return
    for file, _, after in read_entry(journal)["changes"]:
        atomic.write_text(ds.caption_path(file), after)
    ds.sync()
    shutil.copyfile(journal, ds.journal.folder / ENTRY)
    if (job_folder / SOURCES).is_file():
        shutil.copyfile(job_folder / SOURCES, ds.sources_path)


class CaptionsBack:
    """Writes the captions the worker made, as pulled into the job's folder here, into this box's
    dataset; call :meth:`apply` after each pull and :meth:`close` at the end."""

    def __init__(self, job: JobRecord):
        self.job, self.ds = job, dataset_of(job.spec(), job.workspace)
        self.entry: Entry | None = None
        self.applied = 0  # the worker's journal lines dealt with
        self.pulled: list[tuple[int, int] | None] = []  # the pulled files as last read
        self.finished = False

    def apply(self) -> None:
        """Write what the pulls brought; nothing is read again while the pulled files stay."""
        pulled = [_stamp(self.job.path / rel) for rel in (JOURNAL, SOURCES)]
        if self.finished or pulled[0] is None or pulled == self.pulled:
            return
        worker = read_entry(self.job.path / JOURNAL)
        if self.entry is None:
            self.entry = self._open(worker)
        self._write(worker["changes"][self.applied:], self._sources())
        self.pulled = pulled
        if worker["done"] and self.applied == len(worker["changes"]):
            self.entry.finish()
            self.finished = True

    def _write(self, changes: list[list[Any]], sources: dict[tuple[str, str], dict[str, Any]]) -> None:
        for file, before, after in changes:
            source = sources.get((file, etag(after.strip())))
            if source is None:  # its source line comes with a later push
                return
            if self.ds.caption_or_none(file) != after:  # not written by an earlier follower
                # False: edited here while the model worked; that edit is kept, as on this box
                self.ds.write_caption(self.entry, file, before, after, source)
            self.applied += 1

    def close(self) -> None:
        """Let go of the entry: finished, or left for a resume to continue."""
        if self.entry is not None:
            self.entry.release()
        self.ds.index.close()

    def _open(self, worker: dict[str, Any]) -> Entry:
        """This box's entry for the batch: the unfinished one an earlier run began, or a new one."""
        unfinished = self.ds.journal.unfinished(worker["key"])
        return unfinished[0] if unfinished else self.ds.journal.begin(worker["label"], worker["key"])

    def _sources(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Each caption's source (model, prompt, truncated) by file and caption tag."""
        try:
            lines = (self.job.path / SOURCES).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return {}
        sources = {}
        for line in lines:
            try:
                d = json.loads(line)
            except json.JSONDecodeError:  # the last line, torn mid-write
                break
            file, tag = d.pop("file"), d.pop("etag")
            sources[(file, tag)] = d
        return sources


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns
