"""The three key layouts of a LoRA file, per family, read into one form and written back.

A file is read into :class:`Lora` modules keyed by their diffusers path with the pipeline
component first (``unet.down_blocks.0.attentions.0.proj_in``, ``text_encoder.text_model.…``,
``transformer.transformer_blocks.0.attn.to_q``) and written from them in any layout. Tensors move
unchanged (no alpha is folded into weights), so a round trip gives the same bytes back; only
fused BFL modules are split and stacked (exactly: the ups are block-diagonal).

The layouts (``sd`` = sd15 and sdxl, ``flow`` = zimage and qwenimage, ``bfl`` = flux, chroma and
flux2klein; every LoRA module has ``.lora_down.weight``, ``.lora_up.weight`` and a 0-dim
``.alpha`` unless said otherwise; scale = alpha / rank):

kohya (sd-scripts, musubi-tuner; A1111 / Forge / ComfyUI read it)
    sd: ``lora_unet_<UNet path, _ for .>`` (SD1.5 diffusers-style paths, SDXL LDM paths as
    sd-scripts' own SDXL UNet names them), ``lora_te_…`` (SD1.5) or ``lora_te1_…`` / ``lora_te2_…``
    (SDXL) with ``text_model_encoder_…``; DoRA as LyCORIS' ``.dora_scale``.
    flow: ``lora_unet_<diffusers path, _ for .>``. bfl: ``lora_unet_<BFL module, _ for .>``.
diffusers (peft; ``load_lora_weights``)
    ``unet.`` / ``transformer.`` / ``text_encoder.`` / ``text_encoder_2.`` + diffusers path with
    ``.lora_A.weight`` / ``.lora_B.weight``; ranks and alphas in the ``lora_adapter_metadata``
    JSON (a LoraConfig per component, prefixed), as ``save_lora_weights`` writes it.
comfyui (what ComfyUI's own LoRA saver writes: its model's state-dict names)
    sd: ``diffusion_model.<LDM UNet path>`` and ``text_encoders.clip_l.transformer.<text_model…>``
    (SDXL's second encoder ``clip_g``). flow: ``diffusion_model.<diffusers path>`` with
    ``.lora_A.weight`` / ``.lora_B.weight`` / ``.alpha`` (ComfyUI maps diffusers' names onto its
    fused Z-Image and Qwen-Image layers; what lora-lab's trainer writes). bfl:
    ``diffusion_model.<BFL module>``.

BFL modules fuse diffusers' split projections (q/k/v, and Flux.1's single-block linear1 = q/k/v +
MLP in): read, a fused LoRA is split into one LoRA per part (its block of the up, the down rows of
that block; a part that is all zero was not adapted and is dropped); written, parts are fused as
:func:`lora_lab.training.bfl_names.fuse` does (their ranks may differ: the blocks of the up are
then of different widths; scales that differ are folded into the ups). A fused LoRA that is not
block-diagonal (trained on the fused layer) splits into parts that each keep the whole down:
exact, at the full rank.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from lora_lab.errors import LoraLabError
from lora_lab.training.bfl_names import BflNames, block_diagonal_parts, fuse
from lora_lab.training.families import get_family
from lora_lab.training.kohya_names import diffusers_unet_path, layers_per_block, ldm_unet_path

FORMATS = ("kohya", "diffusers", "comfyui")
ADAPTER_METADATA = "lora_adapter_metadata"  # diffusers' key for the peft configs
# what a UNet's LDM numbering takes from its config when the keys do not say (the real models')
_UNET_TYPES = {
    "sd15": (("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
    "sdxl": (("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 2, ("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",)),
}
_KOHYA_TE = {"sd15": {"lora_te_": "text_encoder"},
             "sdxl": {"lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2"}}
_COMFY_TE = {"sd15": {"text_encoders.clip_l.transformer.": "text_encoder"},
             "sdxl": {"text_encoders.clip_l.transformer.": "text_encoder",
                      "text_encoders.clip_g.transformer.": "text_encoder_2"}}
_LORA_SUFFIXES = {".lora_down.weight": "down", ".lora_A.weight": "down", ".lora_up.weight": "up",
                  ".lora_B.weight": "up", ".alpha": "alpha", ".dora_scale": "dora_scale"}

# Module-name words that hold "_" themselves, in every family's diffusers modules, sd-scripts' LDM
# UNet and CLIP: kohya's flat names are split on "_" and these joined back (longest first)
_WORDS = sorted({tuple(w.split("_")) for w in (
    "down_blocks up_blocks mid_block transformer_blocks single_transformer_blocks conv_in conv_out "
    "conv_shortcut time_emb_proj time_embedding linear_1 linear_2 add_embedding proj_in proj_out "
    "to_q to_k to_v to_out to_add_out add_q_proj add_k_proj add_v_proj proj_mlp ff_context "
    "norm1_context norm_out x_embedder context_embedder time_text_embed timestep_embedder "
    "guidance_embedder text_embedder distilled_guidance_layer in_proj out_proj linear_in linear_out "
    "to_qkv_mlp_proj time_guidance_embed double_stream_modulation_img double_stream_modulation_txt "
    "single_stream_modulation img_in txt_in img_mlp txt_mlp img_mod txt_mod adaLN_modulation "
    "all_final_layer all_x_embedder cap_embedder context_refiner noise_refiner t_embedder "
    "feed_forward text_model self_attn q_proj k_proj v_proj text_projection input_blocks "
    "middle_block output_blocks in_layers out_layers emb_layers skip_connection time_embed label_emb"
).split()}, key=len, reverse=True)


@dataclass(frozen=True)
class Lora:
    """One adapted module: down [rank, in(, k, k)], up [out, rank(, 1, 1)], kohya's alpha (0-dim),
    and LyCORIS' DoRA magnitudes where the file has them."""
    down: torch.Tensor
    up: torch.Tensor
    alpha: torch.Tensor
    dora_scale: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return self.down.shape[0]


