"""The model families lora_lab trains, one module each: adding a family means adding a module
that declares a :class:`~.base.Family` and listing it here."""
from __future__ import annotations

from ...errors import LoraLabError
from .base import Batch, Conditioning, Family, Objective
from .chroma import CHROMA
from .flux import FLUX
from .flux2klein import FLUX2KLEIN
from .qwenimage import QWENIMAGE
from .sd import SD15, SDXL
from .zimage import ZIMAGE

FAMILIES: dict[str, Family] = {f.name: f for f in (SD15, SDXL, ZIMAGE, FLUX, CHROMA, QWENIMAGE, FLUX2KLEIN)}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise LoraLabError(f"unknown model family {name!r}; lora_lab trains "
                           f"{', '.join(FAMILIES)}") from None


def family_of_pipeline(class_name: str) -> Family | None:
    """The family whose diffusers pipeline class is ``class_name`` (model_index.json's)."""
    return next((f for f in FAMILIES.values() if f.pipeline == class_name), None)


__all__ = ["FAMILIES", "Batch", "Conditioning", "Family", "Objective", "family_of_pipeline", "get_family"]
