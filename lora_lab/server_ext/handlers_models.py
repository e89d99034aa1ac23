"""GET models and POST models/pull: the model catalogue, and pulls run as background jobs.

A pull is a job (kind ``pull``) rather than work inside the server: it outlives a restarted
server, and its progress, log, cancel and resume are the jobs' routes (see
:mod:`lora_lab.models.job`).
"""
from __future__ import annotations

from typing import Any

from tornado.web import authenticated

from ..jobdir import JobRecord
from ..jobs import submit
from ..models import list_models
from .base import LoraLabHandler, field
from .handlers_jobs import JobHandlerBase


class ModelsHandler(LoraLabHandler):
    """GET: every catalogue model with its state (present, partial, absent) and size on disk,
    the other folders and files in models/, and the free space there."""

    @authenticated
    async def get(self) -> None:
        self.reply(await self.blocking(list_models, self.ws))


class ModelPullHandler(JobHandlerBase):
    """POST ``{"model": NAME | ORG/NAME | ORG/NAME/PATH, "name"?: FOLDER, "include"?: [GLOB],
    "executor"?: "local"|"ray"}``:
    checked as far as a pull checks before downloading (404: no such catalogue name, repo or
    file; 400: offline, gated without a token; 507: too little disk; 409: a pull into that
    folder runs, or a file is in the way), then pulled by a job: 202 with its id."""

    @authenticated
    async def post(self) -> None:
        body = self.json_body("model", "name", "include", "executor")
        params = {"model": field(body, "model", str), "name": field(body, "name", str, None),
                  "include": field(body, "include", list, [])}
        job, view = await self.blocking(self._submit, params, self.executor(body))
        self.accepted(job, view)

    def _submit(self, params: dict[str, Any], executor: str) -> tuple[JobRecord, dict[str, Any]]:
        job = submit("pull", params, self.ws, base=self.ws.root, executor=executor)
        return job, self.view(job)


ROUTES = [("models", ModelsHandler), ("models/pull", ModelPullHandler)]
