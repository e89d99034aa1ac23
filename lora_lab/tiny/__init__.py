"""Tiny random-weight models, fabricated offline in seconds, for tests, the demo and binder.

Nothing is downloaded: SD1.5- and SDXL-shaped diffusers pipelines and five flow-matching ones
(Z-Image, Flux.1 [dev], Flux.2 klein, Qwen-Image, Chroma) are built from configs, a Qwen2.5-VL-shaped
caption model pair is written as GGUF, and sample images are drawn. The heavy libraries are imported
only inside ``fabricate``, so importing this package stays cheap.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

# The flow-matching families lora_lab.tiny.flow fabricates (named here, where importing is cheap)
FLOW_FAMILIES = ("zimage", "flux", "flux2klein", "qwenimage", "chroma")


def fabricate(
    out_dir: str | Path,
    *,
    sd15: bool = True,
    sdxl: bool = True,
    caption: bool = True,
    samples: bool = True,
    flow: Iterable[str] = FLOW_FAMILIES,
    seed: int = 0,
) -> dict[str, Path]:
    """Write the tiny models into ``out_dir``; the same seed (and library versions) writes the same bytes.

    - ``sd15/``, ``sdxl/``: diffusers pipelines (safetensors) that
      ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline.from_pretrained(dir)`` load;
    - ``sd15.safetensors``, ``sdxl.safetensors``: the same weights as one original-layout
      checkpoint, as users download base models (``from_single_file(file, config=dir)``);
    - ``zimage/``, ``flux/``, ``flux2klein/``, ``qwenimage/``, ``chroma/``: the flow-matching
      pipelines named in ``flow`` (``()`` for none), which ``ZImagePipeline``, ``FluxPipeline``,
      ``Flux2KleinPipeline``, ``QwenImagePipeline`` and ``ChromaPipeline`` load;
    - ``zimage.safetensors``: the Z-Image transformer alone in its original layout, as ComfyUI
      users download it (``model.base`` with ``model.config = zimage/``);
    - ``caption/tiny-qwen25vl.gguf`` + ``caption/tiny-qwen25vl-mmproj.gguf``: a Qwen2.5-VL text
      model and mmproj that llama-cpp-python's ``Qwen25VLChatHandler`` loads;
    - ``samples/``: a few drawn images, some with caption sidecars.

    Returns the paths written, under the keys "sd15", "sdxl", "sd15_file", "sdxl_file", the
    flow families' names, "zimage_file", "caption_model", "caption_mmproj" and "samples".
    """
    flow = tuple(flow)
    if unknown := sorted(set(flow) - set(FLOW_FAMILIES)):
        raise ValueError(f"unknown flow-matching families {unknown}; choose from {FLOW_FAMILIES}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if sd15 or sdxl:
        from lora_lab.tiny import diffusion
        from lora_lab.tiny.single_file import write_single_file

        for family, wanted, write in (("sd15", sd15, diffusion.write_sd15),
                                      ("sdxl", sdxl, diffusion.write_sdxl)):
            if wanted:
                written[family] = write(out / family, seed)
                written[f"{family}_file"] = write_single_file(
                    written[family], out / f"{family}.safetensors", family)
    if flow:
        from lora_lab.tiny.flow import write_flow

        for family in flow:
            written[family] = write_flow(family, out / family, seed)
        if "zimage" in flow:
            from lora_lab.tiny.single_file import write_zimage_file

            written["zimage_file"] = write_zimage_file(written["zimage"], out / "zimage.safetensors")
    if caption:
        from lora_lab.tiny import gguf_models

        model, mmproj = gguf_models.write_caption_pair(out / "caption", seed)
        written["caption_model"], written["caption_mmproj"] = model, mmproj
    if samples:
        from lora_lab.tiny.samples import write_samples

        written["samples"] = write_samples(out / "samples")
    return written
