"""A LoRA file as per-module (down, up, alpha) pairs, in whichever layout it was written, and
back: what resize and merge work on.

Layouts (lora_lab.training.lora_file reads them all): kohya (`X.lora_down.weight`,
`X.lora_up.weight`, a 0-dim `X.alpha`), ComfyUI (`diffusion_model.X` with lora_A/lora_B or
lora_down/lora_up, and `.alpha`) and diffusers/peft (`unet.X.lora_A.weight`, ...; alphas in the
`lora_adapter_metadata` JSON as peft's LoraConfig per model part). Every alpha is held as kohya
means it (scale = alpha / rank) and written back in the file's own way. A BFL-named module that
fuses several LoRAs (Flux/Chroma/Flux.2 q/k/v, see bfl_names) keeps how many it fuses in ``parts``.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

from lora_lab.atomic import write_bytes
from lora_lab.errors import LoraLabError
from lora_lab.training.bfl_names import block_diagonal_parts
from lora_lab.training.families import FAMILIES
from lora_lab.training.lora_file import lora_family, lora_format, lora_hashes, read_lora

# (down, up) key suffixes, kohya's first
_SUFFIXES = ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight"))
_DIFFUSERS_PARTS = ("unet", "transformer", "text_encoder", "text_encoder_2")
_ADAPTER_META = "lora_adapter_metadata"


@dataclass(frozen=True)
class Pair:
    """One module's LoRA: down [rank, in] (conv: [rank, in, k, k]), up [out, rank] (conv:
    [out, rank, 1, 1]) and kohya's alpha; ``parts`` > 1: BFL-fused, up block-diagonal."""
    down: torch.Tensor
    up: torch.Tensor
    alpha: float
    parts: int = 1

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self) -> torch.Tensor:
        """The update it adds to the weight, flattened to [out, in * k * k], in float32."""
        return (self.up.flatten(1).float() @ self.down.flatten(1).float()) * self.scale


