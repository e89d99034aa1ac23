"""Write a diffusers SD1.5/SDXL pipeline folder as one original-layout ("LDM") checkpoint, and a
Z-Image transformer as the single file ComfyUI users download.

Users bring base models as single ``.safetensors`` files in the layout the original Stable
Diffusion code saved (``model.diffusion_model.*``, ``first_stage_model.*``, the CLIP text
encoders under ``cond_stage_model.*`` / ``conditioner.embedders.*``). Tests and the demo must
exercise that path offline, with no real checkpoint to download: this turns a (tiny) diffusers
folder into such a file, which ``from_single_file(file, config=folder)`` loads back with the
same weights. The key rules are the inverse of diffusers' ``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint`` and
``convert_open_clip_checkpoint``. They follow the configs (levels, layers per block, which
blocks have attention), so they hold for the real SD1.5/SDXL configs as for the tiny ones.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

StateDict = dict[str, Tensor]

# diffusers name -> original name, for the keys outside the repeated blocks
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
                "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
                "conv_shortcut": "skip_connection"}
_VAE_TOP = {"conv_norm_out": "norm_out"}  # the other top-level VAE names are the same
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                  "to_out.0": "proj_out"}
_OPEN_CLIP_TOP = {"text_model.embeddings.position_embedding.weight": "positional_embedding",
                  "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
                  "text_model.final_layer_norm.weight": "ln_final.weight",
                  "text_model.final_layer_norm.bias": "ln_final.bias"}
_OPEN_CLIP_LAYER = (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                    ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj"))

# where each component lives in the single file, per family
PREFIXES = {
    "sd15": {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
             "text_encoder": "cond_stage_model.transformer."},
    "sdxl": {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
             "text_encoder": "conditioner.embedders.0.transformer.",
             "text_encoder_2": "conditioner.embedders.1.model."},
}


def _split(key: str, names: Mapping[str, str]) -> tuple[str, str] | None:
    """(original name, rest) when ``key`` starts with one of ``names`` followed by a dot."""
    for name, original in names.items():
        if key.startswith(name + "."):
            return original, key[len(name) + 1:]
    return None


def unet_key(key: str, config: Mapping[str, Any]) -> str:
    """The original name of one diffusers UNet key."""
    if top := _split(key, _UNET_TOP):
        return f"{top[0]}.{top[1]}"
    n = config["layers_per_block"] + 1  # input/output blocks per level (+ the resampler)
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(\w+)\.(\d+)\.(.+)", key):
        side, level, part, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        if part == "downsamplers":  # the level's last input block: input_blocks.{i}.0.op
            return f"input_blocks.{(level + 1) * n}.0.op.{rest.removeprefix('conv.')}"
        if part == "upsamplers":  # after the level's last resnet (and attention, if any)
            slot = 2 if "CrossAttn" in config["up_block_types"][level] else 1
            return f"output_blocks.{level * n + n - 1}.{slot}.{rest}"
        i = 1 + level * n + j if side == "down" else level * n + j
        blocks = "input_blocks" if side == "down" else "output_blocks"
        return f"{blocks}.{i}.{int(part == 'attentions')}.{_inner(part, rest)}"
    if m := re.fullmatch(r"mid_block\.(\w+)\.(\d+)\.(.+)", key):  # resnet, attention, resnet
        return f"middle_block.{2 * int(m[2]) + (m[1] == 'attentions')}.{_inner(m[1], m[3])}"
    raise ValueError(f"no original name for UNet key {key}")


def _inner(part: str, rest: str) -> str:
    """A name inside an original block's ResBlock (slot 0) or SpatialTransformer (slot 1)."""
    if part == "resnets":
        top = _split(rest, _UNET_RESNET)
        return f"{top[0]}.{top[1]}" if top else rest
    if part == "attentions":  # the same inner names as diffusers' Transformer2DModel
        return rest
    raise ValueError(f"no original name for UNet block part {part}")


