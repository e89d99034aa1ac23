"""FLUX.2 [klein] (4B and 9B; the base models LoRAs are trained on, and the step-distilled ones):
a double- then single-stream DiT with modulation shared across blocks, on 32-channel latents
patchified 2×2 to 128 channels and normalised by the VAE's BatchNorm running statistics, with
4-D position ids (t, h, w, l), conditioned on a Qwen3 encoder's hidden states of layers 9, 18
and 27 stacked (the pipeline's own encode_prompt, each prompt padded to 512 tokens, no mask).
Trained by flow matching as diffusers' train_dreambooth_lora_flux2_klein.py does: σ at a uniform
index of the scheduler's 1000-step table, the timestep given as σ, the target ε - x_0; the
transformer's output is cut to the image tokens. [klein] has no guidance input (its
transformer's guidance_embeds is false and its pipeline passes none); the base models sample
with real CFG against the empty prompt, the only negative the pipeline takes.

A single block fuses its attention and MLP into two linears (q/k/v + MLP-in, attention-out +
MLP-out), so "attn" adapts both there, as diffusers' example does: 20 of [klein] 4B's 25 blocks
are single. Files for ComfyUI name BFL's modules (:data:`..bfl_names.FLUX2`) with kohya's
`lora_unet_` keys, which ComfyUI and diffusers' Flux.2 loader both read.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..bfl_names import FLUX2
from ..latents import sample_latents
from ..sections import DatasetSection, TrainSection
from .base import Batch, Conditioning, Family, Objective
from .flow import FlowPath, check_patch_buckets

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
             "to_qkv_mlp_proj"]  # + each single block's attn.to_out, by full name (lora_targets)
MLP = ["ff.linear_in", "ff.linear_out", "ff_context.linear_in", "ff_context.linear_out"]
MAX_TOKENS = 512  # the pipeline's default max_sequence_length


class Flux2Klein(Family):
    def token_limits(self, pipe: Any) -> list[tuple[str, Any, int]]:
        return [("text_encoder", pipe.tokenizer, MAX_TOKENS)]  # encode's max_sequence_length

    def encode(self, pipe: Any, captions: list[str], device: torch.device) -> Conditioning:
        embeds, _ = pipe.encode_prompt(list(captions), device=device, max_sequence_length=MAX_TOKENS)
        return (embeds,)

    def lora_targets(self, denoiser: torch.nn.Module, which: str) -> list[str]:
        # a bare "to_out" would also name the double blocks' to_out (a ModuleList)
        singles = [f"single_transformer_blocks.{i}.attn.to_out"
                   for i in range(len(denoiser.single_transformer_blocks))]
        return [*self.targets[which], *singles]

    def prompt_inputs(self, pipe: Any, prompt: str, negative: str, guidance: float,
                      device: torch.device) -> dict[str, Any]:
        # real CFG when guidance > 1 (on the base models; the distilled ones ignore it), always
        # against "": the pipeline takes no negative prompt
        embeds, _ = pipe.encode_prompt(prompt, device=device)
        neg = pipe.encode_prompt("", device=device)[0] if guidance > 1 else None
        return {"prompt_embeds": embeds, "negative_prompt_embeds": neg, "guidance_scale": guidance}

    def objective(self, pipe: Any, train: TrainSection, prediction: str) -> Objective:
        return Flux2KleinObjective(pipe)

    def check_buckets(self, pipe: Any, dataset: DatasetSection) -> None:
        check_patch_buckets(dataset, pipe.vae_scale_factor * 2)  # the VAE's ×8, then 2×2 patches


class Flux2KleinObjective(Objective):
    def __init__(self, pipe: Any):
        self.path = FlowPath(pipe.scheduler.config)
        bn = pipe.vae.bn  # the patchified latents' statistics, as the pipeline normalises them
        self.mean = bn.running_mean.detach().float().cpu().view(1, -1, 1, 1)
        self.std = torch.sqrt(bn.running_var.detach().float().cpu().view(1, -1, 1, 1)
                              + pipe.vae.config.batch_norm_eps)

    def loss(self, model: torch.nn.Module, batch: Batch, device: torch.device,
             dtype: torch.dtype) -> torch.Tensor:
        from diffusers import Flux2KleinPipeline as P

        latents = P._patchify_latents(sample_latents(batch.params, batch.generator, 1.0))
        latents = (latents - self.mean) / self.std
        noisy, target, t = self.path.noised(latents, batch.generator, batch.timesteps)
        packed = P._pack_latents(noisy).to(device, dtype)  # (B, H*W, 128)
        img_ids = P._prepare_latent_ids(noisy).to(device)
        (embeds,) = batch.cond
        embeds = embeds.to(device, dtype)
        out = model(hidden_states=packed, timestep=(t / 1000).to(device, dtype), guidance=None,
                    encoder_hidden_states=embeds, txt_ids=P._prepare_text_ids(embeds).to(device),
                    img_ids=img_ids, return_dict=False)[0]
        pred = P._unpack_latents_with_ids(out[:, :packed.shape[1]], img_ids)
        return F.mse_loss(pred.float(), target.to(device).float(), reduction="none").mean(dim=(1, 2, 3)).mean()


FLUX2KLEIN = Flux2Klein(
    name="flux2klein", title="FLUX.2 [klein]", pipeline="Flux2KleinPipeline", denoiser="transformer",
    takes_negative=False,
    text_encoders=("text_encoder",),
    targets={"attn": ATTENTION, "attn_mlp": [*ATTENTION, *MLP]},
    file_layout="bfl", bfl_names=FLUX2, vae_class="AutoencoderKLFlux2",
    hub_names=("flux.2-klein", "flux2-klein", "flux.2_klein", "flux2_klein"),
    # ss_base_model_version as published [klein] LoRAs write it, less the size (flux2_klein_4b, _9b)
    model_version="flux2_klein", architecture="flux-2-klein",
    implementation="https://github.com/black-forest-labs/flux2", prediction="flow")
