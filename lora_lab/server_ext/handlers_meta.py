"""GET health and GET openapi.json: what a client checks before it uses the rest."""
from __future__ import annotations

from tornado.web import authenticated

from .base import LoraLabHandler
from .openapi import openapi_document


class HealthHandler(LoraLabHandler):
    """GET: ``{"ok": true, "version", "workspace", "gpu_slots", "caption_model", ...}``."""

    @authenticated
    async def get(self) -> None:
        self.reply({"ok": True, **await self.blocking(self.services.describe)})


class OpenAPIHandler(LoraLabHandler):
    """GET: the OpenAPI 3 document of this API."""

    @authenticated
    def get(self) -> None:
        self.reply(openapi_document(self.base_url, self.services.settings))


ROUTES = [("health", HealthHandler), (r"openapi\.json", OpenAPIHandler)]
