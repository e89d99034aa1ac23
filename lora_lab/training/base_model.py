"""The base model a LoRA is trained on: a diffusers folder, a single-file checkpoint, or a Hub id.

The family (:mod:`.families`) is read from the files before anything heavy is loaded, so a bad
path or an unsupported model fails in a second, not after minutes of loading.
"""
from __future__ import annotations

import contextlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LoraLabError
from .sections import DatasetSection

if TYPE_CHECKING:
    from .families import Family

SINGLE_FILE = (".safetensors", ".ckpt")
# The Hub repos whose configs describe a single-file checkpoint's architecture.
SINGLE_FILE_CONFIGS = {"sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
                       "sdxl": "stabilityai/stable-diffusion-xl-base-1.0"}


@dataclass
class BaseModel:
    family: str
    pipeline: Any  # the family's diffusers pipeline
    name: str  # as kohya's ss_sd_model_name records it

    @property
    def spec(self) -> Family:
        from .families import get_family

        return get_family(self.family)

    @property
    def denoiser(self):
        """What a LoRA adapts: the UNet or the transformer."""
        return getattr(self.pipeline, self.spec.denoiser)

    @property
    def unet(self):
        return self.pipeline.unet

    @property
    def vae(self):
        return self.pipeline.vae

    @property
    def text_encoders(self) -> list:
        return [getattr(self.pipeline, name) for name in self.spec.text_encoders]


def detect_family(base: str) -> str:
    """The family's name, from a diffusers folder's model_index.json, a checkpoint's keys, or
    (for a Hub id) its name."""
    path = Path(base).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise LoraLabError(f"model.base: {path} is a folder but not a diffusers model "
                               "(no model_index.json)")
        try:
            components = json.loads(index.read_text())
            name = components["_class_name"]
        except (ValueError, KeyError, TypeError) as e:
            raise LoraLabError(f"model.base: {index} is damaged ({e})") from None
        family = _family_of_class(name, path)
        _check_folders(path, components)
        return family
    if path.suffix.lower() in SINGLE_FILE or path.exists() or base.startswith((".", "/", "~")):
        return _family_of_checkpoint(path)
    if is_hub_id(base):  # only its name can tell before downloading
        return _family_of_hub_id(base)
    raise LoraLabError(f"model.base: {path.absolute()} does not exist (a base model is a "
                       "diffusers folder, a .safetensors file, or a Hub id like org/name)")


def is_hub_id(ref: str) -> bool:
    """Whether a model reference reads as a Hub id (org/name) rather than a local path: one
    slash, nothing here by that name, and not written as a path or a checkpoint file."""
    return (ref.count("/") == 1 and not ref.startswith((".", "/", "~"))
            and Path(ref).suffix.lower() not in SINGLE_FILE and not Path(ref).expanduser().exists())


def local_models(folder: Path) -> list[tuple[Path, str]]:
    """The base models in ``folder`` (a workspace's models/) and its subfolders one level
    down, each with its family: diffusers folders and .safetensors checkpoints. What is no
    SD1.5/SDXL model (a LoRA, a caption GGUF, a .ckpt, which is never read) is left out."""
    found: list[tuple[Path, str]] = []

    def visit(where: Path, depth: int) -> None:
        try:
            entries = sorted(p for p in where.iterdir() if not p.name.startswith("."))
        except OSError:
            return
        for p in entries:
            is_model = (p / "model_index.json").is_file() if p.is_dir() else p.suffix == ".safetensors"
            if is_model:
                with contextlib.suppress(LoraLabError):
                    found.append((p, detect_family(str(p))))
            elif p.is_dir() and depth:
                visit(p, depth - 1)

    visit(folder, 1)
    return found


# Hub ids of image-to-image variants of the families, whose pipelines take an input image
_NOT_TEXT_TO_IMAGE = ("edit", "kontext", "fill", "canny", "depth", "redux", "inpaint", "controlnet")


