"""Single-file (original LDM layout) checkpoints: the tiny pipelines written as one .safetensors
load back through diffusers' from_single_file with every weight intact, and train."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_lab.errors import LoraLabError
from lora_lab.tiny.samples import write_samples
from lora_lab.tiny.single_file import PREFIXES
from lora_lab.training.base_model import detect_family, load_base_model
from lora_lab.training.config import TrainConfig
from lora_lab.training.job import train

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(params=["sd15", "sdxl"])
def tiny(request, tiny_models) -> tuple[str, Path, Path]:
    """(family, the tiny diffusers folder, the same model as one single file)."""
    family = request.param
    return family, tiny_models[family], tiny_models[f"{family}_file"]


def _image(pipe) -> np.ndarray:
    return pipe("sks, a red circle", num_inference_steps=2, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(0)).images[0]


def test_the_single_file_loads_with_the_same_weights_and_images(tiny):
    family, folder, file = tiny
    assert detect_family(str(file)) == family
    single = load_base_model(str(file), family, config=str(folder)).pipeline
    ref = load_base_model(str(folder), family).pipeline
    for name in COMPONENTS:
        if getattr(ref, name, None) is None:
            continue
        got, want = getattr(single, name).state_dict(), getattr(ref, name).state_dict()
        assert got.keys() == want.keys(), name
        unequal = [k for k in want if got[k].is_meta or not torch.equal(got[k], want[k])]
        assert not unequal, (name, unequal)
    assert np.array_equal(_image(single), _image(ref))


def test_the_open_clip_layout_is_what_diffusers_reads(tiny):
    """SDXL's second encoder (OpenCLIP: fused q/k/v, transposed projection), read back by
    diffusers' own converter."""
    family, folder, file = tiny
    if family != "sdxl":
        pytest.skip("SD1.5 has no OpenCLIP encoder")
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextModelWithProjection

    te2 = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2")
    prefix = "conditioner.embedders.1.model."
    got = convert_open_clip_checkpoint(te2, load_file(file), prefix=prefix)
    want = te2.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_training_from_a_single_file(tiny, ws, tmp_path):
    family, folder, file = tiny
    cfg = TrainConfig.from_dict({
        "model": {"base": str(file), "config": str(folder)},
        "dataset": {"source": str(write_samples(tmp_path / "samples")), "resolution": 64,
                    "min_bucket": 64, "max_bucket": 128, "trigger": "sks"},
        "train": {"max_steps": 2}})
    assert train(cfg, workspace=ws).output.is_file()


@pytest.mark.parametrize("part, lost, message", [
    ("vae", "", "Failed to load AutoencoderKL.*needs model.vae"),
    ("unet", "out.", "some of its weights are missing"),
    ("text_encoder", "text_model.final_layer_norm.", "lacks the weights of its text_encoder"),
])
def test_an_incomplete_single_file_is_refused_naming_what_is_missing(tiny, tmp_path, part, lost,
                                                                     message):
    family, folder, file = tiny
    prefix = PREFIXES[family][part] + lost
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in load_file(file).items() if not k.startswith(prefix)}, partial)
    with pytest.raises(LoraLabError, match=f"model.base: .*partial.safetensors.*{message}"):
        load_base_model(str(partial), family, config=str(folder))
    if part == "vae":  # as the message says: the VAE from elsewhere
        pipe = load_base_model(str(partial), family, vae=str(folder / "vae"), config=str(folder))
        assert not any(p.is_meta for p in pipe.vae.parameters())


def test_a_zimage_transformer_file_loads_with_the_same_weights_and_images(tiny_flow):
    """The Z-Image transformer alone, in its original layout (fused qkv), as ComfyUI users
    download it; the text encoder and VAE come from model.config."""
    file, folder = tiny_flow["zimage_file"], tiny_flow["zimage"]
    assert detect_family(str(file)) == "zimage"
    assert any(".attention.qkv." in k for k in load_file(file))
    single = load_base_model(str(file), "zimage", config=str(folder)).pipeline
    ref = load_base_model(str(folder), "zimage").pipeline
    got, want = single.transformer.state_dict(), ref.transformer.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)

    def image(pipe):
        return pipe(prompt="sks, a red circle", num_inference_steps=2, height=64, width=64,
                    guidance_scale=0.0, output_type="np", generator=torch.Generator().manual_seed(0)).images[0]
    assert np.array_equal(image(single), image(ref))


def test_training_from_a_zimage_transformer_file(cli, ws, tiny_flow, tmp_path):
    run = {"model": {"base": str(tiny_flow["zimage_file"]), "config": str(tiny_flow["zimage"])},
           "dataset": {"source": str(tiny_flow["samples"]), "resolution": 64, "min_bucket": 64,
                       "max_bucket": 128, "trigger": "sks"},
           "train": {"max_steps": 2}}
    assert train(TrainConfig.from_dict(run), workspace=ws).output.is_file()
    # without model.config there is no text encoder or VAE: refused before a job exists
    del run["model"]["config"]
    said = cli.fails("train", TrainConfig.from_dict(run).write(tmp_path / "run.toml"))
    assert "model.config: zimage.safetensors holds a Z-Image transformer alone" in said
    assert len(list(ws.jobs.iterdir())) == 1  # the first run's only
