"""The UNet module names kohya sd-scripts writes for SDXL: LDM (`input_blocks` / `middle_block` /
`output_blocks`) paths, as in its `library/sdxl_original_unet.py`.

A1111 finds LDM-named SDXL keys as they are; diffusers-style ones it converts with SD1.5's
numbers, which put SDXL's first up-sampler at the wrong index, so a LoCon loses that layer.
ComfyUI and diffusers map both namings. The block numbers come from the UNet's config
(layers per block, which blocks have attention), so any SDXL-shaped UNet, tiny ones included,
gets the numbers its LDM layout has.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# diffusers ResnetBlock2D layer -> LDM ResBlock layer (its Sequential indices); only the
# Linear / Conv layers a LoRA can adapt
_RESNET = {"conv1": "in_layers.2", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
           "time_emb_proj": "emb_layers.1"}
# those outside the down/mid/up blocks
_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2", "conv_out": "out.2"}
_BLOCK = re.compile(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)")
_MID = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")
_LDM_BLOCKS = ("input_blocks", "middle_block", "output_blocks")


def uses_ldm_names(unet: Any) -> bool:
    """SDXL-family UNets (micro-conditioning on time ids) get sd-scripts' SDXL names."""
    return getattr(unet.config, "addition_embed_type", None) == "text_time"


def _res_counts(config: Mapping[str, Any]) -> list[int]:
    per_block = config["layers_per_block"]
    n = len(config["down_block_types"])
    return [per_block] * n if isinstance(per_block, int) else list(per_block)


def _child(kind: str, rest: str) -> str:
    if kind != "resnets":
        return rest
    head, _, tail = rest.partition(".")
    return ".".join(filter(None, (_RESNET.get(head, head), tail)))


def ldm_unet_path(path: str, config: Mapping[str, Any]) -> str:
    """The LDM path of the diffusers UNet module ``path`` (e.g. `up_blocks.0.upsamplers.0.conv`
    -> `output_blocks.2.2.conv` in SDXL), numbered from the UNet's ``config``.

    LDM numbers one level per resnet, plus one for each down-sampler; an up block's last level
    also holds its up-sampler, after the attention when the block has one (index 2, else 1).
    """
    if path in _TOP:
        return _TOP[path]
    if m := _MID.fullmatch(path):
        kind, index, rest = m[1], int(m[2]), m[3]
        return f"middle_block.{1 if kind == 'attentions' else 2 * index}.{_child(kind, rest)}"
    m = _BLOCK.fullmatch(path)
    if not m:
        raise ValueError(f"no LDM name for UNet module {path!r}")
    side, block, kind, index, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
    counts = _res_counts(config)
    if side == "down":
        level = 1 + sum(c + 1 for c in counts[:block])
        if kind == "downsamplers":
            return f"input_blocks.{level + counts[block]}.0.op"  # Downsample2D's one conv
        return f"input_blocks.{level + index}.{1 if kind == 'attentions' else 0}.{_child(kind, rest)}"
    ups = [c + 1 for c in reversed(counts)]  # an up block has one resnet more than its down block
    level = sum(ups[:block])
    if kind == "upsamplers":
        has_attention = "CrossAttn" in config["up_block_types"][block]
        return f"output_blocks.{level + ups[block] - 1}.{2 if has_attention else 1}.{rest}"
    return f"output_blocks.{level + index}.{1 if kind == 'attentions' else 0}.{_child(kind, rest)}"


def unet_naming(keys: Any) -> str | None:
    """Which UNet naming a kohya file's keys use: "ldm", "diffusers", or None (no UNet keys)."""
    unet = [k[len("lora_unet_"):] for k in keys if k.startswith("lora_unet_")]
    if not unet:
        return None
    return "ldm" if any(k.startswith(_LDM_BLOCKS) for k in unet) else "diffusers"
