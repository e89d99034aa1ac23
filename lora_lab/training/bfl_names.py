"""Black Forest Labs' module names for the Flux-style transformers, as a LoRA file for ComfyUI
names them, mapped from diffusers' module names by a table per architecture.

ComfyUI builds these models with BFL's own modules (``double_blocks.N.img_attn.qkv``,
``single_blocks.N.linear1``, ...) and loads a LoRA whose keys are its module paths under
``diffusion_model.`` or, kohya's way, as ``lora_unet_`` + the path with ``_`` for ``.`` (its
"generic" key map, which every model gets). diffusers splits some of
BFL's fused linears into several: a double block's ``img_attn.qkv`` is ``attn.to_q/to_k/to_v``, a
single block's ``linear1`` is ``attn.to_q/to_k/to_v`` + ``proj_mlp``. LoRAs trained on the split
modules are written on the fused one as a single LoRA that computes exactly their updates side
by side: the downs stacked on the rank axis, the ups block-diagonal, alpha scaled with the rank
so that alpha / rank stays the same. diffusers' Flux loader splits such a file back (it detects
the block-diagonal up), and so do other loaders that read sd-scripts' Flux LoRAs.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

# One LoRA as written: down [rank, in], up [out, rank], and kohya's alpha (scale = alpha / rank)
Lora = tuple[torch.Tensor, torch.Tensor, float]


@dataclass(frozen=True)
class BflNames:
    """How one architecture's diffusers modules are named in BFL's layout.

    ``blocks``: a diffusers block list -> (BFL's block list, {BFL module in a block: the diffusers
    modules in that block it fuses, in the order of its output rows}). ``modules``: modules outside
    the blocks, diffusers name -> BFL name. A module in neither has no BFL name.
    """
    blocks: Mapping[str, tuple[str, Mapping[str, tuple[str, ...]]]]
    modules: Mapping[str, str]
    # the file's keys: "diffusion_model.<BFL module>", or (True) kohya's "lora_unet_<BFL module with
    # _ for .>", as sd-scripts and musubi-tuner write them; ComfyUI's key map reads both
    kohya_keys: bool = False

    def key(self, bfl: str) -> str:
        """The file's key prefix of BFL module ``bfl``."""
        return f"lora_unet_{bfl.replace('.', '_')}" if self.kohya_keys else f"diffusion_model.{bfl}"

    def place(self, name: str) -> tuple[str, int, int] | None:
        """Where diffusers module ``name`` lives in BFL's layout: (BFL module, its part, parts)."""
        if name in self.modules:
            return self.modules[name], 0, 1
        match = re.fullmatch(r"([\w.]+?)\.(\d+)\.(.+)", name)
        if not match or match[1] not in self.blocks:
            return None
        bfl_blocks, table = self.blocks[match[1]]
        for bfl, parts in table.items():
            if match[3] in parts:
                return f"{bfl_blocks}.{match[2]}.{bfl}", parts.index(match[3]), len(parts)
        return None

    def parts(self, bfl: str) -> int:
        """How many diffusers modules BFL module ``bfl`` (a path in the model, or kohya's name of
        it, "_" for ".") fuses; 1 if none."""
        flat = bfl.replace(".", "_")
        for bfl_blocks, table in self.blocks.values():
            for module, fused in table.items():
                if re.fullmatch(rf"{re.escape(bfl_blocks.replace('.', '_'))}_\d+_{re.escape(module.replace('.', '_'))}",
                                flat):
                    return len(fused)
        return 1


# A double block's attention, the same in FLUX.1 and FLUX.2: BFL fuses q/k/v, diffusers splits them
_DOUBLE_ATTENTION = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn.proj": ("attn.to_out.0",),
    "txt_attn.proj": ("attn.to_add_out",),
}

# FLUX.1 [dev] / [schnell] (diffusers' FluxTransformer2DModel), as ComfyUI's comfy/utils.py
# flux_to_diffusers maps them; Chroma's blocks are the same modules without the modulation
# linears (ComfyUI builds Chroma from Flux's block classes), so this table serves it too.
FLUX1 = BflNames(
    blocks={
        "transformer_blocks": ("double_blocks", {
            **_DOUBLE_ATTENTION,
            "img_mlp.0": ("ff.net.0.proj",),
            "img_mlp.2": ("ff.net.2",),
            "txt_mlp.0": ("ff_context.net.0.proj",),
            "txt_mlp.2": ("ff_context.net.2",),
            "img_mod.lin": ("norm1.linear",),
            "txt_mod.lin": ("norm1_context.linear",),
        }),
        "single_transformer_blocks": ("single_blocks", {
            "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
            "linear2": ("proj_out",),
            "modulation.lin": ("norm.linear",),
        }),
    },
    modules={"x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear"},
)


