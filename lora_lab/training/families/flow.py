"""What the flow-matching families share: the straight path from image to noise, with
timesteps drawn from the model's own (shifted) sigma schedule, as diffusers' training
examples for these models draw them."""
from __future__ import annotations

from typing import Any

import torch

from ...aspect_buckets import make_buckets
from ...errors import LoraLabError
from ..sections import DatasetSection


class FlowPath:
    """x_t = (1 - σ) x_0 + σ ε, with σ at a uniformly drawn index of the scheduler's
    1000-step table (its shift applied); the velocity to learn is ε - x_0."""

    def __init__(self, scheduler_config: Any):
        from diffusers import FlowMatchEulerDiscreteScheduler

        table = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
        self.timesteps, self.sigmas = table.timesteps.clone(), table.sigmas.clone()
        self.steps = table.config.num_train_timesteps

    def noised(self, latents: torch.Tensor, g: torch.Generator, index: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, the velocity target, the timesteps in 0..1000), every draw from ``g``; ``index``:
        the table's indices to use instead of drawn ones."""
        noise = torch.randn(latents.shape, generator=g)
        if index is None:
            index = (torch.rand(len(latents), generator=g) * self.steps).long()
        sigma = self.sigmas[index].view(-1, *[1] * (latents.ndim - 1))
        return (1 - sigma) * latents + sigma * noise, noise - latents, self.timesteps[index]


def check_patch_buckets(dataset: DatasetSection, multiple: int) -> None:
    """A transformer that patchifies latents takes sides that are multiples of ``multiple`` px."""
    for w, h in make_buckets(dataset.resolution, dataset.min_bucket, dataset.max_bucket,
                             dataset.bucket_step):
        if w % multiple or h % multiple:
            raise LoraLabError(f"bucket {w}x{h} does not fit this model: sides must be multiples "
                               f"of {multiple}; set dataset.bucket_step to {max(multiple, 16)} or more")