def dotted(flat: str) -> str:
    """kohya's flat module name with its dots back: ``transformer_blocks_0_attn_to_out_0`` ->
    ``transformer_blocks.0.attn.to_out.0``."""
    parts, out, i = flat.split("_"), [], 0
    while i < len(parts):
        word = next((w for w in _WORDS if tuple(parts[i:i + len(w)]) == w), (parts[i],))
        out.append("_".join(word))
        i += len(word)
    return ".".join(out)


def layout_kind(family: str) -> str:
    """"sd", "flow" or "bfl": which naming the family's files use (see the module docstring)."""
    spec = get_family(family)
    return "bfl" if spec.bfl_names else "sd" if spec.denoiser == "unet" else "flow"


# ---------------------------------------------------------------- reading

def _group(tensors: Mapping[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, dict[str, torch.Tensor]]:
    """{module key (prefix included): {down/up/alpha/dora_scale: tensor}}, refusing what is no LoRA."""
    prefixes = tuple(prefixes)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith(prefixes):
            raise LoraLabError(f"key {key!r} is not part of this layout for this family; "
                               "lora-lab converts LoRAs of the denoiser and text encoders it trains")
        suffix = next((s for s in _LORA_SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            raise LoraLabError(f"key {key!r} is no LoRA down/up/alpha weight (LoHa, LoKr, full "
                               "diffs and biases do not convert): only plain LoRA (and DoRA) files do")
        out.setdefault(key.removesuffix(suffix), {})[_LORA_SUFFIXES[suffix]] = value
    for module, parts in out.items():
        if "down" not in parts or "up" not in parts:
            raise LoraLabError(f"module {module} has no {'up' if 'down' in parts else 'down'} weight")
    return out


def _lora(parts: Mapping[str, torch.Tensor], alpha: float | None = None) -> Lora:
    down = parts["down"]
    if "alpha" in parts:
        value = parts["alpha"]
    else:  # no alpha: loaders take alpha = rank (scale 1)
        value = torch.tensor(float(down.shape[0] if alpha is None else alpha))
    return Lora(down, parts["up"], value, parts.get("dora_scale"))


def _unet_config(family: str, layers: int | None) -> dict:
    down, up = _UNET_TYPES[family]
    return {"layers_per_block": layers or 2, "down_block_types": down, "up_block_types": up}


def _split_bfl(names: BflNames, bfl: str, lora: Lora) -> dict[str, Lora]:
    """A BFL module's LoRA as the LoRAs of the diffusers modules it fuses."""
    modules = _diffusers_parts(names, bfl)
    if len(modules) == 1:
        return {modules[0][0]: lora}
    sizes = _part_sizes(modules, lora.up.shape[0])
    n = block_diagonal_parts(lora.up, len(modules))
    columns = None if n > 1 else _part_columns(lora.up, [size for _, size in sizes])
    rows = 0
    out = {}
    for i, (module, size) in enumerate(sizes):
        up = lora.up[rows:rows + size]
        rows += size
        if n > 1:
            cols = slice(i * lora.rank // n, (i + 1) * lora.rank // n)
            down, up, alpha = lora.down[cols], up[:, cols], lora.alpha / n
        elif columns is not None:  # parts of different ranks
            cols = columns[i]
            down, up, alpha = lora.down[cols], up[:, cols], lora.alpha / lora.rank * len(cols)
        else:
            down, alpha = lora.down, lora.alpha
        if (n > 1 or columns is not None) and not (down.any() or up.any()):
            continue  # a part the fused file filled with zeros: not adapted
        # clones: safetensors refuses to save tensors that share memory
        out[module] = Lora(down.clone(), up.clone(), alpha.to(lora.alpha.dtype))
    return out


def _part_columns(up: torch.Tensor, sizes: list[int]) -> list[torch.Tensor] | None:
    """The rank columns of each part (``sizes``: its rows) of a fused up that is block-diagonal
    with blocks of different ranks (parts resized each to its own rank), or None where a column
    reaches the rows of two parts. A column that is all zero adds nothing and belongs to none."""
    used = torch.stack([rows.ne(0).any(dim=0) for rows in up.flatten(1).split(sizes)])
    if bool((used.sum(dim=0) > 1).any()):
        return None
    return [part.nonzero().flatten() for part in used]


_QKV_PART = re.compile(r"(.+\.\d+)\.(?:attn\.)?(to_[qkv]|add_[qkv]_proj|proj_mlp)")
# output size of a fused part relative to a q/k/v projection's (Flux.1's single-block MLP is 4×)
_PART_WIDTH = {"proj_mlp": 4}


def _part_sizes(modules: list[tuple[str, str]], total: int) -> list[tuple[str, int]]:
    widths = [_PART_WIDTH.get(suffix, 1) for _, suffix in modules]
    unit, rest = divmod(total, sum(widths))
    if rest:
        raise LoraLabError(f"a fused LoRA of {modules[0][0]} has {total} output rows, not the "
                           "sizes its parts have in this family")
    return [(module, unit * w) for (module, _), w in zip(modules, widths)]


def _diffusers_parts(names: BflNames, bfl: str) -> list[tuple[str, str]]:
    """[(diffusers module, its last name)] of BFL module ``bfl``, in row order."""
    for diffusers, name in names.modules.items():
        if name == bfl:
            return [(diffusers, diffusers)]
    for blocks, (bfl_blocks, table) in names.blocks.items():
        m = re.fullmatch(rf"{re.escape(bfl_blocks)}\.(\d+)\.(.+)", bfl)
        if m and m[2] in table:
            return [(f"{blocks}.{m[1]}.{part}", part.rsplit(".", 1)[-1]) for part in table[m[2]]]
    raise LoraLabError(f"module {bfl!r} has no diffusers module in this family's layout")


def _bfl_dotted(names: BflNames, flat: str) -> str:
    """kohya's flat name of a BFL module with its dots back (BFL's names follow a fixed table)."""
    for bfl in names.modules.values():
        if bfl.replace(".", "_") == flat:
            return bfl
    for bfl_blocks, table in names.blocks.values():
        for module in table:
            m = re.fullmatch(rf"{bfl_blocks}_(\d+)_{re.escape(module.replace('.', '_'))}", flat)
            if m:
                return f"{bfl_blocks}.{m[1]}.{module}"
    raise LoraLabError(f"lora_unet_{flat} names no module of this family's BFL layout")


def _peft_value(config: Mapping, field: str, name: str, default: float) -> float:
    """The rank or alpha peft gives module ``name`` under ``config`` (its *_pattern first)."""
    for pattern, value in (config.get(f"{field}_pattern") or {}).items():
        if any(re.match(rf"(.*\.)?({pattern})$", n) for n in (name, name.removeprefix("text_model."))):
            return float(value)
    return float(config.get("lora_alpha" if field == "alpha" else "r", default))


def _adapter_configs(metadata: Mapping[str, str]) -> dict[str, dict]:
    flat = json.loads(metadata.get(ADAPTER_METADATA) or "{}")
    configs: dict[str, dict] = {}
    for key, value in flat.items():
        component, _, field = key.partition(".")
        configs.setdefault(component, {})[field] = value
    return configs


def read_modules(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], fmt: str,
                 family: str, keys: dict[str, str] | None = None) -> dict[str, Lora]:
    """The file's LoRAs by component-prefixed diffusers path (see the module docstring); ``keys``,
    where given, gets each module's key in the file (kohya's and ComfyUI's layouts)."""
    kind = layout_kind(family)
    spec = get_family(family)
    if fmt == "diffusers":
        return _read_diffusers(tensors, metadata)
    found: dict[str, str] = {}
    if fmt == "kohya":
        te = _KOHYA_TE.get(family, {})
        groups = _group(tensors, ["lora_unet_", *te])
    else:
        te = _COMFY_TE.get(family, {})
        groups = _group(tensors, ["diffusion_model.", *te])
    denoiser = {k: v for k, v in groups.items() if k.startswith(("lora_unet_", "diffusion_model."))}
    paths = {k.removeprefix("lora_unet_").removeprefix("diffusion_model."): k for k in denoiser}
    if fmt == "kohya" and kind != "bfl":
        paths = {dotted(p): k for p, k in paths.items()}
    out: dict[str, Lora] = {}
    if kind == "sd":
        ldm = fmt == "comfyui" or any(p.startswith(("input_blocks", "middle_block", "output_blocks", "label_emb",
                                                    "time_embed.", "out.")) for p in paths)
        layers = layers_per_block(paths, "ldm") or 2
        for path, key in paths.items():
            module = diffusers_unet_path(path, layers) if ldm else path
            out[f"unet.{module}"], found[f"unet.{module}"] = _lora(groups[key]), key
    elif kind == "flow":
        out = {f"transformer.{p}": _lora(groups[k]) for p, k in paths.items()}
        found = {f"transformer.{p}": k for p, k in paths.items()}
    else:
        for path, key in paths.items():
            bfl = _bfl_dotted(spec.bfl_names, path) if fmt == "kohya" else path
            for module, lora in _split_bfl(spec.bfl_names, bfl, _lora(groups[key])).items():
                out[f"transformer.{module}"], found[f"transformer.{module}"] = lora, key
    for key, parts in groups.items():
        prefix = next((p for p in te if key.startswith(p)), None)
        if prefix:
            path = key[len(prefix):]
            module = f"{te[prefix]}.{dotted(path) if fmt == 'kohya' else path}"
            out[module], found[module] = _lora(parts), key
    if keys is not None:
        keys |= found
    return out


def _read_diffusers(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, Lora]:
    configs = _adapter_configs(metadata)
    suffixes = {".lora_A.weight": "down", ".lora_B.weight": "up"}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        suffix = next((s for s in suffixes if key.endswith(s)), None)
        if suffix is None:
            what = "a DoRA magnitude" if "lora_magnitude_vector" in key else "no LoRA A/B weight"
            raise LoraLabError(f"key {key!r} is {what}: DoRA files in diffusers' layout need the base model's "
                               "weights to become another layout's dora_scale; they do not convert")
        groups.setdefault(key.removesuffix(suffix), {})[suffixes[suffix]] = value
    out = {}
    for module, parts in groups.items():
        component, _, path = module.partition(".")
        if component.startswith("text_encoder") and not path.startswith(("text_model.", "text_projection")):
            path = f"text_model.{path}"  # files of transformers 5 era writers may lack the level
        rank = parts["down"].shape[0]
        config = configs.get(component, {})
        alpha = _peft_value(config, "alpha", path, rank)
        if config.get("use_rslora"):  # peft's scale alpha / sqrt(rank), as kohya's alpha / rank
            alpha *= math.sqrt(rank)
        out[f"{component}.{path}"] = _lora(parts, alpha)
    return out


# ---------------------------------------------------------------- writing

def write_modules(modules: Mapping[str, Lora], fmt: str, family: str, keys: Mapping[str, str] | None = None
                  ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of ``modules`` in layout ``fmt``, and the metadata that layout needs (diffusers'
    adapter configs; nothing for the others). ``keys``: the key a module keeps (what
    :func:`read_modules` found in a file of this layout; fused BFL modules are named by BFL's
    table), the others named as the layout names them."""
    if fmt == "diffusers":
        return _write_diffusers(modules), {ADAPTER_METADATA: _adapter_metadata(modules)}
    kind = layout_kind(family)
    if kind == "bfl":
        denoiser = {k.partition(".")[2]: v for k, v in modules.items() if k.startswith("transformer.")}
        named = {_key(fmt, bfl): Lora(down, up, alpha)
                 for bfl, (down, up, alpha) in _fuse(get_family(family).bfl_names, denoiser).items()}
        keys = module_keys([k for k in modules if not k.startswith("transformer.")], fmt, family)
    else:
        given = {m: k for m, k in (keys or {}).items() if m in modules}
        named, keys = {}, module_keys([m for m in modules if m not in given], fmt, family) | given
        if len(set(keys.values())) < len(keys):
            raise LoraLabError(f"two modules get one key in {fmt}'s layout (the UNet's numbering these modules "
                               "show is ambiguous); write the file in diffusers' layout")
    named |= {keys[module]: modules[module] for module in keys}
    split = fmt == "comfyui" and kind == "flow"  # ComfyUI's diffusers-named files keep peft's A/B names
    down_up = (".lora_A.weight", ".lora_B.weight") if split else (".lora_down.weight", ".lora_up.weight")
    tensors: dict[str, torch.Tensor] = {}
    for key, lora in named.items():
        tensors |= {key + down_up[0]: lora.down, key + down_up[1]: lora.up, f"{key}.alpha": lora.alpha}
        if lora.dora_scale is not None:
            tensors[f"{key}.dora_scale"] = lora.dora_scale
    return tensors, {}


def module_keys(modules: Iterable[str], fmt: str, family: str) -> dict[str, str]:
    """Each module's key in layout ``fmt`` (what precedes ``.lora_down.weight`` & co.); the parts
    of a fused BFL module share its key."""
    modules = list(modules)
    if fmt == "diffusers":
        return {m: m for m in modules}
    kind = layout_kind(family)
    spec = get_family(family)
    denoiser = [m.partition(".")[2] for m in modules if m.startswith(("unet.", "transformer."))]
    te_prefixes = {component: prefix for prefix, component in
                   (_KOHYA_TE if fmt == "kohya" else _COMFY_TE).get(family, {}).items()}
    ldm = kind == "sd" and (fmt == "comfyui" or family == "sdxl")
    if ldm:
        config = _unet_config(family, layers_per_block(denoiser, "diffusers"))
        config["up_block_types"] = _up_types(denoiser, config)
    out = {}
    for key in modules:
        component, _, path = key.partition(".")
        if component in ("unet", "transformer"):
            if kind == "bfl":
                placed = spec.bfl_names.place(path)
                if placed is None:
                    raise LoraLabError(f"{key} has no module in BFL's layout (ComfyUI's names for "
                                       f"{spec.title}): write it in diffusers' layout")
                path = placed[0]
            try:
                out[key] = _key(fmt, ldm_unet_path(path, config) if ldm else path)
            except (IndexError, KeyError):
                raise LoraLabError(f"{key} has no place in the LDM numbering of the UNet these modules "
                                   "show; convert the file to diffusers' layout") from None
        elif component in te_prefixes:
            out[key] = te_prefixes[component] + (path.replace(".", "_") if fmt == "kohya" else path)
        else:
            raise LoraLabError(f"{spec.title} files in {fmt} layout hold no {component} LoRA ({key})")
    return out


def _key(fmt: str, path: str) -> str:
    """The key of denoiser module ``path`` (as the layout names it) in kohya's or ComfyUI's layout."""
    return f"lora_unet_{path.replace('.', '_')}" if fmt == "kohya" else f"diffusion_model.{path}"


def _up_types(denoiser: list[str], config: dict) -> list[str]:
    """Which up blocks have attention: as the adapted modules show, else as the real model has."""
    blocks = {int(m[1]) for p in denoiser if (m := re.match(r"up_blocks\.(\d+)\.", p))}
    types = list(config["up_block_types"])
    types += ["UpBlock2D"] * (max(blocks, default=-1) + 1 - len(types))
    for b in blocks:
        if any(p.startswith(f"up_blocks.{b}.attentions.") for p in denoiser):
            types[b] = "CrossAttnUpBlock2D"
    return types


def _fuse(names: BflNames, denoiser: Mapping[str, Lora]) -> dict[str, tuple]:
    if any(lora.dora_scale is not None for lora in denoiser.values()):
        raise LoraLabError("DoRA LoRAs of BFL-named families do not convert")
    loras = {p: (lora.down, lora.up, float(lora.alpha)) for p, lora in denoiser.items()}
    # a part missing from a fused module gets a zero LoRA: its width, from a q/k/v part of its block
    units = {m[1]: lora.up.shape[0] // _PART_WIDTH.get(m[2], 1)
             for p, lora in denoiser.items() if (m := _QKV_PART.fullmatch(p))}

    def out_features(path: str) -> int:
        m = _QKV_PART.fullmatch(path)
        return units[m[1]] * _PART_WIDTH.get(m[2], 1)

    try:
        fused = fuse(names, loras, out_features)
    except ValueError as e:
        raise LoraLabError(str(e)) from e
    return {bfl: (down, up, _alpha_like(alpha, denoiser)) for bfl, (down, up, alpha) in fused.items()}


def _alpha_like(alpha: float, denoiser: Mapping[str, Lora]) -> torch.Tensor:
    dtype = next(iter(denoiser.values())).alpha.dtype
    return torch.tensor(alpha, dtype=dtype)


def _write_diffusers(modules: Mapping[str, Lora]) -> dict[str, torch.Tensor]:
    tensors = {}
    for key, lora in modules.items():
        if lora.dora_scale is not None:
            raise LoraLabError("a DoRA LoRA's dora_scale needs the base model's weights to become "
                               "diffusers' magnitudes: DoRA files convert between kohya and comfyui only")
        tensors |= {f"{key}.lora_A.weight": lora.down, f"{key}.lora_B.weight": lora.up}
    return tensors


def _adapter_metadata(modules: Mapping[str, Lora]) -> str:
    """diffusers' flattened LoraConfig per component: the most common rank and alpha, the rest
    as exact (escaped) patterns; target modules by full path (text encoders without the
    `text_model.` level, so they match models with and without it)."""
    by_component: dict[str, dict[str, Lora]] = {}
    for key, lora in modules.items():
        component, _, path = key.partition(".")
        if component.startswith("text_encoder"):
            path = path.removeprefix("text_model.")
        by_component.setdefault(component, {})[path] = lora
    flat: dict[str, object] = {}
    for component, loras in by_component.items():
        ranks = {p: lora.rank for p, lora in loras.items()}
        alphas = {p: float(lora.alpha) for p, lora in loras.items()}
        r = max(set(ranks.values()), key=list(ranks.values()).count)
        alpha = max(set(alphas.values()), key=list(alphas.values()).count)
        config = {"r": r, "lora_alpha": alpha, "target_modules": sorted(loras),
                  "rank_pattern": {re.escape(p): v for p, v in ranks.items() if v != r},
                  "alpha_pattern": {re.escape(p): v for p, v in alphas.items() if v != alpha},
                  "use_dora": False, "lora_bias": False}
        flat |= {f"{component}.{k}": v for k, v in config.items()}
    return json.dumps(flat, indent=2, sort_keys=True)

