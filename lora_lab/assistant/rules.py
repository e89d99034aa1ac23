"""The rules that turn a model's answer into a config that trains: each suggested value is the
model's when it is sane for this dataset and box, else set by a rule that says why ("the model
said lr 5; corrected to 0.0001 (lr above 0.01 diverges)"). The model may leave anything out or
answer nonsense (the rules take any JSON, so they are tested on raw answers); what comes out
always validates as a TrainConfig.
"""
from __future__ import annotations

import math
import re
from typing import Any, get_args

from ..aspect_buckets import FAMILIES
from ..calc import StepPlan
from ..models.catalogue import CATALOGUE
from ..training.config import PACKAGES, TrainConfig
from ..training.data import steps_for
from ..training.families import get_family
from ..training.presets import PRESETS, preset_config, preset_for, sample_every, sample_prompts
from ..training.sections import show_value
from .facts import Facts
from .schema import FIELDS, TRIGGER_PATTERN, declared
from .suggestion import Reason, Suggestion, one_line

RANK = (4, 128)  # below, a LoRA learns little; above, rarely more, and the file grows
LR = (1e-6, 1e-2)  # below, it barely moves; above, AdamW diverges
REPEATS, BATCH, DROPOUT = (1, 100), (1, 16), (0.0, 0.5)
STEPS = (100, 10_000)  # a run's total: fewer cannot learn a subject, more overfits it
STEPS_PER_IMAGE, TARGET = 100, (500, 3000)  # the total steps aimed at when correcting epochs
# GPU memory (GB) a family's full preset wants; below it, its -lowvram variant is suggested
FULL_PRESET_GB = {"sd15": 10, "sdxl": 24, "zimage": 32, "flux": 40, "chroma": 40, "qwenimage": 80,
                  "flux2klein": 24}
# words in a request that name a family, looked for in this order (klein before flux)
_NAMED = (("flux2klein", r"flux\.?[ -]?2|klein"), ("flux", r"flux"), ("qwenimage", r"qwen[-_ ]?image"),
          ("zimage", r"z[-_ ]?image"), ("chroma", r"chroma"),
          ("sdxl", r"sd[-_ ]?xl|\bxl\b|pony|illustrious"),
          ("sd15", r"sd[-_ ]?1\.?5|\bsd15\b|stable diffusion 1"))


def apply_rules(answer: Any, facts: Facts, text: str = "") -> Suggestion:
    """The config ``answer`` (the model's parsed JSON, any shape) suggests for ``facts``, every
    value checked and, where missing or wrong, set by a rule that says so."""
    d = _Draft(answer if isinstance(answer, dict) else {}, facts)
    preset = _preset(d, text)
    family = PRESETS[preset].overrides["model"]["family"]
    d.cfg = preset_config(preset)
    d.cfg["dataset"]["source"] = facts.source
    _base(d, family)
    for rule in (_resolution, _rank, _alpha, _optimizer, _packages, _lr, _choices, _batch,
                 _repeats, _dropout, _trigger, _memory):
        rule(d, family)
    plan = _steps(d, family)
    _samples(d, plan.total_steps)
    config = TrainConfig.from_dict(d.cfg)
    config.resolved(family)  # what the family cannot train is refused here, as the trainer would
    return Suggestion(config, preset, d.reasons, facts, plan, answer)