def _family_of_hub_id(base: str) -> str:
    from .families import FAMILIES

    named = [f for f in FAMILIES.values() if any(w in base.lower() for w in f.hub_names)]
    if not named:
        return "sd15"
    variant = next((w for w in _NOT_TEXT_TO_IMAGE if w in base.lower().rpartition("/")[2]), None)
    if variant:
        raise LoraLabError(f"model.base: {base} reads as a {named[-1].title} {variant} model, which "
                           "turns an input image into another; lora_lab trains text-to-image LoRAs "
                           "(a local diffusers folder is read by its pipeline class instead)")
    return named[-1].name


def _check_folders(path: Path, components: dict) -> None:
    """Every component model_index.json names has its folder (a copy or download cut short
    otherwise fails deep inside diffusers, naming only a config.json)."""
    missing = [name for name, value in components.items() if not name.startswith("_")
               and isinstance(value, list) and value[0] is not None and not (path / name).is_dir()]
    if missing:
        raise LoraLabError(f"model.base: {path} lacks {', '.join(f'{m}/' for m in missing)} that its "
                           "model_index.json lists (an unfinished copy or download?); get the whole model")


def _family_of_class(name: str, where: Path) -> str:
    from .families import FAMILIES, family_of_pipeline

    family = family_of_pipeline(name)
    if family is None:
        titles = ", ".join(f.title for f in FAMILIES.values())
        raise LoraLabError(f"model.base: {where} is a {name}; lora_lab trains {titles}")
    return family.name


def _family_of_checkpoint(path: Path) -> str:
    if not path.is_file():
        raise LoraLabError(f"model.base: {path} does not exist")
    if path.suffix.lower() != ".safetensors":
        raise LoraLabError(f"model.base: {path.name}: only .safetensors checkpoints are read "
                           "(a .ckpt can run code when loaded; convert it first)")
    try:
        keys = safetensors_keys(path)
    except (OSError, ValueError, struct.error) as e:
        raise LoraLabError(f"model.base: {path} is not a readable .safetensors file ({e})") from None
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.") for k in keys):
        return "sd15"
    if {"cap_embedder.0.weight", "model.diffusion_model.cap_embedder.0.weight"} & set(keys):
        return "zimage"  # the transformer alone, as ComfyUI users download it
    if any(k.startswith(("double_stream_modulation_img.", "model.diffusion_model.double_stream_modulation_img."))
           for k in keys):  # before FLUX.1's test: FLUX.2 has double_blocks too
        raise LoraLabError(f"model.base: {path.name} is a FLUX.2 checkpoint; lora_lab reads FLUX.2 [klein] "
                           "from a diffusers folder or a Hub id (black-forest-labs/FLUX.2-klein-base-4B)")
    if any(k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for k in keys):
        raise LoraLabError(f"model.base: {path.name} is a FLUX.1 or Chroma checkpoint; lora_lab reads those "
                           "from a diffusers folder or a Hub id (black-forest-labs/FLUX.1-dev, "
                           "lodestones/Chroma1-HD)")
    raise LoraLabError(f"model.base: {path.name} is not an SD1.5, SDXL or Z-Image checkpoint "
                       "(a LoRA or another architecture?)")


