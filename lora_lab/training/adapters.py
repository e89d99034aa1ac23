"""What is trained: LoRA adapters on the UNet (and text encoders), and the optimizer over them."""
from __future__ import annotations

import torch

from .base_model import BaseModel
from .config import NetworkSection, TrainSection

UNET_TARGETS = {
    "attn": ["to_q", "to_k", "to_v", "to_out.0"],
    "attn_mlp": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"],
}
# LoCon: the ResNet and resampling convolutions too (kohya's conv_dim), at their own rank.
CONV_TARGETS = ["conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv"]
TE_TARGETS = {"attn": ["q_proj", "k_proj", "v_proj", "out_proj"],
              "attn_mlp": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]}


def add_adapters(base: BaseModel, network: NetworkSection, seed: int) -> list[torch.nn.Module]:
    """Freeze the base model, add the adapters; the modules that train, UNet first."""
    for module in (base.unet, base.vae, *base.text_encoders):
        module.requires_grad_(False)
    targets = "attn" if network.targets == "attn" else "attn_mlp"
    torch.manual_seed(seed)  # the adapters' initial weights
    base.unet.add_adapter(_lora_config(network, UNET_TARGETS[targets], network.targets == "locon"))
    trained = [base.unet]
    if network.train_text_encoder:
        for te in base.text_encoders:
            inject_lora(te, _lora_config(network, TE_TARGETS[targets]))
            trained.append(te)
    return trained


def inject_lora(model: torch.nn.Module, config) -> None:
    """Add a LoRA adapter with peft itself, as diffusers does for the UNet: transformers'
    ``add_adapter`` gates on peft versions, so a transformers release could break training."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, model, adapter_name="default")
    model.peft_config = {"default": config}  # where the LoRA writers read rank and alpha


def _lora_config(n: NetworkSection, targets: list[str], conv: bool = False):
    from peft import LoraConfig

    ranks = {name: n.conv_rank for name in CONV_TARGETS} if conv else {}
    return LoraConfig(r=n.rank, lora_alpha=n.alpha, lora_dropout=n.dropout, use_dora=n.dora,
                      target_modules=targets + (CONV_TARGETS if conv else []), rank_pattern=ranks,
                      alpha_pattern={k: conv_alpha(n) for k in ranks})


def conv_alpha(n: NetworkSection) -> float:
    """The convolutions' alpha: the same alpha/rank scale as the other adapters."""
    return n.conv_rank * n.alpha / n.rank


def build_optimizer(trained: list[torch.nn.Module], t: TrainSection) -> torch.optim.Optimizer:
    """One parameter group for the UNet's adapters, one per text encoder (its own LR)."""
    groups = [{"params": [p for p in trained[0].parameters() if p.requires_grad], "lr": t.lr}]
    for te in trained[1:]:
        groups.append({"params": [p for p in te.parameters() if p.requires_grad],
                       "lr": t.text_encoder_lr})
    if t.optimizer == "adamw8bit":
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(groups, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "prodigy":
        import prodigyopt

        return prodigyopt.Prodigy(groups, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