class _Draft:
    """The config being built, the model's answer and the reasons given so far."""

    def __init__(self, answer: dict[str, Any], facts: Facts):
        self.answer, self.facts = answer, facts
        self.cfg: dict[str, dict[str, Any]] = {}
        self.reasons: dict[str, Reason] = {}

    def said(self, key: str) -> tuple[bool, Any]:
        item = self.answer.get(key)
        return (True, item["value"]) if isinstance(item, dict) and "value" in item else (False, None)

    def get(self, dotted: str) -> Any:
        table, key = dotted.split(".")
        return self.cfg[table][key]

    def set(self, dotted: str, value: Any, reason: str, source: str = "rule") -> None:
        table, key = dotted.split(".")
        self.cfg[table][key] = value
        self.reasons[dotted] = Reason(value, one_line(reason), source)

    def take(self, key: str, value: Any, dotted: str | None = None) -> None:
        """The model's value, with the model's reason."""
        item = self.answer.get(key, {})
        why = one_line(str(item.get("reason") or "")) or "(the model gave no reason)"
        if dotted:
            self.set(dotted, value, why, "model")
        else:
            self.reasons[key] = Reason(value, why, "model")

    def correct(self, key: str, value: Any, why: str, dotted: str | None = None) -> None:
        """A rule's value instead of the model's (or in place of none), saying which and why."""
        said, old = self.said(key)
        prev = self.reasons.get(dotted or key)
        if prev is not None and prev.source == "rule":  # a second rule moves it again: say both
            text = f"{prev.reason}; then {_show(value)} ({why})"
        elif said:
            text = f"the model said {key} {_show(old)}; corrected to {_show(value)} ({why})"
        else:
            text = f"the model gave no {key}; {_show(value)} ({why})"
        if dotted:
            self.set(dotted, value, text)
        else:
            self.reasons[key] = Reason(value, one_line(text), "rule")

    def number(self, key: str, kind: type, lo: float, hi: float, fallback: Any, low: str, high: str) -> None:
        """A numeric answer within [lo, hi], else ``fallback`` with why it was out."""
        dotted = FIELDS[key]
        said, v = self.said(key)
        if not said or not _is_number(v, kind):
            self.correct(key, fallback, f"not {'a whole number' if kind is int else 'a number'}", dotted)
        elif v < lo:
            self.correct(key, fallback, low, dotted)
        elif v > hi:
            self.correct(key, fallback, high, dotted)
        else:
            self.take(key, kind(v), dotted)


# -- the rules, in order ---------------------------------------------------------------------------
def _preset(d: _Draft, text: str) -> str:
    """The model's preset if it fits the base model (or the family the request names), else
    that family's; its low-VRAM variant when the GPU is too small for it."""
    said, v = d.said("preset")
    family = d.facts.base_family or _family_named(text)
    if said and isinstance(v, str) and v in PRESETS and family in (None, _family(v)):
        d.take("preset", v)
    elif family:
        where = "the base model is" if d.facts.base_family else "the request names"
        d.correct("preset", preset_for(family), f"{where} {get_family(family).title}")
    else:
        d.correct("preset", "sd15", "not a preset; sd15 is the default")
    preset = d.reasons["preset"].value
    small = f"{preset}-lowvram"
    need = FULL_PRESET_GB[_family(preset)]
    if d.facts.vram_gb is not None and d.facts.vram_gb < need and small in PRESETS:
        d.correct("preset", small, f"the GPU has {d.facts.vram_gb:g} GB (doctor); {PRESETS[preset].label} "
                  f"wants about {need} GB")
    return d.reasons["preset"].value


def _family(preset: str) -> str:
    return PRESETS[preset].overrides["model"]["family"]


def _family_named(text: str) -> str | None:
    lowered = text.lower()
    return next((family for family, words in _NAMED if re.search(words, lowered)), None)


def _base(d: _Draft, family: str) -> None:
    """The base given, else a model of the family in models/, else the catalogue's Hub repo."""
    title = get_family(family).title
    if d.facts.base:
        d.set("model.base", d.facts.base, "given (--base)")
        return
    local = [path for path, f in d.facts.local_bases if f == family]
    if local:
        d.set("model.base", local[0], f"the {title} model in the workspace's models/")
        return
    name, repo = next((n, m.repo) for n, m in CATALOGUE.items() if m.family == family)
    d.set("model.base", repo, f"no {title} model in models/: its Hub repo (`lora-lab models pull "
          f"{name}` keeps a copy; --base names another)")


