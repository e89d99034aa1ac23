"""`lora-lab lora convert` and `inspect` on LoRAs of every family's tiny model and on kohya files
built by hand as sd-scripts writes them.

A LoRA is made as the trainer makes it (its adapters on the tiny model, random ups so every module
matters) and saved in the layout the UIs load. Converted to each layout and back, the file must
come back byte for byte; each converted file, loaded by diffusers' `load_lora_weights` (directly
where diffusers reads that layout, else after converting it to diffusers' layout), must give the
same weight deltas as the trained adapters, bit for bit; and one image per family must equal
the trained model's.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from server_api import API, api, jp_server_config  # noqa: F401 (fixtures)
from test_train_flow import PROMPT, _diffusers_reads_tiny_bfl, _images
from ui_rules import comfy_ldm_layout

from lora_lab.errors import LoraLabError
from lora_lab.tools.convert import convert_file, convert_state
from lora_lab.tools.inspect import inspect_lora
from lora_lab.tools.layouts import FORMATS, Lora, dotted, read_modules, write_modules
from lora_lab.training.adapters import add_adapters
from lora_lab.training.base_model import load_base_model
from lora_lab.training.kohya_names import diffusers_unet_path, layers_per_block, ldm_unet_path
from lora_lab.training.lora_file import describe_lora, lora_family, save_lora, ss_metadata
from lora_lab.training.sections import NetworkSection

FAMILIES = ["sd15", "sdxl", "zimage", "flux", "chroma", "qwenimage", "flux2klein"]
SD = ("sd15", "sdxl")
# layouts diffusers' load_lora_weights reads for the family (the rest are checked through a conversion)
LOADS = {"sd15": ("kohya", "diffusers"), "sdxl": ("kohya", "diffusers"),
         "zimage": FORMATS, "qwenimage": FORMATS, "flux": FORMATS, "chroma": FORMATS,
         "flux2klein": ("kohya", "diffusers")}
FACTS = dict(network_dim=4, network_alpha=2, resolution=64, steps=12, learning_rate=1e-3, seed=7,
             tag_frequency={"10_shapes": {"red": 3, "circle": 2}, "5_more": {"red": 1}},
             dataset_dirs={"10_shapes": {"n_repeats": 10, "img_count": 2}},
             training_started_at=1_700_000_000.0, training_finished_at=1_700_000_060.0)


def base_path(family, tiny_models, tiny_flow):
    return (tiny_models if family in SD else tiny_flow)[family]


def pipeline(family, tiny_models, tiny_flow):
    base = load_base_model(str(base_path(family, tiny_models, tiny_flow)), family)
    base.pipeline.set_progress_bar_config(disable=True)
    return base


def image(family, pipe) -> np.ndarray:
    if family in SD:
        return pipe("a red circle", num_inference_steps=2, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]
    return _images(pipe, **PROMPT)


def deltas(models, adapter: str) -> dict[str, torch.Tensor]:
    """{part.module: the weight delta} of ``adapter`` on the models (peft's own arithmetic)."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for part, model in models.items():
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer) and adapter in module.lora_A:
                out[f"{part}.{name.removeprefix('text_model.')}"] = module.get_delta_weight(adapter).detach()
    return out


def models_of(base) -> dict[str, torch.nn.Module]:
    names = [base.spec.denoiser, *base.spec.text_encoders]
    return {n: getattr(base.pipeline, n) for n in names}


@pytest.fixture(scope="module", params=FAMILIES)
def trained(request, tiny_models, tiny_flow, tmp_path_factory):
    return make_trained(request.param, tiny_models, tiny_flow, tmp_path_factory)


def make_trained(family, tiny_models, tiny_flow, tmp_path_factory) -> SimpleNamespace:
    """A LoRA as the trainer builds it (LoCon + text encoders for SD), saved as the UIs load it."""
    base = pipeline(family, tiny_models, tiny_flow)
    sd = family in SD
    network = NetworkSection(rank=4, alpha=2, targets="locon" if sd else "attn_mlp", conv_rank=2,
                             train_text_encoder=sd)
    models = add_adapters(base, network, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for model in models:
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=g) * 0.1)
    folder = tmp_path_factory.mktemp(family)
    path = save_lora(folder / "trained.safetensors", base.denoiser, base.text_encoders if sd else [],
                     family=family, metadata=ss_metadata(family=family, **FACTS), dtype=torch.float32)
    for model in models:
        model.eval()
    return SimpleNamespace(family=family, path=path, folder=folder, format=describe_lora(path)["format"],
                           deltas=deltas(models_of(base), "default"), image=image(family, base.pipeline))