@dataclass
class LoraFile:
    """A LoRA file read as pairs: ``prefix`` -> Pair, where the file's keys are
    ``prefix`` + a suffix of ``suffixes[prefix]``; ``metadata`` as read."""
    path: Path
    format: str
    family: str
    pairs: dict[str, Pair]
    suffixes: dict[str, tuple[str, str]]
    metadata: dict[str, str]
    dtype: torch.dtype
    dora: bool = False
    unet_names: str | None = None
    others: dict[str, torch.Tensor] = field(default_factory=dict)  # tensors that are no pair's

    @property
    def max_rank(self) -> int:
        """The largest rank of a single LoRA (a fused module's divided by its parts)."""
        return max(p.rank // p.parts for p in self.pairs.values())


def read_pairs(path: str | os.PathLike) -> LoraFile:
    """The file's modules as pairs, or a LoraLabError for a file that is no LoRA."""
    from lora_lab.training.kohya_names import unet_naming

    path = Path(path)
    tensors, metadata = read_lora(path)
    fmt = lora_format(tensors)
    family = lora_family(tensors, metadata)
    config = _adapter_config(metadata) if fmt == "diffusers" else {}
    bfl = _bfl_names(metadata)
    pairs, suffixes, used = {}, {}, set()
    for key in tensors:
        for down_suffix, up_suffix in _SUFFIXES:
            prefix = key.removesuffix(down_suffix)
            if prefix == key or prefix + up_suffix not in tensors:
                continue
            down, up = tensors[key], tensors[prefix + up_suffix]
            alpha = tensors.get(f"{prefix}.alpha")
            alpha = float(alpha) if alpha is not None else _config_alpha(config, prefix, down.shape[0])
            parts = 1
            if bfl is not None:
                module = prefix.removeprefix("diffusion_model.").removeprefix("lora_unet_")
                parts = block_diagonal_parts(up, bfl.parts(module))
            pairs[prefix] = Pair(down, up, alpha, parts)
            suffixes[prefix] = (down_suffix, up_suffix)
            used |= {key, prefix + up_suffix, f"{prefix}.alpha"}
    dora = any(k.endswith(".dora_scale") or ".lora_magnitude_vector" in k for k in tensors)
    dtypes = Counter(t.dtype for k, t in tensors.items() if not k.endswith(".alpha"))
    return LoraFile(path, fmt, family, pairs, suffixes, metadata, dtypes.most_common(1)[0][0], dora,
                    unet_naming(tensors) if fmt == "kohya" else None,
                    {k: v for k, v in tensors.items() if k not in used})


def _bfl_names(metadata: Mapping[str, str]):
    spec = next((f for f in FAMILIES.values()
                 if f.model_version == metadata.get("ss_base_model_version") and f.bfl_names), None)
    return spec.bfl_names if spec else None


def _adapter_config(metadata: Mapping[str, str]) -> dict:
    try:
        config = json.loads(metadata.get(_ADAPTER_META, "{}"))
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def _config_alpha(config: Mapping, prefix: str, rank: int) -> float:
    """The kohya alpha of diffusers module ``prefix`` (`unet.down_blocks...`) as peft resolves
    alpha_pattern / lora_alpha / use_rslora for it; alpha = rank without metadata."""
    part, _, module = prefix.partition(".")
    if f"{part}.lora_alpha" not in config:
        return float(rank)
    alpha = float(config[f"{part}.lora_alpha"])
    for pattern, value in (config.get(f"{part}.alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = float(value)
            break
    return alpha * math.sqrt(rank) if config.get(f"{part}.use_rslora") else alpha


# ---------------------------------------------------------------- writing

def file_tensors(lora: LoraFile, pairs: Mapping[str, Pair], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors of ``pairs`` under ``lora``'s keys (a prefix not in it takes the kohya or
    lora_A/lora_B suffixes its format uses); kohya/ComfyUI alphas as float32 0-dim tensors."""
    out: dict[str, torch.Tensor] = {}
    default = _SUFFIXES[1] if lora.format == "diffusers" or _uses_peft_suffixes(lora) else _SUFFIXES[0]
    for prefix, pair in pairs.items():
        down_suffix, up_suffix = lora.suffixes.get(prefix, default)
        out[prefix + down_suffix] = pair.down.to(dtype).contiguous()
        out[prefix + up_suffix] = pair.up.to(dtype).contiguous()
        if lora.format != "diffusers":
            out[f"{prefix}.alpha"] = torch.tensor(float(pair.alpha), dtype=torch.float32)
    return out


def _uses_peft_suffixes(lora: LoraFile) -> bool:
    return bool(lora.suffixes) and next(iter(lora.suffixes.values())) == _SUFFIXES[1]


def diffusers_metadata(lora: LoraFile, pairs: Mapping[str, Pair]) -> dict[str, str]:
    """``lora``'s adapter metadata with r / lora_alpha / rank_pattern / alpha_pattern made to
    say ``pairs``' ranks and alphas (the most common as the default, the rest as patterns keyed
    by module path, which peft matches as a suffix of the model's module names)."""
    config = _adapter_config(lora.metadata)
    for part in _DIFFUSERS_PARTS:
        mine = {p.removeprefix(f"{part}."): pair for p, pair in pairs.items() if p.startswith(f"{part}.")}
        if not mine:
            continue
        rank = Counter(p.rank for p in mine.values()).most_common(1)[0][0]
        alpha = Counter(p.alpha for p in mine.values()).most_common(1)[0][0]
        config |= {
            f"{part}.r": rank, f"{part}.lora_alpha": alpha, f"{part}.use_rslora": False,
            f"{part}.rank_pattern": {_pattern(m): p.rank for m, p in mine.items() if p.rank != rank},
            f"{part}.alpha_pattern": {_pattern(m): p.alpha for m, p in mine.items() if p.alpha != alpha},
        }
        config.setdefault(f"{part}.target_modules", sorted(m.removeprefix("text_model.") for m in mine))
    return {_ADAPTER_META: json.dumps(config, indent=2, sort_keys=True)}


def _pattern(module: str) -> str:
    # transformers 5 drops CLIP's `text_model.` level that files keep: match with or without it
    return re.escape(module.removeprefix("text_model."))


def save_pairs(lora: LoraFile, pairs: Mapping[str, Pair], out: str | os.PathLike,
               metadata: Mapping[str, str], dtype: torch.dtype | None = None) -> Path:
    """Write ``pairs`` (plus ``lora``'s other tensors) in ``lora``'s layout to ``out``,
    atomically, with ``metadata`` and fresh sshs hashes."""
    out = Path(out)
    tensors = {**lora.others, **file_tensors(lora, pairs, dtype or lora.dtype)}
    meta = {k: v for k, v in metadata.items() if not k.startswith("sshs_")}
    if lora.format == "diffusers":
        meta |= diffusers_metadata(lora, pairs)
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
