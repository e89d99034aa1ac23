"""Tiny random-weight SD1.5- and SDXL-shaped diffusers pipelines, built from configs offline.

They have the real models' structure (CLIP BPE tokenizer and text encoders, a cross-attention
UNet, a VAE that downsamples x8) at a few MB, so loading, LoRA training, export and generation
all run for real on a CPU in seconds. Their images are noise: only the plumbing is real.
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
from transformers.utils import logging as hf_logging

# Words that get whole-word tokens, so captions like the samples' come out as a few tokens, as
# with the real vocabulary; any other text still tokenizes, character by character.
_WORDS = (
    "the", "of", "on", "in", "and", "with", "photo", "style", "red", "green", "blue",
    "yellow", "circle", "square", "triangle", "sky", "grass",
)
_MAX_TOKENS = 77  # CLIP's context; the pipelines pad every prompt to it

# The real SD1.5 / SDXL VAEs scale latents by these before the UNet sees them.
_SD15_LATENT_SCALE = 0.18215
_SDXL_LATENT_SCALE = 0.13025


def _byte_alphabet() -> list[str]:
    """The 256 stand-in characters of CLIP's (GPT-2's) byte-level BPE, in CLIP's id order.

    Printable bytes stand for themselves; the other 68 map to chr(256), chr(257), ...
    """
    printable = [
        *range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)
    ]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges to one word as CLIP does: always the best-ranked adjacent pair first."""
    while len(symbols) > 1:
        rank, i = min((ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(symbols, symbols[1:])))
        if rank == len(ranks):
            break
        symbols = [*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2:]]
    return symbols


def _word_merges(words: tuple[str, ...], end: str = "</w>") -> list[str]:
    """BPE merges that make each word one token ("t h", "th e</w>"); ``end`` marks a word's last
    character (CLIP's "</w>"; byte-level BPEs without it, such as Qwen's, pass "").

    A word first takes the merges earlier words added (as the tokenizer will), then gets a new
    one for the first two pieces left, until it is whole. So every merge joins two tokens that
    are in the vocabulary (the tokenizer breaks otherwise), and later merges, ranked lower,
    cannot split the words before them.
    """
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        symbols = [*word[:-1], word[-1] + end]
        while len(pieces := _bpe(symbols, ranks)) > 1:
            ranks[pieces[0], pieces[1]] = len(ranks)
    return [f"{a} {b}" for a, b in ranks]


def _clip_tokenizer(words: tuple[str, ...] = _WORDS) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over a hand-made vocabulary (567 ids instead of 49408 for _WORDS)."""
    alphabet = _byte_alphabet()
    merges = _word_merges(words)
    merged = dict.fromkeys(m.replace(" ", "") for m in merges)  # two merges may spell one token
    tokens = [*alphabet, *(c + "</w>" for c in alphabet), *merged, "<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        vocab = {token: i for i, token in enumerate(tokens)}
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        # transformers 5 saves this flag into tokenizer_config.json: pin it, or the file
        # would depend on HF_HUB_OFFLINE
        return CLIPTokenizer.from_pretrained(folder, model_max_length=_MAX_TOKENS, local_files_only=True)


def _text_config(tokenizer: CLIPTokenizer, hidden_size: int, projection_dim: int = 32) -> CLIPTextConfig:
    # Two layers: SDXL reads the penultimate hidden state, so one would not do.
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_MAX_TOKENS,
        projection_dim=projection_dim,
        bos_token_id=tokenizer.bos_token_id,
        # the pooled output is read at the first eos token: the id must be the tokenizer's
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _vae(latent_scale: float) -> AutoencoderKL:
    # Four blocks downsample x8 like the real VAE; with two, a 64 px image gives a 32x32
    # latent and tiny training runs 8-15x slower than it needs to.
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
        scaling_factor=latent_scale,
    )


def _scheduler() -> EulerDiscreteScheduler:
    # The real SDXL scheduler config; a training loop builds its DDPMScheduler from it.
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
    )


def build_sd15(seed: int = 0) -> StableDiffusionPipeline:
    """An SD1.5-shaped pipeline with random weights; the same seed gives the same weights."""
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
        torch.manual_seed(seed)
        tokenizer = _clip_tokenizer()
        text_encoder = CLIPTextModel(_text_config(tokenizer, hidden_size=32))
        unet = UNet2DConditionModel(
            sample_size=8,  # x8 VAE: pipelines then default to 64 px images
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,  # = text encoder hidden size
            attention_head_dim=8,
            norm_num_groups=32,
        )
        vae = _vae(_SD15_LATENT_SCALE)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sdxl(seed: int = 0) -> StableDiffusionXLPipeline:
    """An SDXL-shaped pipeline (two text encoders, micro-conditioning) with random weights."""
    # The encoders differ in width as in the real model (768 vs 1280): diffusers' single-file
    # loader tells them apart by it, and of equal width loads both from the first one's weights.
    te1_hidden, te2_hidden, te2_projection, time_embed_dim = 32, 64, 32, 8
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = _clip_tokenizer()
        text_encoder = CLIPTextModel(_text_config(tokenizer, hidden_size=te1_hidden))
        text_encoder_2 = CLIPTextModelWithProjection(
            _text_config(tokenizer, hidden_size=te2_hidden, projection_dim=te2_projection)
        )
        unet = UNet2DConditionModel(
            sample_size=8,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            transformer_layers_per_block=(1, 2),
            # the pipeline concatenates both encoders' penultimate hidden states
            cross_attention_dim=te1_hidden + te2_hidden,
            # added condition: 6 micro-conditioning numbers (original size, crop corner,
            # target size), each time-embedded, plus TE2's pooled projection
            addition_embed_type="text_time",
            addition_time_embed_dim=time_embed_dim,
            projection_class_embeddings_input_dim=6 * time_embed_dim + te2_projection,
            norm_num_groups=32,
        )
        vae = _vae(_SDXL_LATENT_SCALE)
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=_scheduler(),
        force_zeros_for_empty_prompt=True,
    )


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Hide the "Writing model shards" bar transformers 5 draws for each text encoder saved."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def write_sd15(folder: str | Path, seed: int = 0) -> Path:
    """Save ``build_sd15(seed)`` into ``folder`` (safetensors); returns the folder."""
    with _no_progress_bars():
        build_sd15(seed).save_pretrained(folder)
    return Path(folder)


def write_sdxl(folder: str | Path, seed: int = 0) -> Path:
    """Save ``build_sdxl(seed)`` into ``folder`` (safetensors); returns the folder."""
    with _no_progress_bars():
        build_sdxl(seed).save_pretrained(folder)
    return Path(folder)
