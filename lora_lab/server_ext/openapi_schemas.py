"""JSON schemas of what the REST API accepts, read from the core's own rules where they are
declared (the training config's sections, the caption operations, job parameters), so the
OpenAPI document cannot drift from what the server checks.

Patterns are anchored and end in ``(?!\\n)$``: Python's ``$`` also matches before a final
newline, which the server's full matches refuse.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal, get_args, get_origin, get_type_hints

from ..jobs.executors import EXECUTORS

STR, INT, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
OBJECT = {"type": "object"}


def anchored(pattern: str) -> str:
    return f"^(?:{pattern})(?!\\n)$"


# What Workspace.check_name accepts (plus: at most 255 bytes in UTF-8)
NAME = r"[^\W_](?:[\w.\- ]{0,98}[\w-])?"
NAME_PATTERN = anchored(NAME)
# Dataset.image_path: one file name, not hidden; any other extension than an image's is a 404
FILE_PATTERN = anchored(r"[^/.\x00][^/\x00]{0,254}")
JOB_ID_PATTERN = anchored(r"[0-9]{8}-[0-9]{6}(?:[0-9]{3})?-[a-z]+-[0-9a-f]{6}")
# A path relative to the workspace: no empty, '.' or '..' segment, no leading '/' or '~'
REL_PATH = r"(?![~/])(?!(?:[^/]*/)*\.\.?(?:/|$))(?:[^/\x00]{1,255}/+){0,15}[^/\x00]{1,255}/*"
REL_PATH_PATTERN = anchored(REL_PATH)
# captioning.prompts.check_template: only {trigger}, {filename}, {existing}; {{ and }} escape
PROMPT_PATTERN = anchored(r"(?:[^{}]|\{\{|\}\}|\{(?:trigger|filename|existing)\})*")


def executor() -> dict[str, Any]:
    """Where a submitted job runs (jobs.executors.EXECUTORS); null or absent: the server's default."""
    return {"type": "string", "nullable": True, "enum": [*EXECUTORS, None],
            "description": "where the job runs: local (a process on this box) or ray (the Ray "
                           "cluster); absent or null: the server's default (LoraLabApp.executor, "
                           "GET health says it). Ray without a reachable cluster is refused (400)"}


# Where a job runs, in the job views: the executor's handle (null for a local job)
JOB_WHERE = {
    "executor": {"enum": list(EXECUTORS), "description": "where the job runs"},
    "handle": {"type": "object", "nullable": True, "description": "a Ray job's cluster (its Jobs "
               "API address) and submission id (null until the job is submitted to Ray)",
               "properties": {"address": STR, "submission_id": {"type": "string", "nullable": True}}},
}


# What `lora-lab models pull` takes: a catalogue name, a Hub repo ORG/NAME, or ORG/NAME/PATH
MODEL_SPEC = {"type": "string", "pattern": anchored(r"[^/\s]+(?:/[^/\s]+(?:/[^\x00]+)?)?"),
              "maxLength": 1000, "description": "a catalogue name (GET models lists them), a Hub "
              "repo as ORG/NAME, or one file of it as ORG/NAME/PATH"}


def name(what: str = "dataset name", empty_ok: bool = False) -> dict[str, Any]:
    """A dataset name (or a trigger word: the same rule); ``empty_ok``: "" means the default."""
    return {"type": "string", "pattern": anchored(f"(?:{NAME})?" if empty_ok else NAME), "maxLength": 100,
            "description": f"{what}: up to 100 letters, digits, spaces, '.', '-' or '_' (255 "
                           "bytes in UTF-8 at most), starting with a letter or digit, not ending "
                           "in a space or '.'"}


def rel_path(text: str, empty_ok: bool = False) -> dict[str, Any]:
    """A path relative to the workspace; ``empty_ok``: "" means the default."""
    return {"type": "string", "pattern": anchored(f"(?:{REL_PATH})?" if empty_ok else REL_PATH),
            "maxLength": 1024, "description": text}


# -- training config ---------------------------------------------------------------------------------
TRAIN_PATHS = (("model", "base"), ("model", "vae"), ("model", "config"), ("dataset", "source"),
               ("save", "output_dir"))


def _number(hint: type, rule: Any) -> dict[str, Any]:
    s: dict[str, Any] = {"type": "integer" if hint is int else "number"}
    if rule.above is not None:
        s.update(minimum=rule.above, exclusiveMinimum=True)
    elif rule.lo is not None:
        s["minimum"] = rule.lo
    if rule.hi is not None:
        s["maximum"] = rule.hi
    if rule.multiple:
        s["multipleOf"] = rule.multiple
    if rule.zero:  # 0 means "auto" or "off" besides the range
        return {"anyOf": [{"type": s["type"], "enum": [0]}, s]}
    return s


def _field(hint: Any, f: dataclasses.Field) -> dict[str, Any]:
    rule = f.metadata["rule"]
    if get_origin(hint) is Literal:
        s: dict[str, Any] = {"enum": list(get_args(hint))}
    elif hint is bool:
        s = dict(BOOL)
    elif hint in (int, float):
        s = _number(hint, rule)
    elif hint is str:
        s = dict(STR)
        if rule.pattern:
            s["pattern"] = anchored(rule.pattern)
        if rule.nonempty:
            s["minLength"] = 1
    else:  # tuple[str, ...]
        s = {"type": "array", "items": STR}
    s["description"] = f.metadata["doc"]
    if f.default is not dataclasses.MISSING:
        s["default"] = list(f.default) if isinstance(f.default, tuple) else f.default
    return s


