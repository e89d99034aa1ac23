"""LoRA files in and out for resize and merge: read into :mod:`.layouts`' modules (one reader for
every layout and family, fused BFL modules split into their diffusers parts) and written back
through its writer, atomically, with fresh ``sshs_*`` hashes; and the checks of an output path."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

from lora_lab.atomic import write_bytes
from lora_lab.errors import LoraLabError
from lora_lab.training.families import FAMILIES
from lora_lab.training.lora_file import lora_family, lora_format, lora_hashes, read_lora

from .layouts import ADAPTER_METADATA, Lora, read_modules, write_modules


@dataclass
class LoraFile:
    """A LoRA file as read: its tensors and metadata, layout and family; ``modules`` (and the
    file's ``keys`` of them) are read from them when first asked for."""
    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    format: str
    family: str

    @cached_property
    def _read(self) -> tuple[dict[str, Lora], dict[str, str]]:
        keys: dict[str, str] = {}
        return read_modules(self.tensors, self.metadata, self.format, self.family, keys), keys

    @property
    def modules(self) -> dict[str, Lora]:
        """{component-prefixed diffusers module: Lora} (see :mod:`.layouts`)."""
        return self._read[0]

    @property
    def keys(self) -> dict[str, str]:
        """{module: its key in the file} (kohya's and ComfyUI's layouts; empty for diffusers')."""
        return self._read[1]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of its weights (the most common one; alphas aside)."""
        dtypes = Counter(t.dtype for k, t in self.tensors.items() if not k.endswith(".alpha"))
        return dtypes.most_common(1)[0][0]

    @property
    def dora(self) -> bool:
        return any(k.endswith(".dora_scale") or ".lora_magnitude_vector" in k for k in self.tensors)

    @property
    def max_rank(self) -> int:
        """The largest rank of a module (a fused BFL module's parts counted each)."""
        return max(lora.rank for lora in self.modules.values())


def read_file(path: str | os.PathLike) -> LoraFile:
    """The LoRA file ``path``, or a LoraLabError for a file that is no LoRA or of no family
    lora-lab knows."""
    path = Path(path)
    tensors, metadata = read_lora(path)
    family = lora_family(tensors, metadata)
    if family not in FAMILIES:
        raise LoraLabError(f"cannot tell which model family {path.name} is for (its metadata and keys "
                           f"say {family!r}); lora-lab's tools read LoRAs of {', '.join(FAMILIES)}")
    return LoraFile(path, tensors, metadata, lora_format(tensors), family)


def write_file(modules: dict[str, Lora], fmt: str, family: str, out: Path, metadata: dict[str, str],
               dtype: torch.dtype, keys: dict[str, str] | None = None) -> Path:
    """``modules``, their weights in ``dtype``, written in layout ``fmt`` to ``out`` atomically
    with ``metadata`` (the layout's own, diffusers' adapter configs, replacing any it has) and
    fresh sshs hashes; ``keys``: those modules keep (see :func:`.layouts.write_modules`)."""
    cast = {m: Lora(lora.down.to(dtype).contiguous(), lora.up.to(dtype).contiguous(), lora.alpha)
            for m, lora in modules.items()}
    tensors, layout_meta = write_modules(cast, fmt, family, keys)
    meta = {k: v for k, v in metadata.items() if not k.startswith("sshs_") and k != ADAPTER_METADATA}
    meta |= layout_meta
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = lora_hashes(tensors, meta)
    write_bytes(out, safetensors_bytes(tensors, meta))
    return out


def check_output(out: str | os.PathLike, inputs: list[Path], *, folder: bool = False) -> Path:
    """Refuse an output (a .safetensors file, or with ``folder`` a folder) that exists or is one
    of the inputs: the tools never overwrite anything."""
    out = Path(out)
    if not folder and out.suffix != ".safetensors":
        raise LoraLabError(f"--out must name a .safetensors file (UIs list only those): {out.name}")
    if any(out.resolve() == p.resolve() for p in inputs):
        raise LoraLabError(f"--out {out} is an input file: write the result to a new file")
    if out.exists():
        raise LoraLabError(f"--out {out} already exists: choose a new name (nothing is overwritten)")
    if not out.parent.is_dir():
        raise LoraLabError(f"--out {out}: folder {out.parent} does not exist")
    return out
