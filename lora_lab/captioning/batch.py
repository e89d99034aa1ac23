"""Caption a whole dataset (or a selection): skip what is done, survive anything, resume exactly.

The next images are read and resized on a background thread while the model generates, so the
pipeline around the model costs next to nothing. A batch is one undo-journal entry: each caption
is journaled, then written atomically, so a batch killed at any point and started again with the
same settings continues where it stopped — no caption lost, duplicated or half-written.

An answer the token limit cut is asked again with a larger limit (the engines do that, see
:func:`~lora_lab.captioning.base.whole_answer`); one cut even then is saved with
``"truncated": True`` in its source, so the index marks it and a filter finds it.
"""
from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ..datasets import Dataset
from ..errors import LoraLabError
from . import prompts
from .base import Answer, Captioner, CaptionError, prepare_image

MODES = ("skip", "overwrite", "append", "prepend")
PREFETCH = 4  # images prepared ahead of the model
TRUNCATED = ("the model hit its token limit, also when asked again with a larger one: the caption "
             "is saved but may end mid-sentence, and is marked truncated (raise max_tokens and "
             "caption it again, or edit it)")


@dataclass(frozen=True)
class CaptionSettings:
    prompt: str  # a template: {trigger}, {filename}, {existing}
    trigger: str = ""
    mode: str = "skip"
    max_words: int | None = None
    style: str = "sentence"  # or "tags": how answers are cleaned up


@dataclass
class BatchReport:
    dataset: str
    model: str
    selected: int = 0
    captioned: int = 0
    already_done: int = 0  # captioned before (skip mode) or by the run this one resumes
    failed: list[dict[str, str]] = field(default_factory=list)  # file, error
    retried: int = 0  # answers cut by the token limit, asked again with a larger one
    truncated: list[str] = field(default_factory=list)  # saved although cut even after the retry
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Item:
    file: str
    existing: str | None
    image: bytes | None = None
    prompt: str = ""
    error: str | None = None


def caption_dataset(ds: Dataset, captioner: Captioner, settings: CaptionSettings, *,
                    files: list[str] | None = None,
                    on_event: Callable[[dict[str, Any]], None] | None = None) -> BatchReport:
    """Caption the selected images (default all); per-image failures are reported, not raised.

    ``on_event`` gets a ``progress`` event per image and a ``log`` event per failed image and
    per caption saved truncated.
    """
    check_settings(settings)
    selected = ds.select(files)
    if not selected:
        raise LoraLabError(f"dataset {ds.name!r} has no images to caption")
    report = BatchReport(ds.name, captioner.name, selected=len(selected))
    entry, done = _open_entry(ds, captioner, settings, selected)
    todo = [f for f in selected if f not in done]
    report.already_done = len(done)
    started = time.monotonic()
    emit = on_event or (lambda event: None)
    items = _prefetch(_prepare(ds, todo, settings), PREFETCH)
    for n, (item, answer) in enumerate(_generate(captioner, items), start=1):
        failures, truncated = len(report.failed), len(report.truncated)
        if item.error is None and isinstance(answer, Answer):
            _store(ds, entry, item, answer, settings, captioner.name, report)
        elif item.error != "skip":
            report.failed.append({"file": item.file, "error": item.error or str(answer)})
        else:
            report.already_done += 1
        if len(report.failed) > failures:
            emit({"type": "log", "level": "warning", **report.failed[-1],
                  "message": f"{item.file}: {report.failed[-1]['error']}"})
        if len(report.truncated) > truncated:
            emit({"type": "log", "level": "warning", "file": item.file, "truncated": True,
                  "message": f"{item.file}: {TRUNCATED}"})
        emit(_progress(report, n, len(todo), started, item.file))
    entry.finish()
    report.seconds = round(time.monotonic() - started, 3)
    return report


def check_settings(settings: CaptionSettings) -> None:
    """Refuse bad settings up front, before a model is loaded for minutes."""
    if settings.mode not in MODES:
        raise LoraLabError(f"unknown caption mode {settings.mode!r}; use one of {', '.join(MODES)}")
    # Rendered with every per-image value filled: a template that is only {trigger} and no
    # trigger fails here, not at every image.
    prompts.render_prompt(settings.prompt, trigger=settings.trigger, filename="x", existing="x")


