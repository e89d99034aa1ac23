"""REST handlers for datasets: list, create (server-side source or streamed zip upload), stats,
image pages, image bytes and thumbnails, one caption (with ETag / If-Match), bulk caption edits
with undo, and export.

Each handler parses the request, calls the core (:mod:`lora_lab.datasets`) on the thread pool
and writes JSON; names and files are checked by the core, which refuses anything that would
leave the workspace or the dataset folder.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from tornado.web import HTTPError, authenticated, stream_request_body

from ..confine import ingest_source, inside
from ..datasets import StaleCaption, etag, ingest, list_datasets
from ..datasets.export import export_dataset
from ..datasets.stats import dataset_stats
from ..datasets.thumbs import thumbnail_path
from ..errors import Conflict, NotFound
from ..workspace import check_name
from .base import LoraLabHandler, field, opened, parse_json

JSON_LIMIT = 2**20  # a JSON request body; only zip uploads may be bigger
NAME = r"(?P<name>[^/]+)"
FILE = r"(?P<file>[^/]+)"
FLAGS = {"true": True, "1": True, "false": False, "0": False}
ADD_FLAGS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False, "": False}
ITEM_FIELDS = ("file", "caption", "width", "height", "format", "bytes", "near_dup_of",
               "caption_model")


@stream_request_body
class DatasetsHandler(LoraLabHandler):
    """GET: every dataset. ``POST datasets?name=NAME[&add=1]``: a new dataset (or more images
    for one), from JSON ``{source}`` naming a zip or folder inside the workspace, an ingest
    root or the Jupyter root, or from a zip sent as the body, streamed to disk and refused (413) past the limit.
    The JSON ``{name, source, add}`` of earlier versions still works."""

    _upload: Any = None  # the temp file a zip upload streams into
    _received = 0
    _head = b""  # the body's first byte: a zip starts with "PK", JSON with "{"
    _limit = JSON_LIMIT

    async def prepare(self) -> None:
        await super().prepare()
        self._body = bytearray()
        if self.request.method != "POST":
            return
        # @authenticated on post() runs after the body has arrived: a stranger's upload must
        # not be read at all, so it is refused here, before the first byte.
        if not self.current_user:
            raise HTTPError(403)
        name = None if self._is_json() else self.get_query_argument("name", None)
        self._too_large = f"a JSON request body may be at most {JSON_LIMIT // 1024} KiB"
        if name is not None:
            self._check_target(name, self._add_flag())
            limit_mb = self.services.settings.max_upload_mb
            self._limit = limit_mb * 2**20
            self._too_large = (f"the upload is larger than the limit of {limit_mb} "
                               "MiB (LoraLabApp.max_upload_mb); nothing was stored")
        declared = self.request.headers.get("Content-Length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > self._limit:
            raise HTTPError(413, self._too_large)
        # tornado's own cap sits above ours, so a client gets our 413 rather than a dropped socket
        self.request.connection.set_max_body_size(self._limit + 2**20)
        if name is not None:
            uploads = self.ws.root / ".uploads"
            uploads.mkdir(exist_ok=True)
            fd, path = tempfile.mkstemp(prefix=f"{name}-upload-", suffix=".zip", dir=uploads)
            self._upload, self._upload_path = os.fdopen(fd, "wb"), Path(path)

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        self._head = self._head or chunk[:1]
        self._received += len(chunk)
        if self._received > self._limit:
            self._discard_upload()
            self.send_error(413, exc_info=(HTTPError, HTTPError(413, self._too_large), None))
            return
        if self._upload is not None:
            try:
                self._upload.write(chunk)  # a 64 KiB write to local disk: too short to hand off
            except OSError as e:  # a full disk: say so, keep nothing
                self._discard_upload()
                error = HTTPError(507, f"could not store the upload ({e.strerror}); free some "
                                       "space in the workspace and try again")
                self.send_error(507, exc_info=(HTTPError, error, None))
        else:
            self._body += chunk

    @authenticated
    async def get(self) -> None:
        self.reply({"datasets": await self.blocking(list_datasets, self.ws)})

    @authenticated
    async def post(self) -> None:
        if self._finished:  # refused while the body streamed in
            return
        if self._upload is not None:
            if self._head == b"{":
                self._discard_upload()
                raise HTTPError(400, "the body looks like JSON, not a zip: send JSON with "
                                     "Content-Type: application/json")
            name, add = self.get_query_argument("name"), self._add_flag()
            path = self._upload_path
            self._upload.close()
            try:
                report = await self.blocking(ingest, path, name, workspace=self.ws, add=add)
            finally:
                self._discard_upload()
        else:
            body = parse_json(bytes(self._body), ("source", "name", "add"))
            name, source = self._json_name(body), field(body, "source", str)
            add = self._add_flag() or field(body, "add", bool, False)
            report = await self.blocking(self._ingest_source, name, source, add)
        self.set_header("Location", self.api_url("datasets", name))
        self.reply(report.to_dict(), 200 if add else 201)

    def on_finish(self) -> None:
        self._discard_upload()

    def on_connection_close(self) -> None:
        self._discard_upload()  # the client gave up mid-upload
        super().on_connection_close()

    def _ingest_source(self, name: str, source: str, add: bool):
        # besides the workspace: what the admin lists, and what the file browser shows anyway
        settings = self.services.settings
        source_path = ingest_source(source, self.ws, settings.ingest_roots, settings.contents_root)
        return ingest(source_path, name, workspace=self.ws, add=add)

    def _check_target(self, name: str, add: bool) -> None:
        """Refuse a bad or taken name before a byte of the upload is stored."""
        check_name(name)
        exists = self.ws.resolve(name, self.ws.datasets).is_dir()
        if exists and not add:
            raise Conflict(f"dataset {name!r} already exists; use another name, or add=1 to "
                           "add the images to it")
        if add and not exists:
            raise NotFound(f"dataset {name!r} does not exist, so nothing can be added to it; "
                           "leave out add=1 to create it")

    def _is_json(self) -> bool:
        ctype = self.request.headers.get("Content-Type", "")
        return ctype.split(";")[0].strip().lower() == "application/json"

    def _json_name(self, body: dict[str, Any]) -> str:
        """The dataset's name: ?name=, or (as earlier versions took it) the body's "name"."""
        query, given = self.get_query_argument("name", None), field(body, "name", str, None)
        if query is not None and given is not None and query != given:
            raise HTTPError(400, f"the dataset name is given twice, as ?name={query} and in the "
                                 f"body as {given!r}; give it once")
        name = query if query is not None else given
        if name is None:
            raise HTTPError(400, "the request needs the dataset's name: POST datasets?name=NAME")
        return name

    def _add_flag(self) -> bool:
        raw = self.get_query_argument("add", "").lower()
        if raw not in ADD_FLAGS:
            raise HTTPError(400, f"add must be true or false, not {raw!r}")
        return ADD_FLAGS[raw]

    def _discard_upload(self) -> None:
        upload, self._upload = self._upload, None
        if upload is not None:
            upload.close()
            self._upload_path.unlink(missing_ok=True)


class DatasetHandler(LoraLabHandler):
    """GET: the dataset's stats (counts, captions, sizes per training bucket, tags)."""

    @authenticated
    async def get(self, name: str) -> None:
        self.reply(await self.blocking(self._stats, name))

    def _stats(self, name: str) -> dict[str, Any]:
        with opened(name, self.ws) as ds:
            return dataset_stats(ds)


