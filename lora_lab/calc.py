"""Steps from images, repeats, epochs and batch size: the question kohya users ask most."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from .errors import LoraLabError


@dataclass(frozen=True)
class StepPlan:
    images: int
    repeats: int
    epochs: int
    batch_size: int
    grad_accum: int
    samples_per_epoch: int  # images x repeats: what one epoch shows the model
    steps_per_epoch: int  # optimizer steps
    total_steps: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def explain(self) -> str:
        accum = f" / {self.grad_accum} accumulation" if self.grad_accum > 1 else ""
        return (f"{self.images} images x {self.repeats} repeats = {self.samples_per_epoch} samples per "
                f"epoch; / batch {self.batch_size}{accum} = {self.steps_per_epoch} steps per epoch; "
                f"x {self.epochs} epochs = {self.total_steps} steps")


def plan_steps(images: int, repeats: int = 1, epochs: int = 1, batch_size: int = 1,
               grad_accum: int = 1) -> StepPlan:
    """Optimizer steps per epoch and in total (a partial last batch still counts as a step)."""
    for field, value, low in (("images", images, 1), ("repeats", repeats, 1), ("epochs", epochs, 1),
                              ("batch_size", batch_size, 1), ("grad_accum", grad_accum, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise LoraLabError(f"{field} must be a whole number >= {low}, got {value!r}")
    samples = images * repeats
    steps = math.ceil(math.ceil(samples / batch_size) / grad_accum)
    return StepPlan(images, repeats, epochs, batch_size, grad_accum, samples, steps, steps * epochs)
