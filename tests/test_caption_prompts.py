"""Caption prompts: presets, templates, cleaning real model answers, and the batch merge modes."""
from __future__ import annotations

import pytest

from lora_lab.captioning.prompts import (
    DEFAULT_PRESET,
    MODES,
    PRESETS,
    caption_style,
    check_template,
    clean_caption,
    merge_caption,
    render_prompt,
    resolve_prompt,
)
from lora_lab.errors import LoraLabError

ALLOWED = "allowed: {trigger}, {filename}, {existing}"
TRIGGER_FIRST = 'Put "sks," first, as the name of the main subject, and do not use that name again.'


# --- presets ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tags", "short", "detailed"])
def test_every_preset_reads_well_without_a_trigger(name):
    prompt = render_prompt(PRESETS[name], filename="beach_03.jpg")
    assert "{" not in prompt and "}" not in prompt and '""' not in prompt
    assert "first tag" not in prompt and "name of the main subject" not in prompt
    assert "  " not in prompt and prompt.endswith(".")
    assert "preamble" in prompt


@pytest.mark.parametrize("name, sentence", [
    ("tags", 'Make "sks" the first tag.'),
    ("short", TRIGGER_FIRST),
    ("detailed", TRIGGER_FIRST),
])
def test_every_preset_names_the_trigger_once_when_one_is_set(name, sentence):
    prompt = render_prompt(PRESETS[name], trigger=" sks ")
    assert sentence in prompt and prompt.count("sks") == 1
    without = render_prompt(PRESETS[name])
    assert prompt.replace(sentence + " ", "") == without


def test_presets_are_valid_templates_and_the_default_is_detailed():
    assert {"tags", "short", "detailed"} <= set(PRESETS)
    for template in PRESETS.values():
        assert check_template(template) == template
    assert DEFAULT_PRESET == "detailed"
    assert resolve_prompt() == resolve_prompt(None, None) == PRESETS["detailed"]


# --- templates -------------------------------------------------------------------------------

@pytest.mark.parametrize("template, values, expected", [
    ("Caption {filename} for a LoRA of {trigger}.", {"trigger": "sks", "filename": "a.jpg"},
     "Caption a.jpg for a LoRA of sks."),
    ("Improve this caption: {existing}\nKeep it under 30 words.", {"existing": "a cat on a sofa"},
     "Improve this caption: a cat on a sofa\nKeep it under 30 words."),
    # no value: the sentence (or line) that names the placeholder is left out, the rest kept as is
    ("Improve this caption: {existing}\nKeep it under 30 words.", {}, "Keep it under 30 words."),
    ("Describe the image. The subject is {trigger}! Be brief.", {},
     "Describe the image. Be brief."),
    ("Describe the image.\n\nCall the subject {trigger}.", {"trigger": "ohwx man"},
     "Describe the image.\n\nCall the subject ohwx man."),
    # literal braces, and values are never read as templates themselves
    ('Answer as JSON: {{"caption": "..."}}. Name: {trigger}.', {"trigger": "{filename}"},
     'Answer as JSON: {"caption": "..."}. Name: {filename}.'),
    ("Use {{trigger}} literally.", {}, "Use {trigger} literally."),
    ("  Describe this image.  ", {}, "Describe this image."),
])
def test_render_prompt(template, values, expected):
    assert render_prompt(template, **values) == expected


