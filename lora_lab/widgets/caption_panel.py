"""CaptionPanel: caption a dataset in one place, a compact grid with the editor beside it.

The grid is a :class:`~lora_lab.widgets.browser.DatasetBrowser` (small tiles in a scrolling box),
the editor column a :class:`~lora_lab.widgets.side_editor.SideEditor`; the panel shares the
etag-guarded caption, the resident caption model and the tag table with
:class:`~lora_lab.widgets.captions.CaptionEditor`, and adds the daily loop: a large preview, keys,
tag completion, uploads, and a folder that stays in step by itself.

Typing reaches the kernel as it happens (so a key that clicks a button finds the text already
here) and is saved when the image is left (previous, next, save-and-next, another tile) or when
it was left alone for a while. A save never writes over a caption changed on disk since it was
read: the panel says so and keeps the text; "save" then writes it over, "revert" takes the disk's.
A poller reads the folder's mtime (one stat) and re-reads the page and the tags when files came
or went.
"""
from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ipywidgets as widgets

from ..captioning.job import settings_of
from ..datasets import etag
from ..datasets.captions import add_tags, caption_tags, is_sentence_caption, remove_tags, split_tags
from ..datasets.images import EXTENSIONS
from ..datasets.ingest import add_uploads
from ..datasets.tags import TagIndex
from ..datasets.thumbs import cached_thumbnail, make_thumbnail_of, thumbnail_path
from ..errors import NotFound
from ..workspace import Workspace
from .browser import DatasetBrowser
from .caption_parts import OpenCaption, ResidentCaptioner, TagTable
from .captions import one_caption_notice
from .common import Notice, Poller, Quiet, reporting, workspace_of
from .side_editor import SideEditor

SUGGESTIONS = 10  # completions offered under the tag box
AUTOSAVE_S = 3.0  # an edit left alone this long is saved by the poller


