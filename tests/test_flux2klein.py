"""FLUX.2 [klein]: its LoRA files for ComfyUI (BFL's module names, q/k/v fused where BFL fuses
them, kohya's lora_unet_ keys) patch each projection at the rows ComfyUI's model holds it in,
diffusers' Flux.2 loader splits them back at [klein]'s real sizes, every adapted module learns,
and what the family refuses. (test_train_flow runs it through the CLI, reloads and resume.)"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_bfl_names import _trained, assert_each_update_lands, double_attention_rows
from test_train import config
from test_train_memory import _train

from lora_lab.errors import LoraLabError
from lora_lab.jobdir import JobRecord
from lora_lab.training.base_model import detect_family
from lora_lab.training.bfl_names import FLUX2, block_diagonal_parts, fuse
from lora_lab.training.lora_file import bfl_state_dict
from lora_lab.training.trainer import Trainer


def comfyui_rows(n_double: int, n_single: int, hidden: int) -> dict[str, tuple[str, int, int]]:
    """diffusers module -> (ComfyUI's module, first row, rows; -1: all), as ComfyUI's comfy/utils.py
    flux_to_diffusers maps FLUX.2's weights (its entries for Flux 2: ff.linear_in/out,
    attn.to_qkv_mlp_proj -> linear1, a single block's attn.to_out -> linear2)."""
    out = double_attention_rows(n_double, hidden)
    for i in range(n_double):
        d, b = f"transformer_blocks.{i}", f"double_blocks.{i}"
        for ours, theirs in {"ff.linear_in": "img_mlp.0", "ff.linear_out": "img_mlp.2",
                             "ff_context.linear_in": "txt_mlp.0", "ff_context.linear_out": "txt_mlp.2"}.items():
            out[f"{d}.{ours}"] = (f"{b}.{theirs}", 0, -1)
    for i in range(n_single):
        d, b = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        out[f"{d}.attn.to_qkv_mlp_proj"] = (f"{b}.linear1", 0, -1)
        out[f"{d}.attn.to_out"] = (f"{b}.linear2", 0, -1)
    out["proj_out"] = ("final_layer.linear", 0, -1)
    return out


def _rows_of(denoiser) -> dict[str, tuple[str, int, int]]:
    config = denoiser.config
    return comfyui_rows(config.num_layers, config.num_single_layers,
                        config.num_attention_heads * config.attention_head_dim)


def test_the_rows_are_where_a_bfl_checkpoint_holds_each_projection(tiny_flow):
    """BFL's weights built from the tiny transformer at those rows are what diffusers' own FLUX.2
    checkpoint converter reads back as the transformer's weights: the rows are BFL's layout,
    the one ComfyUI's model holds."""
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    from lora_lab.training.base_model import load_base_model

    denoiser = load_base_model(str(tiny_flow["flux2klein"]), "flux2klein").pipeline.transformer
    rows = _rows_of(denoiser)
    bfl: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for name, (module, first, _) in rows.items():
        bfl.setdefault(f"{module}.weight", []).append((first, denoiser.get_submodule(name).weight.detach()))
    checkpoint = {k: torch.cat([w for _, w in sorted(parts, key=lambda p: p[0])]) for k, parts in bfl.items()}
    converted = convert_flux2_transformer_checkpoint_to_diffusers(dict(checkpoint))
    assert converted.keys() == {f"{name}.weight" for name in rows}
    for name in rows:
        torch.testing.assert_close(converted[f"{name}.weight"], denoiser.get_submodule(name).weight.detach())


@pytest.mark.parametrize("targets", ["attn", "attn_mlp"])
def test_comfyui_patches_each_projection_with_its_trained_update(tiny_flow, targets):
    """ComfyUI maps `lora_unet_<its module, _ for .>` to every weight of its model and adds
    (alpha / rank) * up @ down to it; done to BFL's weights at flux_to_diffusers' rows, that is
    each diffusers projection's own update, and the rows nothing adapted stay as they are."""
    from peft.tuners.lora import LoraLayer

    denoiser, spec = _trained(tiny_flow, "flux2klein", targets)
    tensors = bfl_state_dict(denoiser, spec.bfl_names)
    rows = _rows_of(denoiser)
    comfyui = {f"lora_unet_{m.replace('.', '_')}": m for m, _, _ in rows.values()}  # its generic key map
    keys = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in tensors}
    assert keys <= set(comfyui), keys - set(comfyui)
    patched = {comfyui[k] for k in keys}
    want = {"double_blocks.0.img_attn.qkv", "double_blocks.1.txt_attn.proj", "single_blocks.1.linear1",
            "single_blocks.0.linear2"}
    assert want <= patched and ("double_blocks.0.img_mlp.0" in patched) == (targets == "attn_mlp")
    adapted = {n: m for n, m in denoiser.named_modules() if isinstance(m, LoraLayer)}
    assert {n for n in rows if n != "proj_out"} - adapted.keys() <= {
        n for n in rows if ".ff" in n and targets == "attn"}
    assert_each_update_lands(denoiser, rows, tensors, lambda module: f"lora_unet_{module.replace('.', '_')}")