def loaded_deltas(base, path, name: str) -> dict[str, torch.Tensor]:
    base.pipeline.load_lora_weights(str(path), adapter_name=name)
    try:
        return deltas(models_of(base), name)
    finally:
        base.pipeline.delete_adapters(name)


def assert_same_deltas(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_every_layout_round_trips_byte_for_byte_and_loads_as_trained(trained, tiny_models, tiny_flow, cli,
                                                                     monkeypatch):
    fresh = pipeline(trained.family, tiny_models, tiny_flow)
    if trained.family in ("flux", "chroma"):
        _diffusers_reads_tiny_bfl(monkeypatch, fresh.pipeline)
    original = load_file(trained.path)
    for to in FORMATS:
        out = trained.folder / f"{to}.safetensors"
        _, text, _ = cli("lora", "convert", str(trained.path), "--to", to, "--out", str(out))
        assert str(out) in text
        assert describe_lora(out)["format"] == to and describe_lora(out)["family"] == trained.family
        # without sd-scripts' metadata the keys tell the family (a Chroma LoRA reads as Flux.1's)
        assert lora_family(load_file(out), {}) == {"chroma": "flux"}.get(trained.family, trained.family)
        back = convert_file(out, trained.format, trained.folder / f"{to}-back.safetensors")
        restored = load_file(back["path"])
        assert sorted(restored) == sorted(original)
        assert all(torch.equal(restored[k], original[k]) for k in original)
        via = out if to in LOADS[trained.family] else convert_file(
            out, "diffusers", trained.folder / f"{to}-diffusers.safetensors")["path"]
        assert_same_deltas(loaded_deltas(fresh, via, to), trained.deltas)
    fresh.pipeline.load_lora_weights(str(trained.folder / "diffusers.safetensors"))
    np.testing.assert_allclose(image(trained.family, fresh.pipeline), trained.image, atol=1e-5)


def test_metadata_travels_and_hashes_are_recomputed(trained):
    src_meta = safe_open(trained.path, "pt").metadata()
    for to in FORMATS:
        out = trained.folder / f"meta-{to}.safetensors"
        convert_file(trained.path, to, out)
        meta = safe_open(out, "pt").metadata()
        assert {k: v for k, v in meta.items() if k.startswith(("ss_", "modelspec."))} == \
            {k: v for k, v in src_meta.items() if k.startswith(("ss_", "modelspec."))}
        report = inspect_lora(out)
        assert report["hashes"]["stored_hash_matches"] is True
        assert ("lora_adapter_metadata" in meta) == (to == "diffusers")


def test_inspect_reads_every_layout_alike(trained, cli):
    _, text, _ = cli("lora", "inspect", str(trained.path), "--json")
    report = json.loads(text)
    assert report["family"] == trained.family and report["ranks"] == ([2, 4] if trained.family in SD else [4])
    assert report["tags"] == {"red": 4, "circle": 2}
    assert report["training"]["started"] == "2023-11-14T22:13:20+00:00"
    assert report["training"]["dataset"] == {"10_shapes": {"repeats": 10, "images": 2}}
    assert report["hashes"]["sha256"] == hashlib.sha256(trained.path.read_bytes()).hexdigest()
    for to in FORMATS:  # the same modules, named as diffusers names them, whatever the layout
        out = trained.folder / f"inspect-{to}.safetensors"
        convert_file(trained.path, to, out)
        assert inspect_lora(out)["groups"] == report["groups"]
    _, text, _ = cli("lora", "inspect", str(trained.path))
    assert "red 4, circle 2" in text and "sshs_model_hash matches" in text


@pytest.mark.parametrize("trained", SD, indirect=True)  # the transformer families' ComfyUI keys:
def test_sd_comfyui_files_name_comfyuis_own_modules(trained, tiny_models):  # test_train_flow, test_flux2klein
    """ComfyUI's saver and loader name the LDM UNet's state-dict paths under `diffusion_model.` and
    the CLIP state dicts' under `text_encoders.clip_l/clip_g.transformer.` (ui_rules' layout)."""
    from diffusers import UNet2DConditionModel

    layout = comfy_ldm_layout(UNet2DConditionModel.load_config(tiny_models[trained.family] / "unet"))
    out = convert_file(trained.path, "comfyui", trained.folder / "names.safetensors")["path"]
    modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in load_file(out)}
    clips = ["clip_l"] if trained.family == "sd15" else ["clip_l", "clip_g"]
    want = {f"diffusion_model.{layout[k.partition('.')[2]]}" for k in trained.deltas if k.startswith("unet.")}
    want |= {f"text_encoders.{clips[k.startswith('text_encoder_2')]}.transformer.text_model.{k.partition('.')[2]}"
             for k in trained.deltas if k.startswith("text_encoder")}
    assert modules == want


