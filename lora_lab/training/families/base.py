"""What sets a model family apart in training, as one object per family (see ``__init__``).

The trainer owns what every family shares: data, buckets, latent caching, the loop, exact
resume, checkpoints and exports. A family says which diffusers pipeline it is, what a LoRA
adapts in it, how captions become conditioning, and what its denoiser is trained to predict.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..bfl_names import BflNames
from ..sections import DatasetSection, TrainSection

if TYPE_CHECKING:
    from ..train_image import TrainImage

Conditioning = tuple[Any, ...]  # one caption's (or a batch's) text conditioning: tensors, lists, None


@dataclass
class Batch:
    """One micro-batch as the trainer draws it: images sharing a bucket, their latent
    distributions and text conditioning, and the generator every random draw comes from."""
    params: torch.Tensor  # latent mean and log-variance on the channel axis (LatentEncoder)
    cond: Conditioning
    images: list[TrainImage]  # one per sample (an image drawn twice appears twice)
    bucket: tuple[int, int]
    generator: torch.Generator
    # given timestep indices (0..num_train_timesteps-1) instead of drawn ones: loss by timestep
    timesteps: torch.Tensor | None = None
    flips: list[bool] = field(default_factory=list)  # per sample, as drawn (what TrainLab shows)
    captions: list[str] = field(default_factory=list)  # per sample, after shuffle and dropout


class Objective(ABC):
    """What the denoiser learns."""

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: Batch, device: torch.device,
             dtype: torch.dtype) -> torch.Tensor:
        """The mean loss of ``batch``, computed on ``device`` with ``model`` in ``dtype``."""


@dataclass(frozen=True)
class Family(ABC):
    name: str  # as configs, files and metadata name it: "sd15"
    title: str  # as people name it: "SD 1.5"
    pipeline: str  # the diffusers pipeline class, as model_index.json names it
    denoiser: str  # the pipeline's component a LoRA adapts: "unet" or "transformer"
    text_encoders: tuple[str, ...]  # the pipeline's text encoder components, in order
    targets: dict[str, list[str]]  # LoRA target modules of the denoiser, by network.targets
    conv_targets: list[str] = field(default_factory=list)  # LoCon's extra targets (UNets only)
    text_encoder_targets: dict[str, list[str]] = field(default_factory=dict)  # empty: not trainable
    file_layout: str = "kohya"  # what save.format = "kohya" writes: "kohya" names, or ComfyUI's:
    # "comfyui" (diffusers module names) or "bfl" (BFL's module names, by the table bfl_names)
    bfl_names: BflNames | None = None
    vae_class: str = "AutoencoderKL"  # the diffusers class model.vae is loaded as
    # the diffusers class that reads the transformer alone from one original-layout file, the
    # rest of the pipeline coming from model.config; "" where lora_lab reads no such file
    transformer_file_class: str = ""
    takes_negative: bool = True  # whether its pipeline takes a negative prompt (sample.negative)
    hub_names: tuple[str, ...] = ()  # words in a Hub id that name this family
    # what a LoRA file's metadata says of its base, as sd-scripts and the SAI model spec write it
    model_version: str = ""  # ss_base_model_version
    architecture: str = ""  # modelspec.architecture, before "/lora"
    implementation: str = "diffusers"  # modelspec.implementation
    prediction: str = "epsilon"  # modelspec.prediction_type

    @property
    def trains_text_encoder(self) -> bool:
        return bool(self.text_encoder_targets)

    def lora_targets(self, denoiser: torch.nn.Module, which: str) -> list[str]:
        """The target modules of ``denoiser`` for network.targets ``which`` ("attn" or "attn_mlp");
        a family whose targets depend on the model's size (a block count) says so here."""
        return self.targets[which]

    @abstractmethod
    def encode(self, pipe: Any, captions: list[str], device: torch.device) -> Conditioning:
        """The conditioning of ``captions`` as the family's pipeline computes it."""

    def collate(self, parts: list[Conditioning]) -> Conditioning:
        """One-caption parts joined into a batch's conditioning (tensors concatenated, lists joined)."""
        joined = []
        for items in zip(*parts):
            if items[0] is None:
                joined.append(None)
            elif isinstance(items[0], list):
                joined.append([x for item in items for x in item])
            else:
                joined.append(torch.cat(items))
        return tuple(joined)

    def token_limits(self, pipe: Any) -> list[tuple[str, Any, int]]:
        """Per text encoder: its name, its tokenizer and how many tokens of a caption
        :meth:`encode` gives it (the rest is cut off)."""
        limits = []
        for name in self.text_encoders:
            tokenizer = getattr(pipe, name.replace("text_encoder", "tokenizer"))
            limits.append((name, tokenizer, tokenizer.model_max_length))
        return limits

    def untrained_modules(self, denoiser: torch.nn.Module) -> list[str]:
        """Full names of target modules to leave out: those whose output the loss never sees,
        whose LoRA would get no gradient."""
        return []

    @abstractmethod
    def prompt_inputs(self, pipe: Any, prompt: str, negative: str, guidance: float,
                      device: torch.device) -> dict[str, Any]:
        """The sampling call's prompt and guidance arguments for sample.guidance and
        sample.negative, the prompts encoded as the pipeline would encode them itself: a call
        given these needs no text encoder, so they are made before the encoders are freed."""

    @abstractmethod
    def objective(self, pipe: Any, train: TrainSection, prediction: str) -> Objective:
        """The objective for ``pipe``'s denoiser under ``train``'s settings (noise offset, Min-SNR);
        ``prediction`` is model.prediction ("auto": as the model says)."""

    @abstractmethod
    def check_buckets(self, pipe: Any, dataset: DatasetSection) -> None:
        """Refuse a resolution or buckets this model cannot take, saying how to fix them."""