def _resolution(d: _Draft, family: str) -> None:
    """Within the family's sides, a multiple of 64, and no larger than most images."""
    _, lo, hi = FAMILIES[family]
    title, fallback = get_family(family).title, d.get("dataset.resolution")
    d.number("resolution", int, lo, hi, fallback, f"{title} trains at {lo}..{hi} px",
             f"{title} trains at {lo}..{hi} px")
    res = d.get("dataset.resolution")
    if res % 64:
        d.correct("resolution", min(hi, max(lo, round(res / 64) * 64)), "a multiple of 64",
                  "dataset.resolution")
        res = d.get("dataset.resolution")
    typical = d.facts.typical_side
    smaller = max(lo, typical // 64 * 64)
    if typical and typical < 0.75 * res and smaller < res:
        d.correct("resolution", smaller, f"most images are about {typical} px: {res} would upscale "
                  "them" + (f"; {lo} is the smallest {title} trains at" if smaller == lo else ""),
                  "dataset.resolution")


def _rank(d: _Draft, family: str) -> None:
    lo, hi = RANK
    d.number("rank", int, lo, hi, d.get("network.rank"), f"below {lo} a LoRA learns little",
             f"ranks above {hi} rarely learn more, and the file grows")


def _alpha(d: _Draft, family: str) -> None:
    rank = d.get("network.rank")
    d.number("alpha", float, 1e-3, rank, rank / 2, "alpha must be above 0",
             "alpha above the rank scales the update up; half the rank is usual")


def _optimizer(d: _Draft, family: str) -> None:
    _choice(d, "optimizer")


def _lr(d: _Draft, family: str) -> None:
    if d.get("train.optimizer") == "prodigy":
        said, v = d.said("lr")
        if said and v == 1:
            d.take("lr", 1.0, "train.lr")
        else:
            d.correct("lr", 1.0, "prodigy finds its own step size and wants lr 1.0", "train.lr")
        return
    lo, hi = LR
    d.number("lr", float, lo, hi, 1e-4, f"lr below {lo:g} barely moves", f"lr above {hi:g} diverges")


def _choices(d: _Draft, family: str) -> None:
    _choice(d, "scheduler")
    said, v = d.said("flip")
    if said and isinstance(v, bool):
        d.take("flip", v, "dataset.flip")
    else:
        d.correct("flip", False, "not true or false; off keeps asymmetric subjects and text right",
                  "dataset.flip")


def _choice(d: _Draft, key: str) -> None:
    dotted = FIELDS[key]
    said, v = d.said(key)
    choices = get_args(declared(dotted)[0])
    if said and isinstance(v, str) and v in choices:
        d.take(key, v, dotted)
    else:
        d.correct(key, d.get(dotted), f"one of {', '.join(choices)}: the preset's", dotted)


def _batch(d: _Draft, family: str) -> None:
    lo, hi = BATCH
    top = min(hi, d.facts.images) if not d.reasons["preset"].value.endswith("-lowvram") else 1
    why = "a low-VRAM preset trains one image at a time" if top == 1 and d.facts.images > 1 else (
        f"no more than the {d.facts.images} images" if top == d.facts.images else f"at most {hi}")
    d.number("batch_size", int, lo, top, min(top, d.get("train.batch_size")), "at least 1", why)


def _repeats(d: _Draft, family: str) -> None:
    lo, hi = REPEATS
    d.number("repeats", int, lo, hi, 1, f"at least {lo}", f"more than {hi} repeats: raise epochs instead")


def _dropout(d: _Draft, family: str) -> None:
    lo, hi = DROPOUT
    if len(d.facts.captions) == 0:
        d.correct("caption_dropout", 0.0, "the dataset has no captions to drop", "dataset.caption_dropout")
        return
    d.number("caption_dropout", float, lo, hi, 0.0, "a chance is at least 0",
             f"above {hi} the captions are mostly dropped")


def _trigger(d: _Draft, family: str) -> None:
    """A word-like trigger; one is needed when images have no caption (they train on it alone)."""
    said, v = d.said("trigger")
    word = v if said and isinstance(v, str) else ""
    clean = re.sub(r"[^A-Za-z0-9_-]", "", word)[:24]
    if said and isinstance(v, str) and re.fullmatch(TRIGGER_PATTERN, v) and (v or not d.facts.uncaptioned):
        d.take("trigger", v, "dataset.trigger")
    elif clean:
        d.correct("trigger", clean, "one word of letters, digits, '-' or '_'", "dataset.trigger")
    elif d.facts.uncaptioned:
        name = re.sub(r"[^a-z0-9]", "", d.facts.source.rsplit("/", 1)[-1].lower())[:20] or "subject"
        d.correct("trigger", f"{name}_lora", f"{d.facts.uncaptioned} of {d.facts.images} images have "
                  "no caption: they train on the trigger word alone", "dataset.trigger")
    else:
        d.correct("trigger", "", "none: every image has a caption", "dataset.trigger")


def _memory(d: _Draft, family: str) -> None:
    """The preset's memory settings, said as such; full precision on a box without a GPU."""
    preset = d.reasons["preset"].value
    for dotted in ("train.gradient_checkpointing", "model.quantize"):
        if dotted not in d.reasons:  # (a missing package's fallback says so already)
            d.set(dotted, d.get(dotted), f"the {preset} preset's", "preset")
    if d.facts.vram_gb is not None:
        d.set("train.mixed_precision", d.get("train.mixed_precision"), f"the {preset} preset's", "preset")
    elif d.get("train.device") == "cuda":
        d.set("train.device", "cuda", f"the {preset} preset trains on a GPU only, and this box has "
              "none (doctor): run it on a GPU pod")
        d.set("train.mixed_precision", d.get("train.mixed_precision"), f"the {preset} preset's", "preset")
    else:
        d.set("train.mixed_precision", "no", "no GPU here (doctor): the CPU trains in full precision")


def _packages(d: _Draft, family: str) -> None:
    """A setting whose package is not installed falls back, as the trainer would refuse it."""
    from importlib.util import find_spec

    for (dotted, value), (packages, install, fallback) in PACKAGES.items():
        missing = [p for p in packages if find_spec(p) is None]
        if d.get(dotted) == value and missing:
            why = f"{value} needs {', '.join(missing)}, not installed here ({install})"
            key, prev = next((k for k, v in FIELDS.items() if v == dotted), None), d.reasons.get(dotted)
            if key and prev is not None and prev.source == "model":  # the model's choice, corrected
                d.correct(key, fallback, why, dotted)
            else:
                d.set(dotted, fallback, f"{why}; {show_value(fallback)} instead")


def _steps(d: _Draft, family: str) -> StepPlan:
    """max_steps 0 or within :data:`STEPS`; epochs giving a total within it (counted as the
    trainer counts them: ``lora-lab calc``), else about :data:`STEPS_PER_IMAGE` an image."""
    lo, hi = STEPS
    said, v = d.said("max_steps")
    if said and _is_number(v, int) and (v == 0 or lo <= v <= hi):
        d.take("max_steps", int(v), "train.max_steps")
    else:
        what = ("" if not said else "not a whole number; " if not _is_number(v, int) else
                f"fewer than {lo} steps cannot train a LoRA; " if v < lo else f"more than {hi} steps overfits; ")
        d.correct("max_steps", 0, f"{what}0 counts the steps from epochs", "train.max_steps")
    d.cfg["train"]["epochs"] = 1
    per_epoch = _plan(d).steps_per_epoch
    target = min(TARGET[1], max(TARGET[0], STEPS_PER_IMAGE * d.facts.images))
    epochs = max(1, round(target / per_epoch))
    said, v = d.said("epochs")
    if not said or not _is_number(v, int) or v < 1:
        d.correct("epochs", epochs, f"at least 1; about {target} steps suit {d.facts.images} images",
                  "train.epochs")
    elif d.get("train.max_steps") or lo <= v * per_epoch <= hi:
        d.take("epochs", int(v), "train.epochs")
    else:
        d.correct("epochs", epochs, f"{v} x {per_epoch} steps per epoch = {v * per_epoch} steps; "
                  f"about {target} steps suit {d.facts.images} images", "train.epochs")
    return _plan(d)


def _plan(d: _Draft) -> StepPlan:
    return steps_for(TrainConfig.from_dict(d.cfg), list(d.facts.sizes))


def _samples(d: _Draft, total: int) -> None:
    """As the launcher's defaults: the trigger and the dataset's most typical captions, about
    four rounds over the run."""
    prompts = sample_prompts(list(d.facts.captions), d.get("dataset.trigger"))
    d.set("sample.prompts", prompts, "the trigger word and the dataset's most typical captions"
          if prompts else "no trigger word and no captions to sample from")
    every = sample_every(total) if prompts else 0
    d.set("sample.every_n_steps", every, f"about four rounds over {total} steps" if every else "off")


# -- helpers ---------------------------------------------------------------------------------------
def _is_number(v: Any, kind: type) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return False
    return kind is float or float(v).is_integer()


def _show(v: Any) -> str:
    if isinstance(v, float) and v and (abs(v) < 1e-3 or abs(v) >= 1e6):
        return f"{v:g}"
    return show_value(v)

