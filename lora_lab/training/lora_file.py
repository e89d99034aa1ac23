"""LoRA files: what a training run hands to ComfyUI, A1111 and diffusers.

For the transformer families the UI layout is ComfyUI's, under `diffusion_model.`: for Z-Image
the diffusers module paths, each with `.lora_A.weight`, `.lora_B.weight` and `.alpha` (ComfyUI
maps them onto its fused layers); for Flux.1 and Chroma BFL's own module names, the names of
ComfyUI's model, with split projections fused (:mod:`.bfl_names`), each with
`.lora_down.weight`, `.lora_up.weight` and `.alpha`. diffusers' loaders read both. Flux.2's
file names BFL's modules too, with kohya's `lora_unet_` keys (ComfyUI reads those as well): its
diffusers loader reads lora_down/alpha files only under them.

The default is the kohya layout every UI loads: `lora_unet_<module path with _>` /
`lora_te_…` (SD1.5) or `lora_te1_…` / `lora_te2_…` (SDXL), each module with `.lora_down.weight`,
`.lora_up.weight` and a 0-dim `.alpha` (scale = alpha / rank), plus sd-scripts' `ss_*`,
`modelspec.*` and `sshs_*` metadata. The diffusers/peft layout is written on request.
UNet module paths are the ones sd-scripts writes: diffusers-style for SD1.5, LDM-style for SDXL
(kohya_names); ComfyUI, A1111 and diffusers map both. DoRA magnitudes go in LyCORIS'
`dora_scale`, per output channel, rescaled so that ComfyUI's formula gives the trained weights.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from lora_lab.atomic import write_bytes
from lora_lab.errors import LoraLabError

from ..aspect_buckets import FAMILIES as DEFAULT_BUCKETS
from .bfl_names import BflNames, block_diagonal_parts, fuse
from .families import FAMILIES, get_family
from .kohya_names import ldm_unet_path, unet_naming, uses_ldm_names

Format = Literal["kohya", "diffusers", "comfyui"]  # comfyui: read only (save writes it as "kohya")

# kohya names text encoders by how many the model has: SD1.5 one, SDXL two
_TE_PREFIXES = {0: (), 1: ("lora_te",), 2: ("lora_te1", "lora_te2")}
_DIFFUSERS_TE_NAMES = ("text_encoder", "text_encoder_2")
# file key prefix -> part of the model (SD1.5's single encoder counts as te1)
_KOHYA_PARTS = {"lora_unet_": "unet", "lora_te_": "te1", "lora_te1_": "te1", "lora_te2_": "te2"}
_DIFFUSERS_PARTS = {"unet.": "unet", "transformer.": "transformer", "text_encoder.": "te1",
                    "text_encoder_2.": "te2"}
_COMFYUI_PARTS = {"diffusion_model.": "transformer", "text_encoders.clip_l.": "te1",
                  "text_encoders.clip_g.": "te2"}
_DOWN_SUFFIXES = (".lora_down.weight", ".lora_A.weight", ".lora.down.weight")


# ---------------------------------------------------------------- from peft models to tensors

def _lora_layers(model: torch.nn.Module, adapter_name: str) -> Iterator[tuple[str, Any]]:
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
            yield name, module


def _kohya_alpha(layer: Any, adapter_name: str) -> float:
    """The alpha that gives peft's scale under kohya's alpha / rank rule.

    Read per layer, so alpha_pattern / rank_pattern are honoured; rsLoRA scales by
    alpha / sqrt(rank), which kohya writes as alpha * sqrt(rank).
    """
    rank, alpha = layer.r[adapter_name], float(layer.lora_alpha[adapter_name])
    return alpha * math.sqrt(rank) if layer.use_rslora.get(adapter_name, False) else alpha


def _with_text_model(model: torch.nn.Module, name: str) -> str:
    # transformers 5 dropped CLIPTextModel's `text_model.` level; A1111 and ComfyUI match
    # `…_text_model_encoder_layers_…` only, and diffusers strips the level when the model lacks it
    if hasattr(model, "text_model") or name.startswith("text_projection"):
        return name
    return f"text_model.{name}"


def _kohya_path(prefix: str, model: torch.nn.Module, name: str) -> str:
    if prefix != "lora_unet":
        return _with_text_model(model, name)
    return ldm_unet_path(name, model.config) if uses_ldm_names(model) else name


def _dora_scale(layer: Any, adapter_name: str, magnitude: torch.Tensor, down: torch.Tensor,
                up: torch.Tensor) -> torch.Tensor:
    """peft's magnitudes m as the `dora_scale` ComfyUI (and Forge) apply as trained.

    peft merges m * W' / ||W'|| per output channel (W' = W + scale * up @ down). ComfyUI takes
    a [out, 1, ...] dora_scale for that axis but divides by the base weight's norm ||W||, so
    m * ||W|| / ||W'|| gives back peft's weights there. (LyCORIS' own loader divides by ||W'||:
    it scales each channel by ||W|| / ||W'||; A1111 normalises input channels only.)
    """
    weight = layer.get_base_layer().weight.detach().float()
    delta = (up.float().flatten(1) @ down.float().flatten(1)).reshape(weight.shape) * layer.scaling[adapter_name]
    norms = weight.flatten(1).norm(dim=1) / (weight + delta).flatten(1).norm(dim=1)
    scale = magnitude.detach().float().reshape(-1) * norms
    return scale.to(magnitude.dtype).reshape(-1, *[1] * (weight.dim() - 1))


def _adapted(models: Sequence[tuple[str, torch.nn.Module | None]], adapter_name: str):
    for prefix, model in models:
        if model is not None and adapter_name in getattr(model, "peft_config", {}):
            yield prefix, model


def _parts(unet, text_encoders: Sequence[torch.nn.Module | None]) -> list[tuple[str, Any]]:
    if len(text_encoders) not in _TE_PREFIXES:
        raise ValueError(f"expected 1 (SD1.5) or 2 (SDXL) text encoders, got {len(text_encoders)}")
    return [("lora_unet", unet), *zip(_TE_PREFIXES[len(text_encoders)], text_encoders)]


def kohya_state_dict(
    unet: torch.nn.Module | None,
    text_encoders: Sequence[torch.nn.Module | None],
    *,
    adapter_name: str = "default",
) -> dict[str, torch.Tensor]:
    """kohya/A1111/ComfyUI tensors for the adapter on ``unet`` and the text encoders.

    Pass all of the pipeline's text encoders in order (one for SD1.5, two for SDXL: that
    picks lora_te_ or lora_te1_/te2_); those without the adapter, or None, are skipped.
    """
    from peft.utils import get_peft_model_state_dict

    out: dict[str, torch.Tensor] = {}
    for prefix, model in _adapted(_parts(unet, text_encoders), adapter_name):
        tensors = get_peft_model_state_dict(model, adapter_name=adapter_name)
        for name, layer in _lora_layers(model, adapter_name):
            key = f"{prefix}_{_kohya_path(prefix, model, name).replace('.', '_')}"
            down, up = tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"]
            out[f"{key}.lora_down.weight"] = down  # conv: [r, in, k, k]
            out[f"{key}.lora_up.weight"] = up  # conv: [out, r, 1, 1]
            out[f"{key}.alpha"] = torch.tensor(_kohya_alpha(layer, adapter_name))
            magnitude = tensors.get(f"{name}.lora_magnitude_vector")
            if magnitude is not None:
                out[f"{key}.dora_scale"] = _dora_scale(layer, adapter_name, magnitude, down, up)
    if not out:
        raise ValueError(f"no model carries a LoRA adapter named {adapter_name!r}")
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def comfyui_state_dict(denoiser: torch.nn.Module, *, adapter_name: str = "default"
                       ) -> dict[str, torch.Tensor]:
    """ComfyUI's tensors for the adapter on a transformer: `diffusion_model.<module>` with
    `.lora_A.weight`, `.lora_B.weight` and the `.alpha` that gives peft's scale."""
    out: dict[str, torch.Tensor] = {}
    for name, layer in _lora_layers(denoiser, adapter_name):
        key = f"diffusion_model.{name}"
        out[f"{key}.lora_A.weight"] = layer.lora_A[adapter_name].weight
        out[f"{key}.lora_B.weight"] = layer.lora_B[adapter_name].weight
        out[f"{key}.alpha"] = torch.tensor(_kohya_alpha(layer, adapter_name))
    if not out:
        raise ValueError(f"no model carries a LoRA adapter named {adapter_name!r}")
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def bfl_state_dict(denoiser: torch.nn.Module, names: BflNames, *, adapter_name: str = "default"
                   ) -> dict[str, torch.Tensor]:
    """ComfyUI's tensors for the adapter on a BFL-style transformer (Flux.1, Chroma, Flux.2):
    `diffusion_model.<BFL module>` (or kohya's `lora_unet_<BFL module with _>`, as ``names`` says)
    with `.lora_down.weight`, `.lora_up.weight` and `.alpha`, the LoRAs of split projections fused
    as BFL fuses the layers (see :mod:`.bfl_names`)."""
    loras = {name: (layer.lora_A[adapter_name].weight.detach(), layer.lora_B[adapter_name].weight.detach(),
                    _kohya_alpha(layer, adapter_name))
             for name, layer in _lora_layers(denoiser, adapter_name)}
    if not loras:
        raise ValueError(f"no model carries a LoRA adapter named {adapter_name!r}")
    out: dict[str, torch.Tensor] = {}
    for module, (down, up, alpha) in fuse(names, loras, lambda n: denoiser.get_submodule(n).out_features).items():
        key = names.key(module)
        out[f"{key}.lora_down.weight"] = down
        out[f"{key}.lora_up.weight"] = up
        out[f"{key}.alpha"] = torch.tensor(alpha)
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def _diffusers_te_key(model: torch.nn.Module, key: str) -> str:
    # transformers 5 loads text-encoder adapters through its own key renaming, which finds a
    # DoRA magnitude only when spelled `….lora_magnitude_vector.weight` (peft reads both)
    key = _with_text_model(model, key)
    return f"{key}.weight" if key.endswith(".lora_magnitude_vector") else key


def _diffusers_tensors(path: Path, denoiser, text_encoders, family: str, dtype, adapter_name) -> tuple:
    """Write with the pipeline's own save_lora_weights (alpha travels in its adapter metadata)."""
    import diffusers
    from peft.utils import get_peft_model_state_dict

    spec = get_family(family)
    pipeline = getattr(diffusers, spec.pipeline)
    kwargs: dict[str, Any] = {}
    parts = [(spec.denoiser, denoiser), *zip(_DIFFUSERS_TE_NAMES, text_encoders)]
    for name, model in _adapted(parts, adapter_name):
        tensors = get_peft_model_state_dict(model, adapter_name=adapter_name)
        if name != spec.denoiser:
            tensors = {_diffusers_te_key(model, k): v for k, v in tensors.items()}
        kwargs[f"{name}_lora_layers"] = {k: v.detach().to("cpu", dtype).contiguous() for k, v in tensors.items()}
        config = model.peft_config[adapter_name].to_dict()
        if config.get("exclude_modules"):  # diffusers' loader warns unless the targets match the tensors
            config |= {"target_modules": sorted({k.rsplit(".lora_", 1)[0] for k in tensors}),
                       "exclude_modules": None}
        kwargs[f"{name}_lora_adapter_metadata"] = config
    if not kwargs:
        raise ValueError(f"no model carries a LoRA adapter named {adapter_name!r}")
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        pipeline.save_lora_weights(tmp, weight_name="lora.safetensors", **kwargs)
        written = Path(tmp, "lora.safetensors")
        with safe_open(written, framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(written), metadata


# ---------------------------------------------------------------- metadata and hashes

_DIRECT_FACTS = (
    "steps", "epoch", "num_epochs", "max_train_steps", "learning_rate", "unet_lr", "text_encoder_lr",
    "seed", "batch_size_per_device", "gradient_accumulation_steps", "optimizer", "lr_scheduler",
    "lr_warmup_steps", "noise_offset", "min_snr_gamma", "mixed_precision", "num_train_images",
    "network_dropout", "training_comment", "output_name", "clip_skip", "max_grad_norm",
    "gradient_checkpointing", "caption_dropout_rate", "session_id",
)
_MODELSPEC_FACTS = ("author", "description", "license", "tags", "trigger_phrase")
_OTHER_FACTS = ("family", "title", "network_dim", "network_alpha", "conv_dim", "conv_alpha", "dora", "resolution",
                "tag_frequency", "dataset_dirs", "training_started_at", "training_finished_at", "sd_model_name")


def _timestamp(value: float | datetime.datetime) -> float:
    return value.timestamp() if isinstance(value, datetime.datetime) else float(value)


def _resolution(value: int | Sequence[int] | None, family: str) -> tuple[int, int]:
    value = value or DEFAULT_BUCKETS[family][0]  # the family's default when no resolution is known
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _network(facts: Mapping[str, Any]) -> dict[str, str]:
    args: dict[str, str] = {}
    if facts.get("conv_dim"):
        args |= {"conv_dim": str(int(facts["conv_dim"])), "conv_alpha": str(float(facts.get("conv_alpha", 1)))}
    module = "networks.lora"  # sd-scripts' own module: LoRA, and LoCon through conv_dim
    if facts.get("dora"):  # only LyCORIS writes dora_scale; peft's DoRA norms output channels
        module, args = "lycoris.kohya", {"algo": "locon", "dora_wd": "True", "wd_on_output": "True", **args}
    return {"ss_network_module": module, "ss_network_dim": str(int(facts["network_dim"])),
            "ss_network_alpha": str(float(facts["network_alpha"])), "ss_network_args": json.dumps(args)}


def ss_metadata(facts: Mapping[str, Any] | None = None, /, **more: Any) -> dict[str, str]:
    """The metadata sd-scripts writes, from plain facts named like its keys without `ss_`.

    Required: family (a name in :mod:`.families`), network_dim, network_alpha. Optional: conv_dim,
    conv_alpha, dora, resolution (int or (w, h)), tag_frequency ({dir: {tag: n}}),
    dataset_dirs ({dir: {"n_repeats": n, "img_count": m}}), training_started_at/_finished_at
    (epoch seconds or datetime), sd_model_name, the modelspec facts (title, author, ...) and
    any of _DIRECT_FACTS, written as str() like sd-scripts does (None -> "None").
    """
    facts = {**(facts or {}), **more}
    unknown = set(facts) - {*_DIRECT_FACTS, *_MODELSPEC_FACTS, *_OTHER_FACTS}
    missing = {"family", "network_dim", "network_alpha"} - set(facts)
    if unknown or missing:
        raise ValueError(f"LoRA metadata facts: unknown {sorted(unknown)}, missing {sorted(missing)}")
    spec = get_family(facts["family"])
    width, height = _resolution(facts.get("resolution"), spec.name)
    meta = {f"ss_{k}": str(facts[k]) for k in _DIRECT_FACTS if k in facts}
    meta |= _network(facts) | {
        "ss_v2": "False",
        "ss_base_model_version": spec.model_version,
        "ss_resolution": str((width, height)),
    }
    for key in ("tag_frequency", "dataset_dirs"):
        if key in facts:
            meta[f"ss_{key}"] = json.dumps(facts[key])
    for key in ("training_started_at", "training_finished_at"):
        if facts.get(key) is not None:
            meta[f"ss_{key}"] = str(_timestamp(facts[key]))
    if facts.get("sd_model_name"):  # sd-scripts keeps a local path's file name only
        name = str(facts["sd_model_name"])
        meta["ss_sd_model_name"] = os.path.basename(name.rstrip("/")) if os.path.exists(name) else name
    when = _timestamp(facts.get("training_finished_at") or facts.get("training_started_at")
                      or datetime.datetime.now())
    meta |= {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{spec.architecture}/lora",
        "modelspec.implementation": spec.implementation,
        "modelspec.title": str(facts.get("title") or facts.get("output_name") or f"LoRA@{when}"),
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.date": datetime.datetime.fromtimestamp(int(when)).isoformat(),
        "modelspec.prediction_type": spec.prediction,
    }
    meta |= {f"modelspec.{k}": str(facts[k]) for k in _MODELSPEC_FACTS if facts.get(k) is not None}
    return meta


def _data_hash(blob: bytes) -> str:
    header = int.from_bytes(blob[:8], "little")
    return hashlib.sha256(blob[8 + header:]).hexdigest()


def lora_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) as sd-scripts precomputes them for A1111/Civitai.

    The model hash covers the tensor bytes after the safetensors header only, so editing
    metadata leaves it alone; the legacy one reads 64 KiB at 1 MiB of the file sd-scripts
    hashes (its ss_* keys only), so tiny files all share sha256(b"")[:8].
    """
    ss_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    blob = safetensors_bytes(dict(tensors), ss_only or None)
    return _data_hash(blob), hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]


def file_model_hash(path: str | os.PathLike) -> str:
    """The sshs_model_hash A1111 computes from a file on disk (its "addnet" hash)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(8 + int.from_bytes(f.read(8), "little"))
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- saving and reading

def save_lora(
    path: str | os.PathLike,
    denoiser: torch.nn.Module | None,
    text_encoders: Sequence[torch.nn.Module | None],
    *,
    family: str,
    fmt: Format = "kohya",
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype = torch.float16,
    adapter_name: str = "default",
) -> Path:
    """Write the adapter on the denoiser (UNet or transformer) and the text encoders as one
    .safetensors file, atomically; returns the path. ``fmt`` "kohya" is the layout the UIs
    load: kohya's for SD1.5/SDXL, ComfyUI's for the transformer families.

    fp16 by default, as kohya_ss and most published LoRAs ship (sd-scripts itself keeps the
    training dtype unless --save_precision is given); kohya alphas stay float32 so they are exact.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise LoraLabError(f"LoRA file name must end in .safetensors (UIs list only those): {path.name}")
    spec = get_family(family)
    if len(text_encoders) not in (0, len(spec.text_encoders)):
        raise ValueError(f"family {family!r} takes {len(spec.text_encoders)} text encoders (or none)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "kohya":
        if spec.file_layout == "bfl":
            raw = bfl_state_dict(denoiser, spec.bfl_names, adapter_name=adapter_name)
        elif spec.file_layout == "comfyui":
            raw = comfyui_state_dict(denoiser, adapter_name=adapter_name)
        else:
            raw = kohya_state_dict(denoiser, text_encoders, adapter_name=adapter_name)
        tensors = {k: v if k.endswith(".alpha") else v.to(dtype) for k, v in raw.items()}
        base_meta: dict[str, str] = {}
    elif fmt == "diffusers":
        tensors, base_meta = _diffusers_tensors(path, denoiser, text_encoders, family, dtype, adapter_name)
    else:
        raise ValueError(f"unknown LoRA format {fmt!r}: use 'kohya' or 'diffusers'")
    meta = {**base_meta, **(metadata or {})}
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = lora_hashes(tensors, meta)
    write_bytes(path, safetensors_bytes(tensors, meta))
    return path


def read_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A LoRA file's tensors and metadata, or a LoraLabError that says what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise LoraLabError(f"LoRA file not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise LoraLabError(f"{path.name} is not a readable .safetensors file ({e}); "
                           "LoRAs are read and written as safetensors only") from e
    if lora_format(tensors) is None:
        raise LoraLabError(f"{path.name} holds no LoRA weights (no kohya lora_unet_/lora_te keys, no "
                           "diffusers unet./transformer./text_encoder. or ComfyUI diffusion_model. "
                           "lora keys): is it a base model or another kind of file?")
    return tensors, metadata


def lora_format(tensors: Mapping[str, torch.Tensor]) -> Format | None:
    """The layout of a LoRA file's tensors: "kohya", "diffusers", "comfyui", or None for no LoRA."""
    if any(k.startswith(tuple(_KOHYA_PARTS)) and k.endswith(_DOWN_SUFFIXES[0]) for k in tensors):
        return "kohya"
    if any(k.startswith(tuple(_DIFFUSERS_PARTS)) and ".lora" in k for k in tensors):
        return "diffusers"
    if any(k.startswith(tuple(_COMFYUI_PARTS)) and ".lora" in k for k in tensors):
        return "comfyui"
    return None


def _family(tensors, metadata: Mapping[str, str], parts: Mapping[str, int]) -> str:
    if parts["te2"] or any(k.startswith("lora_te1_") for k in tensors):
        return "sdxl"
    version = metadata.get("ss_base_model_version", "")
    named = [f.name for f in FAMILIES.values() if f.model_version and version.startswith(f.model_version)]
    if named:
        return max(named, key=lambda n: len(FAMILIES[n].model_version))  # "sdxl_base…" before "sd_v1"
    if version:
        return "sdxl" if version.startswith("sdxl") else "sd15" if version.startswith("sd_v1") else version
    return _family_of_keys(tensors)


# words only one family's module names hold, in any layout's spelling ("_" or "." between words)
_FAMILY_WORDS = (
    ("sdxl", r"label_emb|add_embedding|transformer_blocks[._][1-9]\d*[._]attn[12]"),  # SD1.5 has 1 a block
    ("sd15", r"lora_te_|text_encoder\.|text_encoders\.clip_l|down_blocks|input_blocks|attn1|attn2"),
    ("flux2klein", r"to_qkv_mlp_proj|linear_in|linear_out"),
    ("zimage", r"attention[._]to_|feed_forward|noise_refiner|context_refiner"),
    ("qwenimage", r"img_mlp[._]net|txt_mlp[._]net|img_mod[._]1|txt_mod[._]1"),
    ("flux", r"single_transformer_blocks|proj_mlp|ff[._]net|ff_context[._]net"),
)


def _family_of_keys(tensors: Mapping[str, torch.Tensor]) -> str:
    """The family a file without sd-scripts' metadata is for, from its module names (and for
    BFL's names, which Flux.1 and Flux.2 share, from how wide a single block's linear1 is);
    "unknown" where they do not tell. Flux.1 and Chroma LoRAs look alike: "flux"."""
    keys = " ".join(tensors)
    for family, words in _FAMILY_WORDS:
        if re.search(words, keys):
            return family
    if re.search(r"double_blocks|single_blocks", keys):
        qkv = next((v for k, v in tensors.items() if re.search(r"img_attn[._]qkv\.lora_(up|B)", k)), None)
        linear1 = next((v for k, v in tensors.items() if re.search(r"linear1\.lora_(up|B)", k)), None)
        if qkv is not None and linear1 is not None:  # linear1 = q, k, v + MLP in: 4× wide in Flux.1, 6× in Flux.2
            return "flux2klein" if linear1.shape[0] * 3 == qkv.shape[0] * 9 else "flux"
    if re.search(r"transformer_blocks[._]\d+[._]attn[._]", keys):
        return "qwenimage"  # double-stream blocks only
    return "unknown"


def lora_family(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """The family a LoRA file is for (a name in :data:`.families.FAMILIES`, or "unknown"): from
    sd-scripts' ss_base_model_version, else its keys."""
    te2 = any(k.startswith(("lora_te2_", "text_encoder_2.", "text_encoders.clip_g.")) for k in tensors)
    return _family(tensors, metadata, {"te2": te2})


def _diffusers_alphas(metadata: Mapping[str, str]) -> set[float]:
    config = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    alphas = {float(v) for k, v in config.items() if k.endswith(".lora_alpha")}
    return alphas | {float(a) for k, v in config.items() if k.endswith(".alpha_pattern") for a in v.values()}


def _fused_parts(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, int]:
    """{key prefix: n} for the LoRAs of a BFL-named file that fuse n LoRAs of one rank and alpha
    each (as :func:`bfl_state_dict` writes them): its ranks and alphas are reported per LoRA."""
    spec = next((f for f in FAMILIES.values()
                 if f.model_version == metadata.get("ss_base_model_version") and f.bfl_names), None)
    if spec is None:
        return {}
    out = {}
    for key, up in tensors.items():
        if key.startswith(("diffusion_model.", "lora_unet_")) and key.endswith(".lora_up.weight"):
            prefix = key.removesuffix(".lora_up.weight")
            module = prefix.removeprefix("diffusion_model.").removeprefix("lora_unet_")
            out[prefix] = block_diagonal_parts(up, spec.bfl_names.parts(module))
    return out


def describe_lora(path: str | os.PathLike) -> dict[str, Any]:
    """What `lora-lab lora inspect` shows: format, family, ranks, alphas, parts, conv, DoRA, metadata,
    and for kohya files the UNet naming ("ldm" as sd-scripts writes SDXL, or "diffusers")."""
    tensors, metadata = read_lora(path)
    fmt = lora_format(tensors)
    prefixes = {"kohya": _KOHYA_PARTS, "comfyui": _COMFYUI_PARTS}.get(fmt, _DIFFUSERS_PARTS)
    fused = _fused_parts(tensors, metadata) if fmt in ("comfyui", "kohya") else {}
    parts: dict[str, int] = {"unet": 0, "te1": 0, "te2": 0}
    ranks, conv = set(), 0
    for key, down in tensors.items():
        if key.endswith(_DOWN_SUFFIXES):
            part = next((p for s, p in prefixes.items() if key.startswith(s)), "other")
            parts[part] = parts.get(part, 0) + 1
            ranks.add(down.shape[0] // fused.get(key.rsplit(".", 2)[0], 1))
            conv += down.dim() == 4 and tuple(down.shape[2:]) != (1, 1)
    alphas = {round(v.item() / fused.get(k.removesuffix(".alpha"), 1), 6) for k, v in tensors.items()
              if k.endswith(".alpha")} if fmt != "diffusers" else _diffusers_alphas(metadata)
    family = _family(tensors, metadata, parts)
    # kohya's lora_unet_ keys on a transformer (as sd-scripts and musubi-tuner name Flux.2's modules)
    transformer = fmt == "kohya" and family in FAMILIES and FAMILIES[family].denoiser == "transformer"
    if transformer:
        parts["transformer"] = parts.pop("unet")
    return {
        "path": str(path), "format": fmt, "family": family, "modules": parts,
        "unet_names": unet_naming(tensors) if fmt == "kohya" and not transformer else None,
        "ranks": sorted(ranks), "alphas": sorted(alphas), "conv_modules": conv,
        "dora": any(k.endswith(".dora_scale") or ".lora_magnitude_vector" in k for k in tensors),
        "dtypes": sorted({str(v.dtype).removeprefix("torch.") for v in tensors.values()}),
        "size_bytes": Path(path).stat().st_size, "metadata": metadata,
    }
