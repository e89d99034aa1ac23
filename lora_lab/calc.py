"""Steps from samples, buckets, batch size and epochs: the question kohya users ask most.

:func:`plan_steps` is the one count: ``lora-lab calc``, the launcher's live count and the
trainer all call it, so the numbers they show agree. A batch never mixes aspect-ratio
buckets, so each bucket's last batch may be partial: 3 + 3 samples in batches of 2 are
2 + 2 = 4 batches, not ceil(6 / 2) = 3.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .errors import LoraLabError


@dataclass(frozen=True)
class StepPlan:
    bucket_samples: tuple[int, ...]  # images x repeats in each bucket
    batch_size: int
    grad_accum: int
    world: int  # data-parallel processes
    epochs: int
    max_steps: int  # 0 = from epochs
    samples_per_epoch: int
    batches_per_epoch: int  # micro-batches, over all processes (padded to a multiple of world)
    steps_per_epoch: int  # optimizer steps
    total_steps: int
    images: int | None = None  # for the explanation only
    repeats: int | None = None  # None: each kohya N_name folder sets its own
    held_out: int = 0  # images validation holds out (not in ``images``): for the explanation only

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bucket_samples"] = list(self.bucket_samples)
        return d

    def explain(self) -> str:
        counts = self.bucket_samples
        lead = ""
        if self.images is not None:
            held = f" ({self.held_out} more held out for validation)" if self.held_out else ""
            lead = f"{self.images} images{held} x " + (f"{self.repeats} repeats" if self.repeats
                                                       else "their folders' repeats") + " = "
        text = f"{lead}{self.samples_per_epoch} samples per epoch"
        raw = _batches(counts, self.batch_size)
        if len(counts) > 1:
            text += (f" in {len(counts)} buckets ({', '.join(map(str, counts))}); batches of "
                     f"{self.batch_size} never mix buckets: {raw} batches")
        else:
            text += f"; / batch {self.batch_size} = {raw} batches"
        if self.world > 1:
            padded = f", padded to {self.batches_per_epoch}" if self.batches_per_epoch != raw else ""
            text += f" over {self.world} processes{padded}"
        per_step = self.world * self.grad_accum
        if per_step > 1:
            text += f"; / {per_step} batches per step"
            text += f" ({self.grad_accum} accumulated)" if self.grad_accum > 1 else ""
        text += f" = {self.steps_per_epoch} steps per epoch"
        if self.max_steps:
            return text + (f"; max steps {self.max_steps} wins: about "
                           f"{self.max_steps / self.steps_per_epoch:.1f} epochs")
        return text + f"; x {self.epochs} epochs = {self.total_steps} steps"


def plan_steps(bucket_samples: Sequence[int], batch_size: int = 1, grad_accum: int = 1,
               world: int = 1, epochs: int = 1, max_steps: int = 0, *, images: int | None = None,
               repeats: int | None = None, held_out: int = 0) -> StepPlan:
    """Optimizer steps per epoch and in total, as the trainer runs them: each bucket's samples
    in batches of ``batch_size`` (a partial last batch is a batch), the epoch's batches padded
    to a multiple of ``world`` so every process runs as many, ``world x grad_accum`` batches per
    optimizer step. ``max_steps``, when set, is the total."""
    for name, value, low in (("batch_size", batch_size, 1), ("grad_accum", grad_accum, 1),
                             ("world", world, 1), ("epochs", epochs, 1), ("max_steps", max_steps, 0),
                             *(("bucket sample count", n, 0) for n in bucket_samples)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise LoraLabError(f"{name} must be a whole number >= {low}, got {value!r}")
    counts = tuple(bucket_samples)
    if not sum(counts):
        raise LoraLabError("no samples to train on: the dataset has no images")
    batches = math.ceil(_batches(counts, batch_size) / world) * world
    steps = math.ceil(batches / (world * grad_accum))
    return StepPlan(counts, batch_size, grad_accum, world, epochs, max_steps, sum(counts), batches,
                    steps, max_steps or epochs * steps, images, repeats, held_out)


def _batches(bucket_samples: Sequence[int], batch_size: int) -> int:
    """Batches in one epoch on one process: a bucket's last batch may be partial."""
    return sum(math.ceil(n / batch_size) for n in bucket_samples)