class ImagesHandler(LoraLabHandler):
    """GET ``?offset=&limit=&q=&tag=&captioned=&truncated=&shape=&min_side=&duplicates=&sort=``:
    a page of images (see ImageQuery), with their captions, ETags and image and thumbnail URLs."""

    @authenticated
    async def get(self, name: str) -> None:
        offset = self.int_arg("offset", 0, 0, 10**9)
        limit = self.int_arg("limit", 100, 1, 1000)
        query = {"q": self.get_query_argument("q", None) or None,
                 "tag": self.get_query_argument("tag", None) or None,
                 "captioned": self._flag("captioned"),
                 "truncated": self._flag("truncated"),
                 "shape": self.get_query_argument("shape", None) or None,
                 "min_side": self.int_arg("min_side", 0, 0, 10**6),
                 "duplicates": bool(self._flag("duplicates")),
                 "sort": self.get_query_argument("sort", None) or "file"}
        page = await self.blocking(self._page, name, offset, limit, query)
        for item in page["items"]:
            url = self.api_url("datasets", name, "images", item["file"])
            item.update(url=url, thumbnail=url + "?thumb=256", etag=etag(item["caption"]))
        self.reply(page)

    def _flag(self, name: str) -> bool | None:
        """A filter's value; None when the query leaves it out (an empty value is refused, as the
        API's schema says: a boolean)."""
        raw = self.get_query_argument(name, None)
        if raw is None:
            return None
        raw = raw.lower()
        if raw not in FLAGS:
            raise HTTPError(400, f"{name} must be true or false, not {raw!r}")
        return FLAGS[raw]

    def _page(self, name: str, offset: int, limit: int, query: dict[str, Any]) -> dict[str, Any]:
        with opened(name, self.ws) as ds:
            page = ds.images(offset, limit, **query)
        items = [{**{k: row[k] for k in ITEM_FIELDS},
                  "caption_truncated": bool(row["caption_truncated"])} for row in page.items]
        return {"items": items, "total": page.total, "offset": page.offset, "limit": page.limit}