def locked(handler: Callable) -> Callable:
    """Run a panel method under the panel's lock: clicks, the poller and the AI's thread take
    turns, so none of them reads the open caption while another replaces it."""
    @functools.wraps(handler)
    def run(self: CaptionPanel, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return handler(self, *args, **kwargs)
    return run


class CaptionPanel(Quiet, widgets.VBox):
    """``CaptionPanel("mydata")``: a page of small tiles (filters, sort, the most used tags with
    how many images carry each) beside an editor with a large preview. Click a tile to open it;
    type, press Ctrl+Enter to save and go on. Tags complete as they are typed; "Caption with AI"
    captions the open image with the resident caption model; files uploaded here, or put in or
    removed from the folder, show up by themselves.

    ``model``/``mmproj``/``max_tokens`` as for :class:`CaptionEditor`. ``autostart=False`` starts
    no threads: no poller (the caller calls :meth:`tick`), AI captions run in the click."""

    def __init__(self, dataset: str, workspace: Workspace | str | None = None,
                 model: str | os.PathLike | None = None, mmproj: str | os.PathLike | None = None, *,
                 page_size: int = 48, thumb_size: int = 112, preview_size: int = 512,
                 max_tokens: int = 300, top_tags: int = 20, interval: float = 2.0,
                 autostart: bool = True):
        # First: close() (also run by __del__ when this constructor raises) needs these.
        self.poller = Poller(self.tick, interval)
        self._lock = threading.RLock()
        self.workspace = workspace_of(workspace)
        self.ai = ResidentCaptioner(model, mmproj, self.workspace, max_tokens, autostart,
                                    on_let_go=lambda message: self.notice.show(message, "info"))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lora-lab preview")
        self.browser: DatasetBrowser | None = None
        self.notice = Notice()
        self.browser = DatasetBrowser(dataset, self.workspace, page_size, thumb_size, self.notice)
        self.dataset = self.browser.dataset
        self.opened = OpenCaption(self.dataset)
        self.preview_size, self.autostart, self.top_tags = preview_size, autostart, top_tags
        self.tags = TagIndex(self.dataset.index.captions())
        self._loaded = ""  # the open caption as it was read or last saved
        self._typed_at: float | None = None  # when the text last changed, unsaved
        self._stamp = self.dataset.index.meta("dir_mtime_ns")  # the folder as last shown
        self.editor = SideEditor(preview_size)
        super().__init__([self._bar(), widgets.HBox(
            [self._left(), self.editor], layout=widgets.Layout(align_items="flex-start"))])
        self.add_class("lora-lab-caption-panel")
        self._wire()
        self.tag_table.show(self.tags.top(top_tags))
        self._open(self.browser.rows[0]["file"] if self.browser.rows else "")
        if autostart:
            self.poller.start()

    # -- building --------------------------------------------------------------------------------
    def _bar(self) -> widgets.Box:
        self.refresh_button = widgets.Button(description="refresh", icon="refresh",
                                             tooltip="read the folder again: new, removed and "
                                                     "edited files")
        self.refresh_button.add_class("lora-lab-refresh")
        self.upload = widgets.FileUpload(accept=",".join([".zip", *sorted(EXTENSIONS), ".txt"]),
                                         multiple=True, description="upload zip / images")
        self.upload.add_class("lora-lab-upload")
        self.notice.add_class("lora-lab-notice")
        return widgets.HBox([self.refresh_button, self.upload, self.notice],
                            layout=widgets.Layout(align_items="center", flex_flow="row wrap"))

    def _left(self) -> widgets.Box:
        self.tag_table = TagTable(self.top_tags, "<b>Tags</b> (how many images carry each; "
                                  "click one to show them)", self._on_tag_filter)
        grid = self.browser.grid.layout  # the page scrolls beside the editor, not below it
        grid.max_height, grid.overflow_y = f"{self.preview_size + 240}px", "auto"
        grid.grid_auto_rows = "max-content"  # (auto rows may shrink to fit that height: tiles overlap)
        return widgets.VBox([self.browser, self.tag_table],
                            layout=widgets.Layout(flex="1 1 0", min_width="0"))

    def _wire(self) -> None:
        ed = self.editor
        self.browser.observe(self._on_current, "current")
        ed.text.observe(self._on_typing, "value")
        ed.tag_input.observe(self._on_tag_typed, "value")
        ed.tag_input.on_msg(self._on_tag_msg)
        ed.add_tag_button.on_click(lambda _: self.add_tag())
        ed.chips.observe(self._on_chip, "value")
        ed.prev_button.on_click(lambda _: self.step(-1))
        ed.next_button.on_click(lambda _: self.step(1))
        ed.save_next_button.on_click(lambda _: self.save_and_next())
        ed.ai_button.on_click(lambda _: self.caption_with_ai())
        ed.save_button.on_click(lambda _: self.save(force=True))
        ed.revert_button.on_click(lambda _: self.revert())
        self.refresh_button.on_click(lambda _: self.refresh())
        self.upload.observe(self._on_upload, "value")

    # -- moving between images -------------------------------------------------------------------
    @reporting
    @locked
    def step(self, delta: int) -> None:
        """Save the open caption if edited, then open the image ``delta`` places on."""
        self.notice.clear()
        file = self.opened.file
        if self._leave() and self.opened.file == file:  # (a deleted image moved on by itself)
            self.browser.step(delta)

    def save_and_next(self) -> None:
        """Ctrl+Enter: save the caption and open the next image."""
        self.step(1)

    @reporting
    @locked
    def _on_current(self, change: dict[str, Any]) -> None:
        if self._quiet or change["new"] == self.opened.file:
            return
        if not self._leave():  # its text could not be saved: stay on it
            self._show_current(self.opened.file)
            return
        self._open(change["new"])

    def _leave(self) -> bool:
        """Save the open caption if it was edited; False when it could not be (a conflict)."""
        return not self._edited() or self._save()

    def _open(self, file: str) -> None:
        """Show ``file`` ("" for none) with its caption as it is on disk now."""
        try:
            text = self.opened.open(file)
            row = self.dataset.image(file) if file else None
        except NotFound:  # removed since the page was read
            self._gone(file, None)
            return
        self._loaded, self._typed_at = text, None
        self._set_text(text)
        self._show_current(file)
        self.editor.show(row, thumbnail_path(self.dataset, file, self.preview_size).read_bytes()
                         if file else b"")
        self._prefetch_after(file)

    def _gone(self, file: str, text: str | None, shown: list[str] | None = None) -> None:
        """``file`` was deleted on disk: say so (with the text it was given, if unsaved) and
        open the image now in its place on the page (``shown``: the page before it went)."""
        shown = shown or [r["file"] for r in self.browser.rows]
        at = shown.index(file) if file in shown else 0
        self.opened.open("")
        self._reread(sync=True)
        rows = self.browser.rows
        now = rows[min(at, len(rows) - 1)]["file"] if rows else ""
        self._open(now)
        lost = f" Your unsaved text for it: {text!r}." if text else ""
        self.notice.show(f"{file} was deleted from the dataset folder; "
                         f"{'showing ' + now if now else 'no image left to show'}.{lost}", "warning")

    def _prefetch_after(self, file: str) -> None:
        """Make the next image's preview while this one is read, so stepping on finds it ready."""
        files = [r["file"] for r in self.browser.rows]
        if not self.autostart or file not in files or files.index(file) + 1 >= len(files):
            return
        row = self.browser.rows[files.index(file) + 1]
        if not cached_thumbnail(self.dataset, row, self.preview_size).exists():
            self._pool.submit(make_thumbnail_of, self.dataset, row, self.preview_size)

    # -- the caption -----------------------------------------------------------------------------
    def _edited(self) -> bool:
        return bool(self.opened.file) and self.editor.text.value.strip() != self._loaded

    @reporting
    @locked
    def save(self, force: bool = False) -> None:
        """Save the open caption; ``force`` (the save button) writes it over a caption changed
        on disk, once the panel has said so."""
        if self.opened.file and (self._edited() or force and self.opened.conflict):
            self._save(force)

    def _save(self, force: bool = False) -> bool:
        file, text = self.opened.file, self.editor.text.value.strip()
        try:
            conflict = self.opened.save(text, force)
        except NotFound:  # the image went while its caption was open
            self._gone(file, text)
            return True
        if conflict:
            self.notice.show(f"{conflict} Your text is kept here: save writes it over that one, "
                             "revert takes the one on disk.", "warning")
            return False
        self.tags.replace(self._loaded, text)
        self._loaded, self._typed_at = text, None
        self._stamp = self.dataset.index.meta("dir_mtime_ns")
        self.tag_table.show(self.tags.top(self.top_tags))
        self.browser.refresh()
        self.notice.show(f"saved {file}", "ok")
        return True

    @reporting
    @locked
    def revert(self) -> None:
        """Drop the edits: show the caption on disk."""
        self._open(self.opened.file)
        self.notice.clear()

    def _set_text(self, text: str) -> None:
        with self._quietly():  # (new options move the chips' selection: no clicks, those)
            self.editor.text.value = text
            self.editor.show_chips()

    @reporting
    @locked
    def _on_typing(self, change: dict[str, Any]) -> None:
        if not self._quiet:
            self._typed_at = time.monotonic()
            with self._quietly():
                self.editor.show_chips()

    @reporting
    @locked
    def _on_chip(self, change: dict[str, Any]) -> None:
        """A chip clicked: its tag leaves the caption."""
        if not self._quiet and change["new"] is not None:
            self.editor.text.value = remove_tags(self.editor.text.value, [change["new"]])

    # -- tags ------------------------------------------------------------------------------------
    @reporting
    @locked
    def add_tag(self, tag: str | None = None) -> None:
        """Add ``tag`` (default: what the tag box holds) to the open caption's text: after the
        tags of a tag caption, before the text of a prose one (a trigger word's place)."""
        ed = self.editor
        new = split_tags(ed.tag_input.value if tag is None else tag)
        if not new:
            return
        if not self.opened.file:
            self.notice.show("open an image first: click its tile", "warning")
            return
        text = ed.text.value.strip()
        if is_sentence_caption(text):
            fresh = [t for t in new if t not in split_tags(text)]
            ed.text.value = ", ".join([*fresh, text]) if fresh else text
        else:
            ed.text.value = add_tags(text, new)
        ed.tag_input.value = ""

    @reporting
    @locked
    def _on_tag_typed(self, change: dict[str, Any]) -> None:
        have = caption_tags(self.editor.text.value)
        self.editor.tag_input.options = tuple(t for t, _ in self.tags.complete(change["new"], SUGGESTIONS, have))

    def _on_tag_msg(self, _widget: widgets.Widget, content: dict[str, Any], _buffers: Any) -> None:
        if content.get("event") == "submit":  # Enter in the tag box
            self.add_tag()

    @reporting
    @locked
    def _on_tag_filter(self, tag: str) -> None:
        self.browser.show(q="", tag=tag)

    # -- the folder ------------------------------------------------------------------------------
    def tick(self) -> bool:
        """The poller's step: pick up files added or removed (the folder's mtime, one stat),
        notice the open caption changed on disk, and save an edit left alone for a while."""
        if self.browser is None or self.comm is None:  # closed
            return False
        with self._lock:
            shown = [r["file"] for r in self.browser.rows]
            self.dataset.sync_if_changed()
            if self.dataset.index.meta("dir_mtime_ns") != self._stamp:
                self._reread()
            self._check_open(shown)
            if (self._typed_at is not None and time.monotonic() - self._typed_at >= AUTOSAVE_S
                    and self._edited() and self.opened.conflict is None):
                self._save()
        return True

    @reporting
    @locked
    def refresh(self) -> None:
        """Read the whole folder again: new, removed and changed images and captions."""
        shown = [r["file"] for r in self.browser.rows]
        self._reread(sync=True)
        self._check_open(shown)

    def _reread(self, sync: bool = False) -> None:
        """The files changed: count the tags again and read the page again."""
        if sync:
            self.dataset.sync()
        self._stamp = self.dataset.index.meta("dir_mtime_ns")
        self.tags = TagIndex(self.dataset.index.captions())
        self.tag_table.show(self.tags.top(self.top_tags))
        self.browser.refresh()

    def _check_open(self, shown: list[str]) -> None:
        """The open image or its caption changed on disk: follow it, or say so if edited here."""
        file = self.opened.file
        if not file:
            return
        if self.dataset.index.get(file) is None:
            self._gone(file, self.editor.text.value.strip() if self._edited() else None, shown)
            return
        theirs = self.dataset.caption_or_none(file)
        if etag(theirs) in (self.opened.etag, self.opened.conflict):
            return
        if self._edited():
            self.notice.show(f"{self.opened.refuse(theirs)} Your text is kept here: save writes it "
                             "over that one, revert takes the one on disk.", "warning")
        else:
            self._open(file)
            self.notice.show(f"{file}: its caption changed on disk; showing the new one", "info")

    @reporting
    @locked
    def _on_upload(self, change: dict[str, Any]) -> None:
        if not change["new"]:
            return
        try:
            report = add_uploads([(f["name"], bytes(f["content"])) for f in change["new"]],
                                 self.dataset.name, workspace=self.workspace)
        finally:
            self.upload.value = ()  # the same files may be chosen again
        self._reread()
        skipped = "; ".join(f"{s['source']}: {s['reason']}" for s in report.skipped[:3])
        self.notice.show(f"added {len(report.added)} images to {self.dataset.name}"
                         + (f", {len(report.duplicates)} already in it" if report.duplicates else "")
                         + (f"; skipped {len(report.skipped)} ({skipped})" if skipped else ""),
                         "ok" if report.added and not report.skipped else "warning")

    # -- AI ----------------------------------------------------------------------------------------
    @reporting
    @locked
    def caption_with_ai(self) -> None:
        """Alt+C: caption the open image with the resident caption model (its caption is
        replaced, as the button says)."""
        file = self.opened.file
        if not file:
            self.notice.show("open an image first: click its tile", "warning")
            return
        missing = self.ai.missing("CaptionPanel")
        if missing:
            self.notice.show(missing, "error")
            return
        if self.ai.busy:
            self.notice.show("the AI is still captioning the last image", "warning")
            return
        settings = settings_of({"preset": self.editor.preset.value, "mode": "overwrite",
                                "trigger": self.editor.trigger.value.strip(), "prompt": None,
                                "max_words": None})
        self.editor.ai_button.disabled = True
        self.notice.show(f"captioning {file} with {self.ai.model.name} ...", "info")
        self.ai.start(self._caption_one, file, settings)

    @reporting
    def _caption_one(self, file: str, settings: Any) -> None:
        try:
            report = self.ai.caption(self.dataset.name, file, settings)
            with self._lock:
                self._reread()
                if file == self.opened.file:
                    self._open(file)
                self.notice.show(*one_caption_notice(file, report))
        finally:
            self.editor.ai_button.disabled = False

    # -- helpers ---------------------------------------------------------------------------------
    def _show_current(self, file: str) -> None:
        with self._quietly():
            self.browser.current = file

    def close(self) -> None:
        """Stop polling, let the caption model go, close the grid."""
        self.poller.stop()
        self.ai.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:  # not while the poller reads the page
            browser, self.browser = self.browser, None  # once, also when __del__ closes again
        if browser is not None:
            browser.unobserve(self._on_current, "current")
            browser.close()
        super().close()

