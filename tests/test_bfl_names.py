"""BFL-named LoRA files (Flux.1, Chroma): the keys ComfyUI's Flux model maps, the fused q/k/v
(+ MLP) rows where ComfyUI's flux_to_diffusers puts each diffusers projection, and diffusers'
own Flux converter splitting a fused file back at FLUX.1's real sizes."""
from __future__ import annotations

import pytest
import torch
from peft.tuners.lora import LoraLayer

from lora_lab.training.base_model import load_base_model
from lora_lab.training.bfl_names import FLUX1, block_diagonal_parts, fuse
from lora_lab.training.lora_file import bfl_state_dict


def double_attention_rows(n_double: int, hidden: int) -> dict[str, tuple[str, int, int]]:
    """A double block's attention, the same in FLUX.1 and FLUX.2: the rows of the fused q/k/v
    each projection lands in (-1: all rows), as ComfyUI's flux_to_diffusers has them."""
    out: dict[str, tuple[str, int, int]] = {}
    for i in range(n_double):
        d, b = f"transformer_blocks.{i}", f"double_blocks.{i}"
        for j, proj in enumerate(("to_q", "to_k", "to_v")):
            out[f"{d}.attn.{proj}"] = (f"{b}.img_attn.qkv", j * hidden, hidden)
        for j, proj in enumerate(("add_q_proj", "add_k_proj", "add_v_proj")):
            out[f"{d}.attn.{proj}"] = (f"{b}.txt_attn.qkv", j * hidden, hidden)
        out[f"{d}.attn.to_out.0"] = (f"{b}.img_attn.proj", 0, -1)
        out[f"{d}.attn.to_add_out"] = (f"{b}.txt_attn.proj", 0, -1)
    return out


def assert_each_update_lands(denoiser, rows, tensors, key_of) -> None:
    """Applied as ComfyUI applies it, at ``rows`` (diffusers module -> (ComfyUI's module, first
    row, rows; -1: all)), the file's LoRA under ``key_of(module)`` gives each adapted module of
    ``denoiser`` exactly its trained update."""
    for name, layer in ((n, m) for n, m in denoiser.named_modules() if isinstance(m, LoraLayer)):
        module, first, size = rows[name]
        key = key_of(module)
        down, up = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
        patch = (tensors[f"{key}.alpha"] / down.shape[0]) * up @ down
        patch = patch if size == -1 else patch[first:first + size]
        want = layer.lora_B["default"].weight @ layer.lora_A["default"].weight * layer.scaling["default"]
        torch.testing.assert_close(patch, want.detach(), rtol=1e-5, atol=1e-7)


def comfyui_rows(n_double: int, n_single: int, hidden: int) -> dict[str, tuple[str, int, int]]:
    """diffusers module -> (ComfyUI's module, first row, rows), as ComfyUI's comfy/utils.py
    flux_to_diffusers maps Flux's weights (its output_prefix "diffusion_model." left off)."""
    out = double_attention_rows(n_double, hidden)
    for i in range(n_double):
        d, b = f"transformer_blocks.{i}", f"double_blocks.{i}"
        for ours, theirs in {"ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
                             "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2",
                             "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin"}.items():
            out[f"{d}.{ours}"] = (f"{b}.{theirs}", 0, -1)
    for i in range(n_single):
        d, b = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        for j, proj in enumerate(("to_q", "to_k", "to_v")):
            out[f"{d}.attn.{proj}"] = (f"{b}.linear1", j * hidden, hidden)
        out[f"{d}.proj_mlp"] = (f"{b}.linear1", 3 * hidden, 4 * hidden)
        out[f"{d}.proj_out"] = (f"{b}.linear2", 0, -1)
        out[f"{d}.norm.linear"] = (f"{b}.modulation.lin", 0, -1)
    out["proj_out"] = ("final_layer.linear", 0, -1)
    return out


def _trained(tiny_flow, family: str, targets: str):
    from lora_lab.training.adapters import _lora_config
    from lora_lab.training.families import get_family
    from lora_lab.training.sections import NetworkSection

    spec = get_family(family)
    pipe = load_base_model(str(tiny_flow[family]), family).pipeline
    torch.manual_seed(0)
    net = NetworkSection(rank=4, alpha=2, targets=targets)
    pipe.transformer.add_adapter(_lora_config(net, spec.lora_targets(pipe.transformer, targets)))
    with torch.no_grad():  # as if trained: peft starts the ups at zero
        for name, p in pipe.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    return pipe.transformer, spec