@pytest.mark.parametrize("template, shown, problem", [
    ("Describe {name}.", "{name}", "unknown placeholder"),
    ("Describe {0}.", "{0}", "unknown placeholder"),
    ("Describe {}.", "{}", "unknown placeholder"),
    ("Describe { trigger }.", "{ trigger }", "unknown placeholder"),
    ("Describe {Trigger}.", "{Trigger}", "unknown placeholder"),
    ("{trigger.__class__.__init__.__globals__}", "{trigger.__class__.__init__.__globals__}",
     "attribute and index access are not allowed"),
    ("{trigger[0]}", "{trigger[0]}", "attribute and index access are not allowed"),
    ("{trigger!r}", "{trigger!r}", "no conversion or format spec"),
    ("{filename:>40}", "{filename:>40}", "no conversion or format spec"),
    ("{trigger:{filename}}", "{trigger:{filename}}", "no conversion or format spec"),
])
def test_bad_placeholders_are_refused_by_name(template, shown, problem):
    with pytest.raises(LoraLabError) as e:
        check_template(template)
    message = str(e.value)
    assert f"bad placeholder {shown} " in message and problem in message
    assert ALLOWED in message and "{{ and }}" in message


@pytest.mark.parametrize("template, detail", [
    ("Answer as JSON: {\"caption\": \"...\"}", "unknown placeholder"),  # unescaped JSON
    ("Describe {trigger", "expected '}' before end of string"),
    ("Describe trigger}.", "Single '}'"),
    ("Describe { the image.", "expected '}' before end of string"),
    ("Describe {trigger} {", "Single '{'"),
    ("A {{ } b", "Single '}'"),
])
def test_malformed_braces_are_refused(template, detail):
    with pytest.raises(LoraLabError, match="caption prompt") as e:
        check_template(template)
    assert detail in str(e.value) and ALLOWED in str(e.value)


@pytest.mark.parametrize("template", ["", "   \n "])
def test_an_empty_prompt_is_refused(template):
    with pytest.raises(LoraLabError, match="the caption prompt is empty"):
        check_template(template)


def test_a_prompt_that_needs_a_missing_value_says_which():
    with pytest.raises(LoraLabError, match=r"empty without a value for \{trigger\}"):
        render_prompt("Write a caption for a photo of {trigger}.")
    with pytest.raises(LoraLabError, match="unknown placeholder"):
        render_prompt("Describe {name}.", trigger="sks")


def test_resolve_prompt_prefers_a_custom_prompt_and_checks_it():
    custom = "Describe {trigger} in one line."
    assert resolve_prompt("tags", custom) == custom
    assert resolve_prompt("tags", "   ") == PRESETS["tags"]
    assert resolve_prompt("short") == PRESETS["short"]
    with pytest.raises(LoraLabError, match="unknown placeholder"):
        resolve_prompt("tags", "Describe {name}.")


def test_unknown_preset_lists_the_presets():
    with pytest.raises(LoraLabError,
                       match="unknown caption preset 'booru'; presets: tags, short, detailed"):
        resolve_prompt("booru")


@pytest.mark.parametrize("preset, prompt, style", [
    ("tags", None, "tags"), ("short", None, "sentence"), (None, None, "sentence"),
    ("tags", "List tags for {filename}.", "sentence"), ("detailed", "", "sentence"),
])
def test_caption_style_follows_the_preset(preset, prompt, style):
    assert caption_style(preset, prompt) == style