def test_fused_files_report_the_trained_rank_and_alpha(tiny_flow):
    denoiser, spec = _trained(tiny_flow, "flux2klein", "attn_mlp")
    tensors = bfl_state_dict(denoiser, spec.bfl_names)
    qkv = "lora_unet_double_blocks_0_img_attn_qkv"
    assert tensors[f"{qkv}.lora_down.weight"].shape[0] == 12 and tensors[f"{qkv}.alpha"].item() == 6
    assert FLUX2.parts(qkv.removeprefix("lora_unet_")) == FLUX2.parts("double_blocks.0.img_attn.qkv") == 3
    assert block_diagonal_parts(tensors[f"{qkv}.lora_up.weight"], 3) == 3
    linear1 = "lora_unet_single_blocks_0_linear1"  # one linear in diffusers too: not fused
    assert tensors[f"{linear1}.lora_down.weight"].shape[0] == 4 and tensors[f"{linear1}.alpha"].item() == 2
    assert FLUX2.parts("single_blocks_0_linear1") == 1


def test_diffusers_splits_a_fused_file_back_at_klein_4b_sizes():
    """diffusers' Flux.2 loader (kohya's keys) gives each projection its own LoRA back from our
    fused ones at [klein] 4B's real sizes (hidden 3072, single-block linear1 27648 rows)."""
    from diffusers import Flux2KleinPipeline

    hidden, mlp, rank, alpha = 3072, 9216, 2, 1.0
    g = torch.Generator().manual_seed(0)
    sizes = {f"transformer_blocks.0.attn.{p}": (hidden, hidden)
             for p in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")}
    sizes |= {"transformer_blocks.0.ff.linear_out": (mlp, hidden),
             "single_transformer_blocks.0.attn.to_qkv_mlp_proj": (hidden, 3 * hidden + 2 * mlp),
             "single_transformer_blocks.0.attn.to_out": (hidden + mlp, hidden)}
    loras = {name: (torch.randn(rank, n_in, generator=g), torch.randn(n_out, rank, generator=g), alpha)
             for name, (n_in, n_out) in sizes.items()}
    tensors = {}
    for module, (down, up, a) in fuse(FLUX2, loras, lambda name: sizes[name][1]).items():
        key = FLUX2.key(module)
        tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(a)}
    split = Flux2KleinPipeline.lora_state_dict(tensors)  # alpha folded into the weights
    assert {k.rsplit(".lora_", 1)[0] for k in split} == {f"transformer.{n}" for n in loras}
    for name, (down, up, a) in loras.items():
        got = split[f"transformer.{name}.lora_B.weight"] @ split[f"transformer.{name}.lora_A.weight"]
        torch.testing.assert_close(got, up @ down * (a / rank))
        assert split[f"transformer.{name}.lora_A.weight"].shape[0] == rank  # split, not the fused rank


def test_every_adapted_module_learns_from_a_batch(ws, tiny_flow):
    """Both streams reach the image tokens (the text stream through the single blocks), so every
    LoRA weight, the single blocks' fused linears included, gets a gradient."""
    cfg = config(tiny_flow, "flux2klein", network={"rank": 4, "targets": "attn_mlp"},
                 train={"batch_size": 2, "gradient_checkpointing": True})  # as the presets train it
    trainer = Trainer(cfg, JobRecord.create("train", {}, ws), ws)
    trainer.load_data()
    trainer.load_model()
    trainer.cache()
    image, bucket = trainer.images[0], trainer.buckets[0]
    assert trainer.latents.params(image, bucket, False).shape == (64, bucket[1] // 8, bucket[0] // 8)
    adapted = {n.split(".lora_")[0] for n, _ in trainer.base.denoiser.named_parameters() if ".lora_A." in n}
    assert {"single_transformer_blocks.1.attn.to_out", "single_transformer_blocks.0.attn.to_qkv_mlp_proj",
            "transformer_blocks.1.attn.to_add_out", "transformer_blocks.0.ff_context.linear_in"} <= adapted
    assert "proj_out" not in adapted  # the final layer is not a target
    loss = trainer.micro_batch_loss(0)
    assert torch.isfinite(loss)
    loss.backward()
    params = {n: p for n, p in trainer.base.denoiser.named_parameters() if p.requires_grad}
    assert params and [n for n, p in params.items() if "lora_B" in n and not p.grad.abs().sum()] == []


def test_a_base_stored_in_int8_trains(ws, tiny_flow):
    trainer, result = _train(ws, tiny_flow, "flux2klein", "int8")
    frozen = {type(m.weight).__name__ for m in trainer.base.denoiser.modules()
              if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad}
    assert frozen == {"Int8Tensor"}
    tensors = load_file(result.output)
    assert all(torch.isfinite(t).all() for t in tensors.values())
    assert any(k.endswith(".lora_up.weight") and t.abs().sum() > 0 for k, t in tensors.items())


def test_a_flux2_single_file_is_refused_with_where_to_get_one(tmp_path):
    file = tmp_path / "flux-2-klein-base-4b.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(1),
               "double_stream_modulation_img.lin.weight": torch.zeros(1)}, file)
    with pytest.raises(LoraLabError, match="a FLUX.2 checkpoint; lora_lab reads FLUX.2 .klein. from a diffusers"):
        detect_family(str(file))
