"""Starting points for a training config: the settings kohya and ai-toolkit users reach for
first on SD1.5, SDXL, Z-Image, FLUX.1, Chroma, Qwen-Image and FLUX.2 [klein], and low-VRAM
variants that trade speed for memory.

A preset is a set of TrainConfig overrides ({table: {key: value}}), with the buckets back at
the family's defaults (0) so they fit its resolution; the base model, the dataset and the
trigger stay the user's. Every key here is a real TrainConfig key (tests check it).

The pod presets (every one but sd15 and sdxl: the transformer families, a 6-20B model each,
and the low-VRAM variants, whose 8-bit and fp16 settings are for a GPU) set train.device =
"cuda", so a run meant for a GPU pod refuses to start without one rather than crawl on the CPU.
sd15 and sdxl stay "auto": they also start the CPU demo and the binder on the tiny models.
"""
from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from ..datasets.captions import prefix, split_tags
from ..errors import LoraLabError


@dataclass(frozen=True)
class Preset:
    name: str
    label: str
    description: str
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


def _preset(family: str, resolution: int, batch: int, checkpointing: bool,
            device: str = "cuda") -> dict[str, dict[str, Any]]:
    return {
        "model": {"family": family},
        "dataset": {"resolution": resolution, "min_bucket": 0, "max_bucket": 0, "cache_latents": True},
        "network": {"rank": 32, "alpha": 16.0},
        "train": {"batch_size": batch, "epochs": 10, "lr": 1e-4, "optimizer": "adamw",
                  "scheduler": "cosine", "mixed_precision": "bf16",
                  "gradient_checkpointing": checkpointing, "device": device},
    }


# What a low-VRAM variant changes: fewer weights and optimizer states, recomputed activations,
# fp16 (which pre-Ampere cards also run), and a UNet-only LoRA. (The UNets are small enough
# to keep in full precision; the transformer families' variants store theirs in int8.)
_LOW_VRAM = {
    "network": {"rank": 16, "alpha": 8.0, "train_text_encoder": False},
    "train": {"batch_size": 1, "optimizer": "adamw8bit", "mixed_precision": "fp16",
              "gradient_checkpointing": True, "device": "cuda"},
}


def _low_vram(overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {table: {**values, **_LOW_VRAM.get(table, {})} for table, values in overrides.items()}


_SD15, _SDXL = _preset("sd15", 512, 2, False, "auto"), _preset("sdxl", 1024, 1, True, "auto")
# Z-Image Turbo samples in 8 steps without guidance; the base model wants both, as ai-toolkit's
# presets have them. bf16 in both: the transformer overflows in fp16.
_ZIMAGE_TURBO = {**_preset("zimage", 1024, 1, True), "sample": {"steps": 8, "guidance": 0.0}}
_ZIMAGE_BASE = {**_preset("zimage", 1024, 1, True), "sample": {"steps": 30, "guidance": 4.0}}


def _flow_low_vram(overrides: dict[str, dict[str, Any]], resolution: int, rank: int,
                   alpha: float) -> dict[str, dict[str, Any]]:
    """A transformer family's low-VRAM variant: its weights stored in int8 (half of bf16),
    8-bit AdamW, a smaller rank and resolution."""
    return {**overrides, "model": {**overrides["model"], "quantize": "int8"},
            "dataset": {**overrides["dataset"], "resolution": resolution},
            "network": {"rank": rank, "alpha": alpha},
            "train": {**overrides["train"], "optimizer": "adamw8bit"}}


# FLUX.1 [dev] samples as its model card does (50 steps, embedded guidance 3.5), [schnell] in 4
# steps without guidance; Chroma1-HD in 40 steps at real CFG 3 with the card's negative prompt.
_FLUX_DEV = {**_preset("flux", 1024, 1, True), "network": {"rank": 16, "alpha": 16.0},
             "sample": {"steps": 50, "guidance": 3.5}}
_FLUX_SCHNELL = {**_FLUX_DEV, "sample": {"steps": 4, "guidance": 0.0}}
_CHROMA = {**_preset("chroma", 1024, 1, True), "network": {"rank": 16, "alpha": 16.0},
           "sample": {"steps": 40, "guidance": 3.0, "negative": "low quality, ugly, unfinished, out of focus, "
                      "deformed, disfigure, blurry, smudged, restricted palette, flat colors"}}
# Qwen-Image samples as its model card does: 50 steps, true CFG 4 (negative prompt " "). bf16:
# its activations pass fp16's range (diffusers clips them there); the 20B transformer's weights
# alone take about 41 GB in bf16, 20 GB in int8.
_QWENIMAGE = {**_preset("qwenimage", 1024, 1, True), "sample": {"steps": 50, "guidance": 4.0}}
# FLUX.2 [klein]: LoRAs train on the undistilled base models (FLUX.2-klein-base-4B / -9B), which
# sample as their cards do, in 50 steps at CFG 4.
_FLUX2KLEIN = {**_preset("flux2klein", 1024, 1, True), "sample": {"steps": 50, "guidance": 4.0}}
PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("sd15", "SD 1.5", "512 px, rank 32 / alpha 16, AdamW at 1e-4, batch 2, bf16", _SD15),
    Preset("sd15-lowvram", "SD 1.5, low VRAM (6-8 GB)", "rank 16, batch 1, gradient "
           "checkpointing, 8-bit AdamW, fp16 (also on pre-Ampere cards), UNet only", _low_vram(_SD15)),
    Preset("sdxl", "SDXL", "1024 px, rank 32 / alpha 16, AdamW at 1e-4, batch 1, bf16, "
           "gradient checkpointing (fits 24 GB)", _SDXL),
    Preset("sdxl-lowvram", "SDXL, low VRAM (12-16 GB)", "rank 16, batch 1, gradient "
           "checkpointing, 8-bit AdamW, fp16, UNet only", _low_vram(_SDXL)),
    Preset("zimage-turbo", "Z-Image Turbo", "1024 px, rank 32 / alpha 16, AdamW at 1e-4, batch 1, "
           "bf16, gradient checkpointing; samples in 8 steps without guidance", _ZIMAGE_TURBO),
    Preset("zimage-turbo-lowvram", "Z-Image Turbo, low VRAM (16-24 GB)", "768 px, rank 16, "
           "transformer stored in int8, 8-bit AdamW, bf16, gradient checkpointing",
           _flow_low_vram(_ZIMAGE_TURBO, 768, 16, 8.0)),
    Preset("zimage", "Z-Image (base)", "1024 px, rank 32 / alpha 16, AdamW at 1e-4, batch 1, bf16, "
           "gradient checkpointing; samples in 30 steps at guidance 4", _ZIMAGE_BASE),
    Preset("flux-dev", "FLUX.1 [dev]", "1024 px, rank 16 / alpha 16, AdamW at 1e-4, batch 1, bf16, "
           "gradient checkpointing; samples in 50 steps at guidance 3.5", _FLUX_DEV),
    Preset("flux-dev-lowvram", "FLUX.1 [dev], low VRAM (24 GB)", "512 px, rank 8, transformer stored "
           "in int8 (12 GB), 8-bit AdamW, bf16, gradient checkpointing", _flow_low_vram(_FLUX_DEV, 512, 8, 8.0)),
    Preset("flux-schnell", "FLUX.1 [schnell]", "as flux-dev; samples in 4 steps without guidance (train it "
           "through a training adapter, model.adapter)", _FLUX_SCHNELL),
    Preset("chroma", "Chroma", "1024 px, rank 16 / alpha 16, AdamW at 1e-4, batch 1, bf16, gradient "
           "checkpointing; samples in 40 steps at guidance 3 with a negative prompt", _CHROMA),
    Preset("chroma-lowvram", "Chroma, low VRAM (24 GB)", "512 px, rank 8, transformer stored in int8, "
           "8-bit AdamW, bf16, gradient checkpointing", _flow_low_vram(_CHROMA, 512, 8, 8.0)),
    Preset("qwenimage", "Qwen-Image", "1024 px, rank 32 / alpha 16, AdamW at 1e-4, batch 1, bf16, "
           "gradient checkpointing; samples in 50 steps at true CFG 4", _QWENIMAGE),
    Preset("qwenimage-lowvram", "Qwen-Image, lower VRAM (48 GB)", "768 px, rank 16, transformer "
           "stored in int8 (20 GB), 8-bit AdamW, bf16, gradient checkpointing",
           _flow_low_vram(_QWENIMAGE, 768, 16, 8.0)),
    Preset("flux2-klein", "FLUX.2 [klein] (base 4B / 9B)", "1024 px, rank 32 / alpha 16, AdamW at 1e-4, "
           "batch 1, bf16, gradient checkpointing; samples in 50 steps at CFG 4", _FLUX2KLEIN),
    Preset("flux2-klein-lowvram", "FLUX.2 [klein], low VRAM", "768 px, rank 16, transformer stored in "
           "int8 (4B: about 4 GB), 8-bit AdamW, bf16, gradient checkpointing",
           _flow_low_vram(_FLUX2KLEIN, 768, 16, 8.0)),
)}


