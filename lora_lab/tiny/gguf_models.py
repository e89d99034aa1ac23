"""A tiny random-weight Qwen2.5-VL caption model pair in GGUF: text model + vision projector.

llama.cpp loads them like the real Qwen2.5-VL-7B GGUF and its mmproj (same architecture
names, the same required keys), so the caption path runs end to end in milliseconds. What
they write is gibberish made of ordinary word pieces: only the plumbing is real.
"""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

# SentencePiece-style vocabulary rather than Qwen's 150k BPE: the 256 byte-fallback tokens let
# any text tokenize with a vocabulary of ~300 ids (llama.cpp also looks up <0x0A> for newline).
_CONTROL = ["<unk>", "<s>", "</s>"]
_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
_WORDS = [
    "▁", "▁a", "▁the", "▁of", "▁on", "▁in", "▁photo", "▁red", "▁green", "▁blue", "▁circle",
    "▁square", "▁sky", "▁grass", ",", ".", *(chr(c) for c in range(ord("a"), ord("z") + 1)),
]

# ChatML, as Qwen uses; lets the text model chat on its own (the vision handler brings its own).
_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Text model and projector sizes; the projector's output must match the text embedding.
_N_EMBD_TEXT = 64
_N_EMBD_VISION = 32
_IMAGE_SIZE, _PATCH_SIZE = 56, 14