def _open_entry(ds: Dataset, captioner: Captioner, settings: CaptionSettings, selected: list[str]):
    """The journal entry of this batch: the unfinished one of an identical earlier run, or new."""
    key = hashlib.sha1(json.dumps([captioner.name, asdict(settings), selected]).encode()).hexdigest()
    unfinished = ds.journal.unfinished(key)
    if unfinished is None:
        label = f"caption {len(selected)} images ({settings.mode}) with {captioner.name}"
        return ds.journal.begin(label, key), set()
    entry, data = unfinished
    landed = {f for f, _, after in data["changes"] if ds.caption_or_none(f) == after}
    return entry, landed


def _prepare(ds: Dataset, files: list[str], settings: CaptionSettings) -> Iterator[_Item]:
    for f in files:
        if not ds.path.is_dir():
            raise LoraLabError(f"dataset folder {ds.path} disappeared mid-batch; the captions "
                               "written before are kept")
        try:
            existing = ds.caption(f)
            if settings.mode == "skip" and existing:
                yield _Item(f, existing, error="skip")
                continue
            prompt = prompts.render_prompt(settings.prompt, trigger=settings.trigger, filename=f,
                                           existing=existing or "")
            yield _Item(f, existing, prepare_image(ds.image_path(f)), prompt)
        except (LoraLabError, OSError) as e:
            yield _Item(f, None, error=str(e))


def _generate(captioner: Captioner, items: Iterable[_Item]):
    """(item, Answer or CaptionError) per item; several in flight when the engine can."""
    caption_many = getattr(captioner, "caption_many", None)
    if caption_many is None:
        for item in items:
            if item.error is not None:
                yield item, None
                continue
            try:
                yield item, captioner.caption(item.image, item.prompt)
            except CaptionError as e:
                yield item, e
        return
    waiting: list[_Item] = []  # items with nothing to send, reported with the next result

    def work() -> Iterator[tuple[_Item, bytes, str]]:
        for item in items:
            if item.error is None:
                yield item, item.image, item.prompt
            else:
                waiting.append(item)

    for item, answer in caption_many(work()):
        yield from _drain(waiting)
        yield item, answer
    yield from _drain(waiting)


def _drain(waiting: list[_Item]) -> Iterator[tuple[_Item, None]]:
    while waiting:
        yield waiting.pop(0), None


def _store(ds: Dataset, entry, item: _Item, answer: Answer, settings: CaptionSettings, model: str,
           report: BatchReport) -> None:
    report.retried += answer.retried
    new = prompts.clean_caption(answer.text, trigger=settings.trigger, max_words=settings.max_words,
                                style=settings.style)
    if not new:
        report.failed.append({"file": item.file, "error": "the model returned an empty caption"})
        return
    after = prompts.merge_caption(item.existing, new, settings.mode, settings.trigger)
    if not ds.path.is_dir():
        raise LoraLabError(f"dataset folder {ds.path} disappeared mid-batch; the captions "
                           "written before are kept")
    source: dict[str, Any] = {"model": model, "prompt": settings.prompt}
    if answer.truncated:
        source["truncated"] = True
    if not ds.write_caption(entry, item.file, item.existing, after, source):
        report.failed.append({"file": item.file, "error": "its caption was edited while the model "
                              "worked; that edit was kept (caption it again to replace it)"})
        return
    report.captioned += 1
    if answer.truncated:
        report.truncated.append(item.file)


def _progress(report: BatchReport, n: int, total: int, started: float, file: str) -> dict[str, Any]:
    elapsed = max(time.monotonic() - started, 1e-9)
    rate = n / elapsed
    return {"type": "progress", "step": n, "total": total, "file": file,
            "captioned": report.captioned, "failed": len(report.failed),
            "retried": report.retried, "truncated": len(report.truncated),
            "images_per_s": round(rate, 3), "eta_s": round((total - n) / rate, 1)}


_END = object()


def _prefetch(items: Iterator[_Item], depth: int) -> Iterator[_Item]:
    """Run ``items`` on a background thread, ``depth`` ahead; its exceptions surface here."""
    q: queue.Queue = queue.Queue(maxsize=depth)

    def produce() -> None:
        try:
            for item in items:
                q.put(item)
            q.put(_END)
        except BaseException as e:  # re-raised in the consumer
            q.put(e)

    threading.Thread(target=produce, daemon=True, name="caption-prefetch").start()
    while (item := q.get()) is not _END:
        if isinstance(item, BaseException):
            raise item
        yield item
