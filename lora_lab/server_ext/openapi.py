"""The OpenAPI 3 description of the REST API, served at ``{base_url}lora-lab/api/openapi.json``.

Written by hand next to the handlers, with each parameter's constraints (patterns, ranges,
enums: read from the core where the core declares them) and every status each route returns.
Tests check that it lists exactly the registered routes and methods, and a property-based fuzzer
(tests/test_api_fuzz.py) checks the server against it: no 5xx, no valid request refused, no
status it does not list.
"""
from __future__ import annotations

from typing import Any

from .. import __version__
from ..devices import visible_devices
from ..jobs import LORA_CHOICES
from . import openapi_schemas as schemas
from .openapi_schemas import BOOL, INT, OBJECT, STR
from .services import Settings

ERROR_CODES = {400: "Bad input: the detail says what was wrong and what to do",
               403: "Not authenticated (token or cookie + _xsrf)",
               404: "No such dataset, image, job or file (a name too long for the file system "
                    "names nothing either)",
               409: "Conflicts with what exists (a taken name, a job that already ended, an "
                    "undo over newer edits)",
               412: "The caption changed since the ETag in If-Match was read; nothing was written",
               413: "The upload is larger than LoraLabApp.max_upload_mb",
               503: "The caption model cannot load or answer, or the Ray cluster a job asks for is "
                    "not configured, installed or reachable",
               507: "The workspace's disk is full, or too small for the model asked for"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _param(name: str, where: str, schema: dict[str, Any], text: str = "") -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path", "description": text,
            "schema": schema}


