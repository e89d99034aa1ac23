"""Training benchmark of the flow-matching families: lora_lab against a bare loop written like
diffusers' DreamBooth LoRA example for each model, same job. bench_train.py does the same for SD.

    .venv/bin/python bench/bench_train_flow.py                     # all four, 3 rounds each (~5-6 min, 2 cores)
    .venv/bin/python bench/bench_train_flow.py --family flux       # one of zimage, flux, chroma, qwenimage (~1.5 min)
    .venv/bin/python bench/bench_train_flow.py --quick             # a smoke run of all four (~1 min)
    .venv/bin/python bench/bench_train_flow.py --family chroma --profile   # + cProfile of both loops

The tiny random-weight model (lora_lab.tiny), the images and every workspace live in one temp
folder that is removed at the end; nothing is downloaded (HF_HUB_OFFLINE=1).
"""
from __future__ import annotations

import os

# before diffusers / transformers are imported: offline, and without their warnings
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import cProfile
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from bench_train import Floor, Job, Run, bench, example_pixels, parse_args

FAMILIES = ("zimage", "flux", "chroma", "qwenimage")
EXAMPLES = {"zimage": "train_dreambooth_lora_z_image.py", "flux": "train_dreambooth_lora_flux.py",
            "chroma": "train_dreambooth_lora_flux.py with Chroma's conditioning (there is no Chroma example)",
            "qwenimage": "train_dreambooth_lora_qwen_image.py"}
MAX_SEQUENCE_LENGTH = 512  # the examples' --max_sequence_length default (and the pipelines')
FLUX_GUIDANCE = 3.5  # the Flux example's --guidance_scale default, for [dev]'s guidance input


# -- what each example does its own way ------------------------------------------------------------
class Example(ABC):
    """The parts of a DreamBooth LoRA example that differ between models: its components, how a
    caption becomes conditioning, how images become the latents it trains on, and how it calls
    its transformer. The loop around them (:func:`bare_loop`) is the one the examples share."""
    frames = False  # the collate function adds a frame axis (Qwen-Image's video VAE)

    @abstractmethod
    def load(self, model: str, device: Any, dtype: Any) -> None:
        """Load the components one by one; set ``scheduler``, ``vae``, ``transformer`` and
        ``text_encoders`` (frozen by the loop)."""

    @abstractmethod
    def embed(self, caption: str) -> Any:
        """One caption's conditioning, computed once before training (no text encoder trains)."""

    def batch(self, embeds: list[Any]) -> Any:
        """The conditioning of a batch from its captions' embeddings."""
        import torch

        return tuple(torch.cat(parts) for parts in zip(*embeds))

    @abstractmethod
    def latents(self, pixels: Any) -> Any:
        """The batch's VAE latents, normalised as the transformer takes them."""

    @abstractmethod
    def predict(self, transformer: Any, noisy: Any, timesteps: Any, cond: Any) -> Any:
        """The transformer's velocity prediction, shaped as the latents."""


