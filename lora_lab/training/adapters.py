"""What is trained: LoRA adapters on the denoiser (and text encoders), and the optimizer over them;
and the training adapter some distilled models are trained through."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import LoraLabError
from .base_model import BaseModel
from .config import NetworkSection, TrainSection


def add_adapters(base: BaseModel, network: NetworkSection, seed: int) -> list[torch.nn.Module]:
    """Freeze the base model, add the adapters; the modules that train, the denoiser first."""
    spec = base.spec
    for module in (base.denoiser, base.vae, *base.text_encoders):
        module.requires_grad_(False)
    targets = "attn" if network.targets == "attn" else "attn_mlp"
    torch.manual_seed(seed)  # the adapters' initial weights
    conv = spec.conv_targets if network.targets == "locon" else []
    base.denoiser.add_adapter(_lora_config(network, spec.lora_targets(base.denoiser, targets), conv,
                                           spec.untrained_modules(base.denoiser)))
    trained = [base.denoiser]
    if network.train_text_encoder:
        for te in base.text_encoders:
            inject_lora(te, _lora_config(network, spec.text_encoder_targets[targets]))
            trained.append(te)
    return trained


TRAINING_ADAPTER = "training_adapter"


def merge_training_adapter(base: BaseModel, path: str) -> None:
    """ai-toolkit's recipe for a distilled model (Z-Image Turbo): a LoRA that undoes the
    distillation is merged into the base, so a LoRA trains on an undistilled model and does not
    break the distillation; :func:`without_training_adapter` takes it out for the samples."""
    _load_adapter(base, path)
    base.pipeline.fuse_lora(components=[base.spec.denoiser], adapter_names=[TRAINING_ADAPTER])
    base.pipeline.unload_lora_weights()  # the merged weights stay


@contextlib.contextmanager
def without_training_adapter(base: BaseModel, path: str) -> Iterator[None]:
    """The denoiser as plain Turbo plus the LoRA being trained: the training adapter, merged
    in, is applied again at -1 for as long as the block runs."""
    _load_adapter(base, path)
    denoiser = base.denoiser
    try:
        denoiser.set_adapters(["default", TRAINING_ADAPTER], [1.0, -1.0])
        yield
    finally:
        denoiser.delete_adapters(TRAINING_ADAPTER)
        denoiser.set_adapters(["default"], [1.0])


def _load_adapter(base: BaseModel, path: str) -> None:
    if not Path(path).expanduser().is_file():
        raise LoraLabError(f"model.adapter: {path} is not a file (a training adapter is a LoRA "
                           ".safetensors file)")
    with torch.random.fork_rng():  # peft draws initial weights: the run's RNG stays as it was
        try:
            base.pipeline.load_lora_weights(str(Path(path).expanduser()), adapter_name=TRAINING_ADAPTER)
        except (ValueError, KeyError, RuntimeError, OSError) as e:
            raise LoraLabError(f"model.adapter: {path} does not load into this "
                               f"{base.spec.title} model ({str(e).splitlines()[0]})") from None
    if TRAINING_ADAPTER not in getattr(base.denoiser, "peft_config", {}):
        raise LoraLabError(f"model.adapter: {path} adapts nothing in this {base.spec.title} model "
                           "(a LoRA of another family?)")


def inject_lora(model: torch.nn.Module, config) -> None:
    """Add a LoRA adapter with peft itself, as diffusers does for the UNet: transformers'
    ``add_adapter`` gates on peft versions, so a transformers release could break training."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, model, adapter_name="default")
    model.peft_config = {"default": config}  # where the LoRA writers read rank and alpha


def _lora_config(n: NetworkSection, targets: list[str], conv: list[str] | None = None,
                 exclude: list[str] | None = None):
    """``conv``: LoCon's convolution targets, at network.conv_rank; ``exclude``: full module
    names left out."""
    from peft import LoraConfig

    ranks = {name: n.conv_rank for name in conv or []}
    return LoraConfig(r=n.rank, lora_alpha=n.alpha, lora_dropout=n.dropout, use_dora=n.dora,
                      target_modules=targets + list(conv or []), rank_pattern=ranks,
                      alpha_pattern={k: conv_alpha(n) for k in ranks}, exclude_modules=exclude or None)


def conv_alpha(n: NetworkSection) -> float:
    """The convolutions' alpha: the same alpha/rank scale as the other adapters."""
    return n.conv_rank * n.alpha / n.rank


def build_optimizer(trained: list[torch.nn.Module], t: TrainSection) -> torch.optim.Optimizer:
    """One parameter group for the denoiser's adapters, one per text encoder (its own LR)."""
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