# FLUX.2 (diffusers' Flux2Transformer2DModel; [klein] 4B / 9B), as ComfyUI's comfy/utils.py
# flux_to_diffusers maps its Flux 2 names and diffusers' single-file converter reads BFL's
# checkpoints: only a double block's q/k/v are split in diffusers; a single block's q/k/v + MLP-in
# (linear1) and attention-out + MLP-out (linear2) are one linear each in both, and the modulation
# is shared by all blocks (never a LoRA target here). Files carry kohya's keys: diffusers' Flux.2
# loader takes lora_down/lora_up (and alpha) only under them.
FLUX2 = BflNames(
    blocks={
        "transformer_blocks": ("double_blocks", {
            **_DOUBLE_ATTENTION,
            "img_mlp.0": ("ff.linear_in",),
            "img_mlp.2": ("ff.linear_out",),
            "txt_mlp.0": ("ff_context.linear_in",),
            "txt_mlp.2": ("ff_context.linear_out",),
        }),
        "single_transformer_blocks": ("single_blocks", {
            "linear1": ("attn.to_qkv_mlp_proj",),
            "linear2": ("attn.to_out",),
        }),
    },
    # those diffusers' kohya Flux.2 converter also maps back
    modules={"x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
             "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
             "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer"},
    kohya_keys=True,
)


def fuse(names: BflNames, loras: Mapping[str, Lora], out_features: Callable[[str], int]
         ) -> dict[str, Lora]:
    """diffusers-named LoRAs as BFL-named ones, fused where BFL fuses the modules.

    A fused module whose parts are not all adapted gets zero LoRAs of the same rank for the
    missing ones (``out_features`` gives their output size), so its up stays block-diagonal with
    equal blocks, the shape loaders split back. Parts whose scales differ are brought to the
    first one's by scaling their ups.
    """
    grouped: dict[str, dict[int, tuple[str, Lora]]] = {}
    counts: dict[str, int] = {}
    for name, lora in loras.items():
        placed = names.place(name)
        if placed is None:
            raise ValueError(f"{name} has no module in BFL's layout (ComfyUI's names for this model); "
                             "save it with save.format = \"diffusers\"")
        bfl, part, count = placed
        grouped.setdefault(bfl, {})[part] = (name, lora)
        counts[bfl] = count
    out: dict[str, Lora] = {}
    for bfl, present in grouped.items():
        if counts[bfl] == 1:
            out[bfl] = present[0][1]
            continue
        first_name, (first_down, _, first_alpha) = present[min(present)]
        rank = first_down.shape[0]
        scale = first_alpha / rank
        prefix = first_name[: len(first_name) - len(_in_block(first_name))]
        downs, ups = [], []
        for part in range(counts[bfl]):
            if part in present:
                _, (down, up, alpha) = present[part]
                ratio = alpha / down.shape[0] / scale
                downs.append(down)
                ups.append(up if ratio == 1 else up * ratio)
            else:  # not adapted: a zero LoRA of the same rank
                size = out_features(prefix + _suffix_of_part(names, bfl, part))
                downs.append(first_down.new_zeros(rank, first_down.shape[1]))
                ups.append(first_down.new_zeros(size, rank))
        out[bfl] = (torch.cat(downs), torch.block_diag(*ups), scale * sum(d.shape[0] for d in downs))
    return out


def _in_block(name: str) -> str:
    """The module path within its block: "attn.to_q" of "transformer_blocks.3.attn.to_q"."""
    return re.fullmatch(r"[\w.]+?\.\d+\.(.+)", name)[1]


def _suffix_of_part(names: BflNames, bfl: str, part: int) -> str:
    match = re.fullmatch(r"([\w.]+?)\.(\d+)\.(.+)", bfl)
    table = next(t for b, t in names.blocks.values() if b == match[1])
    return table[match[3]][part]


def block_diagonal_parts(up: torch.Tensor, parts: int) -> int:
    """``parts`` when ``up`` is block-diagonal with that many equal-rank blocks (how a fused LoRA
    of this module is written), else 1: its rank columns in ``parts`` groups touch disjoint rows."""
    rank = up.shape[1]
    if parts == 1 or rank % parts:
        return 1
    used = [up[:, i * rank // parts:(i + 1) * rank // parts].ne(0).any(dim=1) for i in range(parts)]
    overlap = torch.stack(used).sum(dim=0)
    return parts if bool((overlap <= 1).all()) else 1
