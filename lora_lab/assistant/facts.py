"""What the rules know besides the model's answer: the dataset (images, their sizes, captions),
the base model's family, and the GPU's memory as ``lora-lab doctor`` reads it. Gathered before
any model loads, so an unknown or empty dataset or a bad base model is refused first."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from ..errors import LoraLabError, NotFound
from ..training.base_model import detect_family, local_models
from ..training.data import ImageSize, measure_images, source_captions
from ..workspace import Workspace


@dataclass(frozen=True)
class Facts:
    source: str  # the dataset name or folder, as dataset.source takes it
    images: int
    uncaptioned: int
    captions: tuple[str, ...] = ()
    sizes: tuple[ImageSize, ...] = ()
    base: str = ""  # as given; "" = pick one
    base_family: str | None = None
    local_bases: tuple[tuple[str, str], ...] = ()  # (path, family) of the models in models/
    gpu: str | None = None  # the largest GPU's name; None: no GPU
    vram_gb: float | None = None

    @property
    def typical_side(self) -> int:
        """The median image's side, as a square of its area (what a bucket holds)."""
        return int(statistics.median(math.sqrt(s.width * s.height) for s in self.sizes)) if self.sizes else 0

    def describe(self) -> str:
        """The facts as the model reads them, in a few lines."""
        gpu = f"{self.gpu}, {self.vram_gb:.0f} GB" if self.gpu else "none (CPU only)"
        return "\n".join([
            f"Dataset: {self.images} images, typically {self.typical_side} px; "
            f"{self.images - self.uncaptioned} captioned, {self.uncaptioned} without a caption.",
            f"Base model: {self.base or 'not chosen'}" + (f" ({self.base_family})" if self.base_family else ""),
            f"GPU: {gpu}."])

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "images": self.images, "uncaptioned": self.uncaptioned,
                "typical_side": self.typical_side, "base": self.base, "base_family": self.base_family,
                "gpu": self.gpu, "vram_gb": self.vram_gb}


def gather(dataset: str, base: str = "", workspace: Workspace | None = None) -> Facts:
    """The facts for ``dataset`` (a name or a folder) and ``base`` (may be empty)."""
    ws = workspace or Workspace()
    try:
        captions = source_captions(dataset, ".txt", ws)
    except NotFound:
        raise NotFound(f"dataset {dataset!r} not found: neither a dataset in {ws.datasets} nor a "
                       "folder (see `lora-lab dataset list`)") from None
    if not captions.images:
        raise LoraLabError(f"{captions.where} has no images: nothing to suggest settings for; add "
                           "some first (`lora-lab dataset ingest SRC --name NAME`)")
    family = detect_family(base) if base else None
    gpu, vram = _largest_gpu(ws)
    bases = tuple((str(p), f) for p, f in local_models(ws.models)) if ws.models.is_dir() else ()
    return Facts(dataset, captions.images, len(captions.uncaptioned), tuple(captions.captions),
                 tuple(measure_images(dataset, ws)), base, family, bases, gpu, vram)


def _largest_gpu(ws: Workspace) -> tuple[str | None, float | None]:
    """The GPU with the most memory, as the doctor's GPU line reads it (NVML)."""
    from ..doctor import Box

    gpus = Box(ws).gpus
    if not gpus:
        return None, None
    top = max(gpus, key=lambda g: g["memory_total_mb"])
    return top["name"], round(top["memory_total_mb"] / 1024, 1)