def vae_key(key: str, config: Mapping[str, Any]) -> str:
    """The original name of one diffusers VAE key (the decoder's levels run in reverse)."""
    levels = len(config["up_block_types"])
    if m := re.fullmatch(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(\w+)\.(\d+)\.(.+)", key):
        coder, side, level, part, j, rest = m[1], m[2], int(m[3]), m[4], m[5], m[6]
        level = level if side == "down" else levels - 1 - level
        if part == "resnets":
            rest = rest.replace("conv_shortcut", "nin_shortcut")
            return f"{coder}.{side}.{level}.block.{j}.{rest}"
        return f"{coder}.{side}.{level}.{side}sample.{rest}"  # downsamplers.0.conv: downsample.conv
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        name, rest = _split(m[2], _VAE_ATTENTION) or ("", "")
        if not name:
            raise ValueError(f"no original name for VAE key {key}")
        return f"{m[1]}.mid.attn_1.{name}.{rest}"
    coder, _, rest = key.partition(".")
    top = _split(rest, _VAE_TOP)
    return f"{coder}.{top[0]}.{top[1]}" if top else key


def unet_to_ldm(state: StateDict, config: Mapping[str, Any]) -> StateDict:
    return {unet_key(k, config): v for k, v in state.items()}


def vae_to_ldm(state: StateDict, config: Mapping[str, Any]) -> StateDict:
    out = {}
    for k, v in state.items():
        name = vae_key(k, config)
        # the original attention projections are 1x1 convolutions, not linear layers
        out[name] = v[:, :, None, None] if ".mid.attn_1." in name and v.ndim == 2 else v
    return out


def clip_to_ldm(state: StateDict) -> StateDict:
    """OpenAI CLIP (SD1.5's encoder, SDXL's first): transformers' names under ``text_model.``
    (transformers >= 5.6 saves CLIPTextModel without that level)."""
    return {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}


def open_clip_to_ldm(state: StateDict) -> StateDict:
    """OpenCLIP (SDXL's second encoder): fused q/k/v ``in_proj``, the projection transposed."""
    out: StateDict = {}
    for k, v in state.items():
        if k.endswith("position_ids"):  # a buffer older transformers saved; OpenCLIP has none
            continue
        if k in _OPEN_CLIP_TOP:
            out[_OPEN_CLIP_TOP[k]] = v
        elif k == "text_projection.weight":  # a Linear's weight: OpenCLIP multiplies x @ P
            out["text_projection"] = v.T.contiguous()
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", k):
            layer, rest = f"transformer.resblocks.{m[1]}", m[2]
            if qkv := re.fullmatch(r"self_attn\.q_proj\.(weight|bias)", rest):
                parts = [state[f"text_model.encoder.layers.{m[1]}.self_attn.{p}_proj.{qkv[1]}"]
                         for p in "qkv"]
                out[f"{layer}.attn.in_proj_{qkv[1]}"] = torch.cat(parts)
            elif not re.fullmatch(r"self_attn\.[kv]_proj\.(weight|bias)", rest):
                for new, old in _OPEN_CLIP_LAYER:
                    rest = rest.replace(new, old)
                out[f"{layer}.{rest}"] = v
        else:
            raise ValueError(f"no OpenCLIP name for text encoder key {k}")
    return out


def to_ldm(family: str, states: Mapping[str, StateDict],
           configs: Mapping[str, Mapping[str, Any]]) -> StateDict:
    """All components' state dicts (diffusers names) as one original-layout state dict."""
    if family not in PREFIXES:
        raise ValueError(f"family must be one of {', '.join(PREFIXES)}, not {family!r}")
    converters = {"unet": lambda s: unet_to_ldm(s, configs["unet"]),
                  "vae": lambda s: vae_to_ldm(s, configs["vae"]),
                  "text_encoder": clip_to_ldm, "text_encoder_2": open_clip_to_ldm}
    out: StateDict = {}
    for name, prefix in PREFIXES[family].items():
        out.update({prefix + k: v for k, v in converters[name](states[name]).items()})
    return out


def write_single_file(pipeline_dir: Path, out_path: Path, family: str) -> Path:
    """Convert the diffusers pipeline in ``pipeline_dir`` into one ``.safetensors`` at
    ``out_path`` (UNet, VAE and text encoders; configs and tokenizers stay in the folder,
    which ``from_single_file(out_path, config=pipeline_dir)`` reads them from)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from safetensors.torch import save_file

    if family not in PREFIXES:
        raise ValueError(f"family must be one of {', '.join(PREFIXES)}, not {family!r}")
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    extra = {"safety_checker": None, "requires_safety_checker": False} if family == "sd15" else {}
    with _no_progress_bars():
        pipe = cls.from_pretrained(pipeline_dir, local_files_only=True, **extra)
    states = {name: getattr(pipe, name).state_dict() for name in PREFIXES[family]}
    state = to_ldm(family, states, {"unet": dict(pipe.unet.config), "vae": dict(pipe.vae.config)})
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_path))
    return out_path


# diffusers' Z-Image transformer names -> the original ones (Comfy-Org's z_image_turbo_bf16.safetensors);
# q, k and v are one fused qkv there
_ZIMAGE_NAMES = {"all_final_layer.2-1.": "final_layer.", "all_x_embedder.2-1.": "x_embedder.",
                 ".attention.to_out.0.": ".attention.out.", ".attention.norm_k.": ".attention.k_norm.",
                 ".attention.norm_q.": ".attention.q_norm."}


def zimage_to_original(state: StateDict) -> StateDict:
    """A Z-Image transformer's state dict under its original names: the inverse of diffusers'
    ``convert_z_image_transformer_checkpoint_to_diffusers``."""
    out: StateDict = {}
    for key, value in state.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue  # fused with to_q below
        if ".attention.to_q." in key:
            parts = [state[key.replace(".to_q.", f".to_{x}.")] for x in "qkv"]
            out[key.replace(".to_q.", ".qkv.")] = torch.cat(parts)
            continue
        for new, old in _ZIMAGE_NAMES.items():
            key = key.replace(new, old)
        out[key] = value
    return out


def write_zimage_file(pipeline_dir: Path, out_path: Path) -> Path:
    """The Z-Image transformer in ``pipeline_dir`` as one original-layout ``.safetensors``: the
    transformer alone, whose text encoder and VAE come from a diffusers folder (model.config)."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(Path(pipeline_dir) / "transformer" / "diffusion_pytorch_model.safetensors"))
    save_file({k: v.contiguous() for k, v in zimage_to_original(state).items()}, str(out_path))
    return Path(out_path)


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    loggers = [lg for lg in (diffusers_logging, transformers_logging)
               if lg.is_progress_bar_enabled()]
    for lg in loggers:
        lg.disable_progress_bar()
    try:
        yield
    finally:
        for lg in loggers:
            lg.enable_progress_bar()
