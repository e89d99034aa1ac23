"""LoRA files: trained adapters saved by lora_file load back into a fresh pipeline unchanged.

Each round trip generates with the live peft adapters, saves, loads the file into a fresh
pipeline with diffusers' `load_lora_weights` and generates again. The images must be equal
bit for bit: the file holds the same float32 weights and the loader rebuilds the same scale
(alpha / rank as Python floats), so the same ops run on the same numbers. Any difference means a
lost module, a wrong alpha or a mis-shaped tensor, which is what this file guards against.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from ui_rules import comfy_ldm_layout, comfy_weight_decompose

from lora_lab.errors import LoraLabError
from lora_lab.tiny.diffusion import write_sd15, write_sdxl
from lora_lab.training.adapters import inject_lora
from lora_lab.training.lora_file import (
    describe_lora,
    file_model_hash,
    kohya_state_dict,
    read_lora,
    save_lora,
    ss_metadata,
)

ATTN = ["to_q", "to_k", "to_v", "to_out.0"]
MLP = [*ATTN, "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"]
CONVS = ["conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv"]
TE = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
UNET_ALPHA, TE_ALPHA, CONV_ALPHA = 8, 2, 1  # all differ from their ranks (4, 4, 2)
FACTS = dict(
    family="sd15", network_dim=4, network_alpha=UNET_ALPHA, resolution=64, steps=10, epoch=2, num_epochs=2,
    learning_rate=1e-4, unet_lr=1e-4, text_encoder_lr=5e-5, seed=7, batch_size_per_device=2,
    gradient_accumulation_steps=1, optimizer="torch.optim.AdamW", lr_scheduler="constant", noise_offset=None,
    min_snr_gamma=5.0, mixed_precision="no", num_train_images=20, network_dropout=None,
    tag_frequency={"10_shapes": {"red": 3, "circle": 2}},
    dataset_dirs={"10_shapes": {"n_repeats": 10, "img_count": 2}},
    training_comment="tiny", sd_model_name="tiny-sd15", output_name="shapes",
    training_started_at=1_700_000_000.0, training_finished_at=1_700_000_060.0,
)


def lora(r: int, alpha: int, targets: list[str], **kw) -> LoraConfig:
    return LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights="gaussian", **kw)


def locon() -> LoraConfig:
    # LoCon as the trainer builds it: convolutions get their own rank and alpha through patterns
    return lora(4, UNET_ALPHA, [*MLP, *CONVS], rank_pattern={c: 2 for c in CONVS},
                alpha_pattern={c: CONV_ALPHA for c in CONVS})


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    return {"sd15": write_sd15(root / "sd15"), "sdxl": write_sdxl(root / "sdxl")}


def fresh(bases, family: str):
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(bases[family])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def encoders(pipe) -> list:
    return [pipe.text_encoder, *([pipe.text_encoder_2] if hasattr(pipe, "text_encoder_2") else [])]


def generate(pipe) -> np.ndarray:
    return pipe("a red circle", num_inference_steps=2, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(0)).images[0]


def adapted(bases, family: str, unet_config: LoraConfig, te_config: LoraConfig | None):
    """A fresh pipeline with adapters whose weights all matter (lora_B and DoRA magnitudes random)."""
    pipe = fresh(bases, family)
    base_image = generate(pipe)
    models = [pipe.unet, *(encoders(pipe) if te_config else [])]
    g = torch.Generator().manual_seed(1)
    for model in models:
        if model is pipe.unet:
            model.add_adapter(unet_config)
        else:
            inject_lora(model, te_config)  # as the trainer does: peft itself, not transformers
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=g) * 0.1)
                elif "lora_magnitude_vector" in name:
                    param.mul_(1 + 0.2 * torch.randn(param.shape, generator=g))
    image = generate(pipe)
    assert np.abs(image - base_image).max() > 0.05, "the adapters must visibly change the image"
    return SimpleNamespace(pipe=pipe, family=family, image=image)


def assert_reloads(bases, run, path) -> None:
    pipe = fresh(bases, run.family)
    pipe.load_lora_weights(str(path))
    np.testing.assert_array_equal(generate(pipe), run.image)


def save(run, path, fmt="kohya", dtype=torch.float32, **facts):
    meta = ss_metadata({**FACTS, "family": run.family, **facts})
    return save_lora(path, run.pipe.unet, encoders(run.pipe), family=run.family, fmt=fmt,
                     metadata=meta, dtype=dtype)


@pytest.fixture(scope="module")
def sd15(bases, tmp_path_factory):
    run = adapted(bases, "sd15", lora(4, UNET_ALPHA, MLP), lora(4, TE_ALPHA, TE))
    run.kohya = save(run, tmp_path_factory.mktemp("sd15") / "shapes.safetensors")
    return run


@pytest.fixture(scope="module")
def sdxl(bases, tmp_path_factory):
    run = adapted(bases, "sdxl", lora(4, UNET_ALPHA, ATTN), lora(4, TE_ALPHA, TE[:4]))
    folder = tmp_path_factory.mktemp("sdxl")
    run.kohya = save(run, folder / "kohya.safetensors")
    run.diffusers = save(run, folder / "diffusers.safetensors", fmt="diffusers")
    return run


# ------------------------------------------------------------------ round trips

def test_sd15_kohya_reloads_identically(bases, sd15):
    assert_reloads(bases, sd15, sd15.kohya)


def test_sdxl_kohya_reloads_identically(bases, sdxl):
    assert_reloads(bases, sdxl, sdxl.kohya)


def test_sdxl_diffusers_format_reloads_identically(bases, sdxl):
    assert_reloads(bases, sdxl, sdxl.diffusers)
    tensors, meta = read_lora(sdxl.diffusers)
    assert {k.split(".")[0] for k in tensors} == {"unet", "text_encoder", "text_encoder_2"}
    assert "lora_adapter_metadata" in meta and meta["ss_base_model_version"] == "sdxl_base_v1-0"


def test_sdxl_locon_with_ldm_names_reloads_identically(bases, tmp_path):
    """diffusers maps sd-scripts' SDXL names (input_blocks/middle_block/output_blocks) back."""
    run = adapted(bases, "sdxl", locon(), lora(4, TE_ALPHA, TE))
    path = save(run, tmp_path / "locon.safetensors", conv_dim=2, conv_alpha=CONV_ALPHA)
    tensors, _ = read_lora(path)
    assert "lora_unet_output_blocks_1_2_conv.lora_down.weight" in tensors  # up_blocks.0.upsamplers.0.conv
    assert_reloads(bases, run, path)


