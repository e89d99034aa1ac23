"""What every lora_lab handler shares: the services (from the tornado settings), JSON in and
out, one error shape, blocking calls off the event loop.

Errors are ``{"error": short, "detail": message}``: the core's exceptions carry messages written
for users (the CLI prints the same ones), so the detail is passed through as it is; the status
says what kind of mistake it was.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
from collections.abc import Callable, Iterator
from http.client import responses
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from jupyter_server.base.handlers import APIHandler
from tornado.web import HTTPError, RequestHandler

from ..captioning.base import CaptionError
from ..datasets import Dataset
from ..errors import Conflict, LoraLabError, NoSpace, NotFound, Unavailable
from ..workspace import Workspace
from .services import SETTINGS_KEY, Services

T = TypeVar("T")

# What a file download may be labelled as; every other type is sent as an attachment.
SAFE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
              ".webp": "image/webp", ".bmp": "image/bmp", ".gif": "image/gif",
              ".txt": "text/plain; charset=utf-8", ".log": "text/plain; charset=utf-8",
              ".toml": "text/plain; charset=utf-8", ".json": "application/json",
              ".jsonl": "application/json"}

API = "lora-lab/api"  # under the server's base_url; the frontend builds URLs from the same string

# Most specific first. A caption model that cannot load or answer, or a Ray cluster that is not
# there, is the server's trouble, not the request's: 503, so a client knows to retry or tell an admin.
STATUS: list[tuple[type[Exception], int]] = [
    (NotFound, 404), (Conflict, 409), (CaptionError, 503), (Unavailable, 503), (NoSpace, 507), (LoraLabError, 400)]


def status_of(error: LoraLabError) -> int:
    return next(code for kind, code in STATUS if isinstance(error, kind))


def allowed_methods(handler: RequestHandler) -> list[str]:
    """The methods ``handler`` implements, for the ``Allow`` header of a 405."""
    return [m for m in handler.SUPPORTED_METHODS
            if getattr(type(handler), m.lower()) is not RequestHandler._unimplemented_method]


def error_body(status: int, detail: str, **extra: Any) -> dict[str, Any]:
    return {"error": responses.get(status, "Error"), "detail": detail, **extra}


def parse_json(raw: bytes, known: tuple[str, ...] = ()) -> dict[str, Any]:
    """A request body that must be a JSON object (with no fields but the ``known`` ones, when
    given); 400 with the parser's complaint otherwise."""
    try:
        body = json.loads(raw.decode("utf-8") if raw else "{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HTTPError(400, f"the request body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise HTTPError(400, f"the request body must be a JSON object, not {type(body).__name__}")
    try:  # "\ud800" parses, but no file or caption could hold it
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise HTTPError(400, f"the request body is not valid Unicode ({e.reason})") from None
    unknown = sorted(set(body) - set(known)) if known else []
    if unknown:
        raise HTTPError(400, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return body


_REQUIRED: Any = object()
_TYPE_NAMES = {str: "a string", int: "a whole number", bool: "true or false", list: "a list",
               dict: "an object"}


def field(body: dict[str, Any], key: str, kind: type[T], default: Any = _REQUIRED) -> T:
    """``body[key]`` if it has type ``kind``; ``default`` when absent or null; else 400."""
    value = body.get(key)
    if value is None:
        if default is _REQUIRED:
            raise HTTPError(400, f"the request body needs {key!r}")
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise HTTPError(400, f"{key} must be {_TYPE_NAMES.get(kind, kind.__name__)}, "
                        f"not {json.dumps(value)[:60]}")
    return value


@contextlib.contextmanager
def opened(name: str, ws: Workspace) -> Iterator[Dataset]:
    """A dataset open for one request, its index connection closed afterwards."""
    ds = Dataset.open(name, ws)
    try:
        yield ds
    finally:
        ds.index.close()


class LoraLabHandler(APIHandler):
    """Base of the REST handlers. Subclasses decorate every verb with ``@authenticated``."""

    @property
    def services(self) -> Services:
        return self.settings[SETTINGS_KEY]

    @property
    def ws(self) -> Workspace:
        return self.services.ws

    async def blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the extension's thread pool, so the server keeps answering meanwhile."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.services.executor,
                                          functools.partial(fn, *args, **kwargs))

    def json_body(self, *known: str) -> dict[str, Any]:
        return parse_json(self.request.body, known)

    def reply(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data, default=str))

    def int_arg(self, name: str, default: int, lo: int, hi: int) -> int:
        raw = self.get_query_argument(name, None)
        if raw is None:  # "?limit=" is no number either (the OpenAPI document says so)
            return default
        try:
            value = int(raw)
        except ValueError:
            raise HTTPError(400, f"{name} must be a whole number, not {raw!r}") from None
        if not lo <= value <= hi:
            raise HTTPError(400, f"{name} must be between {lo} and {hi}, not {value}")
        return value

    async def send_file(self, path: Path) -> None:
        """Stream a file in 1 MiB pieces (LoRA files are hundreds of MB). Images and text show in
        the browser; anything else downloads, so no file in a job folder can run as a page of
        the Jupyter origin."""
        stat = await self.blocking(path.stat)
        ctype = SAFE_TYPES.get(path.suffix.lower())
        if ctype is None:
            ctype = "application/octet-stream"
            self.set_header("Content-Disposition",
                            f"attachment; filename*=UTF-8''{quote(path.name, safe='')}")
        self.set_header("Content-Type", ctype)  # now: the first flush sends the headers
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-cache")  # revalidated by ETag: captions jobs rewrite files
        self.set_header("ETag", f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"')
        if self.check_etag_header():
            self.set_status(304)
            self.finish(set_content_type=ctype)
            return
        self.set_header("Content-Length", stat.st_size)
        left = stat.st_size  # a log still being written: send the length promised, no more
        f = await self.blocking(open, path, "rb")
        try:
            while left > 0 and (chunk := await self.blocking(f.read, min(left, 2**20))):
                left -= len(chunk)
                self.write(chunk)
                await self.flush()
        finally:
            f.close()
        self.finish(set_content_type=ctype)

    def api_url(self, *parts: str) -> str:
        """The URL of another lora_lab resource, for links in responses."""
        return self.base_url + API + "/" + "/".join(quote(p, safe="") for p in parts)

    # -- errors -----------------------------------------------------------------------------------
    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if status_code == 405:
            self.set_header("Allow", ", ".join(allowed_methods(self)))
        if isinstance(error, OSError) and error.errno == errno.ENAMETOOLONG:
            status_code = 404  # nothing can have that name: the request, not the server, is at fault
            self.set_status(status_code)
            body = error_body(status_code, "a file or folder name in the request is too long "
                              "for the file system, so nothing has it")
        elif isinstance(error, LoraLabError):
            status_code = status_of(error)
            self.set_status(status_code)
            body = error_body(status_code, str(error))
            if getattr(error, "problems", None):  # a training config: one line per problem
                body["problems"] = error.problems  # type: ignore[attr-defined]
        elif isinstance(error, HTTPError):
            body = error_body(status_code, error.log_message or error.reason or "")
        else:
            body = error_body(status_code, "unexpected server error; the Jupyter server log "
                              "has the details" if status_code == 500 else "")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # A user's mistake is a one-line warning, not a traceback in the server log; the message
        # is an argument, never the format (it may quote a user's "%2e%2e").
        if isinstance(value, (LoraLabError, HTTPError)) or (
                isinstance(value, OSError) and value.errno == errno.ENAMETOOLONG):
            detail = value
            if isinstance(value, HTTPError):
                detail = value.log_message or responses.get(value.status_code, "")
            self.log.warning("%s %s: %s", self.request.method, self.request.path, detail)
        else:
            super().log_exception(typ, value, tb)
