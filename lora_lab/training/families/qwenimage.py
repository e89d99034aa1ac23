"""Qwen-Image: a 20B double-stream DiT (image and text streams meeting in joint attention) on
16-channel latents of a video VAE (an image is one frame), normalised per channel by the VAE's
latents_mean/std and packed 2×2, conditioned on Qwen2.5-VL's last hidden states under the
pipeline's own system prompt, trained by flow matching, as diffusers' Qwen-Image DreamBooth
example does: σ uniform over the scheduler's 1000-step table (Qwen's scheduler shifts
dynamically, at sampling time only, so that table is unshifted) and the timestep given as σ.

In the last block the text stream's output feeds nothing, so what only it reads (the text
queries, attn.to_add_out, txt_mlp) is not adapted: a LoRA there would never learn (no gradient,
or a zero one for the queries), and DDP refuses parameters without a gradient."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..latents import sample_latents
from ..sections import DatasetSection, TrainSection
from .base import Batch, Conditioning, Family, Objective
from .flow import FlowPath, check_patch_buckets

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
MLP = ["img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2"]
MAX_TOKENS = 512  # the pipeline's default max_sequence_length
# what only the text stream's output reads: its queries (their attention rows), to_add_out, txt_mlp
_TEXT_OUTPUTS = ("attn.add_q_proj", "attn.to_add_out", "txt_mlp.net.0.proj", "txt_mlp.net.2")


class QwenImage(Family):
    def token_limits(self, pipe: Any) -> list[tuple[str, Any, int]]:
        return [("text_encoder", pipe.tokenizer, MAX_TOKENS)]  # encode's max_sequence_length

    def encode(self, pipe: Any, captions: list[str], device: torch.device) -> Conditioning:
        embeds, mask = pipe.encode_prompt(list(captions), device=device, max_sequence_length=MAX_TOKENS)
        lengths = mask.sum(dim=1).tolist() if mask is not None else [embeds.shape[1]] * len(embeds)
        return ([e[:n] for e, n in zip(embeds, lengths)],)  # each caption as long as it is

    def untrained_modules(self, denoiser: torch.nn.Module) -> list[str]:
        last = len(denoiser.transformer_blocks) - 1
        return [f"transformer_blocks.{last}.{name}" for name in _TEXT_OUTPUTS]

    def prompt_inputs(self, pipe: Any, prompt: str, negative: str, guidance: float,
                      device: torch.device) -> dict[str, Any]:
        # real CFG is true_cfg_scale, and it runs only with a negative prompt (the card's is " ")
        inputs = _prompt_embeds(pipe, prompt, device, "prompt")
        if guidance > 1:
            inputs.update(_prompt_embeds(pipe, negative or " ", device, "negative_prompt"))
        return {**inputs, "true_cfg_scale": max(guidance, 1.0)}

    def objective(self, pipe: Any, train: TrainSection, prediction: str) -> Objective:
        return QwenImageObjective(pipe.scheduler.config, pipe.vae.config, pipe.vae_scale_factor)

    def check_buckets(self, pipe: Any, dataset: DatasetSection) -> None:
        check_patch_buckets(dataset, pipe.vae_scale_factor * pipe.transformer.config.patch_size)


class QwenImageObjective(Objective):
    def __init__(self, scheduler_config: Any, vae: Any, vae_scale_factor: int):
        self.path = FlowPath(scheduler_config)
        channels = (1, vae.z_dim, 1, 1)
        self.mean = torch.tensor(vae.latents_mean).view(channels)
        self.inv_std = 1.0 / torch.tensor(vae.latents_std).view(channels)
        self.scale = vae_scale_factor

    def loss(self, model: torch.nn.Module, batch: Batch, device: torch.device,
             dtype: torch.dtype) -> torch.Tensor:
        from diffusers import QwenImagePipeline

        latents = (sample_latents(batch.params, batch.generator, 1.0) - self.mean) * self.inv_std
        noisy, target, t = self.path.noised(latents, batch.generator, batch.timesteps)
        b, c, h, w = noisy.shape
        packed = QwenImagePipeline._pack_latents(noisy.to(device, dtype), b, c, h, w)
        embeds, mask = _padded(batch.cond[0], device, dtype)
        out = model(hidden_states=packed, encoder_hidden_states=embeds, encoder_hidden_states_mask=mask,
                    timestep=(t / 1000).to(device, dtype), img_shapes=[[(1, h // 2, w // 2)]] * b,
                    return_dict=False)[0]
        pred = QwenImagePipeline._unpack_latents(out, h * self.scale, w * self.scale, self.scale)
        pred = pred.squeeze(2)  # (B, C, 1, H, W): one frame
        return F.mse_loss(pred.float(), target.to(device).float(), reduction="none").mean(dim=(1, 2, 3)).mean()


def _prompt_embeds(pipe: Any, prompt: str, device: torch.device, name: str) -> dict[str, torch.Tensor]:
    """``{name}_embeds`` and its mask for a pipeline call; the pipeline drops a mask of all ones,
    and a missing one would make it warn."""
    embeds, mask = pipe.encode_prompt(prompt, device=device)
    if mask is None:
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    return {f"{name}_embeds": embeds, f"{name}_embeds_mask": mask}


def _padded(embeds: list[torch.Tensor], device: torch.device, dtype: torch.dtype
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Captions of a batch zero-padded to the longest, with the mask the pipeline makes (None
    when nothing is padded, as the pipeline passes it)."""
    longest = max(len(e) for e in embeds)
    stacked = torch.stack([F.pad(e, (0, 0, 0, longest - len(e))) for e in embeds]).to(device, dtype)
    if all(len(e) == longest for e in embeds):
        return stacked, None
    mask = torch.stack([torch.arange(longest) < len(e) for e in embeds]).long().to(device)
    return stacked, mask


QWENIMAGE = QwenImage(
    name="qwenimage", title="Qwen-Image", pipeline="QwenImagePipeline", denoiser="transformer",
    text_encoders=("text_encoder",),
    targets={"attn": ATTENTION, "attn_mlp": [*ATTENTION, *MLP]},
    file_layout="comfyui", vae_class="AutoencoderKLQwenImage",
    hub_names=("qwen-image", "qwen_image", "qwenimage"), model_version="qwenimage",
    architecture="qwen-image", prediction="flow")
