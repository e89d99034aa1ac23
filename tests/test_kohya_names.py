"""kohya key names: SDXL files carry the LDM names sd-scripts writes, and every UI finds each module.

Expected names come from the UIs' published rules (tests/ui_rules.py), checked on the tiny SDXL
UNet (one resnet a level, two levels) and on the full-size SDXL layout (built on the meta
device: structure only, no weights).
"""
from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_kohya
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from ui_rules import a1111_compvis, a1111_lookup, a1111_modules, comfy_ldm_layout

from lora_lab.tiny.diffusion import build_sd15, build_sdxl
from lora_lab.training.families.sd import CONV_TARGETS, UNET_TARGETS
from lora_lab.training.kohya_names import ldm_unet_path, unet_naming
from lora_lab.training.lora_file import describe_lora, read_lora, save_lora

SDXL_BASE = dict(  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json, the fields that shape it
    sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
OUTSIDE_BLOCKS = ("conv_in", "conv_out", "time_embedding.", "add_embedding.")


def block_modules(unet) -> list[str]:
    return [name for name, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
            and not name.startswith(OUTSIDE_BLOCKS)]


@pytest.fixture(scope="module")
def full_sdxl():
    with torch.device("meta"):
        return UNet2DConditionModel(**SDXL_BASE)


@pytest.fixture(scope="module")
def tiny_locon(tmp_path_factory):
    """A tiny SDXL with a LoCon adapter (attention, feed-forward, every resnet and resampling conv)
    as the trainer builds it, saved as a kohya file."""
    pipe = build_sdxl()
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=UNET_TARGETS["attn_mlp"] + CONV_TARGETS,
                                     rank_pattern={c: 2 for c in CONV_TARGETS}))
    path = save_lora(tmp_path_factory.mktemp("names") / "locon.safetensors", pipe.unet, [], family="sdxl")
    modules = {k.split(".", 1)[0] for k in read_lora(path)[0]}
    return pipe.unet, modules, path


def test_the_rules_layout_matches_the_models_modules(full_sdxl):
    """The re-implemented ComfyUI layout names each block module of both UNets, each differently."""
    for unet in (full_sdxl, build_sdxl().unet):
        layout = comfy_ldm_layout(unet.config)
        modules = set(block_modules(unet))
        assert modules <= layout.keys()  # the layout lists a shortcut for every resnet; a model has
        assert all(k.endswith("conv_shortcut") for k in layout.keys() - modules)  # those that change width
        assert len(set(layout.values())) == len(layout)


def test_full_size_sdxl_names_are_sd_scripts_ldm_names(full_sdxl):
    layout = comfy_ldm_layout(full_sdxl.config)
    for name in block_modules(full_sdxl):
        assert ldm_unet_path(name, full_sdxl.config) == layout[name], name
    examples = {  # the names sd-scripts' SDXL LoRAs carry
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q":
            "input_blocks.4.1.transformer_blocks.0.attn1.to_q",
        "mid_block.attentions.0.transformer_blocks.9.ff.net.2": "middle_block.1.transformer_blocks.9.ff.net.2",
        "up_blocks.0.attentions.2.proj_out": "output_blocks.2.1.proj_out",
        "down_blocks.0.downsamplers.0.conv": "input_blocks.3.0.op",
        "up_blocks.1.resnets.2.conv_shortcut": "output_blocks.5.0.skip_connection",
    }
    assert {k: ldm_unet_path(k, full_sdxl.config) for k in examples} == examples


def test_a1111_applies_every_full_size_sdxl_module_only_with_ldm_names(full_sdxl):
    """A1111's SD1.5-numbered conversion agrees with the LDM names everywhere in SDXL but the
    up-sampler of up block 0, which it looks for at index 1 (output_blocks_2_1_conv, which
    does not exist: SDXL's up block 0 has attention, so it sits at 2_2) and drops."""
    layout = comfy_ldm_layout(full_sdxl.config)
    modules = a1111_modules(layout)
    for name in block_modules(full_sdxl):
        ours = "lora_unet_" + ldm_unet_path(name, full_sdxl.config).replace(".", "_")
        assert a1111_lookup(ours, modules) == ours.replace("lora_unet", "diffusion_model"), name
        if name != "up_blocks.0.upsamplers.0.conv":
            assert a1111_compvis("lora_unet_" + name.replace(".", "_")) in modules, name
    diffusers_style = "lora_unet_up_blocks_0_upsamplers_0_conv"
    assert a1111_compvis(diffusers_style) == "diffusion_model_output_blocks_2_1_conv"
    assert a1111_lookup(diffusers_style, modules) is None
    assert ldm_unet_path("up_blocks.0.upsamplers.0.conv", full_sdxl.config) == "output_blocks.2.2.conv"


def test_every_key_of_a_tiny_sdxl_locon_is_found_by_comfyui_and_a1111(tiny_locon):
    unet, modules, path = tiny_locon
    layout = comfy_ldm_layout(unet.config)
    lora_layers = [n for n, m in unet.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    assert modules == {"lora_unet_" + layout[n].replace(".", "_") for n in lora_layers}
    # LoCon adapts every block module but the time-embedding projections
    assert len(lora_layers) == len([n for n in block_modules(build_sdxl().unet) if not n.endswith("time_emb_proj")])
    found = {m: a1111_lookup(m, a1111_modules(layout)) for m in modules}
    assert None not in found.values() and len(set(found.values())) == len(modules)
    # the tiny up block 0 (attention, two resnets) ends at output_blocks.1; its up-sampler sits at .2
    assert layout["up_blocks.0.upsamplers.0.conv"] == "output_blocks.1.2.conv"
    assert "lora_unet_output_blocks_1_2_conv" in modules and "lora_unet_input_blocks_2_0_op" in modules
    assert describe_lora(path)["unet_names"] == "ldm"


def test_sd15_keeps_the_diffusers_names_sd_scripts_writes(tmp_path):
    """The same UNet names as diffusers' own kohya export (convert_state_dict_to_kohya)."""
    pipe = build_sd15()
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=UNET_TARGETS["attn_mlp"] + CONV_TARGETS))
    path = save_lora(tmp_path / "sd15.safetensors", pipe.unet, [], family="sd15")
    reference = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in get_peft_model_state_dict(pipe.unet).items()})
    assert read_lora(path)[0].keys() == reference.keys()
    assert "lora_unet_up_blocks_0_upsamplers_0_conv.alpha" in reference
    assert describe_lora(path)["unet_names"] == "diffusers"


def test_unet_naming_and_unknown_modules():
    assert unet_naming(["lora_unet_input_blocks_1_0_in_layers_2.alpha", "lora_te1_x.alpha"]) == "ldm"
    assert unet_naming(["lora_unet_down_blocks_0_resnets_0_conv1.alpha"]) == "diffusers"
    assert unet_naming(["lora_te_text_model_encoder_layers_0_mlp_fc1.alpha"]) is None
    config = {"layers_per_block": 1, "down_block_types": ["DownBlock2D"], "up_block_types": ["UpBlock2D"]}
    with pytest.raises(ValueError, match="no LDM name"):
        ldm_unet_path("encoder_hid_proj", config)
