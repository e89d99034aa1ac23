"""The named models `lora-lab models pull` knows: the caption GGUFs and the base models of every
family the trainer supports, each with the files it needs from its Hub repo.

Diffusers repos also hold single-file checkpoints, fp32 and fp16 copies, .bin, ONNX and Flax
weights; a pull takes only what the pipeline reads: ``model_index.json`` and its components'
folders, safetensors only, and for SD1.5/SDXL the fp16 files, saved under the plain names so any
diffusers loader reads the folder without ``variant=`` (the trainer upcasts what it trains).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from ..errors import NotFound

# Weights a diffusers folder carries besides its safetensors (never read by the trainer)
OTHER_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.msgpack", "*.onnx", "*.onnx_data", "*.h5",
                 "*.gguf", "*non_ema*")


@dataclass(frozen=True)
class CatalogueModel:
    name: str
    repo: str
    kind: str  # "caption" (a GGUF model + its mmproj), "base" (a diffusers pipeline), "adapter"
    include: tuple[str, ...]  # globs on the repo's paths
    size_gb: float  # what a pull downloads, about (the Hub's own sizes are checked before)
    licence: str
    gated: bool = False  # its licence must be accepted on its Hub page, and HF_TOKEN set
    exclude: tuple[str, ...] = ()
    variant: str = ""  # "fp16": take NAME.fp16.safetensors, saved as NAME.safetensors
    family: str = ""  # the trainer's family of a base model
    title: str = ""


def _pipeline(*components: str) -> tuple[str, ...]:
    return ("model_index.json", *(f"{c}/*" for c in components))


_SD = ("scheduler", "tokenizer", "text_encoder", "unet", "vae")
_FLUX1 = ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "vae")
_ONE_ENCODER = ("scheduler", "text_encoder", "tokenizer", "transformer", "vae")
_FLUX_LICENCE = "FLUX.1 [dev] Non-Commercial License"

CATALOGUE: dict[str, CatalogueModel] = {m.name: m for m in (
    CatalogueModel("caption", "ggml-org/Qwen2.5-VL-7B-Instruct-GGUF", "caption",
                   ("Qwen2.5-VL-7B-Instruct-Q8_0.gguf", "mmproj-Qwen2.5-VL-7B-Instruct-f16.gguf"),
                   9.5, "Apache-2.0", title="Qwen2.5-VL 7B Instruct, Q8_0 + f16 vision projector"),
    CatalogueModel("caption-small", "ggml-org/Qwen2.5-VL-3B-Instruct-GGUF", "caption",
                   ("Qwen2.5-VL-3B-Instruct-Q8_0.gguf", "mmproj-Qwen2.5-VL-3B-Instruct-f16.gguf"),
                   4.6, "Qwen Research License (non-commercial)",
                   title="Qwen2.5-VL 3B Instruct, Q8_0 + f16 vision projector"),
    CatalogueModel("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", "base",
                   (*_pipeline(*_SD), "feature_extractor/*", "safety_checker/config.json"), 2.1,
                   "CreativeML OpenRAIL-M", exclude=OTHER_WEIGHTS, variant="fp16", family="sd15",
                   title="Stable Diffusion 1.5 (fp16; no safety checker weights)"),
    CatalogueModel("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "base",
                   _pipeline(*_SD, "tokenizer_2", "text_encoder_2"), 6.9, "CreativeML OpenRAIL++-M",
                   exclude=OTHER_WEIGHTS, variant="fp16", family="sdxl", title="SDXL base 1.0 (fp16)"),
    CatalogueModel("z-image-turbo", "Tongyi-MAI/Z-Image-Turbo", "base", _pipeline(*_ONE_ENCODER),
                   32.8, "Apache-2.0", exclude=OTHER_WEIGHTS, family="zimage",
                   title="Z-Image-Turbo (its transformer is stored in fp32)"),
    CatalogueModel("z-image-turbo-adapter", "ostris/zimage_turbo_training_adapter", "adapter",
                   ("zimage_turbo_training_adapter_v2.safetensors",), 0.17, "Apache-2.0",
                   family="zimage", title="ai-toolkit's training adapter for Z-Image-Turbo (model.adapter)"),
    CatalogueModel("flux1-dev", "black-forest-labs/FLUX.1-dev", "base", _pipeline(*_FLUX1), 33.7,
                   _FLUX_LICENCE, gated=True, exclude=OTHER_WEIGHTS, family="flux", title="FLUX.1 [dev]"),
    CatalogueModel("flux1-schnell", "black-forest-labs/FLUX.1-schnell", "base", _pipeline(*_FLUX1), 33.7,
                   "Apache-2.0", gated=True, exclude=OTHER_WEIGHTS, family="flux",
                   title="FLUX.1 [schnell]"),
    CatalogueModel("chroma", "lodestones/Chroma1-HD", "base", _pipeline(*_ONE_ENCODER), 27.5,
                   "Apache-2.0", exclude=OTHER_WEIGHTS, family="chroma", title="Chroma1-HD"),
    CatalogueModel("qwen-image", "Qwen/Qwen-Image", "base", _pipeline(*_ONE_ENCODER), 57.7,
                   "Apache-2.0", exclude=OTHER_WEIGHTS, family="qwenimage", title="Qwen-Image"),
    CatalogueModel("flux2-klein", "black-forest-labs/FLUX.2-klein-base-4B", "base",
                   _pipeline(*_ONE_ENCODER), 16.0, "Apache-2.0", exclude=OTHER_WEIGHTS,
                   family="flux2klein", title="FLUX.2 [klein] base 4B (the undistilled model LoRAs train on)"),
)}

CAPTION_MODELS = ("caption", "caption-small")  # the caption defaults, in order of preference


def catalogue_model(name: str) -> CatalogueModel:
    """The catalogue entry ``name``, or a message naming the closest ones."""
    if name in CATALOGUE:
        return CATALOGUE[name]
    close = difflib.get_close_matches(name.lower(), CATALOGUE, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise NotFound(f"no model {name!r} in the catalogue; {hint}known: {', '.join(CATALOGUE)} "
                   "(or name a Hub repo as ORG/NAME, or one file as ORG/NAME/PATH)")


def caption_files(model: CatalogueModel) -> tuple[str, str]:
    """A caption entry's (language model, mmproj) file names."""
    mmproj = next(f for f in model.include if f.startswith("mmproj"))
    return next(f for f in model.include if f != mmproj), mmproj
