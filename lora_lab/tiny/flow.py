"""Tiny random-weight flow-matching pipelines: Z-Image, Flux.1 [dev], Flux.2 klein, Qwen-Image, Chroma.

Each is its family's diffusers pipeline, every component of the real class with a shrunk config
that keeps what training code relies on: a VAE that downsamples x8 with the real latent channels
and normalisation, 2x2 patches, the real scheduler config, Flux's guidance embedding, the text
encoders and tokenizers the pipeline calls (tokenizers over hand-made vocabularies). A few MB and
a fraction of a second each; their images are noise.
"""
from __future__ import annotations

import string
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLFlux2,
    AutoencoderKLQwenImage,
    ChromaPipeline,
    ChromaTransformer2DModel,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Transformer2DModel,
    FluxPipeline,
    FluxTransformer2DModel,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
    ZImagePipeline,
    ZImageTransformer2DModel,
)
from tokenizers import AddedToken
from transformers import (
    CLIPTextModel,
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3Model,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from lora_lab.tiny.diffusion import (
    _WORDS,
    _byte_alphabet,
    _clip_tokenizer,
    _no_progress_bars,
    _text_config,
    _word_merges,
)
from lora_lab.tiny.samples import SAMPLES

__all__ = ["build_flow", "write_flow"]

_WIDTH = 32  # hidden size of every tiny text encoder


def _caption_words() -> tuple[str, ...]:
    """_WORDS plus every word of the samples' captions, shapes and colours."""
    words = [*_WORDS, "a", "an", "background", "black", "white"]
    for _, _, shape, colour, caption in SAMPLES:
        words += [shape, colour, *(caption or "").replace(",", " ").split()]
    return tuple(dict.fromkeys(words))


# The real vocabularies keep such words whole: so do the tiny ones
_CAPTION_WORDS = _caption_words()

# Qwen-Image drops the first 34 tokens of every encoded prompt, its system prompt as the real
# vocabulary splits it: the tiny one must split it the same, so its words are whole tokens too.
_QWEN_PROMPT_PIECES = (
    "system", "user", "assistant", "Describe",
    *(" " + w for w in "the image by detailing color shape size texture quantity text spatial "
                       "relationships of objects and background".split()),
)
_QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")
_QWEN_THINK = ("<think>", "</think>")  # Qwen3's: added tokens, not special ones
# Z-Image and Flux.2 klein render prompts with the chat template (enable_thinking True / False):
# this one gives the real Qwen3 template's text for a single user turn.
_QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)


def _byte_level(text: str) -> str:
    """Text in byte-level BPE's alphabet (GPT-2's: " " is "Ġ", "\\n" is "Ċ")."""
    printable = {ord(c) for c in _byte_alphabet() if ord(c) < 256}
    others = iter(range(256, 512))  # the other bytes, in order, stand as chr(256), chr(257), ...
    table = {b: chr(b) if b in printable else chr(next(others)) for b in range(256)}
    return "".join(table[b] for b in text.encode())


def _qwen_tokenizer() -> Qwen2Tokenizer:
    """Qwen's byte-level BPE (Qwen2/2.5/3 share it) over ~530 ids instead of 151k, with a chat template."""
    # caption words both bare (a prompt's first word) and after a space, as Qwen's pre-tokenizer cuts them
    pieces = (*_QWEN_PROMPT_PIECES, *_CAPTION_WORDS, *(" " + w for w in _CAPTION_WORDS), "\n\n")
    merges = _word_merges(tuple(dict.fromkeys(map(_byte_level, pieces))), end="")
    tokens = [*_byte_alphabet(), *dict.fromkeys(m.replace(" ", "") for m in merges), *_QWEN_SPECIALS,
              *_QWEN_THINK]
    tokenizer = Qwen2Tokenizer(
        vocab={token: i for i, token in enumerate(tokens)},
        merges=[tuple(m.split(" ")) for m in merges],
        extra_special_tokens=list(_QWEN_SPECIALS[1:]),
        model_max_length=131072,
    )
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in _QWEN_THINK])
    tokenizer.chat_template = _QWEN3_CHAT_TEMPLATE
    return tokenizer


