"""``lora-lab lora convert``: a LoRA file from one key layout to another, losslessly.

Layouts (kohya, diffusers, comfyui) per family are defined in :mod:`.layouts`. The weights move
unchanged, so a file converted and converted back holds the same bytes, and every layout loads
into the same model. Metadata travels along (sd-scripts' ``ss_*``, ``modelspec.*``, anything
else) but for what belongs to one layout: diffusers' adapter configs are written for diffusers
files only, and the ``sshs_*`` hashes are recomputed for the new tensors.

Converting a file to the layout it already has copies its tensors unchanged (hashes recomputed):
scripts can convert a folder of mixed files to one layout without sorting them first. The input
file is never written; the output is written atomically and an existing one is replaced only
when asked (``force``).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from lora_lab.atomic import write_bytes
from lora_lab.errors import Conflict, LoraLabError
from lora_lab.training.families import FAMILIES
from lora_lab.training.lora_file import lora_family, lora_format, lora_hashes, read_lora

from .layouts import ADAPTER_METADATA, FORMATS, read_modules, write_modules

_HASHES = ("sshs_model_hash", "sshs_legacy_hash")


def file_family(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], family: str | None = None) -> str:
    """``family`` checked, or the one the file says it is for; a LoraLabError where neither tells."""
    if family is not None:
        if family not in FAMILIES:
            raise LoraLabError(f"unknown family {family!r}; lora-lab knows {', '.join(FAMILIES)}")
        return family
    found = lora_family(tensors, metadata)
    if found not in FAMILIES:
        raise LoraLabError(f"cannot tell which model family this LoRA is for (its metadata names "
                           f"{found!r}); say it with --family ({', '.join(FAMILIES)})")
    return found


def convert_state(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], to: str, *,
                  family: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A LoRA's tensors and metadata in layout ``to`` ("kohya", "diffusers" or "comfyui"), from
    any layout of any family lora-lab trains; ``family`` where the file does not say it. The
    returned metadata carries hashes of the returned tensors."""
    if to not in FORMATS:
        raise LoraLabError(f"unknown LoRA layout {to!r}: use one of {', '.join(FORMATS)}")
    source = lora_format(tensors)
    if source is None:
        raise LoraLabError("these tensors hold no LoRA weights (no kohya, diffusers or ComfyUI LoRA keys)")
    if source == to:
        out = dict(tensors)
    else:
        family = file_family(tensors, metadata, family)
        out, layout_meta = write_modules(read_modules(tensors, metadata, source, family), to, family)
    meta = {k: v for k, v in metadata.items() if k not in _HASHES and (k != ADAPTER_METADATA or to == "diffusers")}
    if source != to:
        meta |= layout_meta
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = lora_hashes(out, meta)
    return out, meta


def convert_file(src: str | os.PathLike, to: str, out: str | os.PathLike, *, family: str | None = None,
                 force: bool = False) -> dict[str, Any]:
    """Write ``src`` in layout ``to`` as ``out`` (atomically); returns what was done: path, from,
    to, family, modules, copied (True where ``src`` already had that layout)."""
    src, out = Path(src), Path(out)
    if out.suffix != ".safetensors":
        raise LoraLabError(f"the output name must end in .safetensors (UIs list only those): {out.name}")
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise LoraLabError(f"{out} is the input file: choose another output (the input is never written)")
    if out.exists() and not force:
        raise Conflict(f"{out} exists; not overwriting it (--force replaces it)")
    if out.is_dir():
        raise LoraLabError(f"{out} is a folder; name the output file")
    tensors, metadata = read_lora(src)
    source = lora_format(tensors)
    family_name = lora_family(tensors, metadata) if source == to and family is None else \
        file_family(tensors, metadata, family)
    converted, meta = convert_state(tensors, metadata, to, family=family)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(out, safetensors_bytes(converted, meta))
    modules = sum(k.endswith((".lora_down.weight", ".lora_A.weight")) for k in converted)
    return {"path": str(out), "from": source, "to": to, "family": family_name, "modules": modules,
            "copied": source == to}