def test_sdxl_files_with_diffusers_unet_names_still_read_and_reload(bases, sdxl, tmp_path):
    """Files written before SDXL got LDM names (lora_unet_down_blocks_…) stay readable."""
    tensors, meta = read_lora(sdxl.kohya)
    to_diffusers = {ldm.replace(".", "_"): name.replace(".", "_")
                    for name, ldm in comfy_ldm_layout(sdxl.pipe.unet.config).items()}

    def old_name(key: str) -> str:
        module, _, part = key.partition(".")
        if module.startswith("lora_unet_"):
            module = "lora_unet_" + to_diffusers[module.removeprefix("lora_unet_")]
        return f"{module}.{part}"

    old = tmp_path / "old.safetensors"
    save_file({old_name(k): v for k, v in tensors.items()}, old, meta)
    info, new = describe_lora(old), describe_lora(sdxl.kohya)
    assert (info["unet_names"], new["unet_names"]) == ("diffusers", "ldm")
    assert {k: info[k] for k in ("family", "modules", "ranks", "alphas")} == \
        {k: new[k] for k in ("family", "modules", "ranks", "alphas")}
    assert_reloads(bases, sdxl, old)


def test_locon_conv_modules_keep_their_rank_alpha_and_shape(bases, tmp_path):
    run = adapted(bases, "sd15", locon(), lora(4, TE_ALPHA, TE))
    path = save(run, tmp_path / "locon.safetensors", conv_dim=2, conv_alpha=CONV_ALPHA)
    assert_reloads(bases, run, path)
    tensors, meta = read_lora(path)
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert tensors[f"{conv}.lora_down.weight"].shape == (2, 32, 3, 3)
    assert tensors[f"{conv}.lora_up.weight"].shape == (32, 2, 1, 1)
    assert tensors[f"{conv}.alpha"].item() == CONV_ALPHA
    assert tensors["lora_unet_down_blocks_0_downsamplers_0_conv.alpha"].item() == CONV_ALPHA
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "1.0"}
    info = describe_lora(path)
    assert info["conv_modules"] > 0 and info["ranks"] == [2, 4] and info["alphas"] == [1.0, 2.0, 8.0]