# --- clean-up: sentences ---------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("**Caption:** The image shows a woman in a red dress standing on a beach at sunset.",
     "A woman in a red dress standing on a beach at sunset."),
    ("It appears to be a photo of a cat, possibly a tabby.", "A photo of a cat, a tabby."),
    ('"This image depicts a man in a suit. It appears that he is waiting for a train."',
     "A man in a suit. He is waiting for a train."),
    ("In this image, we see a dog holding what appears to be a stick in its mouth.",
     "A dog holding a stick in its mouth."),
    ("In the image, there are two children playing with a red kite on a hill.",
     "Two children playing with a red kite on a hill."),
    ("Sure! Here's a detailed description of the image:\n\nThe image depicts a bustling market "
     "street in the evening.", "A bustling market street in the evening."),
    ("The photo features two cats sleeping on a sofa.", "A photo of two cats sleeping on a sofa."),
    # the medium is kept: it is what a style LoRA learns
    ("The painting depicts a woman in a blue gown.", "A painting of a woman in a blue gown."),
    ("This illustration shows a girl with pink hair.", "An illustration of a girl with pink hair."),
    ("The photograph captures a golden retriever running through tall grass.",
     "A photograph of a golden retriever running through tall grass."),
    ("The image appears to show a snowy mountain range under a clear sky.",
     "A snowy mountain range under a clear sky."),
    ("This is a close-up portrait of an elderly man with a white beard.",
     "A close-up portrait of an elderly man with a white beard."),
    ("The photo is a close-up of a cat.", "A close-up of a cat."),
    ("It looks like a watercolor painting of a fox.", "A watercolor painting of a fox."),
    ("Possibly a tabby cat sleeping on a windowsill.", "A tabby cat sleeping on a windowsill."),
    ("A woman, probably in her thirties, sits at a café table. She seems to be reading a book.",
     "A woman, in her thirties, sits at a café table. She is reading a book."),
    ("Two men appear to be arguing in a crowded bar.", "Two men are arguing in a crowded bar."),
    ("It appears to be raining on a neon-lit street.", "It is raining on a neon-lit street."),
    ("'A bowl of ramen with a soft-boiled egg.'", "A bowl of ramen with a soft-boiled egg."),
    ("“A lighthouse on a rocky cliff at dusk.”", "A lighthouse on a rocky cliff at dusk."),
    ('Caption: "A red vintage car parked on a cobblestone street."',
     "A red vintage car parked on a cobblestone street."),
    ("### Description\nA knight in silver armor rides a black horse.",
     "A knight in silver armor rides a black horse."),
    ("```\nA cozy cabin in a snowy forest.\n```", "A cozy cabin in a snowy forest."),
    ("  A woman\n   in a red dress,\n\n standing on a beach.  ",
     "A woman in a red dress, standing on a beach."),
    # real content is left alone
    ('A sign that reads "OPEN" hangs on a wooden door.',
     'A sign that reads "OPEN" hangs on a wooden door.'),
    ('"OPEN" is painted on a door next to a sign saying "closed"',
     '"OPEN" is painted on a door next to a sign saying "closed"'),
    ("The sky looks like fire above the ocean.", "The sky looks like fire above the ocean."),
    ("The image of a saint hangs above the altar.", "The image of a saint hangs above the altar."),
    ("a cat on a sofa", "a cat on a sofa"),
    ("sks, a woman on a pier.", "sks, a woman on a pier."),  # no trigger asked for: a word like any
])
def test_clean_sentence_captions(raw, expected):
    assert clean_caption(raw) == expected


@pytest.mark.parametrize("raw", [
    "The image shows", "The image shows:", "**Caption:**", "Caption:", "", "   \n  ", "**", '""',
    "Sure! Here is a caption for the image:", "```\n```", "In this image,",
])
def test_nothing_meaningful_left_is_empty(raw):
    assert clean_caption(raw) == ""
    assert clean_caption(raw, trigger="sks") == ""
    assert clean_caption(raw, style="tags") == ""


@pytest.mark.parametrize("raw, expected", [
    ("**Caption:** The image shows a woman in a red dress standing on a beach at sunset.",
     "sks, a woman in a red dress standing on a beach at sunset."),
    ("sks, a woman in a yellow raincoat on a pier.",
     "sks, a woman in a yellow raincoat on a pier."),
    # the model made the trigger the subject: kept as written
    ("sks stands on a pier in a yellow raincoat.", "sks stands on a pier in a yellow raincoat."),
    ("The image shows sks standing on a pier.", "sks standing on a pier."),
    # elsewhere: removed (with one adjacent comma) and put first
    ("A portrait of sks, a young woman with curly hair, smiling.",
     "sks, a portrait of a young woman with curly hair, smiling."),
    ("A woman standing on a beach at sunset, sks.", "sks, a woman standing on a beach at sunset."),
    ("A woman, sks, stands on a pier.", "sks, a woman, stands on a pier."),
    ("A close-up of sks's face with freckles.", "sks, a close-up of face with freckles."),
    ("sks, a woman on a pier. sks, in a raincoat.", "sks, a woman on a pier. in a raincoat."),
    # whole word and case-sensitive only
    ("A sksy sunset over a SKS rifle and a sks-like logo.",
     "sks, a sksy sunset over a SKS rifle and a sks-like logo."),
    # a leading title-case word is lower-cased after the trigger, acronyms are not
    ("It appears to be raining on a neon-lit street.", "sks, it is raining on a neon-lit street."),
    ("NASA astronaut floating above the Earth.", "sks, NASA astronaut floating above the Earth."),
    ("3D render of a chrome robot.", "sks, 3D render of a chrome robot."),
])
def test_the_trigger_is_first_and_once(raw, expected):
    assert clean_caption(raw, trigger="sks") == expected


