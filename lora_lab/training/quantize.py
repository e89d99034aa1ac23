"""A frozen base stored in 8 bits (torchao weight-only quantization), so a 24 GB card holds
Flux- and Z-Image-sized transformers; the LoRA layers around it train in full precision."""
from __future__ import annotations

import torch

from ..errors import LoraLabError


def quantize_frozen(model: torch.nn.Module, mode: str) -> None:
    """Store ``model``'s frozen linear weights as ``mode`` ("int8" or "fp8"), in place. Call it
    after the LoRA layers are in (their own linears train, so they stay as they are) and after
    the model is on its device and in its dtype."""
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    config = {"int8": Int8WeightOnlyConfig, "fp8": Float8WeightOnlyConfig}[mode]()
    device = next(model.parameters()).device
    try:
        quantize_(model, config, filter_fn=_frozen_linear)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # hand back the full-precision copies at once
    except (RuntimeError, NotImplementedError, AssertionError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LoraLabError(f"model.quantize: {mode} is not available on this {device.type} device "
                           f"with the installed torchao ({first}); try int8, or none") from None


def _frozen_linear(module: torch.nn.Module, _name: str) -> bool:
    return isinstance(module, torch.nn.Linear) and not module.weight.requires_grad