def test_dora_diffusers_format_reloads_identically(bases, tmp_path):
    run = adapted(bases, "sd15", lora(4, UNET_ALPHA, [*ATTN, "conv1"], use_dora=True),
                  lora(4, TE_ALPHA, TE, use_dora=True))
    path = save(run, tmp_path / "dora.safetensors", fmt="diffusers")
    assert_reloads(bases, run, path)
    assert describe_lora(path)["dora"]


def comfy_merge(tensors, key: str, weight: torch.Tensor) -> torch.Tensor:
    """The weight ComfyUI builds from one kohya module (tests/ui_rules.py)."""
    down, up, alpha = (tensors[f"{key}.{p}"] for p in ("lora_down.weight", "lora_up.weight", "alpha"))
    diff = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * (alpha / down.shape[0])
    return comfy_weight_decompose(tensors[f"{key}.dora_scale"], weight, diff)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_kohya_dora_is_applied_by_comfyui_as_trained(bases, tmp_path, family):
    """diffusers drops `dora_scale` from kohya SD/SDXL files (it warns), so no image round trip:
    ComfyUI's published DoRA merge of the file must give the weights peft merges, for linear
    and 3x3 conv layers (per output channel, LyCORIS' wd_on_output layout)."""
    run = adapted(bases, family, lora(4, UNET_ALPHA, [*ATTN, "conv1"], use_dora=True), None)
    path = save(run, tmp_path / "dora.safetensors", dora=True)
    tensors, meta = read_lora(path)
    assert meta["ss_network_module"] == "lycoris.kohya" and describe_lora(path)["dora"]
    layout = comfy_ldm_layout(run.pipe.unet.config) if family == "sdxl" else {}
    layers = [(n, m) for n, m in run.pipe.unet.named_modules() if isinstance(m, LoraLayer)]
    assert {n.rsplit(".", 1)[-1] for n, _ in layers} == {"to_q", "to_k", "to_v", "0", "conv1"}
    for name, layer in layers:
        key = "lora_unet_" + layout.get(name, name).replace(".", "_")
        weight = layer.base_layer.weight.detach().clone()
        assert tensors[f"{key}.dora_scale"].shape == (weight.shape[0], *[1] * (weight.dim() - 1))
        layer.merge()
        torch.testing.assert_close(comfy_merge(tensors, key, weight), layer.base_layer.weight.detach(),
                                   rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ keys and metadata

@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_kohya_keys_are_what_a1111_and_comfyui_match(family, request):
    run = request.getfixturevalue(family)
    tensors, _ = read_lora(run.kohya)
    te_prefixes = ("lora_te_",) if family == "sd15" else ("lora_te1_", "lora_te2_")
    modules = {k.split(".", 1)[0] for k in tensors}
    for module in modules:
        assert module.startswith(("lora_unet_", *te_prefixes)), module
        if not module.startswith("lora_unet_"):
            assert "_text_model_encoder_layers_" in module, module
        alpha = tensors[f"{module}.alpha"]
        assert alpha.dim() == 0 and alpha.item() == (UNET_ALPHA if module.startswith("lora_unet_") else TE_ALPHA)
        assert {f"{module}.lora_down.weight", f"{module}.lora_up.weight"} <= tensors.keys()
    assert all(p in "".join(modules) for p in te_prefixes)
    assert len(tensors) == 3 * len(modules) and all(v.is_contiguous() for v in tensors.values())
    models = [run.pipe.unet, *encoders(run.pipe)]
    assert len(modules) == sum(isinstance(layer, LoraLayer) for m in models for layer in m.modules())


def test_ss_metadata_is_written_as_sd_scripts_writes_it(sd15, sdxl):
    _, meta = read_lora(sd15.kohya)
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_args"] == "{}"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "8.0")
    assert (meta["ss_base_model_version"], meta["ss_v2"], meta["ss_resolution"]) == ("sd_v1", "False", "(64, 64)")
    assert (meta["ss_steps"], meta["ss_learning_rate"], meta["ss_noise_offset"]) == ("10", "0.0001", "None")
    assert meta["ss_training_started_at"] == "1700000000.0" and meta["ss_output_name"] == "shapes"
    assert json.loads(meta["ss_tag_frequency"]) == FACTS["tag_frequency"]
    assert json.loads(meta["ss_dataset_dirs"])["10_shapes"] == {"n_repeats": 10, "img_count": 2}
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora" and meta["modelspec.title"] == "shapes"
    assert meta["sshs_model_hash"] == file_model_hash(sd15.kohya) and len(meta["sshs_legacy_hash"]) == 8
    _, meta = read_lora(sdxl.kohya)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"


def test_ss_metadata_facts():
    meta = ss_metadata(family="sdxl", network_dim=8, network_alpha=4, conv_dim=4, conv_alpha=2, dora=True)
    assert meta["ss_network_module"] == "lycoris.kohya" and meta["ss_resolution"] == "(1024, 1024)"
    assert json.loads(meta["ss_network_args"]) == {
        "algo": "locon", "dora_wd": "True", "wd_on_output": "True", "conv_dim": "4", "conv_alpha": "2.0"}
    assert all(isinstance(v, str) for v in meta.values())
    with pytest.raises(ValueError, match="learning_rte"):
        ss_metadata(family="sd15", network_dim=4, network_alpha=4, learning_rte=1e-4)


def test_model_hash_ignores_metadata_but_not_weights(sd15, tmp_path):
    first = save(sd15, tmp_path / "a.safetensors", training_comment="first")
    second = save(sd15, tmp_path / "b.safetensors", training_comment="second", title="other")
    half = save(sd15, tmp_path / "c.safetensors", dtype=torch.float16)
    hashes = [read_lora(p)[1]["sshs_model_hash"] for p in (first, second, half)]
    assert first.read_bytes() != second.read_bytes() and hashes[0] == hashes[1] != hashes[2]
    assert describe_lora(half)["dtypes"] == ["float16", "float32"]  # alphas stay exact in float32


def test_describe_lora(sd15, sdxl):
    info = describe_lora(sd15.kohya)
    assert (info["format"], info["family"], info["ranks"], info["alphas"]) == ("kohya", "sd15", [4], [2.0, 8.0])
    assert info["modules"]["te1"] == 12 and info["modules"]["te2"] == 0 and info["modules"]["unet"] > 0
    assert not info["dora"] and info["conv_modules"] == 0 and info["metadata"]["ss_seed"] == "7"
    for path, fmt in ((sdxl.kohya, "kohya"), (sdxl.diffusers, "diffusers")):
        info = describe_lora(path)
        assert (info["format"], info["family"], info["alphas"]) == (fmt, "sdxl", [2.0, 8.0])
        assert info["modules"]["te1"] == info["modules"]["te2"] == 8


def test_kohya_state_dict_skips_models_without_the_adapter(sd15):
    tensors = kohya_state_dict(sd15.pipe.unet, [None])
    assert tensors and all(k.startswith("lora_unet_") for k in tensors)
    assert kohya_state_dict(sd15.pipe.unet, []).keys() == tensors.keys()
    with pytest.raises(ValueError, match="no model carries"):
        kohya_state_dict(sd15.pipe.unet, [sd15.pipe.text_encoder], adapter_name="other")


# ------------------------------------------------------------------ files on disk

@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_save_is_atomic(sd15, tmp_path, monkeypatch, fmt):
    path = save(sd15, tmp_path / "lora.safetensors", fmt=fmt)
    before = path.read_bytes()

    def killed(fd):
        raise OSError("killed mid-save")

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(OSError, match="killed"):
        save(sd15, path, fmt=fmt, training_comment="new")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora.safetensors"]


def test_bad_files_get_clear_errors(sd15, tmp_path):
    with pytest.raises(LoraLabError, match="not found"):
        read_lora(tmp_path / "missing.safetensors")
    (tmp_path / "notes.safetensors").write_text("not a tensor file")
    with pytest.raises(LoraLabError, match="not a readable .safetensors"):
        describe_lora(tmp_path / "notes.safetensors")
    save_file({"model.weight": torch.zeros(2, 2)}, tmp_path / "base.safetensors")
    with pytest.raises(LoraLabError, match="no LoRA weights"):
        read_lora(tmp_path / "base.safetensors")
    with pytest.raises(LoraLabError, match="must end in .safetensors"):
        save(sd15, tmp_path / "lora.pt")


def test_importing_lora_lab_does_not_load_the_lora_file_module():
    code = "import sys, lora_lab; sys.exit('lora_lab.training.lora_file' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