def test_a_multi_word_trigger():
    assert clean_caption("A portrait of ohwx man in a grey suit.", trigger=" ohwx man ") == \
        "ohwx man, a portrait of in a grey suit."
    assert clean_caption("ohwx man, in a grey suit.", trigger="ohwx man") == \
        "ohwx man, in a grey suit."


# --- clean-up: tags --------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("1girl, solo, long hair, Blue Eyes, 1girl, school uniform, ",
     "1girl, solo, long hair, blue eyes, school uniform"),
    ("Tags:\n- 1girl\n- Solo\n- red dress,\n* beach\n- sunset.\n- 1girl",
     "1girl, solo, red dress, beach, sunset"),
    ("Here are the tags for this image:\n\n1. 1girl\n2. solo\n3. \"smile\"\n4. outdoors.",
     "1girl, solo, smile, outdoors"),
    ("**Tags:** solo, smile,, , outdoors", "solo, smile, outdoors"),
    ('"red_dress", "long_hair", "1girl"', "red_dress, long_hair, 1girl"),
    ('"1girl, solo, (masterpiece:1.2), smile"', "1girl, solo, (masterpiece:1.2), smile"),
    ("1girl\nsolo\nsmile", "1girl, solo, smile"),
])
def test_clean_tags(raw, expected):
    assert clean_caption(raw, style="tags") == expected


@pytest.mark.parametrize("raw, expected", [
    ("1girl, solo, sks, smile", "sks, 1girl, solo, smile"),
    ("sks, 1girl, sks woman, smile", "sks, 1girl, woman, smile"),
    ("- 1girl\n- sks\n- beach", "sks, 1girl, beach"),
    ("1girl, SKS, smile", "sks, 1girl, smile"),  # case-sensitive, then lower-cased and deduped
])
def test_the_trigger_is_the_first_tag(raw, expected):
    assert clean_caption(raw, trigger="sks", style="tags") == expected


# --- clean-up: length ------------------------------------------------------------------------

SENTENCES = "A woman in a red dress stands on a beach. The sun sets behind her over a calm sea."


@pytest.mark.parametrize("max_words, expected", [
    (None, SENTENCES),
    (19, SENTENCES),
    (18, "A woman in a red dress stands on a beach."),  # the last whole sentence that fits
    (10, "A woman in a red dress stands on a beach."),
    (9, "A woman in a red dress stands"),  # no whole sentence: a whole word, no dangling "on a"
    (5, "A woman in a red"),
    (1, "A"),
])
def test_max_words_for_sentences(max_words, expected):
    assert clean_caption(SENTENCES, max_words=max_words) == expected


def test_max_words_does_not_count_the_trigger_or_cut_mid_clause():
    assert clean_caption(SENTENCES, trigger="sks", max_words=10) == \
        "sks, a woman in a red dress stands on a beach."
    assert clean_caption("A cat, a dog, and a parrot sit on a fence", max_words=6) == "A cat, a dog"
    assert clean_caption("The image shows a cat on a sofa near a window.", max_words=5) == \
        "A cat on a sofa"


