"""Caption prompts: presets, templates, and turning a model's answer into a training caption.

A prompt is a template with three placeholders, ``{trigger}``, ``{filename}`` and
``{existing}``; a sentence of the template that names a placeholder with no value is left
out, so one preset reads naturally with and without a trigger word. The model's answer goes
through :func:`clean_caption` (chat debris, "The image shows", hedges, length, trigger word)
and :func:`merge_caption` (the batch modes) before it is written next to the image.
"""
from __future__ import annotations

import re
from string import Formatter

from ..datasets.captions import join_tags, prefix, split_tags
from ..errors import LoraLabError

PLACEHOLDERS = ("trigger", "filename", "existing")
MODES = ("skip", "overwrite", "append", "prepend")
STYLES = ("sentence", "tags")

# The model writes the trigger first itself, so clean_caption never has to cut it out of
# the middle of a sentence (which leaves "a photo of wearing a red dress").
_TRIGGER_FIRST = ('Put "{trigger}," first, as the name of the main subject, '
                  "and do not use that name again. ")
_DECISIVE = 'Be decisive: state what you see, never "appears", "seems" or "possibly". '

PRESETS: dict[str, str] = {
    "tags": (
        "List booru-style tags for this image, most important first: the subject and count "
        "(1girl, 1boy, solo, cat), hair, eyes, clothing and accessories, pose, expression and "
        "action, then the background and setting, lighting, colours, camera angle, and the art "
        "style or medium. "
        'Make "{trigger}" the first tag. '
        "Write lower-case tags separated by commas, only for what is clearly visible, and nothing "
        "else: no sentences, no numbering, no preamble."
    ),
    "short": (
        "Write a one-sentence caption of this image for training an image generator, under 25 "
        "words: the main subject, what they look like and wear, what they are doing, and where. "
        + _TRIGGER_FIRST + _DECISIVE +
        'No preamble: do not start with "The image shows" or "This is"; output only the caption.'
    ),
    "detailed": (
        "Write a detailed caption of this image for training an image generator, as one paragraph "
        "of about 60 words, most important first. "
        "Start with the main subject and the medium (photo, painting, 3D render, anime "
        "illustration), then describe their appearance, clothing, pose, expression and action, the "
        "setting and background, the lighting and colours, and the camera angle and framing. "
        + _TRIGGER_FIRST + _DECISIVE +
        'No preamble: do not start with "The image shows" or "This image depicts"; output only '
        "the caption, as plain text without markdown."
    ),
}
# A LoRA learns whatever its captions leave undescribed, so the default describes clothing,
# setting and lighting to keep them promptable instead of baked into the trigger; ~60 words,
# most important first, because SD1.5/SDXL read 75 CLIP tokens and truncate the rest.
DEFAULT_PRESET = "detailed"

_FORMATTER = Formatter()
_ALLOWED = ", ".join("{%s}" % p for p in PLACEHOLDERS)
# One sentence or line of a template with the whitespace after it (a checked placeholder
# holds no "." or whitespace, so a split never cuts one).
_SENTENCE = re.compile(r".*?(?:[.!?](?=\s|\Z)|(?=\n)|\Z)\s*", re.S)


