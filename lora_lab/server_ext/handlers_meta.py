"""GET health, GET doctor and GET openapi.json: what a client checks before it uses the rest."""
from __future__ import annotations

from tornado.web import authenticated

from ..doctor import diagnose_apart
from .base import LoraLabHandler
from .openapi import openapi_document


class HealthHandler(LoraLabHandler):
    """GET: ``{"ok": true, "version", "workspace", "gpu_slots", "caption_model", ...}``."""

    @authenticated
    async def get(self) -> None:
        self.reply({"ok": True, **await self.blocking(self.services.describe)})


class DoctorHandler(LoraLabHandler):
    """GET: ``{"checks": [{check, status, found, fix}, ...]}``, what ``lora-lab doctor`` says,
    checked in a child process: torch and llama.cpp never load into the server."""

    @authenticated
    async def get(self) -> None:
        s = self.services.settings
        env = {name: value for name, value in (("LORA_LAB_CAPTION_MODEL", s.caption_model),
                                               ("LORA_LAB_CAPTION_MMPROJ", s.caption_mmproj)) if value}
        lines = await self.blocking(diagnose_apart, self.ws, env)
        self.reply({"checks": [line.to_dict() for line in lines]})


class OpenAPIHandler(LoraLabHandler):
    """GET: the OpenAPI 3 document of this API."""

    @authenticated
    def get(self) -> None:
        self.reply(openapi_document(self.base_url, self.services.settings))


ROUTES = [("health", HealthHandler), ("doctor", DoctorHandler), (r"openapi\.json", OpenAPIHandler)]