class _TensorWriter:
    """Adds random, one- and zero-filled F32 tensors to a GGUFWriter from one seeded stream."""

    def __init__(self, writer: gguf.GGUFWriter, rng: np.random.Generator) -> None:
        self.writer, self.rng = writer, rng

    def random(self, name: str, shape: tuple[int, ...], scale: float = 0.02) -> None:
        # numpy shapes are ggml's ne[] reversed: (n_out, n_in) for a matmul weight
        self.writer.add_tensor(name, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def ones(self, name: str, n: int) -> None:
        self.writer.add_tensor(name, np.ones(n, dtype=np.float32))

    def zeros(self, name: str, n: int) -> None:
        self.writer.add_tensor(name, np.zeros(n, dtype=np.float32))


def _vocab() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types: control tokens, byte fallbacks, specials, word pieces."""
    tokens = _CONTROL + [f"<0x{b:02X}>" for b in range(256)] + _SPECIALS + _WORDS
    types = (
        [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
        + [gguf.TokenType.BYTE] * 256
        + [gguf.TokenType.CONTROL] * len(_SPECIALS)
        + [gguf.TokenType.NORMAL] * len(_WORDS)
    )
    # where two pieces could apply, SentencePiece takes the higher score: the one listed first
    scores = [0.0] * (len(tokens) - len(_WORDS)) + [-float(i + 1) for i in range(len(_WORDS))]
    return tokens, scores, [int(t) for t in types]


def _safe_sampling(tokens: list[str], types: list[int], emb: np.ndarray, out: np.ndarray) -> None:
    """Bias random weights so that only word pieces and printable ASCII bytes are ever sampled.

    A random model otherwise emits UTF-8 lead bytes (>= 0x80); llama-cpp-python then skips its
    max_tokens check while it waits for the rest of the character and runs until the context
    is full ("llama_decode returned 1"). It would also stop at random on EOS. Every embedding
    gets +20 in dim 0, which survives the tiny random layers and the RMS norm, and the output
    head reads dim 0 with +2 for safe tokens and -2 for the rest: logits of about +15 vs -15.
    """
    safe = np.array([
        t == gguf.TokenType.NORMAL or (t == gguf.TokenType.BYTE and 0x20 <= int(tok[3:5], 16) <= 0x7E)
        for tok, t in zip(tokens, types)
    ])
    emb[:, 0] += 20.0
    out[:, 0] = np.where(safe, 2.0, -2.0)


def write_text_model(path: str | Path, seed: int = 0) -> Path:
    """Write a Qwen2-VL-architecture ("qwen2vl", M-RoPE) text model with random weights."""
    n_embd, n_layer, n_head, n_ff = _N_EMBD_TEXT, 2, 4, 128
    head_dim = n_embd // n_head
    tokens, scores, types = _vocab()
    writer = gguf.GGUFWriter(str(path), "qwen2vl")
    writer.add_name("tiny-qwen25vl")
    writer.add_context_length(4096)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    # M-RoPE splits each head's rotary half into (time, height, width, -) sections;
    # llama.cpp requires the key for qwen2vl, and the sections must fit in head_dim / 2
    half = head_dim // 2
    writer.add_rope_dimension_sections([half // 4, 3 * half // 8, half - half // 4 - 3 * half // 8, 0])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_chat_template(_CHATML)

    rng = np.random.default_rng([seed, 0])
    emb = rng.standard_normal((len(tokens), n_embd))
    out = rng.standard_normal((len(tokens), n_embd)) * 0.5
    _safe_sampling(tokens, types, emb, out)
    writer.add_tensor("token_embd.weight", emb.astype(np.float32))
    writer.add_tensor("output.weight", out.astype(np.float32))
    tensors = _TensorWriter(writer, rng)
    tensors.ones("output_norm.weight", n_embd)
    for i in range(n_layer):
        tensors.ones(f"blk.{i}.attn_norm.weight", n_embd)
        for x in ("q", "k", "v"):
            tensors.random(f"blk.{i}.attn_{x}.weight", (n_embd, n_embd))
            tensors.random(f"blk.{i}.attn_{x}.bias", (n_embd,))  # Qwen has qkv biases
        tensors.random(f"blk.{i}.attn_output.weight", (n_embd, n_embd))
        tensors.ones(f"blk.{i}.ffn_norm.weight", n_embd)
        tensors.random(f"blk.{i}.ffn_gate.weight", (n_ff, n_embd))
        tensors.random(f"blk.{i}.ffn_up.weight", (n_ff, n_embd))
        tensors.random(f"blk.{i}.ffn_down.weight", (n_embd, n_ff))
    _finish(writer)
    return Path(path)


def write_mmproj(path: str | Path, seed: int = 0) -> Path:
    """Write a Qwen2.5-VL vision tower + patch merger ("qwen2.5vl_merger") with random weights."""
    n_embd, n_layer, n_ff, n_merger = _N_EMBD_VISION, 2, 64, 128
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_string("general.description", "tiny random Qwen2.5-VL mmproj for tests")
    writer.add_clip_projector_type("qwen2.5vl_merger")
    writer.add_clip_has_vision_encoder(True)
    writer.add_vision_image_size(_IMAGE_SIZE)
    writer.add_vision_patch_size(_PATCH_SIZE)
    writer.add_vision_embedding_length(n_embd)
    writer.add_vision_feed_forward_length(n_ff)
    writer.add_vision_projection_dim(_N_EMBD_TEXT)
    writer.add_vision_head_count(2)
    writer.add_vision_attention_layernorm_eps(1e-6)
    writer.add_vision_block_count(n_layer)
    writer.add_vision_image_mean([0.5, 0.5, 0.5])  # required by llama.cpp's clip loader
    writer.add_vision_image_std([0.5, 0.5, 0.5])
    writer.add_vision_use_silu(True)  # gated SiLU feed-forward
    writer.add_vision_n_wa_pattern(0)  # required for 2.5-VL; 0 = no window attention
    writer.add_vision_spatial_merge_size(2)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    tensors = _TensorWriter(writer, np.random.default_rng([seed, 1]))
    # two conv kernels: Qwen's temporal patch spans 2 frames, summed for a still image
    tensors.random("v.patch_embd.weight", (n_embd, 3, _PATCH_SIZE, _PATCH_SIZE))
    tensors.random("v.patch_embd.weight.1", (n_embd, 3, _PATCH_SIZE, _PATCH_SIZE))
    for i in range(n_layer):
        for x in ("q", "k", "v", "out"):
            tensors.random(f"v.blk.{i}.attn_{x}.weight", (n_embd, n_embd))
            tensors.zeros(f"v.blk.{i}.attn_{x}.bias", n_embd)  # the graph always adds them
        tensors.ones(f"v.blk.{i}.ln1.weight", n_embd)  # RMS norms: no bias
        tensors.ones(f"v.blk.{i}.ln2.weight", n_embd)
        for x in ("gate", "up"):
            tensors.random(f"v.blk.{i}.ffn_{x}.weight", (n_ff, n_embd))
            tensors.zeros(f"v.blk.{i}.ffn_{x}.bias", n_ff)
        tensors.random(f"v.blk.{i}.ffn_down.weight", (n_embd, n_ff))
        tensors.zeros(f"v.blk.{i}.ffn_down.bias", n_embd)
    tensors.ones("v.post_ln.weight", n_embd)
    # merger: each 2x2 group of patches, concatenated -> hidden -> GELU -> text embedding
    tensors.random("mm.0.weight", (n_merger, 4 * n_embd))
    tensors.zeros("mm.0.bias", n_merger)
    tensors.random("mm.2.weight", (_N_EMBD_TEXT, n_merger))
    tensors.zeros("mm.2.bias", _N_EMBD_TEXT)
    _finish(writer)
    return Path(path)


def _finish(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_caption_pair(folder: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``tiny-qwen25vl.gguf`` and ``tiny-qwen25vl-mmproj.gguf`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = write_text_model(folder / "tiny-qwen25vl.gguf", seed)
    mmproj = write_mmproj(folder / "tiny-qwen25vl-mmproj.gguf", seed)
    return model, mmproj