# ------------------------------------------------------------------ hand-built kohya files

def sd_scripts_metadata(version: str, dim: int, alpha: float) -> dict[str, str]:
    """Metadata as sd-scripts' train_network.py writes it (a subset, its spellings)."""
    return {
        "ss_session_id": "1234", "ss_training_started_at": "1700000000.5", "ss_output_name": "handmade",
        "ss_learning_rate": "0.0001", "ss_text_encoder_lr": "5e-05", "ss_unet_lr": "0.0001",
        "ss_num_train_images": "20", "ss_num_epochs": "2", "ss_batch_size_per_device": "2",
        "ss_max_train_steps": "20", "ss_lr_scheduler": "cosine", "ss_network_module": "networks.lora",
        "ss_network_dim": str(dim), "ss_network_alpha": str(float(alpha)), "ss_mixed_precision": "fp16",
        "ss_base_model_version": version, "ss_sd_model_name": "model.safetensors", "ss_resolution": "(512, 512)",
        "ss_optimizer": "bitsandbytes.optim.adamw.AdamW8bit", "ss_steps": "20", "ss_epoch": "2",
        "ss_training_finished_at": "1700000600.25", "ss_v2": "False", "ss_network_args": "null",
        "ss_tag_frequency": json.dumps({"10_dog": {"dog": 10, " sks": 10, "grass": 3}}),
        "ss_dataset_dirs": json.dumps({"10_dog": {"n_repeats": 10, "img_count": 10}}),
    }


def hand_built(base, family: str, dim: int = 4, alpha: float = 1.0) -> dict[str, torch.Tensor]:
    """kohya keys written the way sd-scripts' networks/lora.py names modules: the UNet's
    attention and text encoder linears, `lora_unet_` + path with `_` (SDXL: LDM paths)."""
    g = torch.Generator().manual_seed(3)
    unet = base.pipeline.unet
    tensors = {}

    def add(key, module):
        tensors[f"{key}.lora_down.weight"] = torch.randn(dim, module.in_features, generator=g) * 0.1
        tensors[f"{key}.lora_up.weight"] = torch.randn(module.out_features, dim, generator=g) * 0.1
        tensors[f"{key}.alpha"] = torch.tensor(alpha)

    for name, module in unet.named_modules():
        if name.endswith(("attn1.to_q", "attn2.to_v", "ff.net.2")):
            path = ldm_unet_path(name, unet.config) if family == "sdxl" else name
            add("lora_unet_" + path.replace(".", "_"), module)
    prefixes = ["lora_te"] if family == "sd15" else ["lora_te1", "lora_te2"]
    for prefix, te in zip(prefixes, base.text_encoders):
        for name, module in te.named_modules():
            if name.endswith(("_proj", "fc1", "fc2")) and "encoder.layers" in name:  # as sd-scripts: all
                add(f"{prefix}_text_model_{name.removeprefix('text_model.').replace('.', '_')}", module)
    return tensors


@pytest.mark.parametrize("family", SD)
def test_hand_built_kohya_files_inspect_convert_and_load(family, tiny_models, tiny_flow, tmp_path, cli):
    base = pipeline(family, tiny_models, tiny_flow)
    version = "sd_v1" if family == "sd15" else "sdxl_base_v1-0"
    path = tmp_path / "handmade.safetensors"
    save_file(hand_built(base, family), path, sd_scripts_metadata(version, 4, 1.0))
    _, text, _ = cli("lora", "inspect", str(path), "--json")
    report = json.loads(text)
    assert (report["format"], report["family"], report["ranks"], report["alphas"]) == ("kohya", family, [4], [1.0])
    assert report["tags"] == {"dog": 10, "sks": 10, "grass": 3}
    assert report["training"]["finished"] == "2023-11-14T22:23:20+00:00"
    assert report["training"]["optimizer"] == "bitsandbytes.optim.adamw.AdamW8bit"
    assert report["hashes"]["stored_model_hash"] is None
    want = loaded_deltas(base, path, "kohya")
    for to in ("diffusers", "comfyui"):
        out = tmp_path / f"{to}.safetensors"
        cli("lora", "convert", str(path), "--to", to, "--out", str(out))
        via = out if to == "diffusers" else convert_file(out, "diffusers", tmp_path / "via.safetensors")["path"]
        assert_same_deltas(loaded_deltas(base, via, to), want)
        back = load_file(convert_file(out, "kohya", tmp_path / f"{to}-back.safetensors")["path"])
        original = load_file(path)
        assert sorted(back) == sorted(original) and all(torch.equal(back[k], original[k]) for k in original)