class ImageFileHandler(LoraLabHandler):
    """GET: the image's bytes, or with ``?thumb=SIZE`` its cached JPEG thumbnail (32-1024 px)."""

    @authenticated
    async def get(self, name: str, file: str) -> None:
        thumb = self.get_query_argument("thumb", None)
        size = self.int_arg("thumb", 256, 32, 1024) if thumb is not None else None
        path = await self.blocking(self._path, name, file, size)
        await self.send_file(path)

    def _path(self, name: str, file: str, size: int | None) -> Path:
        with opened(name, self.ws) as ds:
            return ds.image_path(file) if size is None else thumbnail_path(ds, file, size)


class CaptionHandler(LoraLabHandler):
    """GET: one caption and its ETag. PUT ``{"caption": TEXT}``: replace it; with
    ``If-Match: ETAG`` only if nobody changed it since that read (else 412, nothing written)."""

    @authenticated
    async def get(self, name: str, file: str) -> None:
        caption = await self.blocking(self._read, name, file)
        self._reply_caption(file, caption)

    @authenticated
    async def put(self, name: str, file: str) -> None:
        text = field(self.json_body("caption"), "caption", str)
        if_match = _if_match(self.request.headers.get("If-Match"))
        try:
            await self.blocking(self._write, name, file, text, if_match)
        except StaleCaption as e:  # the client's copy is stale: HTTP's own word for it
            raise HTTPError(412, str(e)) from None
        self._reply_caption(file, text.strip())

    def _read(self, name: str, file: str) -> str | None:
        with opened(name, self.ws) as ds:
            return ds.caption(file)

    def _write(self, name: str, file: str, text: str, if_match: str | None) -> str:
        with opened(name, self.ws) as ds:
            return ds.set_caption(file, text, if_match=if_match)

    def _reply_caption(self, file: str, caption: str | None) -> None:
        tag = etag(caption)
        self.set_header("ETag", f'"{tag}"')
        self.reply({"file": file, "caption": caption, "etag": tag})


def _if_match(header: str | None) -> str | None:
    """The one ETag an If-Match names (quotes and a weak prefix dropped); ``*`` or none: None."""
    if header is None or header.strip() in ("", "*"):
        return None
    tag = header.strip()
    tag = tag[2:] if tag.startswith("W/") else tag
    return tag.strip('"')


class CaptionsBulkHandler(LoraLabHandler):
    """POST ``{"ops": [...], "files"?: [...], "q"?: TEXT}``: bulk edit as one undo step
    (default: every image); ``{"undo": true}``: revert the newest edit."""

    @authenticated
    async def post(self, name: str) -> None:
        body = self.json_body("ops", "files", "q", "undo")
        if field(body, "undo", bool, False):
            self.reply(await self.blocking(self._undo, name))
            return
        ops = field(body, "ops", list)
        files = field(body, "files", list, None)
        if files is not None and not all(isinstance(f, str) for f in files):
            raise HTTPError(400, "files must be a list of image file names")
        q = field(body, "q", str, None)
        self.reply(await self.blocking(self._edit, name, ops, files, q))

    def _undo(self, name: str) -> dict[str, Any]:
        with opened(name, self.ws) as ds:
            if ds.journal.last() is None:  # the dataset's state, not the request, is why: 409
                raise Conflict(f"nothing to undo in dataset {name!r}")
            return ds.undo()

    def _edit(self, name: str, ops: list, files: list[str] | None, q: str | None) -> dict[str, Any]:
        with opened(name, self.ws) as ds:
            return ds.edit(ops, files, q)


class ExportHandler(LoraLabHandler):
    """POST ``{format?: kohya|zip, repeats?, trigger?, family?: sd15|sdxl, out?}``: write the
    export under the workspace (default ``exports/NAME-FORMAT[.zip]``)."""

    @authenticated
    async def post(self, name: str) -> None:
        body = self.json_body("format", "repeats", "trigger", "family", "out")
        options = {"fmt": field(body, "format", str, "kohya"),
                   "repeats": field(body, "repeats", int, 10),
                   "trigger": field(body, "trigger", str, None),
                   "family": field(body, "family", str, "sd15")}
        out = field(body, "out", str, None)
        self.reply(await self.blocking(self._export, name, out, options), 201)

    def _export(self, name: str, out: str | None, options: dict[str, Any]) -> dict[str, Any]:
        with opened(name, self.ws) as ds:
            default = f"{ds.name}-{options['fmt']}" + (".zip" if options["fmt"] == "zip" else "")
            target = inside(self.ws, out or default, "out", self.ws.exports)
            result = export_dataset(ds, target, **options)
        return {**result, "path": target.relative_to(self.ws.root).as_posix()}


ROUTES = [
    ("datasets", DatasetsHandler),
    (f"datasets/{NAME}", DatasetHandler),
    (f"datasets/{NAME}/images", ImagesHandler),
    (f"datasets/{NAME}/images/{FILE}", ImageFileHandler),
    (f"datasets/{NAME}/captions", CaptionsBulkHandler),
    (f"datasets/{NAME}/captions/{FILE}", CaptionHandler),
    (f"datasets/{NAME}/export", ExportHandler),
]
