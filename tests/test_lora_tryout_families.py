"""`lora-lab lora try` on every family the trainer supports but SD1.5 (test_lora_tryout): a grid
per family on its tiny model with a LoRA of that family, made as the trainer makes it and saved
in its default layout. A LoRA cell is the image of a freshly loaded pipeline with that LoRA at
that strength and seed, called with the family's own arguments (Qwen's true CFG, Flux's
embedded guidance...), the strength-0 column is the base alone even once a LoRA was loaded, and
the steps, guidance and negative prompt not given are the family's preset sample settings."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_train_flow import _diffusers_reads_tiny_bfl

from lora_lab.errors import LoraLabError
from lora_lab.tools.tryout import SampleDefaults, Tryout, sample_defaults
from lora_lab.training.adapters import add_adapters
from lora_lab.training.base_model import load_base_model
from lora_lab.training.lora_file import save_lora, ss_metadata
from lora_lab.training.presets import PRESETS
from lora_lab.training.sections import NetworkSection

FAMILIES = ["sdxl", "zimage", "flux", "chroma", "qwenimage", "flux2klein"]
# each family's default preset (its sample settings are the grid's defaults)
PRESET = {"sdxl": "sdxl", "zimage": "zimage-turbo", "flux": "flux-dev", "chroma": "chroma",
          "qwenimage": "qwenimage", "flux2klein": "flux2-klein"}
PROMPT, SEEDS, STRENGTH = "sks, a red circle", (3, 4), 0.7


def base_of(family, tiny_models, tiny_flow):
    return (tiny_models if family == "sdxl" else tiny_flow)[family]


def fresh(base, family):
    pipe = load_base_model(str(base), family).pipeline
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_lora(base, family, path):
    """A LoRA as the trainer builds it (random ups, so every module shows), in the family's default
    layout (ComfyUI's for the transformer families, kohya's for SDXL, its text encoders too)."""
    model = load_base_model(str(base), family)
    sd = family == "sdxl"
    trained = add_adapters(model, NetworkSection(rank=4, alpha=2, targets="attn_mlp", train_text_encoder=sd),
                           seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in trained:
            for name, p in module.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return save_lora(path, model.denoiser, model.text_encoders if sd else [], family=family,
                     metadata=ss_metadata(family=family, network_dim=4, network_alpha=2), dtype=torch.float32)


def user_call(pipe, family, seed, steps, guidance, negative) -> np.ndarray:
    """The image as a user calls the family's pipeline with these settings (its model card's way)."""
    args = {"qwenimage": {"true_cfg_scale": guidance, "negative_prompt": negative or " "},
            "flux": {"guidance_scale": guidance}, "flux2klein": {"guidance_scale": guidance}}.get(
        family, {"guidance_scale": guidance, "negative_prompt": negative or None})
    image = pipe(prompt=PROMPT, num_inference_steps=steps, width=64, height=64, **args,
                 generator=torch.Generator().manual_seed(seed)).images[0]
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_grid_on_each_family_is_its_pipelines_images_at_its_preset_settings(family, ws, tiny_models, tiny_flow,
                                                                             tmp_path, monkeypatch):
    base = base_of(family, tiny_models, tiny_flow)
    plain = fresh(base, family)
    if family in ("flux", "chroma"):  # the tiny model's sizes for BFL's fused single-block linears
        _diffusers_reads_tiny_bfl(monkeypatch, plain)
    lora = make_lora(base, family, tmp_path / f"{family}.safetensors")
    tryout = Tryout(base, ws)
    grid = tryout.grid([lora], [PROMPT], [0, STRENGTH], SEEDS, steps=2, width=64, height=64)
    sample = PRESETS[PRESET[family]].overrides.get("sample", {})
    want = {"steps": 2, "guidance": sample.get("guidance", 7.0), "negative": sample.get("negative", "")}
    assert {k: grid.settings[k] for k in want} == want  # steps given, the rest the preset's
    assert (tryout.loads, tryout.renders) == (1, 4)
    settings = (2, want["guidance"], want["negative"])
    base_alone = [user_call(plain, family, seed, *settings) for seed in SEEDS]
    plain.load_lora_weights(str(lora), adapter_name="mine")
    plain.set_adapters(["mine"], [STRENGTH])
    with_lora = user_call(plain, family, SEEDS[0], *settings)
    assert np.array_equal(pixels(grid.cell(0, 1).image), with_lora)
    assert np.array_equal(pixels(grid.cell(0, 0).image), base_alone[0])
    assert np.array_equal(pixels(grid.cell(1, 0).image), base_alone[1])  # after the LoRA was on
    assert not np.array_equal(with_lora, base_alone[0])  # the LoRA shows (faintly on a tiny transformer)
    grid.save(tmp_path / "grid.png")
    saved = json.loads((tmp_path / "grid.json").read_text())
    assert (saved["family"], saved["steps"], saved["guidance"], saved["negative"]) == (family, *settings)


def test_a_chroma_lora_without_metadata_is_tried_on_chroma(ws, tiny_flow, tmp_path, monkeypatch):
    """A Chroma LoRA from a tool that writes no sd-scripts metadata reads, by its keys, as FLUX.1's
    (the same blocks): on a Chroma base it is Chroma's, and gives the images of the file that says
    so; one that says FLUX.1 is still refused there. The negative prompt given, even "", is used."""
    _diffusers_reads_tiny_bfl(monkeypatch, fresh(tiny_flow["chroma"], "chroma"))
    said = make_lora(tiny_flow["chroma"], "chroma", tmp_path / "said.safetensors")
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(said), bare)  # the same tensors, no metadata
    tryout = Tryout(tiny_flow["chroma"], ws)
    grid = tryout.grid([said, bare], [PROMPT], [1], [0], steps=2, width=64, height=64, negative="")
    assert [c.family for c in grid.loras] == ["chroma", "chroma"] and grid.settings["negative"] == ""
    assert np.array_equal(pixels(grid.cell(0, 0).image), pixels(grid.cell(0, 1).image))
    flux = tmp_path / "flux.safetensors"
    save_file(load_file(said), flux, {**ss_metadata(family="flux", network_dim=4, network_alpha=2)})
    with pytest.raises(LoraLabError, match=f"flux.safetensors is a LoRA for flux, base {tiny_flow['chroma']} is "
                                           "chroma"):
        tryout.grid([flux], [PROMPT], [1], [0], steps=2, width=64, height=64)


@pytest.mark.parametrize("family, preset", [("sd15", "sd15"), *PRESET.items()])
def test_unset_steps_guidance_and_negative_are_the_familys_preset_sample_settings(family, preset, tmp_path):
    sample = PRESETS[preset].overrides.get("sample", {})
    folder = tmp_path / "model"  # sample_defaults reads a FLUX.1 folder's transformer config, no more
    (folder / "transformer").mkdir(parents=True)
    (folder / "transformer" / "config.json").write_text(json.dumps({"guidance_embeds": True}))
    got = sample_defaults(str(folder), family)
    assert (got.preset, got.steps, got.guidance, got.negative) == (
        preset, sample.get("steps", 20), sample.get("guidance", 7.0), sample.get("negative", ""))
    if family == "flux":  # [schnell]: no guidance input
        (folder / "transformer" / "config.json").write_text(json.dumps({"guidance_embeds": False}))
        assert sample_defaults(str(folder), family) == SampleDefaults("flux-schnell", 4, 0.0, "")


def test_cli_renders_at_the_familys_defaults_and_reads_a_negative_strength_list(cli, ws, tiny_flow, tmp_path):
    """Z-Image Turbo's 8 steps without guidance when none are given, recorded in the grid's JSON;
    --strength -0.5,1 is a list, not an option."""
    lora = make_lora(tiny_flow["zimage"], "zimage", tmp_path / "z.safetensors")
    out = tmp_path / "grid.png"
    done = json.loads(cli("lora", "try", lora, "--base", tiny_flow["zimage"], "--prompt", PROMPT, "--strength",
                          "-0.5,1", "--size", "64x64", "--out", out, "--json")[1])
    saved = json.loads((tmp_path / "grid.json").read_text())
    assert saved == done["inputs"]
    assert {k: saved[k] for k in ("strengths", "steps", "guidance", "negative", "defaults_from")} == {
        "strengths": [-0.5, 1.0], "steps": 8, "guidance": 0.0, "negative": "", "defaults_from": "preset zimage-turbo"}
    assert done["rendered"] == 2
    given = json.loads(cli("lora", "try", lora, "--base", tiny_flow["zimage"], "--prompt", PROMPT, "--strength",
                           "-1", "--steps", 2, "--guidance", 1.5, "--size", "64x64", "--out", tmp_path / "b.png",
                           "--json")[1])["inputs"]
    assert (given["strengths"], given["steps"], given["guidance"]) == ([-1.0], 2, 1.5)
    assert "strength -2.5 is outside -2..2" in cli.fails("lora", "try", lora, "--base", tiny_flow["zimage"],
                                                         "--prompt", PROMPT, "--strength", "-2.5,0",
                                                         "--out", tmp_path / "c.png")
