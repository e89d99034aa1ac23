"""POST caption: one image through the resident caption model ("re-caption this image").

The model stays loaded in the services' :class:`~lora_lab.captioning.worker.CaptionWorker` (its own
process) between requests; the caption is written through the dataset's normal batch path, so it
is journaled (undoable) and its source is recorded like a caption job's. A whole dataset is a
caption *job* (POST jobs), not a loop over this route.
"""
from __future__ import annotations

import asyncio
from typing import Any

from tornado.web import authenticated

from ..captioning.base import CaptionError
from ..captioning.batch import caption_dataset
from ..captioning.job import settings_of
from ..datasets import etag
from .base import LoraLabHandler, field, opened

FIELDS = ("dataset", "file", "preset", "prompt", "trigger", "mode", "max_words")


class CaptionOneHandler(LoraLabHandler):
    """POST ``{dataset, file, preset?, prompt?, trigger?, mode?, max_words?}``: caption one
    image now (mode defaults to overwrite) and return the new caption and its ETag, and whether
    the token limit cut the answer (``retried``: asked again larger; ``truncated``: cut even then)."""

    @authenticated
    async def post(self) -> None:
        body = self.json_body(*FIELDS)
        params = {"dataset": field(body, "dataset", str), "file": field(body, "file", str),
                  "preset": field(body, "preset", str, None), "prompt": field(body, "prompt", str, None),
                  "trigger": field(body, "trigger", str, ""), "mode": field(body, "mode", str, "overwrite"),
                  "max_words": field(body, "max_words", int, None)}
        # The model answers one request at a time: its own single thread, so a queue of
        # captions never holds up the pool the other routes use.
        loop = asyncio.get_running_loop()
        self.reply(await loop.run_in_executor(self.services.caption_executor, self._caption, params))

    def _caption(self, params: dict[str, Any]) -> dict[str, Any]:
        file = params["file"]
        with opened(params["dataset"], self.ws) as ds:
            ds.image_path(file)
            settings = settings_of(params)  # bad settings fail here, before the model loads
            report = caption_dataset(ds, self.services.caption_worker(), settings, files=[file])
            caption = ds.caption(file)
        if report.failed:
            raise CaptionError(f"{file}: {report.failed[0]['error']}")
        return {"dataset": params["dataset"], "file": file, "caption": caption,
                "etag": etag(caption), "captioned": report.captioned == 1,
                "retried": report.retried == 1, "truncated": bool(report.truncated),
                "model": report.model, "seconds": report.seconds}


ROUTES = [("caption", CaptionOneHandler)]
