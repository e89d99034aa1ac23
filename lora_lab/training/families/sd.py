"""SD1.5 and SDXL: a UNet trained on DDPM noise to predict the noise (or v), conditioned on
CLIP text states (SDXL: two encoders, a pooled embedding and size/crop micro-conditioning)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ...aspect_buckets import make_buckets
from ...errors import LoraLabError
from ..latents import fit, sample_latents
from ..sections import DatasetSection, TrainSection
from .base import Batch, Conditioning, Family, Objective

if TYPE_CHECKING:
    from ..train_image import TrainImage

UNET_TARGETS = {
    "attn": ["to_q", "to_k", "to_v", "to_out.0"],
    "attn_mlp": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"],
}
# LoCon: the ResNet and resampling convolutions too (kohya's conv_dim), at their own rank.
CONV_TARGETS = ["conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv"]
TE_TARGETS = {"attn": ["q_proj", "k_proj", "v_proj", "out_proj"],
              "attn_mlp": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]}


class StableDiffusion(Family):
    def encode(self, pipe: Any, captions: list[str], device: torch.device) -> Conditioning:
        """(hidden states, pooled embedding or None), as the pipelines condition the UNet:
        SD1.5 the last hidden state; SDXL both encoders' penultimate states side by side and
        the second encoder's projected pooled output."""
        hidden, pooled = [], None
        for name in self.text_encoders:
            tokenizer = getattr(pipe, name.replace("text_encoder", "tokenizer"))
            te = getattr(pipe, name)
            ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(device)
            if self.name == "sd15":
                return te(ids)[0], None
            out = te(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]
        return torch.cat(hidden, dim=-1), pooled

    def prompt_inputs(self, pipe: Any, prompt: str, negative: str, guidance: float,
                      device: torch.device) -> dict[str, Any]:
        args = {"device": device, "do_classifier_free_guidance": guidance > 1,
                "negative_prompt": negative or None}
        if self.name == "sd15":
            embeds, neg = pipe.encode_prompt(prompt, num_images_per_prompt=1, **args)
            return {"prompt_embeds": embeds, "negative_prompt_embeds": neg, "guidance_scale": guidance}
        embeds, neg, pooled, neg_pooled = pipe.encode_prompt(prompt, **args)
        return {"prompt_embeds": embeds, "negative_prompt_embeds": neg, "pooled_prompt_embeds": pooled,
                "negative_pooled_prompt_embeds": neg_pooled, "guidance_scale": guidance}

    def objective(self, pipe: Any, train: TrainSection, prediction: str) -> Objective:
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        if prediction == "auto":
            prediction = scheduler.config.prediction_type
        return UNetObjective(scheduler, prediction, self.name == "sdxl", pipe.vae.config, train)

    def check_buckets(self, pipe: Any, dataset: DatasetSection) -> None:
        """Every bucket must fit the model: at least half its native size (below that SD models
        make noise), and latents the UNet can halve at each of its down blocks."""
        unet, scale = pipe.unet.config, pipe.vae_scale_factor
        native = unet.sample_size * scale
        factor = scale * 2 ** (len(unet.down_block_types) - 1)
        d = dataset
        if d.resolution < native // 2:
            raise LoraLabError(f"dataset.resolution: {d.resolution} is below this model's minimum "
                               f"{native // 2} (half its native {native} px)")
        for w, h in make_buckets(d.resolution, d.min_bucket, d.max_bucket, d.bucket_step):
            if w % factor or h % factor or min(w, h) < native // 2:
                raise LoraLabError(
                    f"bucket {w}x{h} does not fit this model: sides must be multiples of "
                    f"{factor} and at least {native // 2}; raise dataset.min_bucket or "
                    f"set dataset.bucket_step to {factor}")


class UNetObjective(Objective):
    """Noise (or v) prediction on DDPM noise, with offset noise and Min-SNR-γ weighting."""

    def __init__(self, scheduler: Any, prediction: str, sdxl: bool, vae: Any, train: TrainSection):
        self.scheduler, self.prediction, self.sdxl = scheduler, prediction, sdxl
        self.scaling, self.shift = vae.scaling_factor, getattr(vae, "shift_factor", None)
        self.noise_offset, self.min_snr_gamma = train.noise_offset, train.min_snr_gamma

    def loss(self, model: torch.nn.Module, batch: Batch, device: torch.device,
             dtype: torch.dtype) -> torch.Tensor:
        g = batch.generator
        latents = sample_latents(batch.params, g, self.scaling, self.shift)
        noise = torch.randn(latents.shape, generator=g)
        if self.noise_offset:
            noise += self.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=g)
        t = batch.timesteps if batch.timesteps is not None else \
            torch.randint(0, self.scheduler.config.num_train_timesteps, (len(latents),), generator=g)
        latents, noise, t = latents.to(device), noise.to(device), t.to(device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        target = noise if self.prediction == "epsilon" else self.scheduler.get_velocity(latents, noise, t)
        hidden, pooled = batch.cond
        extra = {}
        if self.sdxl:
            time_ids = sdxl_time_ids(batch.images, batch.bucket)
            extra["added_cond_kwargs"] = {"text_embeds": pooled.to(device, dtype),
                                          "time_ids": time_ids.to(device, dtype)}
        pred = model(noisy.to(dtype), t, hidden.to(device, dtype), return_dict=False, **extra)[0]
        loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        weights = snr_weights(self.scheduler.alphas_cumprod, t, self.min_snr_gamma, self.prediction)
        return (loss * weights).mean()


def sdxl_time_ids(images: list[TrainImage], bucket: tuple[int, int]) -> torch.Tensor:
    """Per image: original size, crop top-left, target size (height before width, as SDXL)."""
    rows = []
    for img in images:
        _, (top, left) = fit(img.width, img.height, bucket)
        rows.append([img.height, img.width, top, left, bucket[1], bucket[0]])
    return torch.tensor(rows, dtype=torch.float32)


def snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float,
                prediction: str) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023); all ones when ``gamma`` is 0."""
    if not gamma:
        return torch.ones_like(t, dtype=torch.float32)
    alphas = alphas_cumprod.to(t.device)[t]
    snr = alphas / (1 - alphas)
    clipped = torch.clamp(snr, max=gamma)
    return (clipped / (snr + 1) if prediction == "v_prediction" else clipped / snr).float()


SD15 = StableDiffusion(
    name="sd15", title="SD 1.5", pipeline="StableDiffusionPipeline", denoiser="unet",
    text_encoders=("text_encoder",), targets=UNET_TARGETS, conv_targets=CONV_TARGETS,
    text_encoder_targets=TE_TARGETS, model_version="sd_v1", architecture="stable-diffusion-v1")
SDXL = StableDiffusion(
    name="sdxl", title="SDXL", pipeline="StableDiffusionXLPipeline", denoiser="unet",
    text_encoders=("text_encoder", "text_encoder_2"), targets=UNET_TARGETS,
    conv_targets=CONV_TARGETS, text_encoder_targets=TE_TARGETS, hub_names=("xl",),
    model_version="sdxl_base_v1-0", architecture="stable-diffusion-xl-v1-base",
    implementation="https://github.com/Stability-AI/generative-models")
