"""Validation during training: held-out images scored with the family's own loss, at noise and
timesteps fixed by validation.seed, and fixed-seed images of validation.prompts.

The noise comes from generators of its own, seeded by (validation.seed, image, draw), and the
models run in eval mode without gradients, so a validation draws nothing from the training's
random streams: a run validated gives the same LoRA as one not validated, and the same image
scores the same at every validation, in every run and after a resume. Each validation is a
``validation`` event::

    {"type": "validation", "step": 200, "loss": 0.1234, "best": true, "images": 2,
     "samples": ["validation/step-000200-0.png"], "prompts": ["sks, a red circle"]}

and ``val/loss`` in the trackers. The best step (the lowest loss) gets a LoRA file and a
checkpoint that ``save.keep_last`` does not delete; status.json names it (best_step,
best_val_loss, best_lora).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

from ..errors import LoraLabError
from .adapters import without_training_adapter
from .data import CaptionRules, assign_buckets, gather_images, hold_out, stable_seed
from .families import Batch
from .train_image import TrainImage

FOLDER = "validation"  # in the job folder: the validation images


class TrainerValidation:
    """The Trainer's validation (a mixin: it reads the Trainer's state)."""

    best_step: int | None = None
    best_loss: float = math.inf

    def _hold_out(self, images: list[TrainImage]) -> list[TrainImage]:
        """Set the validation images aside; return the images to train on."""
        v, d = self.cfg.validation, self.cfg.dataset
        self.held: list[TrainImage] = []
        if v.source:
            self.held = gather_images(v.source, 1, d.caption_extension, self.ws)
        elif v.split or v.images:
            images, self.held = hold_out(images, v.split, v.images)
            if not images:
                key = "validation.images" if v.images else "validation.split"
                raise LoraLabError(f"{key}: it holds out all {len(self.held)} images of "
                                   f"{d.source}, which leaves no training images; hold out fewer")
        self.held_buckets = assign_buckets(self.held, d.resolution, d.min_bucket, d.max_bucket,
                                           d.bucket_step)
        if self.held:
            self.emit({"type": "log", "level": "info", "message":
                       f"{len(self.held)} images held out for validation every "
                       f"{v.every_n_steps} steps: {', '.join(i.path.name for i in self.held[:5])}"
                       + (", ..." if len(self.held) > 5 else "")})
        return images

    @property
    def validating(self) -> bool:
        return bool(self.held)

    def _validation_captions(self) -> list[str]:
        """The held-out images' captions as training would see them, without its random
        changes: the trigger word put first, no tag shuffle or dropout."""
        fixed = CaptionRules(self.cfg.dataset.trigger)
        return [fixed.caption(img.caption, None) for img in self.held]

    def _cache_validation(self) -> None:
        """The held-out images' latents, once: kept in memory (a few), never augmented."""
        self.held_params = [self.latents.params(img, bucket, False)
                            for img, bucket in zip(self.held, self.held_buckets)]

    def _validation_due(self, step: int) -> bool:
        return self.validating and (step % self.cfg.validation.every_n_steps == 0 or step == self.total)

    def _validate(self, step: int) -> bool:
        """Score the held-out images and render the validation prompts; whether it is a new best."""
        if self.main:
            self.phase("evaluating")  # "validating" is the config check that starts a run
        loss = self._validation_loss()
        best = loss < self.best_loss
        if best:
            self.best_step, self.best_loss = step, loss
        samples = self._validation_samples(step)
        if self.main:
            self.job.set_status("running", best_step=self.best_step, best_val_loss=round(self.best_loss, 6))
            self.emit({"type": "validation", "step": step, "loss": round(loss, 6), "best": best,
                       "images": len(self.held), "samples": samples,
                       "prompts": list(self.cfg.validation.prompts)})
            self.phase("training", total=self.total)
        return best

    def _validation_loss(self) -> float:
        """The mean loss over the held-out images and validation.draws fixed draws each; the
        ranks share the images and add up their parts."""
        v, size = self.cfg.validation, self._validation_batch()
        rank, world = self.acc.process_index, self.acc.num_processes
        total = torch.zeros((), device=self.acc.device)
        captions = self._validation_captions()
        with self._eval_mode(), torch.no_grad():
            for i in range(rank, len(self.held), world):
                image, bucket, params = self.held[i], self.held_buckets[i], self.held_params[i]
                for first in range(0, v.draws, size):
                    n = min(size, v.draws - first)
                    g = torch.Generator().manual_seed(stable_seed(v.seed, "validation", image.sha256, first))
                    batch = Batch(params.unsqueeze(0).repeat(n, *[1] * params.ndim),
                                  self._encode_text([captions[i]] * n), [image] * n, bucket, g)
                    loss = self.objective.loss(self.models[0], batch, self.acc.device, self.dtype)
                    total += loss.detach() * n
        return self.acc.reduce(total, "sum").item() / (len(self.held) * v.draws)

    def _validation_batch(self) -> int:
        """Draws per forward pass, within a training step's memory: a pass without gradients
        keeps a layer's activations at a time, where a training step keeps every layer's for its
        backward pass, so 4 times its batch fit; with gradient checkpointing a step keeps one
        block's, so a pass takes the training batch only."""
        t = self.cfg.train
        return t.batch_size if t.gradient_checkpointing else 4 * t.batch_size

    def _validation_samples(self, step: int) -> list[str]:
        """validation.prompts rendered with validation.seed; paths relative to the job folder."""
        v = self.cfg.validation
        if not v.prompts:
            return []
        paths = []
        if self.main:
            folder = self.job.path / FOLDER
            folder.mkdir(exist_ok=True)
            adapter = self.cfg.model.adapter
            with self._eval_mode(), (without_training_adapter(self.base, adapter) if adapter
                                     else contextlib.nullcontext()):
                paths = self._render(step, folder, v.prompts, self.val_prompts, v.seed)
        self.acc.wait_for_everyone()
        return [str(p.relative_to(self.job.path)) for p in paths]

    @contextlib.contextmanager
    def _eval_mode(self):
        """The trained models in eval mode (no LoRA dropout: no draw from the global RNG)."""
        for model in self.models:
            model.eval()
        try:
            yield
        finally:
            for model in self.models:
                model.train()

    def _validation_state(self) -> dict[str, Any]:
        """What a checkpoint keeps of validation, so a resumed run knows its best."""
        return {"best_step": self.best_step, "best_loss": None if self.best_step is None else self.best_loss}

    def _restore_validation(self, state: dict[str, Any] | None) -> None:
        if state and state.get("best_step") is not None:
            self.best_step, self.best_loss = state["best_step"], state["best_loss"]
