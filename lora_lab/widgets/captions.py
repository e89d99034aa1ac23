"""CaptionEditor: edit the browser's current caption, bulk-edit the selection, caption with AI.

Every write goes through the dataset (``set_caption`` with the etag the text was read with,
``edit`` and ``undo`` for bulk operations), so the panel and every other surface share one undo
journal. The AI captions run off the kernel's thread: one image on the resident caption model
(a :class:`~lora_lab.widgets.caption_parts.ResidentCaptioner`, kept for the panel's life), a
selection as a caption job whose progress a :class:`~lora_lab.widgets.common.Poller` reads.
"""
from __future__ import annotations

import functools
import html
import os
from typing import Any

import ipywidgets as widgets

from ..captioning.batch import MODES, BatchReport
from ..captioning.job import settings_of
from ..captioning.prompts import DEFAULT_PRESET, PRESETS
from ..datasets import Dataset
from ..datasets.stats import tag_frequency
from ..datasets.thumbs import thumbnail_path
from ..jobdir import JobRecord
from ..jobdir.tail import EventTail
from ..jobs import submit
from .browser import DatasetBrowser
from .caption_parts import OpenCaption, ResidentCaptioner, TagTable
from .common import Notice, Poller, Quiet, reporting, run_on_choice, waiting_reason

PREVIEW_SIZE = 384
ENDED = ("succeeded", "failed", "cancelled", "interrupted")


