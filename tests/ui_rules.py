"""How the UIs read kohya LoRA files, re-implemented from the rules their sources publish.

The tests check lora_lab's files against these, never against lora_lab's own naming code.
Facts taken from (not code copied):

- ComfyUI `comfy/utils.py` `unet_to_diffusers`: the LDM layout walks the levels in order.
  Down level x holds one `input_blocks.N` per resnet (`.0` the resnet, `.1` its attention) and
  then one for its down-sampler (`.0.op`), N counting from 1 (`input_blocks.0` is conv_in). The
  middle block is resnet, attention, resnet (`middle_block.0/.1/.2`). Up level x holds one
  `output_blocks.N` per resnet (one resnet more than its down level), `.0` the resnet, `.1` the
  attention; the last one also holds the up-sampler, after the attention when there is one
  (`.2.conv`), else at `.1.conv`. Resnet children: conv1 = in_layers.2, conv2 = out_layers.3,
  conv_shortcut = skip_connection, time_emb_proj = emb_layers.1. ComfyUI looks SDXL LoRA keys
  up as `lora_unet_` + LDM path (dots as `_`) and as the diffusers names mapped by this layout.
- A1111 `extensions-builtin/Lora/networks.py` (`convert_diffusers_name_to_compvis`, `load_network`):
  a key is converted with SD1.5's numbers (3 levels a block; the up-sampler of up block 0 at
  index 1, the others at 2) and looked up among the model's LDM modules (`diffusion_model_…`);
  when that finds nothing, `lora_unet` is replaced by `diffusion_model` ("SDXL loras seem to
  already have correct compvis keys"). A key found neither way is dropped (logged at debug).
- ComfyUI `comfy/weight_adapter/base.py` `weight_decompose` (DoRA): W' = W + alpha/rank * up @ down;
  a `dora_scale` with one entry per output channel multiplies W' per output row divided by the
  row norm of the *base* weight W; any other shape multiplies per input column divided by the
  column norm of W'; both add the weight dtype's eps to the norm.
"""
from __future__ import annotations

import re

import torch

RESNET = {"conv1": "in_layers.2", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
          "time_emb_proj": "emb_layers.1"}
TRANSFORMER_BLOCK = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                     "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2"]


def comfy_ldm_layout(config) -> dict[str, str]:
    """diffusers path -> LDM path of every weight-bearing module in a UNet's down, mid and up
    blocks, by walking the LDM levels as ComfyUI's unet_to_diffusers does."""
    levels = len(config["down_block_types"])
    res, depth = config["layers_per_block"], config["transformer_layers_per_block"]
    depth = [depth] * levels if isinstance(depth, int) else list(depth)
    layout: dict[str, str] = {}

    def resnet(src: str, dst: str) -> None:
        layout.update({f"{src}.{a}": f"{dst}.{b}" for a, b in RESNET.items()})

    def attention(src: str, dst: str, blocks: int) -> None:
        layout.update({f"{src}.{p}": f"{dst}.{p}" for p in ("proj_in", "proj_out")})
        layout.update({f"{src}.transformer_blocks.{t}.{p}": f"{dst}.transformer_blocks.{t}.{p}"
                       for t in range(blocks) for p in TRANSFORMER_BLOCK})

    n = 1
    for x, kind in enumerate(config["down_block_types"]):
        for i in range(res):
            resnet(f"down_blocks.{x}.resnets.{i}", f"input_blocks.{n}.0")
            if "CrossAttn" in kind:
                attention(f"down_blocks.{x}.attentions.{i}", f"input_blocks.{n}.1", depth[x])
            n += 1
        if x < levels - 1:
            layout[f"down_blocks.{x}.downsamplers.0.conv"] = f"input_blocks.{n}.0.op"
            n += 1
    resnet("mid_block.resnets.0", "middle_block.0")
    attention("mid_block.attentions.0", "middle_block.1", depth[-1])
    resnet("mid_block.resnets.1", "middle_block.2")
    n = 0
    for x, kind in enumerate(config["up_block_types"]):
        for i in range(res + 1):
            resnet(f"up_blocks.{x}.resnets.{i}", f"output_blocks.{n}.0")
            slot = 1
            if "CrossAttn" in kind:
                attention(f"up_blocks.{x}.attentions.{i}", f"output_blocks.{n}.1", depth[levels - 1 - x])
                slot = 2
            if i == res and x < levels - 1:
                layout[f"up_blocks.{x}.upsamplers.0.conv"] = f"output_blocks.{n}.{slot}.conv"
            n += 1
    return layout


def _a1111_suffix(kind: str, rest: str) -> str:
    return {a: b.replace(".", "_") for a, b in RESNET.items()}.get(rest, rest) if kind == "resnets" else rest


def a1111_compvis(key: str) -> str:
    """A1111's diffusers -> compvis conversion of a `lora_unet_…` module key (SD1.5 numbers)."""
    if m := re.fullmatch(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        level = 1 + 3 * int(m[1]) + int(m[3])
        return f"diffusion_model_input_blocks_{level}_{1 if m[2] == 'attentions' else 0}_{_a1111_suffix(m[2], m[4])}"
    if m := re.fullmatch(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", key):
        level = 1 if m[1] == "attentions" else 2 * int(m[2])
        return f"diffusion_model_middle_block_{level}_{_a1111_suffix(m[1], m[3])}"
    if m := re.fullmatch(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        level = 3 * int(m[1]) + int(m[3])
        return f"diffusion_model_output_blocks_{level}_{1 if m[2] == 'attentions' else 0}_{_a1111_suffix(m[2], m[4])}"
    if m := re.fullmatch(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", key):
        return f"diffusion_model_input_blocks_{3 + 3 * int(m[1])}_0_op"
    if m := re.fullmatch(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv", key):
        return f"diffusion_model_output_blocks_{2 + 3 * int(m[1])}_{2 if int(m[1]) > 0 else 1}_conv"
    return key


def a1111_lookup(key: str, modules: set[str]) -> str | None:
    """The model module A1111 applies a UNet key to, or None where it drops the key."""
    for candidate in (a1111_compvis(key), key.replace("lora_unet", "diffusion_model", 1)):
        if candidate in modules:
            return candidate
    return None


def a1111_modules(layout: dict[str, str]) -> set[str]:
    """A1111's names for the LDM model's modules: `diffusion_model_` + path with `_`."""
    return {"diffusion_model_" + path.replace(".", "_") for path in layout.values()}


def comfy_weight_decompose(dora_scale: torch.Tensor, weight: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
    """ComfyUI's DoRA merge at strength 1: ``diff`` is alpha/rank * up @ down, shaped as ``weight``."""
    merged = weight + diff
    eps = torch.finfo(weight.dtype).eps
    if dora_scale.shape[0] == weight.shape[0]:  # one magnitude per output channel
        norm = weight.flatten(1).norm(dim=1).reshape(-1, *[1] * (weight.dim() - 1))
    else:  # per input channel
        norm = merged.transpose(0, 1).flatten(1).norm(dim=1).reshape(1, -1, *[1] * (weight.dim() - 2))
    return merged * (dora_scale / (norm + eps))