def preset_for(family: str) -> str:
    """The name of ``family``'s default preset (its first one); sd15's for a family with none."""
    return next((p.name for p in PRESETS.values() if p.overrides["model"]["family"] == family), "sd15")


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise LoraLabError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}") from None


def apply_preset(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` (TrainConfig data) with preset ``name``'s settings over it."""
    out = copy.deepcopy(config)
    for table, values in get_preset(name).overrides.items():
        out.setdefault(table, {}).update(values)
    return out


def preset_config(name: str) -> dict[str, dict[str, Any]]:
    """Every TrainConfig field (the tables model, dataset, network, train, save, sample, track) at its
    default with preset ``name``'s settings over them: what a form starts from. The base model
    and the dataset source have no default and are left empty for the user to fill in."""
    from .config import TrainConfig  # tomli_w and the sections: light, but only wanted here

    defaults = {table: {f.name: "" if f.default is dataclasses.MISSING else
                        list(f.default) if isinstance(f.default, tuple) else f.default
                        for f in dataclasses.fields(section)}
                for table, section in get_type_hints(TrainConfig).items()}
    return apply_preset(name, defaults)


SAMPLE_ROUNDS = 4  # how often a form's default samples the run: a quarter, half, ... the end


def sample_prompts(captions: list[str], trigger: str, n: int = 2) -> list[str]:
    """Default sample prompts: the trigger word alone (what the LoRA learned on its own), then
    the ``n`` captions most typical of the dataset (those whose tags the most images share;
    the shortest on a tie), each with the trigger word first as training puts it."""
    shared = Counter(t for c in captions for t in set(split_tags(c)))

    def typical(caption: str) -> float:
        tags = set(split_tags(caption))
        return sum(shared[t] for t in tags) / max(len(tags), 1)

    picked = sorted(set(captions), key=lambda c: (-typical(c), len(c), c))[:n]
    prompts = ([trigger] if trigger else []) + [prefix(c, trigger) if trigger else c for c in picked]
    return list(dict.fromkeys(prompts))


def sample_every(total_steps: int) -> int:
    """Default sample.every_n_steps: about :data:`SAMPLE_ROUNDS` rounds over the run, at a
    round number (750, 250, 60, 6)."""
    every = max(1, total_steps // SAMPLE_ROUNDS)
    unit = 50 if every >= 100 else 5 if every >= 10 else 1
    return every // unit * unit
