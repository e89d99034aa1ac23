"""Z-Image (Turbo and base): a single-stream DiT on 16-channel Flux-VAE latents, conditioned
on a Qwen3 encoder's penultimate hidden states (each caption as long as it is), trained by
flow matching. Its timestep runs the other way (1 - t/1000) and it predicts x_0 - ε, so the
prediction is negated against the ε - x_0 target, as diffusers' Z-Image training example does."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..latents import sample_latents
from ..sections import DatasetSection, TrainSection
from .base import Batch, Conditioning, Family, Objective
from .flow import FlowPath, check_patch_buckets

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
MAX_TOKENS = 512  # the pipeline's default max_sequence_length


class ZImage(Family):
    def token_limits(self, pipe: Any) -> list[tuple[str, Any, int]]:
        return [("text_encoder", pipe.tokenizer, MAX_TOKENS)]  # encode's max_sequence_length

    def encode(self, pipe: Any, captions: list[str], device: torch.device) -> Conditioning:
        embeds, _ = pipe.encode_prompt(list(captions), device=device, do_classifier_free_guidance=False,
                                       max_sequence_length=MAX_TOKENS)
        return (list(embeds),)

    def prompt_inputs(self, pipe: Any, prompt: str, negative: str, guidance: float,
                      device: torch.device) -> dict[str, Any]:
        embeds, neg = pipe.encode_prompt(prompt, device=device, negative_prompt=negative or None,
                                         do_classifier_free_guidance=guidance > 0)  # as the pipeline
        return {"prompt_embeds": embeds, "negative_prompt_embeds": neg, "guidance_scale": guidance}

    def objective(self, pipe: Any, train: TrainSection, prediction: str) -> Objective:
        return ZImageObjective(pipe.scheduler.config, pipe.vae.config)

    def check_buckets(self, pipe: Any, dataset: DatasetSection) -> None:
        patch = pipe.transformer.config.all_patch_size[0]
        check_patch_buckets(dataset, pipe.vae_scale_factor * patch)


class ZImageObjective(Objective):
    def __init__(self, scheduler_config: Any, vae: Any):
        self.path = FlowPath(scheduler_config)
        self.scaling, self.shift = vae.scaling_factor, vae.shift_factor

    def loss(self, model: torch.nn.Module, batch: Batch, device: torch.device,
             dtype: torch.dtype) -> torch.Tensor:
        latents = sample_latents(batch.params, batch.generator, self.scaling, self.shift)
        noisy, target, t = self.path.noised(latents, batch.generator, batch.timesteps)
        frames = list(noisy.to(device, dtype).unsqueeze(2).unbind(0))  # (C, 1, H, W) each
        (embeds,) = batch.cond
        out = model(frames, ((1000 - t) / 1000).to(device, dtype), [e.to(device, dtype) for e in embeds],
                    return_dict=False)[0]
        pred = -torch.stack(out).squeeze(2)
        return F.mse_loss(pred.float(), target.to(device).float(), reduction="none").mean(dim=(1, 2, 3)).mean()


ZIMAGE = ZImage(
    name="zimage", title="Z-Image", pipeline="ZImagePipeline", denoiser="transformer",
    text_encoders=("text_encoder",),
    targets={"attn": ATTENTION, "attn_mlp": [*ATTENTION, "w1", "w2", "w3"]},
    file_layout="comfyui", transformer_file_class="ZImageTransformer2DModel",
    hub_names=("z-image", "zimage"), model_version="zimage",
    architecture="z-image", prediction="flow")
