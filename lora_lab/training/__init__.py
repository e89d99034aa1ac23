"""Training: the typed config, the trainer and what it writes; :class:`TrainLab`, a run held in a
notebook's kernel."""
from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "TrainLab":  # imported when asked: `import lora_lab.training` stays light
        from .lab import TrainLab

        return TrainLab
    raise AttributeError(name)
