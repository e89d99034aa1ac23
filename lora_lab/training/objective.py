"""What the UNet is trained to predict: text conditioning, SDXL micro-conditioning, Min-SNR."""
from __future__ import annotations

import torch

from .base_model import BaseModel
from .data import Sample, TrainImage
from .latents import fit


def encode_prompts(base: BaseModel, captions: list[str], device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states, pooled embedding or None), as the family's pipelines condition the UNet:
    SD1.5 the last hidden state; SDXL both encoders' penultimate states side by side and the
    second encoder's projected pooled output."""
    hidden, pooled = [], None
    for tokenizer, te in zip(base.tokenizers, base.text_encoders):
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids.to(device)
        if base.family == "sd15":
            return te(ids)[0], None
        out = te(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = out[0]
    return torch.cat(hidden, dim=-1), pooled


def sdxl_time_ids(images: list[TrainImage], samples: list[Sample], bucket: tuple[int, int]
                  ) -> torch.Tensor:
    """Per sample: original size, crop top-left, target size (height before width, as SDXL)."""
    rows = []
    for s in samples:
        img = images[s.image]
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
