"""Full-size SDXL, Z-Image and FLUX.1 [dev] with random weights, built from their Hub configs
(written out here: nothing is downloaded), and random stand-ins for what their text encoders and
VAE would give a training step. ``small=True`` shrinks every model so a CPU runs the same code.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# stabilityai/stable-diffusion-xl-base-1.0: unet/config.json, vae/config.json, scheduler/scheduler_config.json
SDXL_UNET = {
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
    "center_input_sample": False, "class_embed_type": None, "class_embeddings_concat": False, "conv_in_kernel": 3,
    "conv_out_kernel": 3, "cross_attention_dim": 2048, "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "downsample_padding": 1,
    "dual_cross_attention": False, "encoder_hid_dim": None, "encoder_hid_dim_type": None, "flip_sin_to_cos": True,
    "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05,
    "norm_num_groups": 32, "num_attention_heads": None, "num_class_embeds": None, "only_cross_attention": False,
    "out_channels": 4, "projection_class_embeddings_input_dim": 2816, "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False, "resnet_time_scale_shift": "default", "sample_size": 128,
    "time_cond_proj_dim": None, "time_embedding_act_fn": None, "time_embedding_dim": None,
    "time_embedding_type": "positional", "timestep_post_act": None, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "upcast_attention": None,
    "use_linear_projection": True,
}
SDXL_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "out_channels": 3, "sample_size": 1024, "scaling_factor": 0.13025, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SDXL_SCHEDULER = {
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
    "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False,
}
# black-forest-labs/FLUX.1-dev: transformer/config.json, vae/config.json (Z-Image-Turbo's vae/ is the
# same autoencoder), scheduler/scheduler_config.json
FLUX_TRANSFORMER = {
    "attention_head_dim": 128, "axes_dims_rope": [16, 56, 56], "guidance_embeds": True, "in_channels": 64,
    "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19, "num_single_layers": 38,
    "patch_size": 1, "pooled_projection_dim": 768,
}
FLUX_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True, "in_channels": 3, "latent_channels": 16, "latents_mean": None, "latents_std": None,
    "layers_per_block": 2, "mid_block_add_attention": True, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "use_post_quant_conv": False, "use_quant_conv": False,
}
FLUX_SCHEDULER = {
    "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
}
# Tongyi-MAI/Z-Image-Turbo: transformer/config.json, scheduler/scheduler_config.json
ZIMAGE_TRANSFORMER = {
    "all_f_patch_size": [1], "all_patch_size": [2], "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512],
    "cap_feat_dim": 2560, "dim": 3840, "in_channels": 16, "n_heads": 30, "n_kv_heads": 30, "n_layers": 30,
    "n_refiner_layers": 2, "norm_eps": 1e-05, "qk_norm": True, "rope_theta": 256.0, "t_scale": 1000.0,
}
ZIMAGE_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}

# --small: the same architectures, a few blocks of a few channels (lora_lab.tiny's sizes)
SMALL_VAE = {"block_out_channels": [16, 16, 32, 32], "layers_per_block": 1, "norm_num_groups": 16}
SMALL = {
    "sdxl": {"block_out_channels": [32, 64, 64], "attention_head_dim": [2, 4, 4], "layers_per_block": 1,
             "transformer_layers_per_block": [1, 1, 2], "cross_attention_dim": 64, "addition_time_embed_dim": 8,
             "projection_class_embeddings_input_dim": 6 * 8 + 32, "sample_size": 16},
    "flux": {"num_layers": 1, "num_single_layers": 2, "attention_head_dim": 16, "num_attention_heads": 2,
             "joint_attention_dim": 32, "pooled_projection_dim": 16, "axes_dims_rope": [4, 6, 6]},
    "zimage": {"dim": 64, "n_layers": 2, "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 2, "cap_feat_dim": 32,
               "axes_dims": [8, 12, 12]},
}
# Text tokens a caption gives: SDXL's CLIP pads to 77, FLUX.1 [dev]'s T5 to 512 (lora_lab's and the
# pipeline's max_sequence_length); Z-Image's Qwen3 gives the caption's own length (~100-300 tokens)
TEXT_TOKENS = {"sdxl": 77, "flux": 512, "zimage": 200}
LOGVAR = -10.0  # a real VAE's posterior is nearly a point (std ~0.007)


@dataclass(frozen=True)
class Model:
    """One family's components, as diffusers class names and Hub configs."""
    denoiser_class: str
    denoiser: dict[str, Any]
    vae: dict[str, Any]
    scheduler_class: str
    scheduler: dict[str, Any]
    title: str


