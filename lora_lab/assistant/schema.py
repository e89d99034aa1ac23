"""What the assistant's model is asked to answer: a JSON schema over the config fields worth
suggesting, each as ``{"value": ..., "reason": "..."}``, built from the fields' own declarations
(type, choices, one-line doc, limits) in ``training/sections.py``.

llama.cpp turns the schema into a grammar, so every answer parses. Its converter honours
choices, string lengths and patterns but not number ranges, so the ranges are stated (for the
model to read) and enforced afterwards by the rules (:mod:`.rules`). Every string is bounded and
every number is at most a few dozen characters (the converter's own limit), so an answer has a
known maximum length and generation always ends, even from a model of random weights.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_args, get_origin, get_type_hints

from ..training.config import TrainConfig
from ..training.presets import PRESETS

REASON_CHARS = 60  # a reason is one short line
TRIGGER_PATTERN = r"[A-Za-z0-9_-]{0,24}"  # one token-like word: what users type before a prompt
# printable ASCII but '"' and '\': no escapes, so a reason's length in characters is its length
_REASON_PATTERN = rf"^[ !#-\[\]-~]{{0,{REASON_CHARS}}}$"

# answer key -> the config field it sets ("preset" picks a whole preset, family included)
FIELDS: dict[str, str] = {
    "preset": "",
    "resolution": "dataset.resolution",
    "repeats": "dataset.repeats",
    "trigger": "dataset.trigger",
    "caption_dropout": "dataset.caption_dropout",
    "flip": "dataset.flip",
    "rank": "network.rank",
    "alpha": "network.alpha",
    "lr": "train.lr",
    "optimizer": "train.optimizer",
    "scheduler": "train.scheduler",
    "batch_size": "train.batch_size",
    "epochs": "train.epochs",
    "max_steps": "train.max_steps",
}
_SECTIONS = get_type_hints(TrainConfig)


def declared(dotted: str) -> tuple[Any, dataclasses.Field]:
    """A config field's type hint and its dataclass field (doc and Rule in its metadata)."""
    table, key = dotted.split(".")
    section = _SECTIONS[table]
    return get_type_hints(section)[key], next(f for f in dataclasses.fields(section) if f.name == key)


def _value_schema(dotted: str) -> dict[str, Any]:
    if not dotted:
        return {"enum": list(PRESETS), "description": "the preset: model family and its defaults"}
    hint, f = declared(dotted)
    rule = f.metadata["rule"]
    if get_origin(hint) is Literal:
        schema: dict[str, Any] = {"enum": list(get_args(hint))}
    elif hint is bool:
        schema = {"type": "boolean"}
    elif hint is str:
        schema = {"type": "string", "pattern": f"^{TRIGGER_PATTERN}$"}
    else:
        schema = {"type": "integer" if hint is int else "number"}
        bounds = (("minimum", rule.lo), ("exclusiveMinimum", rule.above), ("maximum", rule.hi))
        schema.update({k: v for k, v in bounds if v is not None})
    return {**schema, "description": f.metadata["doc"]}


def answer_schema() -> dict[str, Any]:
    """The JSON schema of a whole answer: every key required, nothing else allowed."""
    reason = {"type": "string", "pattern": _REASON_PATTERN}
    props = {key: {"type": "object", "properties": {"value": _value_schema(dotted), "reason": reason},
                   "required": ["value", "reason"], "additionalProperties": False}
             for key, dotted in FIELDS.items()}
    return {"type": "object", "properties": props, "required": list(FIELDS), "additionalProperties": False}


def max_answer_tokens() -> int:
    """An upper bound on an answer's length in tokens (a token is at least one character): per
    field its key, the punctuation and optional spaces (60), a value (a number is at most 53
    characters in the grammar, a choice less) and the reason."""
    return 20 + len(FIELDS) * (60 + 60 + REASON_CHARS)
