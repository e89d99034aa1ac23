"""The OpenAPI 3 description of the REST API, served at ``{base_url}lora-lab/api/openapi.json``.

Written by hand next to the handlers; a test checks that it lists exactly the registered routes
and methods, so the two cannot drift apart.
"""
from __future__ import annotations

from typing import Any

from .. import __version__

ERROR_CODES = {400: "Bad input: the detail says what was wrong and what to do",
               403: "Not authenticated (token or cookie + _xsrf)",
               404: "No such dataset, image, job or file",
               409: "Conflicts with what exists (a taken name, a job that already ended)",
               412: "The caption changed since the ETag in If-Match was read; nothing was written",
               413: "The upload is larger than LoraLabApp.max_upload_mb",
               503: "The caption model cannot load or answer",
               507: "The workspace's disk is full"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _param(name: str, where: str = "path", kind: str = "string", text: str = "") -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path", "description": text,
            "schema": {"type": kind}}


NAME = _param("name", text="dataset name")
FILE = _param("file", text="image file name in the dataset")
JOB = _param("job_id", text="job id, like 20261123-101500-train-1a2b3c")
OBJECT = {"type": "object"}


def _op(summary: str, *, params: tuple = (), body: dict | None = None, ok: int = 200,
        result: dict[str, Any] | None = None, errors: tuple[int, ...] = (400, 404),
        content: dict[str, Any] | None = None) -> dict[str, Any]:
    responses: dict[str, Any] = {str(ok): {"description": "OK", **(content or _json(result or OBJECT))}}
    for code in (403, *errors):
        responses[str(code)] = {"description": ERROR_CODES[code], **_json(_ref("Error"))}
    op: dict[str, Any] = {"summary": summary, "parameters": list(params), "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
    return op


def _obj(required: tuple[str, ...] = (), **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(required), "properties": props}


STR, INT, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
BYTES = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}

PATHS: dict[str, dict[str, Any]] = {
    "/health": {"get": _op("The server extension's version and settings", errors=())},
    "/openapi.json": {"get": _op("This document", errors=())},
    "/datasets": {
        "get": _op("Every dataset with its image and caption counts", errors=()),
        "post": {**_op(
            "Create a dataset (or add to one): JSON naming a zip or folder inside the "
            "workspace, or a zip sent as the raw body with ?name=NAME (streamed to disk)",
            params=(_param("name", "query", text="dataset name: the body is a zip upload"),
                    _param("add", "query", "boolean", "add the zip's images to an existing dataset")),
            ok=201, result=_ref("IngestReport"), errors=(400, 404, 409, 413, 507)),
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _obj(("name", "source"), name=STR, add=BOOL,
                                                    source={**STR, "description": "zip or folder, relative to the workspace"})},
                "application/zip": {"schema": {"type": "string", "format": "binary"}}}}},
    },
    "/datasets/{name}": {"get": _op("Stats: counts, captions, sizes per bucket, tags", params=(NAME,))},
    "/datasets/{name}/images": {"get": _op(
        "A page of images, filtered and sorted", result=_ref("ImagePage"),
        params=(NAME, _param("offset", "query", "integer"), _param("limit", "query", "integer", "1-1000"),
                _param("q", "query", text="text in the file name or caption"),
                _param("tag", "query", text="one of the caption's comma-separated tags, exactly"),
                _param("captioned", "query", "boolean"),
                _param("shape", "query", text="portrait, landscape or square"),
                _param("min_side", "query", "integer", "shortest side at least this many pixels"),
                _param("duplicates", "query", "boolean", "only near-duplicates, grouped"),
                _param("sort", "query", text="file, pixels, aspect, bytes, caption or modified; "
                       "a leading - reverses")))},
    "/datasets/{name}/images/{file}": {"get": _op(
        "The image, or with ?thumb=SIZE its JPEG thumbnail", content={"content": {"image/*": {}}},
        params=(NAME, FILE, _param("thumb", "query", "integer", "thumbnail size, 32-1024")))},
    "/datasets/{name}/captions": {"post": _op(
        "Bulk caption edit as one undo step, or {\"undo\": true}", params=(NAME,),
        errors=(400, 404, 409),
        body=_obj(ops={"type": "array", "items": OBJECT, "description": "e.g. {\"op\": \"prefix\", \"text\": \"sks\"}"},
                  files={"type": "array", "items": STR}, q=STR, undo=BOOL))},
    "/datasets/{name}/captions/{file}": {
        "get": _op("One caption; the ETag header is its version", params=(NAME, FILE),
                   result=_ref("Caption")),
        "put": _op("Replace one caption; If-Match: ETAG refuses a write over a newer version",
                   params=(NAME, FILE, _param("If-Match", "header", text="the ETag read before editing")),
                   body=_obj(("caption",), caption=STR), result=_ref("Caption"),
                   errors=(400, 404, 412)),
    },
    "/datasets/{name}/export": {"post": _op(
        "Export for trainers: kohya folder + dataset.toml, or zip", params=(NAME,), ok=201,
        errors=(400, 404, 409),
        body=_obj(format={"enum": ["kohya", "zip"]}, repeats=INT, trigger=STR,
                  family={"enum": ["sd15", "sdxl"]}, out={**STR, "description": "inside the workspace"}))},
    "/jobs": {
        "get": _op("Every job, newest first", errors=()),
        "post": _op("Submit a caption or training job", ok=202, result=_ref("Accepted"), errors=(400, 404),
                    body=_obj(("kind",), kind={"enum": ["caption", "train"]},
                              params={**OBJECT, "description": "caption: {dataset, ...}; train: {config: {...}}"})),
    },
    "/jobs/{job_id}": {"get": _op("The job's status", params=(JOB,), result=_ref("Job"))},
    "/jobs/{job_id}/cancel": {"post": _op("Stop a queued or running job", params=(JOB,),
                                          result=_ref("Job"), errors=(400, 404, 409))},
    "/jobs/{job_id}/resume": {"post": _op("Start an ended job again where it stopped", ok=202,
                                          params=(JOB,), result=_ref("Accepted"), errors=(400, 404, 409))},
    "/jobs/{job_id}/events": {"get": _op(
        "The events after number `after`, each numbered `n`",
        params=(JOB, _param("after", "query", "integer")))},
    "/jobs/{job_id}/files": {"get": _op("The job's files: samples, checkpoints, LoRA files, log.txt",
                                        params=(JOB,))},
    "/jobs/{job_id}/files/{path}": {"get": _op(
        "One file of the job (path inside the job folder)", content=BYTES,
        params=(JOB, _param("path", text="relative path, e.g. samples/step-000100.png")))},
    "/jobs/{job_id}/stream": {"get": {
        **_op("WebSocket: the job's events (with `n`) and log lines (`{type: log_line, line, "
              "offset}`) live, then `{type: end}`; reconnect with after=n&log_offset=offset",
              params=(JOB, _param("after", "query", "integer"), _param("log_offset", "query", "integer"))),
        "responses": {"101": {"description": "Switching to the WebSocket protocol"},
                      "403": {"description": ERROR_CODES[403]}, "404": {"description": ERROR_CODES[404]}}}},
    "/caption": {"post": _op(
        "Caption one image now with the resident caption model (undoable)",
        errors=(400, 404, 503),
        body=_obj(("dataset", "file"), dataset=STR, file=STR, preset={"enum": ["tags", "short", "detailed"]},
                  prompt=STR, trigger=STR, mode={"enum": ["skip", "overwrite", "append", "prepend"]},
                  max_words=INT))},
}