# ------------------------------------------------------------------ names

def unet_modules(config: dict) -> tuple[list[str], dict]:
    """The adaptable module paths of a UNet built (without weights) from ``config``, and its whole config."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    return [n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))], dict(unet.config)


REAL_SD15 = dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768)  # the defaults' blocks
REAL_SDXL = dict(block_out_channels=(320, 640, 1280), cross_attention_dim=2048, layers_per_block=2,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, use_linear_projection=True)


@pytest.mark.parametrize("config", [REAL_SD15, REAL_SDXL, "sd15", "sdxl"],
                         ids=["sd15", "sdxl", "tiny-sd15", "tiny-sdxl"])
def test_ldm_names_map_back_to_diffusers_names(config, tiny_models):
    from diffusers import UNet2DConditionModel

    if isinstance(config, str):
        config = dict(UNet2DConditionModel.load_config(tiny_models[config] / "unet"))
    paths, full = unet_modules(config)
    ldm = {p: ldm_unet_path(p, full) for p in paths}
    assert len(set(ldm.values())) == len(paths)
    layers = full["layers_per_block"]
    assert layers_per_block(list(ldm.values()), "ldm") == layers == layers_per_block(paths, "diffusers")
    assert all(diffusers_unet_path(name, layers) == p for p, name in ldm.items())


def test_kohya_flat_names_get_their_dots_back(trained):
    paths = [key.partition(".")[2] for key in trained.deltas]
    assert paths and all(dotted(path.replace(".", "_")) == path for path in paths)


# ------------------------------------------------------------------ refusals

@pytest.fixture(scope="module")
def sd15_lora(tiny_models, tiny_flow, tmp_path_factory):
    return make_trained("sd15", tiny_models, tiny_flow, tmp_path_factory)


def test_bad_input_is_refused_and_nothing_is_written(sd15_lora, tiny_models, tmp_path, cli):
    tmp_path = tmp_path / "out"  # beside the workspace the cli fixture makes
    tmp_path.mkdir()
    src = sd15_lora.path
    before = src.read_bytes()
    text = tmp_path / "notes.safetensors"
    text.write_text("not a safetensors file")
    assert "not a readable .safetensors" in cli.fails("lora", "convert", str(text), "--to", "kohya",
                                                      "--out", str(tmp_path / "a.safetensors"))
    assert "no LoRA weights" in cli.fails("lora", "inspect", str(tiny_models["sd15_file"]))
    assert "no LoRA weights" in cli.fails("lora", "convert", str(tiny_models["sd15_file"]), "--to", "diffusers",
                                          "--out", str(tmp_path / "b.safetensors"))
    assert "must end in .safetensors" in cli.fails("lora", "convert", str(src), "--to", "diffusers",
                                                   "--out", str(tmp_path / "c.ckpt"))
    assert "is the input file" in cli.fails("lora", "convert", str(src), "--to", "kohya", "--out", str(src),
                                            "--force")
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"keep me")
    assert "exists; not overwriting" in cli.fails("lora", "convert", str(src), "--to", "diffusers",
                                                  "--out", str(taken))
    assert taken.read_bytes() == b"keep me"
    cli("lora", "convert", str(src), "--to", "diffusers", "--out", str(taken), "--force")
    assert describe_lora(taken)["format"] == "diffusers"
    assert "unknown family" in cli.fails("lora", "convert", str(src), "--to", "comfyui", "--family", "sd3",
                                         "--out", str(tmp_path / "d.safetensors"))
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.safetensors", "taken.safetensors"]


def test_a_file_already_in_the_layout_is_copied_unchanged(sd15_lora, tmp_path, cli):
    out = tmp_path / "copy.safetensors"
    _, text, _ = cli("lora", "convert", str(sd15_lora.path), "--to", "kohya", "--out", str(out), "--json")
    assert json.loads(text)["copied"] is True
    got, want = load_file(out), load_file(sd15_lora.path)
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("fmt", ["kohya", "comfyui"])
def test_fused_parts_of_different_ranks_and_scales_split_back_exactly(fmt):
    """Parts of a fused BFL module with ranks and scales of their own (as a dynamic resize leaves
    them) fuse into one block-diagonal LoRA, their scales folded into the ups, and split back
    into LoRAs of those ranks with the same updates."""
    g = torch.Generator().manual_seed(0)
    modules = {f"transformer.transformer_blocks.0.attn.{part}": Lora(
        torch.randn(rank, 16, generator=g), torch.randn(16, rank, generator=g), torch.tensor(alpha))
        for part, rank, alpha in (("to_q", 1, 1.0), ("to_k", 3, 6.0), ("to_v", 2, 0.5))}
    tensors, _ = write_modules(modules, fmt, "flux")
    assert [v.shape for k, v in tensors.items() if k.endswith(".lora_up.weight")] == [(48, 6)]
    back = read_modules(tensors, {}, fmt, "flux")
    assert back.keys() == modules.keys()
    for name, lora in modules.items():
        assert back[name].rank == lora.rank
        torch.testing.assert_close(back[name].up @ back[name].down * (back[name].alpha / back[name].rank),
                                   lora.up @ lora.down * (lora.alpha / lora.rank))


def test_what_a_layout_cannot_hold_is_refused(sd15_lora):
    tensors, meta = load_file(sd15_lora.path), safe_open(sd15_lora.path, "pt").metadata()
    key = next(k for k in tensors if k.endswith(".lora_up.weight"))
    dora = {**tensors, key.replace(".lora_up.weight", ".dora_scale"): torch.ones(tensors[key].shape[0], 1)}
    with pytest.raises(LoraLabError, match="DoRA"):
        convert_state(dora, meta, "diffusers")
    kohya, _ = convert_state(dora, meta, "comfyui")  # kohya <-> ComfyUI keep dora_scale
    assert sum(k.endswith(".dora_scale") for k in kohya) == 1
    loha = {**tensors, key.replace(".lora_up.weight", ".hada_w1_a"): torch.ones(2, 2)}
    with pytest.raises(LoraLabError, match="LoHa"):
        convert_state(loha, meta, "diffusers")
    unknown = {"lora_unet_some_module.lora_down.weight": torch.ones(2, 3),
               "lora_unet_some_module.lora_up.weight": torch.ones(3, 2)}
    with pytest.raises(LoraLabError, match="cannot tell which model family"):
        convert_state(unknown, {}, "diffusers")
    with pytest.raises(LoraLabError, match="unknown LoRA layout"):
        convert_state(tensors, meta, "a1111")


async def test_rest_inspects_and_converts_files_inside_the_workspace_only(sd15_lora, ws, api, jp_fetch):
    ws.loras.mkdir(parents=True, exist_ok=True)
    shutil.copy(sd15_lora.path, ws.loras / "mine.safetensors")
    r = await jp_fetch(*API, "loras", "inspect", params={"path": "loras/mine.safetensors"})
    report = json.loads(r.body)
    assert (report["path"], report["family"], report["format"]) == ("loras/mine.safetensors", "sd15", "kohya")
    assert report["tags"] == {"red": 4, "circle": 2}
    for path, code in ((str(sd15_lora.path), 400), ("../mine.safetensors", 400), ("loras/none.safetensors", 404)):
        r = await jp_fetch(*API, "loras", "inspect", params={"path": path}, raise_error=False)
        assert r.code == code, path
    body = {"path": "loras/mine.safetensors", "to": "diffusers", "out": "loras/mine-diffusers.safetensors"}
    code, done = await api("loras", "convert", method="POST", body=body)
    assert code == 200 and (done["path"], done["from"], done["copied"]) == (body["out"], "kohya", False)
    assert describe_lora(ws.root / body["out"])["format"] == "diffusers"
    code, error = await api("loras", "convert", method="POST", body=body)
    assert code == 409 and "exists" in error["detail"]
    code, error = await api("loras", "convert", method="POST", body={**body, "out": "../out.safetensors"})
    assert code == 400 and "outside the workspace" in error["detail"]
    assert sorted(p.name for p in ws.loras.iterdir()) == ["mine-diffusers.safetensors", "mine.safetensors"]


def test_a_write_that_fails_midway_leaves_the_old_output_whole(sd15_lora, tmp_path, monkeypatch):
    import lora_lab.atomic

    out = tmp_path / "out.safetensors"
    out.write_bytes(b"the old file")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lora_lab.atomic.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        convert_file(sd15_lora.path, "diffusers", out, force=True)
    assert out.read_bytes() == b"the old file" and [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]
