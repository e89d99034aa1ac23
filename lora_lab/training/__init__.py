"""Training: the typed config, the trainer and what it writes; :class:`TrainLab`, a run held in a
notebook's kernel."""
from __future__ import annotations

import logging
from typing import Any

# bitsandbytes, which diffusers imports to load a model, warns at its import on CPUs with
# AVX512-BF16 that an optional package (kernels) is missing: nothing a user can act on, and a
# stray line in the CLI's output and every job's log
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def __getattr__(name: str) -> Any:
    if name == "TrainLab":  # imported when asked: `import lora_lab.training` stays light
        from .lab import TrainLab

        return TrainLab
    raise AttributeError(name)
