"""REST handlers for background jobs: list, submit, show, delete, cancel, resume, events, files.

A job is its own process writing its own folder (see :mod:`lora_lab.jobs`); these handlers only
start, signal and read it, so a job outlives the server and every client sees the same truth.
The live stream of a job is :mod:`.stream`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tornado.web import authenticated

from ..confine import job_params
from ..errors import LoraLabError, NotFound
from ..jobdir import JobRecord, lora_files, open_job
from ..jobdir.tail import EventTail
from ..jobs import cancel, delete, resume, submit
from ..watch import job_page, job_view, with_browse
from .base import LoraLabHandler, field
from .stream import JOB, JobStreamHandler


class JobHandlerBase(LoraLabHandler):
    def job(self, job_id: str) -> JobRecord:
        return open_job(job_id, self.ws)

    def view(self, job: JobRecord) -> dict[str, Any]:
        """The job's view as served: with the paths the file browser opens (``browse``)."""
        return job_view(job, self.ws, self.services.settings.contents_root)

    def executor(self, body: dict[str, Any]) -> str:
        """Where the job a request submits runs: its ``executor``, else the server's setting
        (checked, Ray's cluster included, when the job is submitted)."""
        return field(body, "executor", str, None) or self.services.settings.executor

    def accepted(self, job: JobRecord, view: dict[str, Any]) -> None:
        """202: the job runs on in its own process; its URL says where to watch it."""
        self.set_header("Location", self.api_url("jobs", job.id))
        self.reply({"id": job.id, "job": view}, 202)


class JobsHandler(JobHandlerBase):
    """GET ``?offset=&limit=``: the jobs newest first (all without ``limit``) and their
    ``total``. POST ``{"kind": "caption"|"train", "params": {...}, "executor"?: "local"|"ray"}``:
    check the parameters (400 naming the bad one) and the executor (default the server's
    setting), start the job, 202 with its id."""

    @authenticated
    async def get(self) -> None:
        offset = self.int_arg("offset", 0, 0, 10**9)
        limit = self.int_arg("limit", 0, 1, 1000) or None  # absent: every job, as before paging
        root = self.services.settings.contents_root
        self.reply(await self.blocking(job_page, self.ws, root, offset, limit))

    @authenticated
    async def post(self) -> None:
        body = self.json_body("kind", "params", "executor")
        kind, params = field(body, "kind", str), field(body, "params", dict, {})
        job, view = await self.blocking(self._submit, kind, params, self.executor(body))
        self.accepted(job, view)

    def _submit(self, kind: str, params: dict[str, Any],
                executor: str) -> tuple[JobRecord, dict[str, Any]]:
        # every path a request names stays in the workspace (relative ones are the workspace's,
        # not the server's current folder), and only allowed caption servers get the API key
        settings = self.services.settings
        params = job_params(kind, params, self.ws, settings.allowed_caption_servers)
        job = submit(kind, params, self.ws, slots=settings.gpu_slots, base=self.ws.root,
                     executor=executor)
        if kind == "train":  # it will want the GPU memory the resident caption model holds
            self.services.close_caption_worker()
        return job, self.view(job)


class JobHandler(JobHandlerBase):
    """GET: the job's status (its true state: a job whose process died reads interrupted).
    DELETE ``?lora=keep|remove``: remove an ended job's folder, and with ``remove`` the LoRA
    file it wrote (inside the workspace only); 409 while it is queued or running."""

    @authenticated
    async def get(self, job_id: str) -> None:
        self.reply(await self.blocking(lambda: self.view(self.job(job_id))))

    @authenticated
    async def delete(self, job_id: str) -> None:
        lora = self.get_query_argument("lora", "keep")
        self.reply(await self.blocking(lambda: delete([self.job(job_id)], self.ws, lora=lora)[0]))


class JobCancelHandler(JobHandlerBase):
    """POST: stop a queued or running job (a training job saves a checkpoint first); 409 when
    it has already ended."""

    @authenticated
    async def post(self, job_id: str) -> None:
        # cancel waits up to its grace period for the job to exit: on the pool, not the loop
        self.reply(await self.blocking(self._cancel, job_id))

    def _cancel(self, job_id: str) -> dict[str, Any]:
        return with_browse(cancel(self.job(job_id)), self.ws, self.services.settings.contents_root)


