"""Caption text and the bulk operations on it.

A caption is either free text or comma-separated tags (booru style); the tag operations split
on commas, and :func:`caption_tags` tells the two apart for display (prose is not shown as
tags). Each operation is a pure function of one caption, described by a dict such as
``{"op": "replace", "old": "dog", "new": "cat"}`` so that the CLI, REST and panels share them.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ..errors import LoraLabError


def split_tags(caption: str) -> list[str]:
    """Tags of a caption: comma-separated, whitespace collapsed, empties dropped."""
    return [t for t in (" ".join(p.split()) for p in caption.split(",")) if t]


# A sentence ends at . ! or ? before a space or the end (so "1.5" does not end one).
SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
PROSE_WORDS = 6  # words per comma-part from which a caption reads as prose, periods or not
SENTENCE_WORDS = 3  # ... and from which it does when it has a sentence end


def is_sentence_caption(caption: str) -> bool:
    """Whether a caption is prose ("A dog sits on the grass. It looks up.") rather than tags
    ("dog, grass, looking up"): many words per comma-part, and sentence ends. Tags average one
    to three words; a sentence with commas in it still averages more."""
    return _is_prose(caption, split_tags(caption))


def caption_tags(caption: str | None) -> list[str]:
    """The tags a caption shows as tags: its comma-separated parts, none for prose."""
    if not caption:
        return []
    tags = split_tags(caption)
    return [] if _is_prose(caption, tags) else tags


def _is_prose(caption: str, parts: list[str]) -> bool:
    if not parts:
        return False
    words = sum(p.count(" ") + 1 for p in parts) / len(parts)  # parts' whitespace is collapsed
    return words >= PROSE_WORDS or (words >= SENTENCE_WORDS and SENTENCE_END.search(caption) is not None)


def join_tags(tags: list[str]) -> str:
    return ", ".join(tags)


def _dedupe(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(tags))


def prefix(caption: str, text: str) -> str:
    """Put ``text`` (a trigger word) first, once: moved to the front if it is already a tag."""
    tags = split_tags(caption)
    return join_tags([text] + [t for t in tags if t != text])


def replace(caption: str, old: str, new: str) -> str:
    return caption.replace(old, new)


def regex_replace(caption: str, pattern: str, new: str) -> str:
    return re.sub(pattern, new, caption)


def add_tags(caption: str, tags: list[str]) -> str:
    return join_tags(_dedupe(split_tags(caption) + tags))


def remove_tags(caption: str, tags: list[str]) -> str:
    drop = set(tags)
    return join_tags([t for t in split_tags(caption) if t not in drop])


def dedupe_tags(caption: str) -> str:
    return join_tags(_dedupe(split_tags(caption)))


def normalize(caption: str) -> str:
    """Tags separated by ', ', no empty tags, no doubled whitespace."""
    return join_tags(split_tags(caption))


# op name -> (function, the parameters it takes)
OPS: dict[str, tuple[Callable[..., str], tuple[str, ...]]] = {
    "prefix": (prefix, ("text",)),
    "replace": (replace, ("old", "new")),
    "regex": (regex_replace, ("pattern", "new")),
    "add_tags": (add_tags, ("tags",)),
    "remove_tags": (remove_tags, ("tags",)),
    "dedupe": (dedupe_tags, ()),
    "normalize": (normalize, ()),
}


def check_ops(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate operation dicts before any caption is touched; return them normalised."""
    if not ops:
        raise LoraLabError("no caption operation given")
    checked = []
    for op in ops:
        name = op.get("op") if isinstance(op, dict) else None
        if not isinstance(name, str) or name not in OPS:
            raise LoraLabError(f"unknown caption operation {name!r}; known: {', '.join(OPS)}")
        params = OPS[name][1]
        missing = [p for p in params if p not in op]
        if missing:
            raise LoraLabError(f"caption operation {name!r} needs {', '.join(missing)}")
        clean = {"op": name, **{p: op[p] for p in params}}
        if "tags" in clean:
            tags = clean["tags"]
            if not isinstance(tags, (str, list, tuple)) or not all(isinstance(t, str) for t in tags):
                raise LoraLabError(f"caption operation {name!r}: tags must be text or a list of texts")
            tags = split_tags(tags) if isinstance(tags, str) else [t.strip() for t in tags]
            if not tags:
                raise LoraLabError(f"caption operation {name!r} needs at least one tag")
            clean["tags"] = tags
        for p in ("text", "old", "new", "pattern"):
            if p in clean and not isinstance(clean[p], str):
                raise LoraLabError(f"caption operation {name!r}: {p} must be text")
        if name == "prefix" and not clean["text"].strip():
            raise LoraLabError("caption operation 'prefix' needs a non-empty text")
        if name in ("replace",) and not clean["old"]:
            raise LoraLabError("caption operation 'replace' needs a non-empty old text")
        if name == "regex":
            try:  # the replacement is parsed too: a bad \H or group number fails here, not mid-edit
                re.compile(clean["pattern"]).sub(clean["new"], "")
            except re.error as e:
                raise LoraLabError(f"invalid regular expression {clean['pattern']!r} or replacement "
                                   f"{clean['new']!r}: {e}") from None
        checked.append(clean)
    return checked


def apply_ops(caption: str, ops: list[dict[str, Any]]) -> str:
    """Apply checked operations in order."""
    for op in ops:
        fn, params = OPS[op["op"]]
        caption = fn(caption, *(op[p] for p in params))
    return caption


def describe(ops: list[dict[str, Any]]) -> str:
    """A short human label for a list of operations, for the journal and reports."""
    return "; ".join(
        op["op"] + "".join(f" {op[p]!r}" for p in OPS[op["op"]][1]) for op in ops
    )
