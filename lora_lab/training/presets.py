"""Starting points for a training config: the settings kohya and ai-toolkit users reach for
first on SD1.5 and SDXL, and low-VRAM variants that trade speed for memory.

A preset is a set of TrainConfig overrides ({table: {key: value}}), with the buckets back at
the family's defaults (0) so they fit its resolution; the base model, the dataset and the
trigger stay the user's. Every key here is a real TrainConfig key (tests check it).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from ..errors import LoraLabError


@dataclass(frozen=True)
class Preset:
    name: str
    label: str
    description: str
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("sd15", "SD 1.5", "512 px, rank 32 / alpha 16, AdamW at 1e-4, batch 2, bf16", {
        "model": {"family": "sd15"},
        "dataset": {"resolution": 512, "min_bucket": 0, "max_bucket": 0, "cache_latents": True},
        "network": {"rank": 32, "alpha": 16.0},
        "train": {"batch_size": 2, "epochs": 10, "lr": 1e-4, "optimizer": "adamw",
                  "scheduler": "cosine", "mixed_precision": "bf16", "gradient_checkpointing": False},
    }),
    Preset("sd15-lowvram", "SD 1.5, low VRAM (6-8 GB)",
           "rank 16, batch 1, gradient checkpointing, 8-bit AdamW, fp16 (also on pre-Ampere cards)", {
               "model": {"family": "sd15"},
               "dataset": {"resolution": 512, "min_bucket": 0, "max_bucket": 0, "cache_latents": True},
               "network": {"rank": 16, "alpha": 8.0, "train_text_encoder": False},
               "train": {"batch_size": 1, "epochs": 10, "lr": 1e-4, "optimizer": "adamw8bit",
                         "scheduler": "cosine", "mixed_precision": "fp16",
                         "gradient_checkpointing": True},
           }),
    Preset("sdxl", "SDXL", "1024 px, rank 32 / alpha 16, AdamW at 1e-4, batch 1, bf16, "
                           "gradient checkpointing (fits 24 GB)", {
        "model": {"family": "sdxl"},
        "dataset": {"resolution": 1024, "min_bucket": 0, "max_bucket": 0, "cache_latents": True},
        "network": {"rank": 32, "alpha": 16.0},
        "train": {"batch_size": 1, "epochs": 10, "lr": 1e-4, "optimizer": "adamw",
                  "scheduler": "cosine", "mixed_precision": "bf16", "gradient_checkpointing": True},
    }),
    Preset("sdxl-lowvram", "SDXL, low VRAM (12-16 GB)",
           "rank 16, batch 1, gradient checkpointing, 8-bit AdamW, fp16, UNet only", {
               "model": {"family": "sdxl"},
               "dataset": {"resolution": 1024, "min_bucket": 0, "max_bucket": 0, "cache_latents": True},
               "network": {"rank": 16, "alpha": 8.0, "train_text_encoder": False},
               "train": {"batch_size": 1, "epochs": 10, "lr": 1e-4, "optimizer": "adamw8bit",
                         "scheduler": "cosine", "mixed_precision": "fp16",
                         "gradient_checkpointing": True},
           }),
)}


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
