"""Chroma: FLUX.1 [schnell]'s architecture with the modulation linears pruned for one small
network (the approximator) that maps the timestep to every block's modulation, so there is no
pooled CLIP embedding and no guidance input; real classifier-free guidance at sampling. Its T5
prompt is masked (all but the first padding token), and the transformer takes that mask
extended over the image tokens, as the pipeline's own ``_prepare_attention_mask`` makes it.

Trained like Flux (:mod:`.flux`): packed latents, σ from the scheduler's table, ε - x_0. Files
for ComfyUI name BFL's modules too: ComfyUI builds Chroma from Flux's block classes.
"""
from __future__ import annotations

from typing import Any

import torch

from ..bfl_names import FLUX1
from ..sections import TrainSection
from .base import Conditioning, Objective
from .flux import ATTENTION, MLP, Flux, PackedFlowObjective

MAX_TOKENS = 512  # the pipeline's default max_sequence_length


class ChromaObjective(PackedFlowObjective):
    def __init__(self, pipe: Any):
        super().__init__(pipe)
        self.attention_mask = pipe._prepare_attention_mask  # text mask + the image tokens' ones

    def conditioning(self, cond: Conditioning, batch: int, image_tokens: int, device: torch.device,
                     dtype: torch.dtype) -> dict[str, Any]:
        embeds, mask = cond
        return {"encoder_hidden_states": embeds.to(device, dtype),
                "txt_ids": torch.zeros(embeds.shape[1], 3, device=device, dtype=dtype),
                "attention_mask": self.attention_mask(batch, image_tokens, dtype, mask.to(device, dtype))}


class Chroma(Flux):
    """Flux's targets and buckets; its own conditioning and objective."""

    def token_limits(self, pipe: Any) -> list[tuple[str, Any, int]]:
        return [("text_encoder", pipe.tokenizer, MAX_TOKENS)]  # encode's max_sequence_length

    def encode(self, pipe: Any, captions: list[str], device: torch.device) -> Conditioning:
        embeds, _, mask, *_ = pipe.encode_prompt(list(captions), device=device, do_classifier_free_guidance=False,
                                                 max_sequence_length=MAX_TOKENS)
        return embeds, mask

    def prompt_inputs(self, pipe: Any, prompt: str, negative: str, guidance: float,
                      device: torch.device) -> dict[str, Any]:
        embeds, _, mask, neg, _, neg_mask = pipe.encode_prompt(
            prompt, negative_prompt=negative or None, do_classifier_free_guidance=guidance > 1, device=device)
        return {"prompt_embeds": embeds, "prompt_attention_mask": mask, "negative_prompt_embeds": neg,
                "negative_prompt_attention_mask": neg_mask, "guidance_scale": guidance}

    def objective(self, pipe: Any, train: TrainSection, prediction: str) -> Objective:
        return ChromaObjective(pipe)


CHROMA = Chroma(
    name="chroma", title="Chroma", pipeline="ChromaPipeline", denoiser="transformer",
    text_encoders=("text_encoder",),
    targets={"attn": ATTENTION, "attn_mlp": [*ATTENTION, *MLP]},
    file_layout="bfl", bfl_names=FLUX1, hub_names=("chroma",),
    model_version="chroma", architecture="chroma",  # as sd-scripts writes a Chroma LoRA
    implementation="https://huggingface.co/lodestones/Chroma", prediction="flow")