class JobResumeHandler(JobHandlerBase):
    """POST: start an ended job again where it stopped; 409 when it succeeded or still runs."""

    @authenticated
    async def post(self, job_id: str) -> None:
        job, view = await self.blocking(self._resume, job_id)
        self.accepted(job, view)

    def _resume(self, job_id: str) -> tuple[JobRecord, dict[str, Any]]:
        job = resume(self.job(job_id), slots=self.services.settings.gpu_slots)
        view = self.view(job)
        if view["kind"] == "train":
            self.services.close_caption_worker()
        return job, view


class JobEventsHandler(JobHandlerBase):
    """GET ``?after=N``: the events after number N, each with its number ``n``; ``next`` is the
    ``after`` of the following poll."""

    @authenticated
    async def get(self, job_id: str) -> None:
        after = self.int_arg("after", 0, 0, 10**12)
        self.reply(await self.blocking(self._events, job_id, after))

    def _events(self, job_id: str, after: int) -> dict[str, Any]:
        job = self.job(job_id)
        view = job.view()  # before the read: a finished job's events are all there by then
        events = EventTail(job.path / "events.jsonl", after).read_all()
        return {"events": events, "next": events[-1]["n"] if events else after,
                "state": view["state"], "finished": view["state"] not in ("queued", "running")}


class JobFilesHandler(JobHandlerBase):
    """GET ``jobs/ID/files``: the job's files (samples, checkpoints, log.txt, and the LoRA
    files it wrote, each with its ``step``, null for the final one); ``jobs/ID/files/PATH``: one
    of them, a LoRA file by its name (downloaded as an attachment). Paths outside the job
    folder are refused, and so are LoRA files outside the workspace."""

    @authenticated
    async def get(self, job_id: str, path: str | None = None) -> None:
        if not path:
            self.reply({"files": await self.blocking(self._listing, job_id)})
            return
        await self.send_file(await self.blocking(self._file, job_id, path))

    def _file(self, job_id: str, rel: str) -> Path:
        job = self.job(job_id)
        lora = self._loras(job).get(rel)
        if lora is not None and not (job.path / rel).exists():
            return lora[0]
        target = self.ws.resolve(rel, job.path)  # symlinks followed: a link out is refused too
        if job.path.resolve() not in target.parents:
            raise LoraLabError(f"{rel!r} is outside job {job.id}; refused")
        if not target.is_file():
            raise NotFound(f"job {job.id} has no file {rel!r}")
        return target

    def _listing(self, job_id: str) -> list[dict[str, Any]]:
        job = self.job(job_id)
        files = sorted(p for p in job.path.rglob("*") if p.is_file() and not p.is_symlink())
        out = []
        for p in files:
            rel = p.relative_to(job.path).as_posix()
            out.append({"path": rel, "bytes": p.stat().st_size,
                        "url": self.api_url("jobs", job.id, "files", *rel.split("/"))})
        for name, (path, step) in self._loras(job).items():
            if not (job.path / name).exists():
                out.append({"path": name, "bytes": path.stat().st_size, "output": True,
                            "step": step, "url": self.api_url("jobs", job.id, "files", name)})
        return out

    def _loras(self, job: JobRecord) -> dict[str, tuple[Path, int | None]]:
        """The LoRA files a training job wrote (under loras/, outside its folder) that are still
        there, by name, with their steps; those saved outside the workspace are not served."""
        served = {}
        for f in lora_files(job.status()):
            try:
                path = self.ws.resolve(f["path"])
            except LoraLabError:
                continue
            if path.is_file():
                served[path.name] = (path, f["step"])
        return served


ROUTES = [
    ("jobs", JobsHandler),
    (f"jobs/{JOB}", JobHandler),
    (f"jobs/{JOB}/cancel", JobCancelHandler),
    (f"jobs/{JOB}/resume", JobResumeHandler),
    (f"jobs/{JOB}/events", JobEventsHandler),
    (f"jobs/{JOB}/files", JobFilesHandler),
    (f"jobs/{JOB}/files/(?P<path>.+)", JobFilesHandler),
    (f"jobs/{JOB}/stream", JobStreamHandler),
]
