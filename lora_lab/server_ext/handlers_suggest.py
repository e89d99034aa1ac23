"""POST suggest: the config assistant (lora_lab.assistant) for the launcher and the sidebar.

The model runs in a child process (``suggest_apart``): llama.cpp never loads into the server.
The dataset is checked here first, so a request naming none costs no process.
"""
from __future__ import annotations

from tornado.web import HTTPError, authenticated

from ..assistant import suggest_apart
from ..errors import NotFound
from ..workspace import check_name
from .base import LoraLabHandler, field

FIELDS = ("text", "dataset", "seed")
TEXT_CHARS = 2000  # a request in words, not a document
SEED_MAX = 2**32 - 1


class SuggestHandler(LoraLabHandler):
    """POST ``{text, dataset, seed?}``: a training config for the dataset with a reason for each
    suggested value (``reasons``), its TOML, and the facts the rules used. The model is the
    server's caption model (LoraLabApp.caption_model, else the workspace's)."""

    @authenticated
    async def post(self) -> None:
        body = self.json_body(*FIELDS)
        text, dataset = field(body, "text", str), field(body, "dataset", str)
        seed = field(body, "seed", int, 0)
        if len(text) > TEXT_CHARS:
            raise HTTPError(400, f"text: {len(text)} characters; at most {TEXT_CHARS}")
        if not 0 <= seed <= SEED_MAX:
            raise HTTPError(400, f"seed must be 0..{SEED_MAX}, not {seed}")
        if not (self.ws.datasets / check_name(dataset)).is_dir():
            raise NotFound(f"dataset {dataset!r} not found in {self.ws.datasets}")
        model = self.services.settings.caption_model or None
        self.reply(await self.blocking(suggest_apart, text, dataset, model=model, seed=seed,
                                       workspace=self.ws))


ROUTES = [("suggest", SuggestHandler)]