@pytest.mark.parametrize("family", ["flux", "chroma"])
@pytest.mark.parametrize("targets", ["attn", "attn_mlp"])
def test_comfyui_patches_each_projection_with_its_trained_update(tiny_flow, family, targets):
    """ComfyUI adds (alpha / rank) * up @ down to the weight its key names; done to BFL's fused
    weights at flux_to_diffusers' rows, that is each diffusers projection's own update."""

    denoiser, spec = _trained(tiny_flow, family, targets)
    tensors = bfl_state_dict(denoiser, spec.bfl_names)
    config = denoiser.config
    hidden = config.num_attention_heads * config.attention_head_dim
    rows = comfyui_rows(config.num_layers, config.num_single_layers, hidden)
    modules = {k.removeprefix("diffusion_model.").removesuffix(".weight").rsplit(".", 1)[0] for k in tensors}
    assert all(k.startswith("diffusion_model.") for k in tensors)
    assert modules <= {theirs for theirs, _, _ in rows.values()}
    if targets == "attn_mlp":
        assert {"double_blocks.0.img_attn.qkv", "double_blocks.1.txt_mlp.2", "single_blocks.1.linear1",
                "single_blocks.0.linear2"} <= modules
    assert_each_update_lands(denoiser, rows, tensors, lambda module: f"diffusion_model.{module}")
    # and rows nothing adapted stay untouched: attn targets leave the single blocks' MLP-in alone
    if targets == "attn":
        key = "diffusion_model.single_blocks.0.linear1"
        patch = tensors[f"{key}.lora_up.weight"] @ tensors[f"{key}.lora_down.weight"]
        assert not patch[3 * hidden:].any()


def test_fused_files_report_the_trained_rank_and_alpha(tiny_flow):
    denoiser, spec = _trained(tiny_flow, "flux", "attn_mlp")
    tensors = bfl_state_dict(denoiser, spec.bfl_names)
    qkv = "diffusion_model.double_blocks.0.img_attn.qkv"
    assert tensors[f"{qkv}.lora_down.weight"].shape[0] == 12 and tensors[f"{qkv}.alpha"].item() == 6
    assert block_diagonal_parts(tensors[f"{qkv}.lora_up.weight"], FLUX1.parts("double_blocks.0.img_attn.qkv")) == 3
    linear1 = "diffusion_model.single_blocks.0.linear1"
    assert tensors[f"{linear1}.lora_down.weight"].shape[0] == 16 and tensors[f"{linear1}.alpha"].item() == 8
    assert block_diagonal_parts(tensors[f"{linear1}.lora_up.weight"], 4) == 4
    assert block_diagonal_parts(torch.ones(8, 4), 2) == 1  # a LoRA trained on the fused layer itself


def test_diffusers_splits_a_fused_file_back_at_flux1_sizes():
    """diffusers' Flux converter (sd-scripts' layout, hard-coded to FLUX.1's 3072 / 12288 sizes)
    gives each projection back its own LoRA from our fused ones, unchanged."""
    from diffusers import FluxPipeline

    hidden, mlp, rank, alpha = 3072, 12288, 2, 1.0
    g = torch.Generator().manual_seed(0)
    sizes = {"transformer_blocks.0.attn.to_q": hidden, "transformer_blocks.0.attn.to_k": hidden,
             "transformer_blocks.0.attn.to_v": hidden, "transformer_blocks.0.ff.net.2": hidden,
             "single_transformer_blocks.0.attn.to_q": hidden, "single_transformer_blocks.0.attn.to_k": hidden,
             "single_transformer_blocks.0.attn.to_v": hidden, "single_transformer_blocks.0.proj_mlp": mlp,
             # block 1: attention only, its MLP-in left out (a zero LoRA in the fused file)
             "single_transformer_blocks.1.attn.to_q": hidden, "single_transformer_blocks.1.attn.to_k": hidden,
             "single_transformer_blocks.1.attn.to_v": hidden}
    loras = {name: (torch.randn(rank, mlp if name.endswith("ff.net.2") else hidden, generator=g),
                    torch.randn(out, rank, generator=g), alpha) for name, out in sizes.items()}
    fused = fuse(FLUX1, loras, lambda name: mlp if name.endswith("proj_mlp") else hidden)
    tensors = {}
    for module, (down, up, a) in fused.items():
        tensors |= {f"diffusion_model.{module}.lora_down.weight": down,
                    f"diffusion_model.{module}.lora_up.weight": up,
                    f"diffusion_model.{module}.alpha": torch.tensor(a)}
    split = FluxPipeline.lora_state_dict(tensors)  # alpha folded into the weights
    for name, (down, up, a) in loras.items():
        got = split[f"transformer.{name}.lora_B.weight"] @ split[f"transformer.{name}.lora_A.weight"]
        torch.testing.assert_close(got, up @ down * (a / rank))
    assert not split["transformer.single_transformer_blocks.1.proj_mlp.lora_B.weight"].any()