def safetensors_keys(path: Path) -> list[str]:
    """The tensor names of a .safetensors file, from its header alone (no torch, no weights):
    8 bytes of header length, then the header, a JSON object."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        if size > min(100 * 2**20, os.fstat(f.fileno()).st_size - 8):
            raise ValueError("its header length is out of bounds")
        header = json.loads(f.read(size))
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    return [k for k in header if k != "__metadata__"]


def load_base_model(base: str, family: str, vae: str = "", config: str = "") -> BaseModel:
    """Load the pipeline (fp32, on the CPU; the trainer moves and casts what it needs).

    A single-file checkpoint holds only weights: its configs and tokenizers come from
    ``config`` (a local diffusers folder works offline), else the family's base repo.
    """
    import diffusers
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # ours is the only progress bar
    transformers_logging.disable_progress_bar()

    from .families import get_family

    spec = get_family(family)
    cls = getattr(diffusers, spec.pipeline)
    path = Path(base).expanduser()
    extra: dict[str, Any] = {}
    if spec.denoiser == "unet":
        # The trainer never runs a safety checker or an IP-Adapter image encoder, so neither
        # they nor the image processor feeding them are loaded.
        extra.update(feature_extractor=None, image_encoder=None)
    if vae:
        extra["vae"] = _load_vae(vae, spec.vae_class)
    if family == "sd15":
        extra.update(safety_checker=None, requires_safety_checker=False)
    check_transformer_file(base, config, family)
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    try:
        if path.is_dir():
            pipe = cls.from_pretrained(path, **extra)
        elif path.is_file() and spec.transformer_file_class:
            transformer = getattr(diffusers, spec.transformer_file_class).from_single_file(
                str(path), config=config, subfolder="transformer")
            pipe = cls.from_pretrained(config, transformer=transformer, **extra)
        elif path.is_file():
            pipe = cls.from_single_file(str(path), config=config or SINGLE_FILE_CONFIGS[family],
                                        **extra)
        else:
            pipe = cls.from_pretrained(base, **extra)
    except (OSError, ValueError, NotImplementedError, SingleFileComponentError) as e:
        raise LoraLabError(f"model.base: cannot load {base}: {_load_failure(e, path.is_dir())}") from None
    _check_complete(pipe, base)
    pipe.set_progress_bar_config(disable=True)
    return BaseModel(family, pipe, path.name if path.exists() else base)


def check_transformer_file(base: str, config: str, family: str) -> None:
    """A transformer family's single file holds the transformer alone: its text encoders and VAE
    come from model.config; a family lora_lab reads from no single file is refused."""
    from .families import get_family

    spec, path = get_family(family), Path(base).expanduser()
    if not path.is_file() or family in SINGLE_FILE_CONFIGS:
        return
    if not spec.transformer_file_class:
        raise LoraLabError(f"model.base: {path.name}: a {spec.title} model is read from a diffusers "
                           "folder or a Hub id, not a single file")
    if not config:
        raise LoraLabError(f"model.config: {path.name} holds a {spec.title} transformer alone; its text "
                           f"encoder and VAE come from model.config: set it to a {spec.title} diffusers "
                           "folder or its Hub id")


def _load_failure(e: Exception, folder: bool) -> str:
    reason = str(e).splitlines()[0]
    if folder:  # a diffusers folder: diffusers names the file it missed, which is the whole story
        return reason
    if "meta tensor" in reason:  # diffusers leaves weights the file lacks on the meta device
        return "some of its weights are missing (an incomplete file, or another architecture?)"
    if "AutoencoderKL" in reason:
        reason += " A checkpoint without a VAE needs model.vae."
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        reason += (" (offline: the Hub is not reachable; a single-file checkpoint needs "
                   "model.config, a local diffusers folder of the same architecture)")
    return reason


def _check_complete(pipe, base: str) -> None:
    """A checkpoint lacking a part's weights leaves them on the meta device (diffusers does not
    always refuse it): say which part, instead of failing at the first step."""
    import torch

    for name, part in pipe.components.items():
        if isinstance(part, torch.nn.Module) and any(p.is_meta for p in part.parameters()):
            hint = "; a checkpoint without a VAE needs model.vae" if name == "vae" else ""
            raise LoraLabError(f"model.base: {base} lacks the weights of its {name}{hint}")


def _load_vae(vae: str, class_name: str = "AutoencoderKL"):
    import diffusers

    cls = getattr(diffusers, class_name)
    path = Path(vae).expanduser()
    try:
        if path.is_file():
            return cls.from_single_file(str(path))
        return cls.from_pretrained(str(path) if path.exists() else vae)
    except (OSError, ValueError) as e:
        raise LoraLabError(f"model.vae: cannot load {vae}: {str(e).splitlines()[0]}") from None


def check_buckets(base: BaseModel, dataset: DatasetSection) -> None:
    """Refuse a resolution or buckets the model cannot take (its family says which)."""
    base.spec.check_buckets(base.pipeline, dataset)