class ZImageExample(Example):
    """train_dreambooth_lora_z_image.py: a Qwen3 text encoder inside a text-encoding pipeline,
    the timestep reversed ((1000 - t) / 1000), the latents as a list of (C, 1, H, W) frames, and
    the prediction negated."""

    def load(self, model: str, device: Any, dtype: Any) -> None:
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
        from transformers import Qwen2Tokenizer, Qwen3Model

        tokenizer = Qwen2Tokenizer.from_pretrained(model, subfolder="tokenizer")
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(model, subfolder="scheduler")
        self.vae = AutoencoderKL.from_pretrained(model, subfolder="vae")
        self.shift, self.scaling = self.vae.config.shift_factor, self.vae.config.scaling_factor
        self.transformer = ZImageTransformer2DModel.from_pretrained(model, subfolder="transformer", torch_dtype=dtype)
        text_encoder = Qwen3Model.from_pretrained(model, subfolder="text_encoder")
        self.text_encoders = [text_encoder]
        self.vae.to(device, dtype=dtype)
        self.transformer.to(device, dtype=dtype)
        text_encoder.to(device, dtype=dtype)
        self.text = ZImagePipeline.from_pretrained(model, vae=None, transformer=None, tokenizer=tokenizer,
                                                   text_encoder=text_encoder, scheduler=None)

    def embed(self, caption: str) -> Any:
        # the example leaves do_classifier_free_guidance at True, encoding an unused negative too
        prompt_embeds, _ = self.text.encode_prompt(prompt=caption, do_classifier_free_guidance=False,
                                                   max_sequence_length=MAX_SEQUENCE_LENGTH)
        return prompt_embeds  # a list: one (tokens, dim) tensor, as long as the caption

    def batch(self, embeds: list[Any]) -> Any:
        return [e for caption in embeds for e in caption]

    def latents(self, pixels: Any) -> Any:
        # The example takes the distribution's mode; a sample here, as lora_lab and the Flux and
        # Qwen-Image examples take, so that both sides train on the same loss: the tiny VAE's
        # posterior std is ~1, which adds ~0.13 to the loss (a real VAE's is near 0). Same cost.
        model_input = self.vae.encode(pixels).latent_dist.sample()
        return (model_input - self.shift) * self.scaling

    def predict(self, transformer: Any, noisy: Any, timesteps: Any, cond: Any) -> Any:
        import torch

        timestep_normalized = (1000 - timesteps) / 1000
        noisy_model_input_list = list(noisy.unsqueeze(2).unbind(dim=0))  # list of (C, 1, H, W)
        model_pred_list = transformer(noisy_model_input_list, timestep_normalized, cond, return_dict=False)[0]
        model_pred = torch.stack(model_pred_list, dim=0).squeeze(2)
        return -model_pred  # Z-Image predicts x_0 - noise


class PackedExample(Example):
    """Flux's way, which Chroma shares: latents sampled from the VAE, packed 2×2 into tokens with
    position ids, the timestep as σ (t / 1000), the prediction unpacked."""

    def latents(self, pixels: Any) -> Any:
        model_input = self.vae.encode(pixels).latent_dist.sample()
        return ((model_input - self.shift) * self.scaling).to(dtype=self.dtype)

    def load_vae(self, model: str, device: Any, dtype: Any) -> None:
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

        self.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(model, subfolder="scheduler")
        self.vae = AutoencoderKL.from_pretrained(model, subfolder="vae")
        self.vae.to(device, dtype=dtype)
        self.shift, self.scaling = self.vae.config.shift_factor, self.vae.config.scaling_factor
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.device, self.dtype = device, dtype

    @abstractmethod
    def conditioning(self, transformer: Any, cond: Any, batch: int, image_tokens: int) -> dict[str, Any]:
        """The transformer's text inputs (and guidance) for a batch of ``batch`` images."""

    def predict(self, transformer: Any, noisy: Any, timesteps: Any, cond: Any) -> Any:
        from diffusers import FluxPipeline

        b, c, h, w = noisy.shape
        latent_image_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, self.device, self.dtype)
        packed_noisy_model_input = FluxPipeline._pack_latents(noisy, batch_size=b, num_channels_latents=c,
                                                              height=h, width=w)
        model_pred = transformer(hidden_states=packed_noisy_model_input, timestep=timesteps / 1000,
                                 img_ids=latent_image_ids, return_dict=False,
                                 **self.conditioning(transformer, cond, b, packed_noisy_model_input.shape[1]))[0]
        return FluxPipeline._unpack_latents(model_pred, height=h * self.vae_scale_factor,
                                            width=w * self.vae_scale_factor, vae_scale_factor=self.vae_scale_factor)


