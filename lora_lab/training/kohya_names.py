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


_RESNET_BACK = {v: k for k, v in _RESNET.items()}
_TOP_BACK = {v: k for k, v in _TOP.items()}


def _child_back(rest: str) -> str:
    for ldm, diffusers in _RESNET_BACK.items():
        if rest == ldm or rest.startswith(f"{ldm}."):
            return diffusers + rest[len(ldm):]
    return rest


def diffusers_unet_path(path: str, layers_per_block: int) -> str:
    """The diffusers path of LDM UNet module ``path``: :func:`ldm_unet_path` backwards, for a UNet
    with ``layers_per_block`` resnets per down block (an up-sampler's index, 1 or 2, tells whether
    its block has attention, so nothing else of the config is needed)."""
    if path in _TOP_BACK:
        return _TOP_BACK[path]
    m = re.fullmatch(r"(input_blocks|middle_block|output_blocks)\.(\d+)\.(?:(\d+)\.)?(.+)", path)
    if not m or (m[1] != "middle_block" and m[3] is None):
        raise ValueError(f"no diffusers name for LDM UNet module {path!r}")
    kind, level, rest = m[1], int(m[2]), m[4]
    slot = int(m[3]) if m[3] is not None else None
    if kind == "middle_block":
        rest = rest if slot is None else f"{slot}.{rest}"  # middle_block.N.<module>: N is the level
        return f"mid_block.attentions.0.{rest}" if level == 1 else f"mid_block.resnets.{level // 2}.{_child_back(rest)}"
    per_level = layers_per_block + 1
    if kind == "input_blocks":
        block, index = divmod(level - 1, per_level)
        if index == layers_per_block:
            return f"down_blocks.{block}.downsamplers.0.conv"
        side = "down"
    else:
        block, index = divmod(level, per_level)
        if slot == 2 or (slot == 1 and rest == "conv"):
            return f"up_blocks.{block}.upsamplers.0.{rest}"
        side = "up"
    if slot == 0:
        return f"{side}_blocks.{block}.resnets.{index}.{_child_back(rest)}"
    return f"{side}_blocks.{block}.attentions.{index}.{rest}"


def layers_per_block(paths: Any, naming: str) -> int | None:
    """A UNet's resnets per down block as the LoRA module ``paths`` show it (``naming``: "ldm" or
    "diffusers"), or None where they do not: the longest run of adjacent adapted LDM input levels
    (down-sampler levels part them), or the highest resnet/attention index in a block."""
    if naming == "diffusers":
        found = [int(m[2]) + (m[1] == "down") for p in paths
                 if (m := re.match(r"(down|up)_blocks\.\d+\.(?:resnets|attentions)\.(\d+)\.", p))]
        return max(found) if found else None
    levels = sorted({int(m[1]) for p in paths if (m := re.match(r"input_blocks\.(\d+)\.([01])\.(?!op$)", p))
                     and int(m[1]) > 0})
    if not levels:
        return None
    runs, run = [], 1
    for before, after in zip(levels, levels[1:]):
        run = run + 1 if after == before + 1 else 1
        runs.append(run)
    return max([1, *runs])