@pytest.mark.parametrize("max_words, expected", [
    (7, "sks, 1girl, solo, long hair, red dress, smile"),
    (6, "sks, 1girl, solo, long hair, red dress"),
    (5, "sks, 1girl, solo, long hair"),  # "red dress" would make 6
    (1, "sks, 1girl"),
])
def test_max_words_for_tags_keeps_whole_tags(max_words, expected):
    raw = "1girl, solo, long hair, red dress, smile"
    assert clean_caption(raw, trigger="sks", style="tags", max_words=max_words) == expected


def test_max_words_cuts_a_first_tag_longer_than_the_limit():
    assert clean_caption("long flowing red hair, smile", style="tags", max_words=2) == \
        "long flowing"


@pytest.mark.parametrize("kwargs, message", [
    ({"style": "prose"}, "unknown caption style 'prose'; styles: sentence, tags"),
    ({"max_words": 0}, "max_words must be at least 1"),
])
def test_bad_clean_up_options(kwargs, message):
    with pytest.raises(LoraLabError, match=message):
        clean_caption("a cat", **kwargs)


# --- merge modes -----------------------------------------------------------------------------

@pytest.mark.parametrize("existing, new, mode, expected", [
    ("a cat on a sofa", "sks, a cat", "skip", None),
    ("", "sks, a cat", "skip", "sks, a cat"),
    (None, "sks, a cat", "skip", "sks, a cat"),
    ("  \n", "sks, a cat", "skip", "sks, a cat"),
    ("a cat on a sofa", "sks, a cat", "overwrite", "sks, a cat"),
    (None, "sks, a cat", "overwrite", "sks, a cat"),
    ("1girl, solo", "red dress, smile", "append", "1girl, solo, red dress, smile"),
    ("1girl, solo", "red dress, smile", "prepend", "red dress, smile, 1girl, solo"),
    (None, "red dress", "append", "red dress"),
    ("", "red dress", "prepend", "red dress"),
    # the shared trigger is kept once
    ("sks, 1girl, solo", "sks, red dress, smile", "append", "sks, 1girl, solo, red dress, smile"),
    ("sks, 1girl, solo", "sks, red dress, smile", "prepend", "sks, red dress, smile, 1girl, solo"),
    ("sks, a woman on a beach.", "sks, a woman in a red dress.", "append",
     "sks, a woman on a beach. A woman in a red dress."),
    ("sks", "sks", "append", "sks, sks"),  # nothing but the trigger: nothing to drop it from
])
def test_merge_modes(existing, new, mode, expected):
    assert merge_caption(existing, new, mode) == expected


@pytest.mark.parametrize("existing, new, mode, expected", [
    # the trigger moves to the front, once, wherever it was
    ("A woman on a beach.", "sks, a red dress.", "append", "sks, a woman on a beach. A red dress."),
    ("1girl, solo", "sks, red dress", "append", "sks, 1girl, solo, red dress"),
    ("1girl, sks, solo", "sks, red dress", "prepend", "sks, red dress, 1girl, solo"),
    ("sks, 1girl", "sks woman in red.", "prepend", "sks, woman in red. 1girl"),
    ("sks", "sks, red dress", "append", "sks, red dress"),
    ("sks", "sks", "append", "sks"),
    ("a cat", "sks, a dog", "overwrite", "sks, a dog"),
])
def test_merge_puts_the_trigger_first_once(existing, new, mode, expected):
    assert merge_caption(existing, new, mode, trigger="sks") == expected


def test_every_mode_is_tested_and_an_unknown_one_is_refused():
    assert set(MODES) == {"skip", "overwrite", "append", "prepend"}
    with pytest.raises(LoraLabError,
                       match="unknown caption mode 'replace'; "
                             "modes: skip, overwrite, append, prepend"):
        merge_caption("a cat", "a dog", "replace")
    with pytest.raises(LoraLabError, match="unknown caption mode"):
        merge_caption(None, "a dog", "")