class FluxExample(PackedExample):
    """train_dreambooth_lora_flux.py: its own prompt encoding (CLIP-L's pooled output, T5's hidden
    states, zero text ids) and [dev]'s guidance input."""

    def load(self, model: str, device: Any, dtype: Any) -> None:
        from diffusers import FluxTransformer2DModel
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

        self.tokenizers = [CLIPTokenizer.from_pretrained(model, subfolder="tokenizer"),
                           T5TokenizerFast.from_pretrained(model, subfolder="tokenizer_2")]
        self.load_vae(model, device, dtype)
        self.text_encoders = [CLIPTextModel.from_pretrained(model, subfolder="text_encoder"),
                              T5EncoderModel.from_pretrained(model, subfolder="text_encoder_2")]
        self.transformer = FluxTransformer2DModel.from_pretrained(model, subfolder="transformer")
        self.transformer.to(device, dtype=dtype)
        for text_encoder in self.text_encoders:
            text_encoder.to(device, dtype=dtype)

    def embed(self, caption: str) -> Any:
        """The example's encode_prompt: _encode_prompt_with_clip + _encode_prompt_with_t5."""
        clip, t5 = self.tokenizers
        ids = clip([caption], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        pooled_prompt_embeds = self.text_encoders[0](ids.to(self.device), output_hidden_states=False).pooler_output
        ids = t5([caption], padding="max_length", max_length=MAX_SEQUENCE_LENGTH, truncation=True,
                 return_tensors="pt").input_ids
        prompt_embeds = self.text_encoders[1](ids.to(self.device))[0]
        return prompt_embeds, pooled_prompt_embeds

    def conditioning(self, transformer: Any, cond: Any, batch: int, image_tokens: int) -> dict[str, Any]:
        import torch
        from accelerate.utils import extract_model_from_parallel

        prompt_embeds, pooled_prompt_embeds = cond
        text_ids = torch.zeros(prompt_embeds.shape[1], 3).to(device=self.device, dtype=self.dtype)
        guidance = None
        if extract_model_from_parallel(transformer).config.guidance_embeds:  # accelerator.unwrap_model
            guidance = torch.tensor([FLUX_GUIDANCE], device=self.device).expand(batch)
        return {"guidance": guidance, "pooled_projections": pooled_prompt_embeds,
                "encoder_hidden_states": prompt_embeds, "txt_ids": text_ids}


class ChromaExample(PackedExample):
    """The Flux example with Chroma's conditioning: T5 alone through a text-encoding pipeline (as
    the Z-Image and Qwen-Image examples encode), its prompt mask extended over the image tokens by
    the pipeline's _prepare_attention_mask; no pooled embedding, no guidance input."""

    def load(self, model: str, device: Any, dtype: Any) -> None:
        from diffusers import ChromaPipeline, ChromaTransformer2DModel
        from transformers import T5EncoderModel, T5TokenizerFast

        tokenizer = T5TokenizerFast.from_pretrained(model, subfolder="tokenizer")
        self.load_vae(model, device, dtype)
        text_encoder = T5EncoderModel.from_pretrained(model, subfolder="text_encoder")
        self.text_encoders = [text_encoder]
        self.transformer = ChromaTransformer2DModel.from_pretrained(model, subfolder="transformer")
        self.transformer.to(device, dtype=dtype)
        text_encoder.to(device, dtype=dtype)
        self.text = ChromaPipeline.from_pretrained(model, vae=None, transformer=None, tokenizer=tokenizer,
                                                   text_encoder=text_encoder, scheduler=None)

    def embed(self, caption: str) -> Any:
        prompt_embeds, _, prompt_attention_mask, *_ = self.text.encode_prompt(
            prompt=caption, do_classifier_free_guidance=False, max_sequence_length=MAX_SEQUENCE_LENGTH)
        return prompt_embeds, prompt_attention_mask

    def conditioning(self, transformer: Any, cond: Any, batch: int, image_tokens: int) -> dict[str, Any]:
        import torch

        prompt_embeds, prompt_attention_mask = cond
        text_ids = torch.zeros(prompt_embeds.shape[1], 3).to(device=self.device, dtype=self.dtype)
        attention_mask = self.text._prepare_attention_mask(batch, image_tokens, self.dtype, prompt_attention_mask)
        return {"encoder_hidden_states": prompt_embeds, "txt_ids": text_ids, "attention_mask": attention_mask}


class QwenImageExample(Example):
    """train_dreambooth_lora_qwen_image.py: Qwen2.5-VL inside a text-encoding pipeline, a video
    VAE fed one frame, latents normalised by the VAE's per-channel mean and std, packed 2×2,
    the timestep as σ, the text padded with its mask."""
    frames = True

    def load(self, model: str, device: Any, dtype: Any) -> None:
        import torch
        from diffusers import (
            AutoencoderKLQwenImage,
            FlowMatchEulerDiscreteScheduler,
            QwenImagePipeline,
            QwenImageTransformer2DModel,
        )
        from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

        tokenizer = Qwen2Tokenizer.from_pretrained(model, subfolder="tokenizer")
        # shift=3.0 as the example passes it: a no-op, the scheduler shifts dynamically (at sampling)
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(model, subfolder="scheduler", shift=3.0)
        self.vae = AutoencoderKLQwenImage.from_pretrained(model, subfolder="vae")
        self.vae_scale_factor = 2 ** len(self.vae.temperal_downsample)
        z = self.vae.config.z_dim
        self.latents_mean = torch.tensor(self.vae.config.latents_mean).view(1, z, 1, 1, 1).to(device)
        self.latents_std = 1.0 / torch.tensor(self.vae.config.latents_std).view(1, z, 1, 1, 1).to(device)
        text_encoder = Qwen2_5_VLForConditionalGeneration.from_pretrained(model, subfolder="text_encoder",
                                                                          torch_dtype=dtype)
        self.text_encoders = [text_encoder]
        self.transformer = QwenImageTransformer2DModel.from_pretrained(model, subfolder="transformer",
                                                                       torch_dtype=dtype)
        self.vae.to(device, dtype=dtype)
        text_encoder.to(device, dtype=dtype)
        self.transformer.to(device, dtype=dtype)
        self.text = QwenImagePipeline.from_pretrained(model, vae=None, transformer=None, tokenizer=tokenizer,
                                                      text_encoder=text_encoder, scheduler=None)
        self.dtype = dtype

    def embed(self, caption: str) -> Any:
        prompt_embeds, _ = self.text.encode_prompt(prompt=caption, max_sequence_length=MAX_SEQUENCE_LENGTH)
        return prompt_embeds[0]  # (tokens, dim): one caption, unpadded

    def batch(self, embeds: list[Any]) -> Any:
        """The captions padded to the longest with the mask, as encode_prompt batches them (no
        mask when nothing is padded)."""
        import torch

        longest = max(len(e) for e in embeds)
        prompt_embeds = torch.stack([torch.cat([e, e.new_zeros(longest - len(e), e.shape[1])]) for e in embeds])
        mask = torch.stack([torch.arange(longest) < len(e) for e in embeds]).long()
        return prompt_embeds, None if mask.all() else mask

    def latents(self, pixels: Any) -> Any:
        model_input = self.vae.encode(pixels).latent_dist.sample()  # (B, C, 1, H, W)
        return ((model_input - self.latents_mean) * self.latents_std).to(dtype=self.dtype)

    def predict(self, transformer: Any, noisy: Any, timesteps: Any, cond: Any) -> Any:
        from diffusers import QwenImagePipeline

        b, c, _, h, w = noisy.shape
        img_shapes = [(1, h // 2, w // 2)] * b  # (1, resolution // vae_scale_factor // 2, ...)
        packed_noisy_model_input = QwenImagePipeline._pack_latents(
            noisy.permute(0, 2, 1, 3, 4), batch_size=b, num_channels_latents=c, height=h, width=w)
        prompt_embeds, prompt_embeds_mask = cond
        model_pred = transformer(hidden_states=packed_noisy_model_input, encoder_hidden_states=prompt_embeds,
                                 encoder_hidden_states_mask=prompt_embeds_mask, timestep=timesteps / 1000,
                                 img_shapes=img_shapes, return_dict=False)[0]
        size = h * self.vae_scale_factor
        return QwenImagePipeline._unpack_latents(model_pred, size, size, self.vae_scale_factor)


EXAMPLE_CLASSES: dict[str, type[Example]] = {"zimage": ZImageExample, "flux": FluxExample,
                                             "chroma": ChromaExample, "qwenimage": QwenImageExample}


# -- the loop the examples share -------------------------------------------------------------------
class DreamBoothDataset:
    """The examples' DreamBoothDataset with custom captions: every image decoded and transformed
    once, when the dataset is made (``--center_crop``, no flips); an item is that tensor and its
    caption."""

    def __init__(self, images: list[tuple[Path, str]], resolution: int):
        self.pixel_values = [example_pixels(path, resolution, upright=True)[0] for path, _ in images]
        self.custom_instance_prompts = [caption for _, caption in images]

    def __len__(self) -> int:
        return len(self.pixel_values)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"instance_images": self.pixel_values[index],
                "instance_prompt": self.custom_instance_prompts[index]}


def collate_fn(examples: list[dict[str, Any]], frames: bool) -> dict[str, Any]:
    import torch

    pixel_values = torch.stack([e["instance_images"] for e in examples])
    if frames:  # "Qwen expects a `num_frames` dimension too."
        pixel_values = pixel_values.unsqueeze(2)
    pixel_values = pixel_values.to(memory_format=torch.contiguous_format).float()
    return {"pixel_values": pixel_values, "prompts": [e["instance_prompt"] for e in examples]}


def bare_loop(job: Job, profile: cProfile.Profile | None = None) -> Run:
    """The DreamBooth LoRA examples' training, reduced to it: components loaded one by one, the
    LoRA through ``transformer.add_adapter`` on lora_lab's targets for the family, AdamW over its
    parameters, every caption embedded once before training, a shuffled DataLoader over the
    preprocessed images, and per step a VAE encode, noise, σ from the scheduler's table at a
    uniform index (weighting scheme "none"), the transformer, MSE against noise - latents,
    backward, clip, step, all through ``accelerate``. Loading and embedding are not timed; the
    loop is."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3
    from peft import LoraConfig

    from lora_lab.training.families import get_family

    example = EXAMPLE_CLASSES[job.family]()
    accelerator = Accelerator(gradient_accumulation_steps=1, mixed_precision="no")
    set_seed(job.seed)
    weight_dtype = torch.float32
    example.load(str(job.model), accelerator.device, weight_dtype)
    transformer, noise_scheduler_copy = example.transformer, example.scheduler
    transformer.requires_grad_(False)
    example.vae.requires_grad_(False)
    for text_encoder in example.text_encoders:
        text_encoder.requires_grad_(False)
    # lora_lab's targets for network.targets = "attn" (the examples' --lora_layers), leaving out
    # what it leaves out (Qwen-Image's last text-stream outputs, which no loss reaches)
    family = get_family(job.family)
    transformer.add_adapter(LoraConfig(
        r=job.rank, lora_alpha=job.rank, lora_dropout=0.0, init_lora_weights="gaussian",
        target_modules=family.lora_targets(transformer, "attn"),
        exclude_modules=family.untrained_modules(transformer) or None))
    transformer_lora_parameters = list(filter(lambda p: p.requires_grad, transformer.parameters()))
    optimizer = torch.optim.AdamW([{"params": transformer_lora_parameters, "lr": job.lr}], betas=(0.9, 0.999),
                                  weight_decay=job.weight_decay, eps=1e-8)
    train_dataset = DreamBoothDataset(job.images, job.resolution)
    train_dataloader = torch.utils.data.DataLoader(
        train_dataset, batch_size=job.batch, shuffle=True, num_workers=0,
        collate_fn=lambda examples: collate_fn(examples, example.frames))
    # The examples embed custom captions before training too (Z-Image, Qwen-Image: batch by batch
    # in a first pass over the loader, then looked up by step index, which pairs them with other
    # images' latents once the loader reshuffles); here each caption is embedded once and looked
    # up by caption, as lora_lab's text cache does.
    with torch.no_grad():
        embeds = {c: example.embed(c) for c in sorted(set(train_dataset.custom_instance_prompts))}
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0,
                                 num_training_steps=job.steps * accelerator.num_processes)
    transformer, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        transformer, optimizer, train_dataloader, lr_scheduler)
    epochs = math.ceil(job.steps / len(train_dataloader))

    def get_sigmas(timesteps, n_dim=4, dtype=torch.float32):
        sigmas = noise_scheduler_copy.sigmas.to(device=accelerator.device, dtype=dtype)
        schedule_timesteps = noise_scheduler_copy.timesteps.to(accelerator.device)
        timesteps = timesteps.to(accelerator.device)
        step_indices = [(schedule_timesteps == t).nonzero().item() for t in timesteps]
        sigma = sigmas[step_indices].flatten()
        while len(sigma.shape) < n_dim:
            sigma = sigma.unsqueeze(-1)
        return sigma

    run = Run()
    global_step = 0
    if profile is not None:
        profile.enable()
    run.start("loop")
    for _epoch in range(epochs):
        transformer.train()
        for batch in train_dataloader:
            with accelerator.accumulate([transformer]):
                prompt_embeds = example.batch([embeds[p] for p in batch["prompts"]])
                model_input = example.latents(batch["pixel_values"].to(dtype=example.vae.dtype))
                noise = torch.randn_like(model_input)
                bsz = model_input.shape[0]
                u = compute_density_for_timestep_sampling(weighting_scheme="none", batch_size=bsz,
                                                          logit_mean=0.0, logit_std=1.0, mode_scale=1.29)
                indices = (u * noise_scheduler_copy.config.num_train_timesteps).long()
                timesteps = noise_scheduler_copy.timesteps[indices].to(device=model_input.device)
                # zt = (1 - texp) * x + texp * z1
                sigmas = get_sigmas(timesteps, n_dim=model_input.ndim, dtype=model_input.dtype)
                noisy_model_input = (1.0 - sigmas) * model_input + sigmas * noise
                model_pred = example.predict(transformer, noisy_model_input, timesteps, prompt_embeds)
                weighting = compute_loss_weighting_for_sd3(weighting_scheme="none", sigmas=sigmas)
                target = noise - model_input  # flow matching loss
                loss = torch.mean(
                    (weighting.float() * (model_pred.float() - target.float()) ** 2).reshape(target.shape[0], -1), 1)
                loss = loss.mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(transformer.parameters(), job.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            logs = {"loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0]}  # the progress bar's
            if accelerator.sync_gradients:
                global_step += 1
                run.step(logs["loss"])
            if global_step >= job.steps:
                break
    if profile is not None:
        profile.disable()
    accelerator.end_training()
    return run


def floor(family: str) -> Floor:
    return Floor(
        bare_loop,
        what=f"the bare loop: diffusers' {EXAMPLES[family]}, images preprocessed and captions "
             "embedded once before training, VAE-encoding every step",
        shuffle_tags=False,
        nocache="lora_lab, latents not cached (cache_latents=false; text cached, as the bare loop)",
        note="latents not cached: the bare loop embeds every caption once before training, as the "
             "examples do when the text encoder is not trained, and lora_lab does the same by itself "
             "(its text cache; shuffle_tags=false); both VAE-encode every batch every step. lora_lab "
             "also decodes and resizes the images every step (the examples keep them preprocessed).")


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    from lora_lab.tiny.flow import write_flow

    args = parse_args(argv, ("all", *FAMILIES), __doc__)
    for family in FAMILIES if args.family == "all" else (args.family,):
        args.family = family
        print(f"\n# === {family}", flush=True)
        bench(args, lambda folder, f=family: write_flow(f, folder), floor(family))


if __name__ == "__main__":
    main()
