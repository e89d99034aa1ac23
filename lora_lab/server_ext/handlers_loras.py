"""LoRA tools over REST: inspect a LoRA file and convert it to another layout, for files inside
the workspace (lora_lab.tools does the work)."""
from __future__ import annotations

from tornado.web import authenticated

from ..confine import existing, inside
from .base import LoraLabHandler, field

CONVERT_FIELDS = ("path", "to", "out", "family", "force")


class LoraInspectHandler(LoraLabHandler):
    """GET ?path=REL: what `lora-lab lora inspect --json` shows of that file."""

    @authenticated
    async def get(self) -> None:
        from ..tools.inspect import inspect_lora

        # as given: stripped, the relative "\r//x" would name the absolute "//x"
        path = existing(self.ws, self.get_query_argument("path", strip=False), "path")
        report = await self.blocking(inspect_lora, path)
        self.reply({**report, "path": str(path.relative_to(self.ws.root))})


class LoraConvertHandler(LoraLabHandler):
    """POST {path, to, out, family?, force?}: write ``path`` in layout ``to`` as ``out``."""

    @authenticated
    async def post(self) -> None:
        from ..tools.convert import convert_file

        body = self.json_body(*CONVERT_FIELDS)
        src = existing(self.ws, field(body, "path", str), "path")
        out = inside(self.ws, field(body, "out", str), "out")
        done = await self.blocking(convert_file, src, field(body, "to", str), out,
                                   family=field(body, "family", str, None), force=field(body, "force", bool, False))
        self.reply({**done, "path": str(out.relative_to(self.ws.root))})


ROUTES = [("loras/inspect", LoraInspectHandler), ("loras/convert", LoraConvertHandler)]
