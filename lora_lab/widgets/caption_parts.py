"""What CaptionEditor and CaptionPanel share: the caption open for editing with its etag, the
resident caption model for "Caption with AI" on one image, and the table of the most used tags.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from ..captioning.base import CaptionError
from ..captioning.batch import caption_dataset
from ..captioning.llama import model_paths
from ..datasets import Dataset, StaleCaption, etag
from ..jobdir.watch import TrainStarts
from ..workspace import Workspace
from .common import Poller

WATCH_S = 2.0  # while the model is loaded, how often the jobs are looked at for a training run


class OpenCaption:
    """The caption open in an editor: its file, the etag of the text it was read with and,
    after a refused save, the etag of the text then on disk (which a forced save writes over,
    and only that one)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.file, self.etag, self.conflict = "", etag(None), None

    def open(self, file: str) -> str:
        """Read ``file``'s caption as it is on disk now ("" when it has none; no file: close)."""
        caption = self.dataset.caption(file) if file else None
        self.file, self.etag, self.conflict = file, etag(caption), None
        return caption or ""

    def save(self, text: str, force: bool = False) -> str | None:
        """Write ``text`` unless the caption on disk changed since it was read (``force``, after
        a conflict: since the conflict was reported). Returns None once written; else the
        conflict, said for the user, and nothing is written."""
        try:
            self.etag = self.dataset.set_caption(
                self.file, text, if_match=self.conflict if force and self.conflict else self.etag)
        except StaleCaption:
            return self.refuse(self.dataset.caption(self.file))
        self.conflict = None
        return None

    def refuse(self, theirs: str | None) -> str:
        """The caption on disk is now ``theirs``, not the one read: remember it as the conflict
        (the one a forced save may write over) and say so."""
        self.conflict = etag(theirs)
        return f"{self.file}: the caption on disk changed since you opened it (now: {theirs or '(none)'!r})."


class ResidentCaptioner:
    """The caption model a panel keeps loaded for "Caption with AI" on one image: a
    :class:`~lora_lab.captioning.worker.CaptionWorker` started on first use, kept for the
    panel's life. With ``autostart`` a caption runs on a thread (the kernel stays free);
    without, in the call.

    Like the server's, the model lets go of its memory (VRAM on a GPU box) when a training job
    starts, from this kernel or anywhere else, and loads again on the next request: while it is
    loaded, :meth:`make_way` looks at the jobs every :data:`WATCH_S` (on a thread with
    ``autostart``; the caller calls it otherwise) and tells ``on_let_go`` when it let go."""

    def __init__(self, model: str | os.PathLike | None, mmproj: str | os.PathLike | None,
                 workspace: Workspace, max_tokens: int, autostart: bool,
                 on_let_go: Callable[[str], None] | None = None):
        self.model, self.mmproj = model_paths(model, mmproj, workspace)
        self.workspace, self.max_tokens, self.autostart = workspace, max_tokens, autostart
        self.on_let_go = on_let_go or (lambda message: None)
        self.worker: Any = None
        self.thread: threading.Thread | None = None
        self.watch = Poller(self.make_way, WATCH_S)
        self._starts: TrainStarts | None = None  # the train jobs seen running since it loaded

    def missing(self, panel: str) -> str | None:
        """What is missing for a caption, said for the user of ``panel``; None when nothing."""
        gone = [p for p in (self.model, self.mmproj) if not p.is_file()]
        if not gone:
            return None
        return (f"no caption model: {', '.join(map(str, gone))} not found. Pass model= and mmproj= "
                f"to {panel}, set $LORA_LAB_CAPTION_MODEL and $LORA_LAB_CAPTION_MMPROJ, or pull the "
                f"default pair into {self.workspace.models / 'caption'} with `lora-lab models pull caption`")

    @property
    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, run: Callable[..., None], *args: Any) -> None:
        """Call ``run(*args)`` (which calls :meth:`caption`) on a thread, or here without autostart."""
        if not self.autostart:
            run(*args)
            return
        self.thread = threading.Thread(target=run, args=args, name="lora-lab caption", daemon=True)
        self.thread.start()

    def caption(self, dataset: str, file: str, settings: Any) -> Any:
        """Caption one image of ``dataset`` now; returns the batch's report, raises on failure."""
        if self.worker is None:
            from ..captioning.worker import CaptionWorker

            self.worker = CaptionWorker(self.model, self.mmproj, max_tokens=self.max_tokens)
        if not self.loaded:  # it loads now: a training run already going is no reason to let go
            self._starts = TrainStarts(self.workspace)
            if self.autostart:
                self.watch.start()
        # Its own connection: this runs beside the kernel's thread, which reads the index.
        ds = Dataset.open(dataset, self.workspace)
        try:
            report = caption_dataset(ds, self.worker, settings, files=[file])
        finally:
            ds.index.close()
        if report.failed:
            raise CaptionError(f"{file}: {report.failed[0]['error']}")
        return report

    @property
    def loaded(self) -> bool:
        return self.worker is not None and self.worker.pid is not None

    def make_way(self) -> bool:
        """Let the model go if a training job started since the last look (a caption under way
        finishes first); whether it is still loaded, to be looked after."""
        if not self.loaded or self._starts is None:
            return False
        started = self._starts.poll()
        if not started:
            return True
        self.worker.close()  # waits for a caption under way; the next request starts it again
        self.on_let_go(f"training job {started[0]} started: the caption model let go of its "
                       "memory for it and loads again on the next AI caption")
        return False

    def close(self) -> None:
        """Let the model go (its process ends)."""
        self.watch.stop()
        if self.worker is not None:
            self.worker.close()


class TagTable(widgets.VBox):
    """The tags most images carry, each a button "tag (images)"; a click calls ``pick(tag)``.
    The buttons are made once and relabelled, so a recount sends only what changed."""

    def __init__(self, size: int, title: str, pick: Callable[[str], None]):
        self.buttons = [widgets.Button(layout=widgets.Layout(width="auto", display="none"))
                        for _ in range(size)]
        self.tags: list[str] = []
        self._pick = pick
        for i, button in enumerate(self.buttons):
            button.on_click(lambda _, i=i: self._pick(self.tags[i]))
        super().__init__([widgets.HTML(title),
                          widgets.HBox(self.buttons, layout=widgets.Layout(flex_flow="row wrap"))])

    def show(self, counts: list[tuple[str, int]]) -> None:
        """Show ``counts`` ((tag, images), most first); buttons beyond them hide."""
        self.tags = [tag for tag, _ in counts]
        for i, button in enumerate(self.buttons):
            with button.hold_sync():
                if i < len(counts):
                    button.description = f"{counts[i][0]} ({counts[i][1]})"
                    button.tooltip = f"show the images tagged {counts[i][0]!r}"
                    button.layout.display = None
                else:
                    button.layout.display = "none"
