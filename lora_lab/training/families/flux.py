"""FLUX.1 [dev] and [schnell]: a double- then single-stream DiT on 16-channel latents packed 2×2
into 64-channel tokens with 2-D position ids, conditioned on T5-XXL's hidden states and CLIP-L's
pooled output, trained by flow matching as diffusers' train_dreambooth_lora_flux.py does: σ at
a uniform index of the scheduler's 1000-step table (Flux shifts by resolution at sampling only),
the transformer's timestep is σ (it scales by 1000 itself), the target is ε - x_0.

[dev] is guidance-distilled: its transformer embeds a guidance value (guidance_embeds in its
config), given as the example does (3.5) in training; [schnell] has no such input and is
timestep-distilled to a few steps (train it through a training adapter, model.adapter). One
family serves both: the config says which.

Files for ComfyUI name BFL's modules (:data:`..bfl_names.FLUX1`), as ComfyUI's Flux model has them.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
import torch.nn.functional as F

from ..bfl_names import FLUX1
from ..latents import sample_latents
from ..sections import DatasetSection, TrainSection
from .base import Batch, Conditioning, Family, Objective
from .flow import FlowPath, check_patch_buckets

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
# the double blocks' feed-forwards and the single blocks' MLP-in; their fused attention-out + MLP-out
# (proj_out) is added by full name, since a bare "proj_out" would adapt the final layer too
MLP = ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp"]
TRAIN_GUIDANCE = 3.5  # [dev]'s guidance input in training, as diffusers' and sd-scripts' defaults
MAX_TOKENS = {True: 512, False: 256}  # T5 tokens, by guidance_embeds: [dev] 512, [schnell] 256


def single_block_targets(denoiser: torch.nn.Module) -> list[str]:
    return [f"single_transformer_blocks.{i}.proj_out" for i in range(len(denoiser.single_transformer_blocks))]


class PackedFlowObjective(Objective):
    """Flow matching on 2×2-packed latents with image position ids, as Flux's and Chroma's
    pipelines call their transformers; :meth:`conditioning` gives the text inputs."""

    def __init__(self, pipe: Any):
        self.path = FlowPath(pipe.scheduler.config)
        self.scaling, self.shift = pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor
        self.vae_scale = pipe.vae_scale_factor
        self.packing = type(pipe)  # the pipeline's static _pack_latents, _unpack_latents, ids

    @abstractmethod
    def conditioning(self, cond: Conditioning, batch: int, image_tokens: int, device: torch.device,
                     dtype: torch.dtype) -> dict[str, Any]:
        """The transformer's text inputs (and guidance) for a batch of ``batch`` images."""

    def loss(self, model: torch.nn.Module, batch: Batch, device: torch.device,
             dtype: torch.dtype) -> torch.Tensor:
        latents = sample_latents(batch.params, batch.generator, self.scaling, self.shift)
        noisy, target, t = self.path.noised(latents, batch.generator, batch.timesteps)
        b, c, h, w = latents.shape
        packed = self.packing._pack_latents(noisy, b, c, h, w).to(device, dtype)
        img_ids = self.packing._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype)
        pred = model(hidden_states=packed, timestep=(t / 1000).to(device, dtype), img_ids=img_ids,
                     return_dict=False, **self.conditioning(batch.cond, b, packed.shape[1], device, dtype))[0]
        pred = self.packing._unpack_latents(pred, h * self.vae_scale, w * self.vae_scale, self.vae_scale)
        return F.mse_loss(pred.float(), target.to(device).float(), reduction="none").mean(dim=(1, 2, 3)).mean()


class FluxObjective(PackedFlowObjective):
    def __init__(self, pipe: Any):
        super().__init__(pipe)
        self.guidance = TRAIN_GUIDANCE if pipe.transformer.config.guidance_embeds else None

    def conditioning(self, cond: Conditioning, batch: int, image_tokens: int, device: torch.device,
                     dtype: torch.dtype) -> dict[str, Any]:
        embeds, pooled = cond
        guidance = None if self.guidance is None else \
            torch.full((batch,), self.guidance, device=device, dtype=torch.float32)
        return {"encoder_hidden_states": embeds.to(device, dtype), "pooled_projections": pooled.to(device, dtype),
                "txt_ids": torch.zeros(embeds.shape[1], 3, device=device, dtype=dtype), "guidance": guidance}


class Flux(Family):
    def token_limits(self, pipe: Any) -> list[tuple[str, Any, int]]:
        clip, t5 = pipe.tokenizer, pipe.tokenizer_2  # CLIP's pooled embedding, T5's sequence
        return [("text_encoder", clip, clip.model_max_length),
                ("text_encoder_2", t5, MAX_TOKENS[is_dev(pipe)])]

    def encode(self, pipe: Any, captions: list[str], device: torch.device) -> Conditioning:
        embeds, pooled, _ = pipe.encode_prompt(list(captions), prompt_2=None, device=device,
                                               max_sequence_length=MAX_TOKENS[is_dev(pipe)])
        return embeds, pooled

    def prompt_inputs(self, pipe: Any, prompt: str, negative: str, guidance: float,
                      device: torch.device) -> dict[str, Any]:
        # guidance is [dev]'s distilled guidance input; no negative prompt without true CFG
        embeds, pooled, _ = pipe.encode_prompt(prompt, prompt_2=None, device=device)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "guidance_scale": guidance}

    def objective(self, pipe: Any, train: TrainSection, prediction: str) -> Objective:
        return FluxObjective(pipe)

    def check_buckets(self, pipe: Any, dataset: DatasetSection) -> None:
        check_patch_buckets(dataset, pipe.vae_scale_factor * 2)  # the VAE's ×8, then 2×2 packing

    def lora_targets(self, denoiser: torch.nn.Module, which: str) -> list[str]:
        extra = single_block_targets(denoiser) if which == "attn_mlp" else []
        return [*self.targets[which], *extra]


def is_dev(pipe: Any) -> bool:
    """[dev] (guidance-distilled: a guidance input) rather than [schnell]."""
    return bool(pipe.transformer.config.guidance_embeds)


FLUX = Flux(
    name="flux", title="FLUX.1", pipeline="FluxPipeline", denoiser="transformer",
    text_encoders=("text_encoder", "text_encoder_2"),
    targets={"attn": ATTENTION, "attn_mlp": [*ATTENTION, *MLP]},
    file_layout="bfl", bfl_names=FLUX1, hub_names=("flux.1", "flux-1", "flux1"),
    # as sd-scripts writes a Flux.1 LoRA; "flux-1" is its architecture for either variant
    model_version="flux1", architecture="flux-1",
    implementation="https://github.com/black-forest-labs/flux", prediction="flow")