SCHEMAS = {
    "Error": _obj(("error", "detail"), error=STR, detail=STR,
                  problems={"type": "array", "items": STR}),
    "Caption": _obj(("file", "caption", "etag"), file=STR, caption={"type": "string", "nullable": True},
                    etag=STR),
    "ImagePage": _obj(("items", "total", "offset", "limit"), total=INT, offset=INT, limit=INT,
                      items={"type": "array", "items": _obj(
                          file=STR, caption={"type": "string", "nullable": True}, width=INT, height=INT,
                          etag=STR, url=STR, thumbnail=STR)}),
    "IngestReport": _obj(dataset=STR, added={"type": "array", "items": OBJECT},
                         skipped={"type": "array", "items": OBJECT},
                         duplicates={"type": "array", "items": OBJECT},
                         near_duplicates={"type": "array", "items": OBJECT}),
    "Job": _obj(("id", "kind", "state"), id=STR, kind=STR,
                state={"enum": ["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]},
                phase={"type": "string", "nullable": True}, progress={"type": "number", "nullable": True},
                error={"type": "string", "nullable": True}),
    "Accepted": _obj(("id", "job"), id=STR, job=_ref("Job")),
}


def openapi_document(base_url: str = "/") -> dict[str, Any]:
    """The whole document, its server URL under ``base_url``."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "lora_lab", "version": __version__,
                 "description": "Datasets, captions and training jobs of a lora_lab workspace. "
                                "Errors are {\"error\", \"detail\"}; every route needs Jupyter auth."},
        "servers": [{"url": base_url.rstrip("/") + "/lora-lab/api"}],
        "security": [{"token": []}, {"cookie": []}],
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "token": {"type": "apiKey", "in": "header", "name": "Authorization",
                          "description": "token YOUR_JUPYTER_TOKEN"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "_xsrf",
                           "description": "a logged-in browser; writes need the _xsrf token too"}},
        },
    }