class CaptionEditor(Quiet, widgets.VBox):
    """``CaptionEditor(browser)``: the caption of ``browser.current`` in a text box that saves
    itself, previous/next, bulk operations on ``browser.selected`` with undo, the most frequent
    tags (click one to filter the browser), and "Caption with AI" for one image or the selection.

    ``model``/``mmproj`` name the caption GGUF pair (default: ``$LORA_LAB_CAPTION_MODEL`` /
    ``$LORA_LAB_CAPTION_MMPROJ``, else the workspace's ``models/caption/``); ``max_tokens``
    caps each answer. ``autostart=False``
    starts no threads: an AI caption runs in the click, and the caller ticks ``poller``.
    """

    def __init__(self, browser: DatasetBrowser, model: str | os.PathLike | None = None,
                 mmproj: str | os.PathLike | None = None, *, max_tokens: int = 300,
                 top_tags: int = 30, interval: float = 1.0, autostart: bool = True):
        # First: close() (also run by __del__ when this constructor raises) needs these.
        self.poller = Poller(self._tick_job, interval)
        self.ai = ResidentCaptioner(model, mmproj, browser.workspace, max_tokens, autostart,
                                    on_let_go=lambda message: self.notice.show(message, "info"))
        self.browser, self.autostart, self.max_tokens = browser, autostart, max_tokens
        self.model, self.mmproj = self.ai.model, self.ai.mmproj
        self.notice = Notice()
        self.job: JobRecord | None = None
        self.opened = OpenCaption(browser.dataset)
        self._events: EventTail | None = None  # the caption job's events, read as they come
        self._build(top_tags)
        super().__init__([self.header, widgets.HBox([self.preview, self._edit_box()]), self.notice,
                          self._bulk_box(), self._ai_box(), self.tag_table])
        self.add_class("lora-lab-caption-editor")
        self._wire()
        browser.observe(self._on_current, "current")
        self._load(browser.current)
        self.refresh_tags()

    @property
    def dataset(self) -> Dataset:
        return self.browser.dataset

    # -- building --------------------------------------------------------------------------------
    def _build(self, top_tags: int) -> None:
        wide = widgets.Layout(width="100%")
        self.header = widgets.HTML()
        self.preview = widgets.Image(format="jpeg", layout=widgets.Layout(
            width=f"{PREVIEW_SIZE // 2}px", height=f"{PREVIEW_SIZE // 2}px", object_fit="contain"))
        self.text = widgets.Textarea(continuous_update=False, rows=5, layout=wide,
                                     placeholder="open an image in the browser to edit its caption")
        self.prev_button = widgets.Button(description="◀ previous")
        self.next_button = widgets.Button(description="next ▶")
        self.save_button = widgets.Button(description="save", tooltip="save now (after a "
                                          "conflict: write your text over the one on disk)")
        self.reload_button = widgets.Button(description="reload", tooltip="read the caption from disk")
        self.trigger_text = widgets.Text(placeholder="trigger word")
        self.trigger_button = widgets.Button(description="put first")
        self.find_text = widgets.Text(placeholder="find")
        self.replace_text = widgets.Text(placeholder="replace with")
        self.regex_check = widgets.Checkbox(description="regex", indent=False,
                                            layout=widgets.Layout(width="70px"))
        self.replace_button = widgets.Button(description="replace")
        self.tags_text = widgets.Text(placeholder="tags, comma separated")
        self.add_button = widgets.Button(description="add tags")
        self.remove_button = widgets.Button(description="remove tags")
        self.undo_button = widgets.Button(description="undo", icon="undo",
                                          tooltip="undo the last caption change in this dataset")
        self.preset = widgets.Dropdown(options=list(PRESETS), value=DEFAULT_PRESET, description="style")
        self.mode = widgets.Dropdown(options=MODES, description="existing",
                                     tooltip="what a caption job does with captions already there")
        self.ai_button = widgets.Button(description="Caption with AI", icon="magic",
                                        tooltip="caption the image shown above (overwrites it)")
        self.ai_selection_button = widgets.Button(description="Caption selection with AI",
                                                  layout=widgets.Layout(width="210px"))
        self.run_on = run_on_choice()  # where the selection's caption job runs
        self.progress = widgets.FloatProgress(min=0.0, max=1.0, layout=widgets.Layout(
            width="300px", visibility="hidden"))
        self.progress_label = widgets.Label()
        self.tag_table = TagTable(top_tags, "<b>Most frequent tags</b> (click one to show its images)",
                                  self._on_tag)
        self.tag_buttons = self.tag_table.buttons

    def _edit_box(self) -> widgets.Box:
        return widgets.VBox([self.text, widgets.HBox([self.prev_button, self.next_button,
                                                      self.save_button, self.reload_button])],
                            layout=widgets.Layout(flex="1"))

    def _bulk_box(self) -> widgets.Box:
        return widgets.VBox([
            widgets.HTML("<b>Selected images</b>"),
            widgets.HBox([self.trigger_text, self.trigger_button]),
            widgets.HBox([self.find_text, self.replace_text, self.regex_check, self.replace_button]),
            widgets.HBox([self.tags_text, self.add_button, self.remove_button, self.undo_button])])

    def _ai_box(self) -> widgets.Box:
        return widgets.HBox([self.preset, self.mode, self.ai_button, self.ai_selection_button,
                             self.run_on, self.progress, self.progress_label],
                            layout=widgets.Layout(flex_flow="row wrap"))

    def _wire(self) -> None:
        self.text.observe(self._on_text, "value")
        self.prev_button.on_click(lambda _: self._step(-1))
        self.next_button.on_click(lambda _: self._step(1))
        self.save_button.on_click(self._on_save)
        self.reload_button.on_click(self._on_reload)
        self.trigger_button.on_click(self._on_trigger)
        self.replace_button.on_click(self._on_replace)
        self.add_button.on_click(functools.partial(self._on_tags, "add_tags"))
        self.remove_button.on_click(functools.partial(self._on_tags, "remove_tags"))
        self.undo_button.on_click(self._on_undo)
        self.ai_button.on_click(self._on_ai_current)
        self.ai_selection_button.on_click(self._on_ai_selection)

    # -- the current caption ---------------------------------------------------------------------
    def _load(self, file: str) -> None:
        """Show ``file``'s caption as it is on disk now ("" for none open)."""
        self._set_text(self.opened.open(file))
        self.text.disabled = not file
        self.preview.layout.visibility = "visible" if file else "hidden"  # no broken-image icon
        if not file:
            self.header.value, self.preview.value = "<i>no image open</i>", b""
            return
        row = self.dataset.image(file)
        self.header.value = (f"<b>{html.escape(file)}</b> {row['width']}x{row['height']}"
                             + (f", captioned by {html.escape(row['caption_model'])}"
                                if row["caption_model"] else ""))
        self.preview.value = thumbnail_path(self.dataset, file, PREVIEW_SIZE).read_bytes()

    def _set_text(self, text: str) -> None:
        with self._quietly():
            self.text.value = text

    def _save(self, force: bool = False) -> None:
        conflict = self.opened.save(self.text.value, force)
        if conflict:
            self.notice.show(f"{conflict} Your text is kept here: save writes it over that one, "
                             "reload takes the one on disk.", "warning")
            return
        self.notice.show(f"saved {self.opened.file}", "ok")
        self._changed()

    @reporting
    def _on_text(self, change: dict[str, Any]) -> None:
        if not self._quiet and self.opened.file:
            self._save()

    @reporting
    def _on_save(self, _: Any = None) -> None:
        if self._need_current():
            self._save(force=True)  # after a conflict: mine over theirs, asked for

    @reporting
    def _on_reload(self, _: Any = None) -> None:
        self._load(self.opened.file)
        self.notice.clear()

    @reporting
    def _on_current(self, change: dict[str, Any]) -> None:
        self._load(change["new"])

    @reporting
    def _step(self, delta: int) -> None:
        self.browser.step(delta)

    def _need_current(self) -> str:
        if not self.opened.file:
            self.notice.show("open an image first: click its name in the browser", "warning")
        return self.opened.file

    # -- bulk operations on the selection --------------------------------------------------------
    def _selection(self) -> list[str]:
        files = list(self.browser.selected)
        if not files:
            self.notice.show("no images selected: tick some in the browser (or 'select all'); "
                             "nothing was changed", "warning")
        return files

    def _bulk(self, ops: list[dict[str, Any]]) -> None:
        files = self._selection()
        if not files:
            return
        report = self.dataset.edit(ops, files=files)
        self.notice.show(f"{report['operation']}: changed {report['changed']} of "
                         f"{report['selected']} selected captions", "ok")
        self._changed(reload=True)

    @reporting
    def _on_trigger(self, _: Any = None) -> None:
        self._bulk([{"op": "prefix", "text": self.trigger_text.value.strip()}])

    @reporting
    def _on_replace(self, _: Any = None) -> None:
        if self.regex_check.value:
            op = {"op": "regex", "pattern": self.find_text.value, "new": self.replace_text.value}
        else:
            op = {"op": "replace", "old": self.find_text.value, "new": self.replace_text.value}
        self._bulk([op])

    @reporting
    def _on_tags(self, op: str, _: Any = None) -> None:
        self._bulk([{"op": op, "tags": self.tags_text.value}])

    @reporting
    def _on_undo(self, _: Any = None) -> None:
        report = self.dataset.undo()
        self.notice.show(f"undid {report['undone']} ({report['restored']} captions restored)", "ok")
        self._changed(reload=True)

    def _changed(self, reload: bool = False) -> None:
        """Captions changed on disk: show them everywhere."""
        self.browser.refresh()
        self.refresh_tags()
        if reload and self.opened.conflict is None:  # a conflicted text is the user's: keep it
            self._load(self.opened.file)

    # -- tags ------------------------------------------------------------------------------------
    def refresh_tags(self) -> None:
        """Count the tags again (the panel does after every change it makes)."""
        self.tag_table.show(tag_frequency(self.dataset, len(self.tag_buttons)))

    @reporting
    def _on_tag(self, tag: str) -> None:
        self.browser.show(q="", tag=tag)

    # -- AI captions -----------------------------------------------------------------------------
    def _check_model(self) -> bool:
        missing = self.ai.missing("CaptionEditor")
        if missing:
            self.notice.show(missing, "error")
        return not missing

    def _settings(self, mode: str) -> dict[str, Any]:
        return {"preset": self.preset.value, "trigger": self.trigger_text.value.strip(), "mode": mode}

    @reporting
    def _on_ai_current(self, _: Any = None) -> None:
        file = self._need_current()
        if not file or not self._check_model():
            return
        if self.ai.busy:
            self.notice.show("the AI is still captioning the last image", "warning")
            return
        settings = settings_of({**self._settings("overwrite"), "prompt": None, "max_words": None})
        self.ai_button.disabled = True
        self.notice.show(f"captioning {file} with {self.model.name} ...", "info")
        self.ai.start(self._caption_one, file, settings)

    @reporting
    def _caption_one(self, file: str, settings: Any) -> None:
        try:
            report = self.ai.caption(self.dataset.name, file, settings)
            self.notice.show(*one_caption_notice(file, report))
            self._changed(reload=file == self.opened.file)
        finally:
            self.ai_button.disabled = False

    @reporting
    def _on_ai_selection(self, _: Any = None) -> None:
        files = self._selection()
        if not files or not self._check_model():
            return
        if self.job is not None and not self.job.finished:
            self.notice.show(f"caption job {self.job.id} is still running", "warning")
            return
        params = {"dataset": self.dataset.name, "files": files, "model": str(self.model),
                  "mmproj": str(self.mmproj), "max_tokens": self.max_tokens,
                  **self._settings(self.mode.value)}
        self.job = submit("caption", params, self.browser.workspace, executor=self.run_on.value)
        self._events = EventTail(self.job.path / "events.jsonl")
        self.progress.value, self.progress.bar_style = 0.0, ""
        self.progress.layout.visibility = "visible"
        self.progress_label.value = f"job {self.job.id}: queued"
        where = " on the Ray cluster" if self.job.status().get("executor") == "ray" else ""
        self.notice.show(f"caption job {self.job.id} started for {len(files)} images{where}", "info")
        if self.autostart:
            self.poller.start()

    def _tick_job(self) -> bool:
        """The poller's step: show the job's progress; False once it has ended."""
        for e in self._events.read_all():
            if e["type"] == "progress":
                self.progress.value = e["step"] / e["total"]
                self.progress_label.value = f"{e['step']}/{e['total']} images"
        view = self.job.view()
        if why := waiting_reason(view):  # a Ray job waiting for the cluster's GPUs
            self.progress_label.value = f"job {self.job.id}: {why}"
        if view["state"] not in ENDED:
            return True
        self._job_ended(view)
        return False

    def _job_ended(self, view: dict[str, Any]) -> None:
        ok = view["state"] == "succeeded"
        self.progress.bar_style = "success" if ok else "danger"
        self.progress_label.value = f"job {self.job.id}: {view['state']}"
        if ok:
            done = next((e for e in reversed(self.job.events()) if e["type"] == "done"), {})
            failed, truncated = len(done.get("failed", [])), len(done.get("truncated", []))
            self.progress.value = 1.0
            self.notice.show(f"caption job {self.job.id} done: {done.get('captioned', 0)} "
                             f"captioned" + (f", {failed} failed (see its log)" if failed else "")
                             + (f", {truncated} cut at the token limit even after a retry: saved, "
                                "marked truncated" if truncated else ""),
                             "warning" if failed or truncated else "ok")
        else:
            self.notice.show(f"caption job {self.job.id} {view['state']}: "
                             f"{view.get('error') or 'see its log'}", "error")
        self._changed(reload=True)

    def close(self) -> None:
        """Stop following the job and let the resident caption model go."""
        self.poller.stop()
        if self.comm is not None:  # open (__del__ closes a closed editor again)
            self.browser.unobserve(self._on_current, "current")
        self.ai.close()
        super().close()


def one_caption_notice(file: str, report: BatchReport) -> tuple[str, str]:
    """The notice for one image captioned with AI: whether the token limit cut its answer."""
    done = f"captioned {file} in {report.seconds:.1f} s"
    if report.truncated:
        return (f"{done}, but the model hit its token limit even when asked again with a larger "
                "one: the caption may end mid-sentence (saved, marked truncated; raise max_tokens "
                "or edit it)", "warning")
    if report.retried:
        return f"{done} (its first answer hit the token limit; asked again with a larger one)", "ok"
    return done, "ok"