def check_template(template: str) -> str:
    """The template, stripped, once its braces and placeholders are known to be valid.

    Only ``{trigger}``, ``{filename}`` and ``{existing}`` are allowed, without conversion or
    format spec; ``{{`` and ``}}`` are literal braces. Attribute and index access
    (``{trigger.__class__}``) is refused, since a template is user input.
    """
    hint = f"allowed: {_ALLOWED}; write {{{{ and }}}} for a literal brace"
    try:
        parts = list(_FORMATTER.parse(template))
    except ValueError as e:
        raise LoraLabError(f"malformed braces in caption prompt ({e}); {hint}") from None
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        suffix = (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
        shown = "{" + field + suffix + "}"
        if "." in field or "[" in field:
            problem = "attribute and index access are not allowed"
        elif field not in PLACEHOLDERS:
            problem = "unknown placeholder"
        elif spec or conversion:
            problem = "placeholders take no conversion or format spec"
        else:
            continue
        raise LoraLabError(f"bad placeholder {shown} in caption prompt ({problem}); {hint}")
    if not template.strip():
        raise LoraLabError("the caption prompt is empty")
    return template.strip()


def _fields(text: str) -> set[str]:
    return {field for _, field, _, _ in _FORMATTER.parse(text) if field is not None}


def _fill(text: str, values: dict[str, str]) -> str:
    # Walks the parsed template instead of calling str.format: nothing in it is evaluated.
    return "".join(lit + (values[f] if f is not None else "")
                   for lit, f, _, _ in _FORMATTER.parse(text))


def render_prompt(template: str, *, trigger: str = "", filename: str = "",
                  existing: str = "") -> str:
    """Fill a template's placeholders; a sentence naming one with no value is left out.

    ``filename`` is the image's file name, ``existing`` its current caption.
    """
    template = check_template(template)
    values = {"trigger": trigger.strip(), "filename": filename.strip(),
              "existing": existing.strip()}
    empty = {name for name, value in values.items() if not value}
    kept = [s for s in _SENTENCE.findall(template) if not _fields(s) & empty]
    prompt = "".join(_fill(s, values) for s in kept)
    if not prompt.strip():
        missing = ", ".join("{%s}" % p for p in PLACEHOLDERS if p in empty & _fields(template))
        raise LoraLabError(f"the caption prompt is empty without a value for {missing}: "
                           "a sentence naming an empty placeholder is left out")
    return prompt.strip()


def resolve_prompt(preset: str | None = None, prompt: str | None = None) -> str:
    """The template to caption with: a custom ``prompt`` wins, else the preset by name.

    The default preset is ``detailed`` (see :data:`DEFAULT_PRESET`): kohya and ai-toolkit
    users captioning with a VLM expect natural descriptive captions (ai-toolkit's default
    prompt says "describe everything", JoyCaption's default mode is "Descriptive"); ``short``
    lets a LoRA absorb more of the look, ``tags`` suits booru-trained (anime) bases.
    """
    if prompt and prompt.strip():
        return check_template(prompt)
    name = preset or DEFAULT_PRESET
    if name not in PRESETS:
        raise LoraLabError(f"unknown caption preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def caption_style(preset: str | None = None, prompt: str | None = None) -> str:
    """How :func:`clean_caption` should read the answer to :func:`resolve_prompt`'s prompt."""
    custom = bool(prompt and prompt.strip())
    return "tags" if not custom and (preset or DEFAULT_PRESET) == "tags" else "sentence"


# --- clean-up -------------------------------------------------------------------------------

_QUOTE_PAIRS = {'"': '"', "'": "'", "“": "”", "‘": "’", "`": "`"}
_FENCE = re.compile(r"\s*```\w*\s*")
_MARKUP = re.compile(r"^\s*(?:#+|[-*•+]|\d+[.)])\s+")  # a markdown header, bullet or number
_LABEL = re.compile(r"^(?:caption|tags|description|prompt|answer)\b\s*(?::\s*|\Z)", re.I)
# "The painting depicts X" -> "A painting of X": the medium is worth training on, "image" is not.
_SHOWS = re.compile(
    r"^(?:the|this) (?P<noun>image|picture|scene|shot|frame|photo|photograph|painting|drawing"
    r"|illustration|artwork|render|rendering|sketch) (?P<verb>(?:(?:appears|seems) to )?"
    r"(?:show|depict|feature|display|present|capture|portray|showcase|illustrate|contain)s?"
    r"|is of|is(?= an? | the ))\s*",
    re.I,
)
_GENERIC = {"image", "picture", "scene", "shot", "frame"}
_OPENER = re.compile(
    r"^(?:(?:in|within) (?:the|this) (?:image|picture|photo|photograph|scene),?"
    r"(?: (?:we|you) (?:can )?see| there (?:is|are))?"
    r"|it (?:appears|seems) to be(?= an? | the )"
    r"|this is(?= an? | the )"
    r"|here(?: is|'s| are)\b[^:]{0,60}:"
    r"|(?:sure|certainly|of course)[!,.]"
    r")\s*",
    re.I,
)
# Hedges dropped anywhere; the letter after one that began a sentence takes its capital.
_HEDGE = re.compile(
    r"\b(?:it (?:appears|seems) that|it looks like|what (?:appears|seems) to be"
    r"|possibly|perhaps|probably|presumably)\b,?\s*(\w?)",
    re.I,
)
_SEEMS_TO_BE = re.compile(r"\b(appears|seems|appear|seem) to be\b")
# A title-case first word after "sks, " ("A", "It"), not an acronym ("NASA", "3D"); CLIP
# lower-cases text anyway, so a proper noun lowered costs nothing.
_TITLE_WORD = re.compile(r"^[A-Z](?=[a-z'’-]|\s|\Z)")
_DANGLING = {"a", "an", "the", "and", "or", "but", "of", "with", "in", "on", "at", "to", "for",
             "by", "from", "while", "as", "is", "are"}


def _unquote(text: str) -> str:
    # Only a matching pair with no other such quote inside: 'a "STOP" sign' keeps its quotes.
    while len(text) > 1 and _QUOTE_PAIRS.get(text[0]) == text[-1] and text[0] not in text[1:-1] \
            and text[-1] not in text[1:-1]:
        text = text[1:-1].strip()
    return text


def _strip_markup(line: str) -> str:
    if _FENCE.fullmatch(line):
        return ""
    line = _MARKUP.sub("", line.replace("**", ""), count=1)
    return _LABEL.sub("", line.strip())


def _name_medium(m: re.Match[str]) -> str:
    noun = m["noun"].lower()
    if noun in _GENERIC or m["verb"].lower() == "is":
        return ""
    return f"{'An' if noun[0] in 'aeiou' else 'A'} {noun} of "


def _strip_preamble(text: str) -> tuple[str, bool]:
    """Quotes, labels and openers off the front, repeatedly ("Sure! Here is...: The image...")."""
    opened = False
    while True:
        before = text
        text = _LABEL.sub("", _unquote(text))
        text, shows = _SHOWS.subn(_name_medium, text)
        text, n = _OPENER.subn("", text)
        opened = opened or shows + n > 0
        if text == before:
            return text, opened


def _tidy(text: str) -> str:
    """Spacing and punctuation left behind by removals ("a cat, ." -> "a cat.")."""
    text = re.sub(r"\s+([,.;:!?])", r"\1", " ".join(text.split()))
    return re.sub(r"[,;:]+(?=[,.;:!?])", "", text).strip(" ,;:")


def _trigger_word(trigger: str) -> str:
    return rf"(?<![\w-]){re.escape(trigger)}(?![\w-])"


def _split_trigger(text: str, trigger: str) -> tuple[str, str]:
    """(how the caption starts with the trigger, the rest with every other occurrence removed)."""
    word = _trigger_word(trigger)
    lead = re.match(rf"{word}(\s*,\s*|\s+)", text)
    if lead:
        text = text[lead.end():]
    # Take an adjacent comma along: "a portrait of sks, a woman" -> "a portrait of a woman".
    text = _tidy(re.sub(rf"\s*{word}(?:['’]s)?\s*,|,?\s*{word}(?:['’]s)?", " ", text))
    if lead and "," not in lead[1]:
        return f"{trigger} ", text  # the model made the trigger the sentence's subject
    return f"{trigger}, ", _TITLE_WORD.sub(lambda m: m[0].lower(), text)


def _truncate_sentences(text: str, max_words: int) -> str:
    words = text.split()
    if len(words) <= max_words:
        return text
    cut = " ".join(words[:max_words])
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|\Z)", cut)]
    if ends:
        return cut[:ends[-1]]
    words = _tidy(cut).split()
    while len(words) > 1 and words[-1].lower().rstrip(",;:") in _DANGLING:
        words.pop()
    return _tidy(" ".join(words))


def _truncate_tags(tags: list[str], max_words: int) -> list[str]:
    kept, used = [], 0
    for tag in tags:
        used += len(tag.split())
        if used > max_words:
            break
        kept.append(tag)
    return kept or [" ".join(tags[0].split()[:max_words])]


def _clean_sentence(text: str, trigger: str, max_words: int | None) -> str:
    text, opened = _strip_preamble(" ".join(text.split()))
    text = _HEDGE.sub(lambda m: m[1].upper() if m[0][0].isupper() else m[1], text)
    text = _SEEMS_TO_BE.sub(lambda m: "is" if m[1].endswith("s") else "are", text)
    lead, text = _split_trigger(_tidy(text), trigger) if trigger else ("", _tidy(text))
    if max_words:
        text = _truncate_sentences(text, max_words)
    if not re.search(r"\w", text):
        return ""
    if opened and not lead:
        text = text[0].upper() + text[1:]
    return lead + text


def _clean_tags(text: str, trigger: str, max_words: int | None) -> str:
    tags = []
    for tag in split_tags(_strip_preamble(text)[0]):
        tag = _unquote(tag).strip(" .;:")
        if trigger:
            tag = _tidy(re.sub(_trigger_word(trigger), " ", tag))
        if re.search(r"\w", tag):
            tags.append(tag.lower())
    tags = list(dict.fromkeys(tags))
    if max_words and tags:
        tags = _truncate_tags(tags, max_words)
    if not tags:
        return ""
    return prefix(join_tags(tags), trigger) if trigger else join_tags(tags)


def clean_caption(text: str, *, trigger: str = "", max_words: int | None = None,
                  style: str = "sentence") -> str:
    """A model's answer as a training caption, or "" when nothing meaningful is left.

    Removes chat debris (quotes, markdown, "Caption:" labels), openers ("The image shows"),
    hedges ("It appears that", "possibly"; "appears to be" becomes "is"); ``tags`` style
    also lower-cases and de-duplicates the tags. ``max_words`` caps the description (the
    trigger is not counted), ending at the last whole sentence or tag that fits. The
    ``trigger`` ends up exactly once, first: "sks, a woman ..." or the first tag.
    """
    if style not in STYLES:
        raise LoraLabError(f"unknown caption style {style!r}; styles: {', '.join(STYLES)}")
    if max_words is not None and max_words < 1:
        raise LoraLabError(f"max_words must be at least 1, not {max_words}")
    lines = [_strip_markup(line) for line in text.splitlines()]
    trigger = trigger.strip()
    if style == "tags":
        return _clean_tags(", ".join(lines), trigger, max_words)
    return _clean_sentence(" ".join(lines), trigger, max_words)


def merge_caption(existing: str | None, new: str, mode: str, trigger: str = "") -> str | None:
    """The caption to write for batch ``mode``, or None when there is nothing to do.

    ``skip`` keeps a non-empty caption, ``overwrite`` replaces it, ``append``/``prepend``
    join the two with ", " (or a space after a sentence). The ``trigger`` ends up once, first,
    wherever it was; without one, a first tag both start with is kept once.
    """
    if mode not in MODES:
        raise LoraLabError(f"unknown caption mode {mode!r}; modes: {', '.join(MODES)}")
    existing = (existing or "").strip()
    if mode == "skip":
        return None if existing else new
    if mode == "overwrite" or not existing:
        return new
    first, second = (existing, new) if mode == "append" else (new, existing)
    trigger = trigger.strip()
    if trigger:
        first, second = (_split_trigger(part, trigger)[1] for part in (first, second))
    else:
        head, _, rest = second.partition(",")
        if rest.strip() and head.strip() == first.partition(",")[0].strip():
            second = rest.strip()
    merged = _join(first, second)
    if not trigger:
        return merged
    return f"{trigger}, " + _TITLE_WORD.sub(lambda m: m[0].lower(), merged) if merged else trigger


def _join(first: str, second: str) -> str:
    if not (first and second):
        return first or second
    if first.endswith((".", "!", "?")):
        return f"{first} {second[0].upper()}{second[1:]}"
    return f"{first}, {second}"