def _t5_tokenizer() -> T5Tokenizer:
    """T5's Unigram tokenizer ("▁" starts a word, "</s>" ends the text): whole words, else characters."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -3.0) for w in _CAPTION_WORDS]
    pieces += [(c, -8.0) for c in string.ascii_letters + string.digits + string.punctuation]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _t5_encoder(tokenizer: PreTrainedTokenizerBase) -> T5EncoderModel:
    # T5 v1.1 (XXL in the real models): gated-GELU, relative position buckets
    return T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=_WIDTH, d_kv=8, d_ff=2 * _WIDTH, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    ))


def _qwen3_config(tokenizer: PreTrainedTokenizerBase, layers: int) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=_WIDTH, intermediate_size=2 * _WIDTH, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=40960,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
    )


def _flux_vae() -> AutoencoderKL:
    # FLUX.1's autoencoder, which Z-Image and Chroma use too: x8, 16 latent channels, no quant
    # convs; latents are normalised as (z - shift_factor) * scaling_factor
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=16,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )


# FLUX.1 [dev]'s scheduler_config.json; Chroma's and Flux.2's are the same (Flux.2 klein
# computes its own mu, so only shift matters there)
_FLUX_SCHEDULER = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
                   "base_image_seq_len": 256, "max_image_seq_len": 4096}


def _zimage() -> ZImagePipeline:
    tokenizer = _qwen_tokenizer()
    # The pipeline reads hidden_states[-2]: two layers make that a layer's output
    text_encoder = Qwen3Model(_qwen3_config(tokenizer, layers=2))
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=64, n_layers=2, n_refiner_layers=1,
        n_heads=2, n_kv_heads=2, cap_feat_dim=_WIDTH,
        axes_dims=[8, 12, 12],  # RoPE per axis (frame, height, width): sums to dim / n_heads
    )
    with torch.no_grad():  # padding tokens the real model learned; zeros here otherwise
        transformer.x_pad_token.normal_(std=0.02)
        transformer.cap_pad_token.normal_(std=0.02)
    return ZImagePipeline(
        # Z-Image-Turbo's: a fixed shift
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False),
        vae=_flux_vae(), text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
    )


def _flux() -> FluxPipeline:
    clip_tokenizer, t5_tokenizer = _clip_tokenizer(_CAPTION_WORDS), _t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=_WIDTH, pooled_projection_dim=_WIDTH,
        guidance_embeds=True,  # [dev] embeds the guidance scale; [schnell] has no such input
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**_FLUX_SCHEDULER), vae=_flux_vae(),
        text_encoder=CLIPTextModel(_text_config(clip_tokenizer, hidden_size=_WIDTH)), tokenizer=clip_tokenizer,
        text_encoder_2=_t5_encoder(t5_tokenizer), tokenizer_2=t5_tokenizer, transformer=transformer,
    )


def _flux2klein() -> Flux2KleinPipeline:
    tokenizer = _qwen_tokenizer()
    # The pipeline stacks hidden_states 9, 18 and 27 (Qwen3-4B has 36 layers): 27 is the fewest
    text_encoder = Qwen3ForCausalLM(_qwen3_config(tokenizer, layers=27))
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=128, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * _WIDTH,  # the three stacked hidden states
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=False,  # klein has no guidance embedder
    )
    vae = AutoencoderKLFlux2(  # 32 latent channels, patchified 2x2 to 128 and BatchNorm-normalised
        block_out_channels=(16, 16, 32, 32), layers_per_block=1, latent_channels=32, norm_num_groups=16,
        sample_size=64,
    )
    with torch.no_grad():  # running statistics like a trained VAE's, not BatchNorm's identity
        vae.bn.running_mean.normal_(std=0.5)
        vae.bn.running_var.uniform_(0.5, 4.0)
    return Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**_FLUX_SCHEDULER), vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, transformer=transformer,
        is_distilled=False,  # the base model, which LoRAs are trained on: real CFG
    )


def _qwenimage() -> QwenImagePipeline:
    tokenizer = _qwen_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": _WIDTH, "intermediate_size": 2 * _WIDTH,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "max_position_embeddings": 128000,
            # multimodal RoPE: its sections sum to head_dim / 2
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            "bos_token_id": None, "pad_token_id": tokenizer.pad_token_id, "eos_token_id": ids("<|im_end|>"),
        },
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2,
                       "out_hidden_size": _WIDTH, "fullatt_block_indexes": [0]},
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    ))
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=_WIDTH, axes_dims_rope=(4, 6, 6),
    )
    # A video VAE (5-D latents, one frame for an image): x8, 16 channels, the real latents_mean/std
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16, num_res_blocks=1)
    pipe = QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(  # Qwen-Image's scheduler_config.json
            shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
            max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential",
        ),
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
    )
    system = pipe.prompt_template_encode.split("{}")[0]
    assert len(tokenizer(system).input_ids) == pipe.prompt_template_encode_start_idx, "system prompt split"
    return pipe


def _chroma() -> ChromaPipeline:
    tokenizer = _t5_tokenizer()
    transformer = ChromaTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=_WIDTH, axes_dims_rope=(4, 6, 6),
        # the approximator maps timestep to every block's modulation (Chroma's stand-in for
        # Flux's pooled CLIP and guidance): 64 input channels as in the real one
        approximator_num_channels=64, approximator_hidden_dim=64, approximator_layers=1,
    )
    return ChromaPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**_FLUX_SCHEDULER), vae=_flux_vae(),
        text_encoder=_t5_encoder(tokenizer), tokenizer=tokenizer, transformer=transformer,
    )


_BUILDERS: dict[str, Callable[[], DiffusionPipeline]] = {
    "zimage": _zimage, "flux": _flux, "flux2klein": _flux2klein, "qwenimage": _qwenimage, "chroma": _chroma,
}  # keyed as lora_lab.tiny.FLOW_FAMILIES (test_tiny builds each)


def build_flow(family: str, seed: int = 0) -> DiffusionPipeline:
    """The tiny pipeline of one of lora_lab.tiny.FLOW_FAMILIES, random weights; the same seed gives the same weights."""
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():  # leave the caller's RNG as it was
        # diffusers' own Chroma model builds its deprecated FluxPosEmbed: not for our users to fix
        warnings.filterwarnings("ignore", message=".*FluxPosEmbed", category=FutureWarning)
        torch.manual_seed(seed)
        return _BUILDERS[family]()


def write_flow(family: str, folder: str | Path, seed: int = 0) -> Path:
    """Save ``build_flow(family, seed)`` into ``folder`` (safetensors); returns the folder."""
    with _no_progress_bars():
        build_flow(family, seed).save_pretrained(folder)
    return Path(folder)