def train_config() -> dict[str, Any]:
    """The TrainConfig as JSON, from its sections' declared types, limits and docs. Rules
    between fields (min_bucket <= max_bucket, ...) are the config validator's: 400 naming them."""
    from ..training.config import TrainConfig

    tables = {}
    for table, cls in get_type_hints(TrainConfig).items():
        hints = get_type_hints(cls)
        fields = dataclasses.fields(cls)
        tables[table] = {"type": "object", "additionalProperties": False,
                         "required": [f.name for f in fields if f.default is dataclasses.MISSING],
                         "properties": {f.name: _field(hints[f.name], f) for f in fields}}
    for table, key in TRAIN_PATHS:  # a request names paths inside the workspace only
        prop = tables[table]["properties"][key]
        empty_ok = key != "base" and key != "source"
        tables[table]["properties"][key] = {**prop, **rel_path(prop["description"], empty_ok)}
    paths = ("model.base (a path or a Hub id like org/name), model.vae, model.config, "
             "dataset.source (a dataset name, or a folder) and save.output_dir")
    return {"type": "object", "additionalProperties": False, "required": ["model", "dataset"],
            "properties": tables,
            "description": f"A training config. {paths} resolve inside the workspace (relative "
                           "ones from its root) or the job is refused; a path or dataset that "
                           "does not exist is a 404."}


# -- caption jobs and caption operations --------------------------------------------------------------
def caption_job(servers: tuple[str, ...]) -> dict[str, Any]:
    """A caption job's params (captioning.job.PARAMS); ``server`` only as the settings allow."""
    from ..captioning.batch import MODES
    from ..captioning.job import HANDLERS
    from ..captioning.prompts import PRESETS

    nullable_str = {"type": "string", "nullable": True}
    return {"type": "object", "additionalProperties": False, "required": ["dataset"], "properties": {
        "dataset": name(),
        "model": {**rel_path("caption model GGUF inside the workspace (default: the server's)"),
                  "nullable": True},
        "mmproj": {**rel_path("its vision projector GGUF inside the workspace"), "nullable": True},
        "handler": {"enum": list(HANDLERS)},
        "server": caption_server(servers),
        "concurrency": {"type": "integer", "minimum": 1},
        "preset": {"type": "string", "enum": [*PRESETS, None], "nullable": True},
        "prompt": {**nullable_str, "pattern": PROMPT_PATTERN, "description": PROMPT_TEXT},
        "mode": {"enum": list(MODES)}, "trigger": STR,
        "max_words": {"type": "integer", "minimum": 1, "nullable": True},
        "max_tokens": {"type": "integer", "minimum": 1},
        "files": {"type": "array", "nullable": True,
                  "items": {"type": "string", "pattern": FILE_PATTERN}},
        "gpus": {"type": "integer", "minimum": 1,
                 "description": "above 1 only on a Ray cluster (executor ray): one captioner (one "
                                "model) per GPU; a job on this box, or through caption servers, "
                                "takes 1 (400 otherwise)"}}}


def caption_server(servers: tuple[str, ...]) -> dict[str, Any]:
    if not servers:  # none allowed: the job captions with the server's own model
        return {"type": "string", "nullable": True, "enum": [None],
                "description": "no caption server is allowed here (LoraLabApp.allowed_caption_servers)"}
    under = "|".join(re.escape(s.rstrip("/")) for s in servers)
    url = {"type": "string", "pattern": anchored(f"(?:{under})(?:/[\\w-]+)*/?")}
    # several servers share one run, each named once
    return {"oneOf": [{**url, "nullable": True}, {"type": "array", "minItems": 1, "uniqueItems": True,
                                                  "items": url}],
            "description": "an OpenAI-compatible caption server, or a list of them, under the URLs "
                           "LoraLabApp.allowed_caption_servers lists: " + ", ".join(servers)}


PROMPT_TEXT = ("a prompt template: {trigger}, {filename} and {existing} are filled in, {{ and }} "
               "are literal braces; a sentence naming an empty placeholder is left out, and a "
               "prompt left empty so is refused (400)")


def caption_ops() -> dict[str, Any]:
    """One bulk caption operation, as :func:`lora_lab.datasets.captions.check_ops` accepts it."""
    from ..datasets.captions import OPS

    text = {"type": "string", "minLength": 1}
    tags = {"anyOf": [{"type": "string", "pattern": "[^,\\s]"},
                      {"type": "array", "minItems": 1, "items": STR}]}
    params = {"text": {"type": "string", "pattern": "\\S"}, "old": text, "new": STR,
              "pattern": {"type": "string", "format": "regex"}, "tags": tags}
    # re.sub's replacement: escapes it knows; group references (\1, \g<name>) are accepted too
    # when the pattern has those groups, which a schema cannot say
    template = {"type": "string", "pattern": anchored(r"(?:[^\\]|\\(?:[^A-Za-z0-9]|[abfnrtv]|0))*")}
    ops = []
    for op, (_, needs) in OPS.items():
        props = {p: template if op == "regex" and p == "new" else params[p] for p in needs}
        ops.append({"type": "object", "required": ["op", *needs],
                    "properties": {"op": {"enum": [op]}, **props}})
    return {"oneOf": ops}