def _int(lo: int, hi: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": lo, "maximum": hi}


NAME = _param("name", "path", schemas.name())
FILE = _param("file", "path", {"type": "string", "pattern": schemas.FILE_PATTERN},
              "image file name in the dataset (.jpg, .jpeg, .png, .webp or .bmp)")
JOB = _param("job_id", "path", {"type": "string", "pattern": schemas.JOB_ID_PATTERN},
             "job id, like 20261123-101500123-train-1a2b3c")
IMAGE = {"content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}}
ANY_FILE = {"content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}}
NOT_MODIFIED = {"304": {"description": "Not modified since the ETag in If-None-Match"}}


def _op(summary: str, *, params: tuple = (), body: dict | None = None, ok: tuple[int, ...] = (200,),
        result: dict[str, Any] | None = None, errors: tuple[int, ...] = (400, 404),
        content: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
        body_required: bool = True) -> dict[str, Any]:
    responses: dict[str, Any] = {str(code): {"description": "OK", **(content or _json(result or OBJECT))}
                                 for code in ok}
    responses.update(extra or {})
    for code in sorted((403, *errors)):
        responses[str(code)] = {"description": ERROR_CODES[code], **_json(_ref("Error"))}
    op: dict[str, Any] = {"summary": summary, "parameters": list(params), "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": body_required, **_json(body)}
    return op


def _socket(args: str, *errors: int) -> dict[str, Any]:
    """The answers of a WebSocket route to its upgrade request."""
    return {"101": {"description": "Switching to the WebSocket protocol"},
            "400": {"description": f"Not a WebSocket upgrade request, or a bad {args}"},
            **{str(code): {"description": ERROR_CODES[code]} for code in (403, *errors)}}


def _opt(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional body field: null means the default, as leaving it out does (an enum lists
    null too, as OpenAPI 3.0.3 wants)."""
    extra = {"enum": [*schema["enum"], None]} if "enum" in schema else {}
    return {**schema, "nullable": True, **extra}


def _obj(required: tuple[str, ...] = (), closed: bool = False, **props: Any) -> dict[str, Any]:
    schema = {"type": "object", "required": list(required), "properties": props}
    return {**schema, "additionalProperties": False} if closed else schema


SORTS = ("file", "pixels", "aspect", "bytes", "caption", "modified")


def _datasets_post() -> dict[str, Any]:
    op = _op("Create a dataset NAME, or with add=true add to it: from a zip or folder inside the "
             "workspace (JSON {source}) or from a zip sent as the body (streamed to disk)",
             params=(_param("name", "query", schemas.name(), "the dataset to create or add to"),
                     _param("add", "query", BOOL, "add the images to an existing dataset")),
             ok=(200, 201), result=_ref("IngestReport"), errors=(400, 404, 409, 413, 507))
    op["parameters"][0]["required"] = True
    source = schemas.rel_path("a zip or folder inside the workspace, relative to its root, else "
                              "relative to the Jupyter root (an absolute path inside either, or "
                              "inside one of the server's ingest roots, works too; see GET health)")
    op["requestBody"] = {"required": True, "content": {
        "application/json": {"schema": _obj(("source",), closed=True, source=source)},
        "application/zip": {"schema": {"type": "string", "format": "binary"}}}}
    return op


def _paths(settings: Settings) -> dict[str, dict[str, Any]]:
    page = (NAME, _param("offset", "query", _int(0, 10**9)), _param("limit", "query", _int(1, 1000)),
            _param("q", "query", STR, "text in the file name or caption"),
            _param("tag", "query", STR, "one of the caption's comma-separated tags, exactly"),
            _param("captioned", "query", BOOL),
            _param("truncated", "query", BOOL, "only captions the caption model cut off at its "
                   "token limit (true), or none of them (false)"),
            _param("shape", "query", {"enum": ["portrait", "landscape", "square"]}),
            _param("min_side", "query", _int(0, 10**6), "shortest side at least this many pixels"),
            _param("duplicates", "query", BOOL, "only near-duplicates, grouped"),
            _param("sort", "query", {"enum": [*SORTS, *("-" + s for s in SORTS)]},
                   "a leading - reverses"))
    after = _param("after", "query", _int(0, 10**12), "the last event number already seen")
    train = _obj(("kind", "params"), closed=True, kind={"enum": ["train"]},
                 executor=schemas.executor(), params=_obj(
        ("config",), closed=True, config=schemas.train_config(),
        gpus={"type": "integer", "minimum": 1, "maximum": visible_devices()[0],
              "description": "data-parallel processes: up to this machine's GPUs (CPU cores on "
                             "a machine without one)"}))
    caption = _obj(("kind", "params"), closed=True, kind={"enum": ["caption"]},
                   executor=schemas.executor(),
                   params=schemas.caption_job(settings.allowed_caption_servers))
    return {
        "/health": {"get": _op("The server extension's version and settings, and where the "
                               "Jupyter file browser's root and the workspace are",
                               result=_ref("Health"), errors=())},
        "/doctor": {"get": _op("What this box can do, as `lora-lab doctor` says it: one line per "
                               "check (GPU, torch CUDA, bf16, llama.cpp GPU offload, disk, models, "
                               "server extension), each ok, warn or fail, with the fix",
                               result=_ref("Doctor"), errors=())},
        "/openapi.json": {"get": _op("This document", errors=())},
        "/datasets": {"get": _op("Every dataset with its image and caption counts", errors=()),
                      "post": _datasets_post()},
        "/datasets/{name}": {"get": _op("Stats: counts, captions, sizes per bucket, tags",
                                        params=(NAME,))},
        "/datasets/{name}/images": {"get": _op("A page of images, filtered and sorted",
                                               result=_ref("ImagePage"), params=page)},
        "/datasets/{name}/images/{file}": {"get": _op(
            "The image, or with ?thumb=SIZE its JPEG thumbnail", content=IMAGE, extra=NOT_MODIFIED,
            params=(NAME, FILE, _param("thumb", "query", _int(32, 1024), "thumbnail size")))},
        "/datasets/{name}/captions": {"post": _op(
            "Bulk caption edit as one undo step (every image, the files named, or those "
            "matching q), or {\"undo\": true}: revert the newest edit", params=(NAME,),
            errors=(400, 404, 409), body={"oneOf": [
                _obj(("ops",), closed=True, ops={"type": "array", "minItems": 1,
                                                 "items": schemas.caption_ops()},
                     files=_opt({"type": "array", "items": FILE["schema"]}), q=_opt(STR),
                     undo=_opt({"type": "boolean", "enum": [False]})),
                _obj(("undo",), closed=True, undo={"type": "boolean", "enum": [True]})]})},
        "/datasets/{name}/captions/{file}": {
            "get": _op("One caption; the ETag header is its version", params=(NAME, FILE),
                       result=_ref("Caption")),
            "put": _op("Replace one caption; If-Match: ETAG refuses a write over a newer version",
                       params=(NAME, FILE, _param("If-Match", "header", STR,
                                                  "the ETag read before editing")),
                       body=_obj(("caption",), closed=True, caption=STR), result=_ref("Caption"),
                       errors=(400, 404, 412)),
        },
        "/datasets/{name}/export": {"post": _op(
            "Export for trainers: kohya folder + dataset.toml, or zip", params=(NAME,), ok=(201,),
            errors=(400, 404, 409), body_required=False, body=_obj(
                closed=True, format=_opt({"type": "string", "enum": ["kohya", "zip"]}),
                repeats=_opt(_int(1, 10_000)),
                trigger=_opt(schemas.name("trigger word (empty: the dataset name)", empty_ok=True)),
                family=_opt({"type": "string", "enum": ["sd15", "sdxl"]}),
                out=_opt(schemas.rel_path("where to write it, relative to the workspace's "
                                          "exports/ (empty: NAME-FORMAT[.zip]); it must not "
                                          "exist yet",
                                          empty_ok=True))))},
        "/jobs": {
            "get": _op("The jobs, newest first: `limit` of them from `offset` on (all without "
                       "`limit`), and how many there are", result=_ref("JobPage"), errors=(400,),
                       params=(_param("offset", "query", _int(0, 10**9)),
                               _param("limit", "query", _int(1, 1000), "absent: every job"))),
            "post": _op("Submit a caption or training job; every path in it must lie inside the "
                        "workspace, and a caption server must be an allowed one. A job bound to "
                        "fail at its start is refused before its record exists: a dataset "
                        "without images, uncaptioned images and no trigger word, a base or "
                        "caption model that is missing or of an unknown family (400, every "
                        "problem in `problems`), a LoRA name another run holds (409), the Ray "
                        "cluster `executor` ray asks for not there (503)", ok=(202,),
                        result=_ref("Accepted"), errors=(400, 404, 409, 503),
                        body={"oneOf": [caption, train]}),
        },
        "/jobs/{job_id}": {
            "get": _op("The job's status", params=(JOB,), result=_ref("Job")),
            "delete": _op("Delete an ended job's folder (checkpoints, samples, logs); with "
                          "lora=remove the LoRA file it wrote too, when it lies inside the "
                          "workspace and no other job wrote it, and its intermediate LoRA files",
                          params=(JOB, _param("lora", "query", {"enum": list(LORA_CHOICES)},
                                              "the job's LoRA file: keep (default) or remove")),
                          result=_ref("JobDeleted"), errors=(400, 404, 409))},
        "/jobs/{job_id}/cancel": {"post": _op("Stop a queued or running job", params=(JOB,),
                                              result=_ref("Job"), errors=(400, 404, 409))},
        "/jobs/{job_id}/resume": {"post": _op(
            "Start an ended job again where it stopped, on the executor it ran on (a Ray job: "
            "503 when its cluster is not there)", ok=(202,), params=(JOB,),
            result=_ref("Accepted"), errors=(400, 404, 409, 503))},
        "/jobs/{job_id}/events": {"get": _op(
            "The events after number `after`, each numbered `n`", params=(JOB, after))},
        "/jobs/{job_id}/files": {"get": _op(
            "The job's files: samples, checkpoints, LoRA files, log.txt", params=(JOB,))},
        "/jobs/{job_id}/files/{path}": {"get": _op(
            "One file of the job, or one of its LoRA files by name (as listed in its `loras`, "
            "when inside the workspace), as an attachment", content=ANY_FILE, extra=NOT_MODIFIED,
            params=(JOB, _param("path", "path", schemas.rel_path(
                "relative path inside the job folder, e.g. samples/step-000100.png"))))},
        "/jobs/{job_id}/stream": {"get": {
            "summary": "WebSocket: the job's events (with `n`) and log lines (`{type: log_line, "
                       "line, offset}`) live, then `{type: end}`; reconnect with after=n&"
                       "log_offset=offset",
            "parameters": [JOB, after, _param("log_offset", "query", _int(0, 10**15),
                                              "the last log offset already seen")],
            "responses": _socket("after / log_offset / job id", 404)}},
        "/stream": {"get": {
            "summary": "WebSocket, the workspace feed: at open {type: jobs, jobs (the newest "
                       "`limit`), total}, {type: datasets, datasets}, {type: gpus, ...GET gpus}; "
                       "then only changes: {type: job, job, total}, {type: removed, id, total}, "
                       "datasets and gpus again (jobs checked every second, the rest every two)",
            "parameters": [_param("limit", "query", _int(1, 1000), "jobs in the opening "
                                                                   "message (default 50)")],
            "responses": _socket("limit")}},
        "/gpus": {"get": _op("Each GPU's name, utilization and memory now (NVIDIA's management "
                             "library); none on a box without an NVIDIA GPU or driver",
                             result=_ref("Gpus"), errors=())},
        "/presets": {"get": _op("The training presets, each with the whole config it starts "
                                "from (base model and dataset source left empty)",
                                result=_ref("Presets"), errors=())},
        "/loras/inspect": {"get": _op(
            "What a LoRA file inside the workspace holds, as `lora-lab lora inspect --json`: format, "
            "family, ranks, alphas, modules by kind (groups), training metadata, tags, hashes",
            params=({**_param("path", "query", schemas.rel_path("the .safetensors file, relative to "
                                                                "the workspace")), "required": True},))},
        "/loras/convert": {"post": _op(
            "Write a LoRA file inside the workspace in another key layout (kohya, diffusers, "
            "comfyui) as `out` (inside the workspace too), losslessly; an existing `out` only "
            "with force (else 409)", errors=(400, 404, 409),
            body=_obj(("path", "to", "out"), closed=True,
                      path=schemas.rel_path("the LoRA file to convert (never modified)"),
                      to={"enum": ["kohya", "diffusers", "comfyui"]},
                      out=schemas.rel_path("the new .safetensors file"),
                      family=_opt({"type": "string", "description": "for a file that does not say it"}),
                      force=_opt({"type": "boolean"})))},
        "/kit": {"post": _op("Copy the notebook kit (keeping notebooks edited there) into the "
                             "workspace's notebooks/ when the Jupyter root holds the workspace, "
                             "else into the root's lora-lab-notebooks/", result=_ref("Kit"),
                             errors=(400, 409))},
        "/models": {"get": _op("The model catalogue, each model's state in the workspace's models/ "
                               "(present, partial: a pull to resume, absent) and size on disk, "
                               "the other folders and files there, and the free space",
                               result=_ref("Models"), errors=())},
        "/models/pull": {"post": _op(
            "Pull a catalogue model, a whole Hub repo (ORG/NAME, `include` globs to choose files) "
            "or one file (ORG/NAME/PATH) into models/ as a background job (kind pull; progress, "
            "cancel and resume are the job's). Refused before the job exists: an unknown name "
            "(404, with the closest ones), the Hub unreachable or a gated repo without the "
            "server's HF_TOKEN (400), too little disk (507), a pull into the same folder running "
            "or a different file in the way (409), no Ray cluster for `executor` ray (503)",
            ok=(202,), result=_ref("Accepted"), errors=(400, 404, 409, 503, 507),
            body=_obj(("model",), closed=True, model=schemas.MODEL_SPEC,
                      name=_opt(schemas.name("the folder under models/ (default: the catalogue "
                                             "name, or the repo's name)")),
                      include=_opt({"type": "array", "items": {"type": "string", "minLength": 1},
                                    "description": "with ORG/NAME: only the files matching"}),
                      executor=schemas.executor()))},
        "/caption": {"post": _op(
            "Caption one image now with the resident caption model (undoable)",
            errors=(400, 404, 503), result=_ref("Captioned"),
            body=_obj(("dataset", "file"), closed=True, dataset=schemas.name(), file=FILE["schema"],
                      preset=_opt({"type": "string", "enum": ["tags", "short", "detailed"]}),
                      prompt=_opt({"type": "string", "pattern": schemas.PROMPT_PATTERN,
                                   "description": schemas.PROMPT_TEXT}),
                      trigger=_opt(STR), max_words=_opt({"type": "integer", "minimum": 1}),
                      mode=_opt({"type": "string", "enum": ["skip", "overwrite", "append",
                                                            "prepend"]})))},
        "/suggest": {"post": _op(
            "The config assistant: a training config for the dataset from a request in words, "
            "by the server's caption model (a local GGUF, its answer held to the config's schema "
            "by a grammar) checked and filled in by rules from the dataset, the base model's "
            "family and the GPU; each suggested value with its reason, and the config as TOML. "
            "The dataset must have images (400 otherwise); 503 when the model cannot load",
            errors=(400, 404, 503), result=_ref("Suggestion"),
            body=_obj(("text", "dataset"), closed=True,
                      text={"type": "string", "maxLength": 2000,
                            "description": 'what the user wants, e.g. "25 photos of my dog, SDXL"'},
                      dataset=schemas.name(), seed=_opt(_int(0, 2**32 - 1))))},
    }


NULL_STR, NULL_NUM = {"type": "string", "nullable": True}, {"type": "number", "nullable": True}
NULL_INT = {"type": "integer", "nullable": True}
STRS = {"type": "array", "items": STR}
SCHEMAS = {
    "Error": _obj(("error", "detail"), error=STR, detail=STR, problems={"type": "array", "items": STR}),
    "Caption": _obj(("file", "caption", "etag"), file=STR, caption=NULL_STR, etag=STR),
    "Captioned": _obj(("dataset", "file", "caption", "etag", "captioned"), dataset=STR, file=STR,
                      caption=NULL_STR, etag=STR, captioned=BOOL, retried=BOOL, truncated=BOOL,
                      model=NULL_STR, seconds=NULL_NUM),
    "ImagePage": _obj(("items", "total", "offset", "limit"), total=INT, offset=INT, limit=INT,
                      items={"type": "array", "items": _obj(
                          file=STR, caption=NULL_STR, width=INT, height=INT,
                          caption_truncated=BOOL, etag=STR, url=STR, thumbnail=STR)}),
    "IngestReport": _obj(dataset=STR, added={"type": "array", "items": OBJECT},
                         skipped={"type": "array", "items": OBJECT},
                         duplicates={"type": "array", "items": OBJECT},
                         near_duplicates={"type": "array", "items": OBJECT}),
    "Job": _obj(("id", "kind", "state", "browse"), id=STR, kind=STR,
                state={"enum": ["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]},
                phase=NULL_STR, progress=NULL_NUM, error=NULL_STR, bytes=INT,
                browse=_obj(("dir", "output"), closed=True, dir=NULL_STR, output=NULL_STR),
                loras={"type": "array", "items": _obj(
                    ("path", "step", "bytes"), path=STR, step=NULL_INT, bytes=NULL_INT,
                    missing=BOOL)},
                dataset=NULL_STR, lora_name=NULL_STR, started_at=NULL_NUM, duration_s=NULL_NUM,
                reason={**NULL_STR, "description": "the first line of why it failed, or why a "
                        "queued job waits (a Ray job waiting for the cluster's GPUs)"},
                **schemas.JOB_WHERE,
                # a train job with [validation]: its best step by validation loss, and that LoRA
                best_step=NULL_INT, best_val_loss=NULL_NUM, best_lora=NULL_STR),
    "JobDeleted": _obj(("id", "bytes", "lora", "lora_removed", "lora_kept"), id=STR, bytes=INT,
                       lora=NULL_STR, lora_removed=BOOL, lora_kept=NULL_STR,
                       step_loras_removed=INT),
    "JobPage": _obj(("jobs", "total", "offset", "limit"), jobs={"type": "array", "items": _ref("Job")},
                    total=INT, offset=INT, limit=NULL_INT),
    "Health": _obj(("ok", "version", "workspace", "contents"), ok=BOOL, version=STR, workspace=STR,
                   executor={**schemas.JOB_WHERE["executor"], "description": "where a job runs "
                             "when its request names none (LoraLabApp.executor)"},
                   contents=_obj(("root", "workspace"), root=NULL_STR, workspace=NULL_STR)),
    "Doctor": _obj(("checks",), checks={"type": "array", "items": _obj(
        ("check", "status", "found", "fix"), check=STR, status={"enum": ["ok", "warn", "fail"]},
        found=STR, fix=NULL_STR)}),
    "Gpus": _obj(("gpus", "source"), source={"enum": ["nvml", "none"]}, gpus={"type": "array", "items": _obj(
        ("index", "name", "utilization", "memory_used_mb", "memory_total_mb"), index=INT,
        name=STR, utilization=NULL_INT, memory_used_mb=INT, memory_total_mb=INT)}),
    "Presets": _obj(("presets",), presets={"type": "array", "items": _obj(
        ("name", "description", "family", "config"), name=STR, label=STR, description=STR,
        family=STR, config=OBJECT)}),
    "Kit": _obj(("dest", "copied", "updated", "unchanged", "kept", "overwritten", "path", "open"),
                dest=STR, copied=STRS, updated=STRS, unchanged=STRS, kept=STRS, overwritten=STRS,
                path=NULL_STR, open=NULL_STR),
    "Accepted": _obj(("id", "job"), id=STR, job=_ref("Job")),
    "Models": _obj(("folder", "free_bytes", "catalogue", "other"), folder=STR, free_bytes=INT,
                   catalogue={"type": "array", "items": _obj(
                       ("name", "kind", "repo", "gated", "size_gb", "state", "bytes"), name=STR,
                       title=STR, kind={"enum": ["caption", "base", "adapter"]}, family=NULL_STR,
                       repo=STR, gated=BOOL, licence=STR, size_gb={"type": "number"},
                       state={"enum": ["present", "partial", "absent"]}, path=NULL_STR, bytes=INT)},
                   other={"type": "array", "items": _obj(
                       ("name", "path", "folder", "bytes"), name=STR, path=STR, folder=BOOL,
                       bytes=INT, repo=NULL_STR, complete={"type": "boolean", "nullable": True})}),
    "Suggestion": _obj(("config", "preset", "reasons", "total_steps", "toml"), config=OBJECT,
                       preset=STR, total_steps=INT, steps=STR, toml=STR, model=STR,
                       seconds={"type": "number"}, facts=OBJECT, answer=OBJECT,
                       reasons={"type": "object", "additionalProperties": _obj(
                           ("value", "reason", "source"), value={}, reason=STR,
                           source={"enum": ["model", "rule", "preset"]})}),
}


def openapi_document(base_url: str = "/", settings: Settings | None = None) -> dict[str, Any]:
    """The whole document, its server URL under ``base_url``; what depends on the server's
    settings (the allowed caption servers) is stated as ``settings`` say."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "lora_lab", "version": __version__,
                 "description": "Datasets, captions and training jobs of a lora_lab workspace. "
                                "Errors are {\"error\", \"detail\"}; every route needs Jupyter "
                                "auth; a method a route lacks is a 405 with an Allow header."},
        "servers": [{"url": base_url.rstrip("/") + "/lora-lab/api"}],
        "security": [{"token": []}, {"cookie": []}],
        "paths": _paths(settings or Settings()),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "token": {"type": "apiKey", "in": "header", "name": "Authorization",
                          "description": "token YOUR_JUPYTER_TOKEN"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "_xsrf",
                           "description": "a logged-in browser; writes need the _xsrf token too"}},
        },
    }