MODELS = {
    "sdxl": Model("UNet2DConditionModel", SDXL_UNET, SDXL_VAE, "EulerDiscreteScheduler", SDXL_SCHEDULER,
                  "SDXL UNet"),
    "zimage": Model("ZImageTransformer2DModel", ZIMAGE_TRANSFORMER, FLUX_VAE, "FlowMatchEulerDiscreteScheduler",
                    ZIMAGE_SCHEDULER, "Z-Image"),
    "flux": Model("FluxTransformer2DModel", FLUX_TRANSFORMER, FLUX_VAE, "FlowMatchEulerDiscreteScheduler",
                  FLUX_SCHEDULER, "FLUX.1 [dev]"),
}


def build_pipeline(family_name: str, small: bool, device: torch.device) -> Any:
    """The family's diffusers pipeline with a random denoiser and VAE on ``device``, the real
    scheduler, and no text encoders or tokenizers (random conditioning stands in for them).
    On a GPU the denoiser comes in bf16, as lora_lab places a frozen base for bf16 training; on a
    CPU in fp32, as lora_lab loads it there. The VAE is full size and fp32 for the memory it takes
    (lora_lab keeps it on the GPU); nothing runs it: the objectives read only its config."""
    import diffusers

    from lora_lab.training.families import get_family

    model, family = MODELS[family_name], get_family(family_name)
    # diffusers' own initialisation, run where the weights live and in their dtype (a 12B model in
    # fp32 first would need 48 GB)
    with torch.device(device), default_dtype(torch.bfloat16 if device.type == "cuda" else torch.float32):
        denoiser = getattr(diffusers, model.denoiser_class)(
            **{**model.denoiser, **(SMALL[family_name] if small else {})})
    with torch.device(device):
        vae = diffusers.AutoencoderKL(**{**model.vae, **(SMALL_VAE if small else {})})
    scheduler = getattr(diffusers, model.scheduler_class).from_config(model.scheduler)
    parts = {family.denoiser: denoiser, "vae": vae, "scheduler": scheduler}
    for encoder in family.text_encoders:
        parts[encoder] = parts[encoder.replace("text_encoder", "tokenizer")] = None
    if family_name == "sdxl":
        parts["add_watermarker"] = False
    return getattr(diffusers, family.pipeline)(**parts)


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """New tensors in ``dtype`` (the three models give every buffer they make an explicit dtype)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class RandomInputs:
    """What a training step of ``pipe`` at ``resolution`` px reads, at random: latent distributions
    as lora_lab's latent cache hands them over (on the CPU, mean and log-variance), and text
    conditioning shaped as the real encoders give it, on ``device`` in ``dtype``."""

    def __init__(self, family_name: str, pipe: Any, resolution: int, batch: int, device: torch.device,
                 dtype: torch.dtype):
        from lora_lab.training.families import get_family
        from lora_lab.training.train_image import TrainImage

        g = torch.Generator().manual_seed(0)
        vae, side = pipe.vae.config, resolution // pipe.vae_scale_factor
        self.scaling, self.shift = vae.scaling_factor, vae.shift_factor or 0.0
        mean = torch.randn((batch, vae.latent_channels, side, side), generator=g) / self.scaling + self.shift
        self.params = torch.cat([mean, torch.full_like(mean, LOGVAR)], dim=1)
        cond = _conditioning(family_name, getattr(pipe, get_family(family_name).denoiser), batch, g)
        self.cond = tuple(_to(part, device, dtype) for part in cond)
        self.images = [TrainImage(Path("random.png"), "", resolution, resolution, "0" * 64, 1, "random")] * batch
        self.bucket = (resolution, resolution)

    def batch(self, m: int) -> Any:
        """Micro-batch ``m`` as lora_lab's trainer makes it: its draws from a generator of its own."""
        from lora_lab.training.families import Batch

        return Batch(self.params, self.cond, self.images, self.bucket, torch.Generator().manual_seed(m))

    def latents(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The scaled latents a VAE encode hands the diffusers examples (their mode)."""
        mean = self.params.chunk(2, dim=1)[0]
        return ((mean - self.shift) * self.scaling).to(device, dtype)


def _conditioning(family_name: str, denoiser: Any, batch: int, g: torch.Generator) -> tuple[Any, ...]:
    c, tokens = denoiser.config, TEXT_TOKENS[family_name]
    if family_name == "sdxl":  # both CLIPs' penultimate states side by side; CLIP-G's pooled projection
        pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        return (torch.randn((batch, tokens, c.cross_attention_dim), generator=g),
                torch.randn((batch, pooled), generator=g))
    if family_name == "flux":  # T5-XXL's hidden states; CLIP-L's pooled output
        return (torch.randn((batch, tokens, c.joint_attention_dim), generator=g),
                torch.randn((batch, c.pooled_projection_dim), generator=g))
    return ([torch.randn((tokens, c.cap_feat_dim), generator=g) for _ in range(batch)],)  # Qwen3, unpadded


def _to(part: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if isinstance(part, list):
        return [p.to(device, dtype) for p in part]
    return part.to(device, dtype)
