"""The LoRA training loop on diffusers + peft + accelerate, for every family in :mod:`.families`.

One code path runs on a CPU, one GPU or several (``accelerate launch``). Phases, progress,
checkpoints and samples are reported as events in the job directory. Every random draw
comes from a generator seeded by (seed, what, micro-batch), so a run resumed from a checkpoint
ends with the same weights as one never interrupted. Checkpoints are :mod:`.trainer_checkpoints`,
samples and exports :mod:`.outputs`, validation :mod:`.validation`.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..calc import plan_steps
from ..errors import LoraLabError
from ..jobdir import JobRecord
from ..workspace import Workspace
from . import checkpoints
from .adapters import add_adapters, build_optimizer, merge_training_adapter
from .base_model import BaseModel, check_buckets, detect_family, load_base_model
from .config import TrainConfig, check_package
from .data import (
    BatchPlan,
    CaptionRules,
    SourceCaptions,
    TrainImage,
    assign_buckets,
    gather_images,
    stable_seed,
)
from .families import Batch, Conditioning
from .gpu import GpuMeter, device_line, pick_device
from .latents import LatentEncoder
from .outputs import TrainerOutputs, TrainResult
from .preflight import check_captions
from .quantize import quantize_frozen
from .text_cache import TextCache, free_text_encoders
from .tracking import RunTracker
from .trainer_checkpoints import TrainerCheckpoints
from .validation import TrainerValidation


class Trainer(TrainerOutputs, TrainerCheckpoints, TrainerValidation):
    """One training run into a job directory; :meth:`run` does it all."""

    keep_text_encoders = False  # True: loaded after caching, to encode any prompt (TrainLab)

    def __init__(self, config: TrainConfig, job: JobRecord, workspace: Workspace | None = None,
                 on_event: Callable[[dict[str, Any]], None] | None = None,
                 stop: threading.Event | None = None):
        self.ws = workspace or Workspace()
        self.job = job
        self.on_event = on_event or (lambda e: None)
        self.stop_event = stop  # set: stop as Ctrl-C would (a Ray Train worker gets no signal)
        self.phase("validating")
        self.family = detect_family(config.model.base) if config.model.family == "auto" \
            else config.model.family
        self.cfg = config.resolved(self.family)
        self._check_environment()
        from accelerate import Accelerator

        self.acc = Accelerator(cpu=not self.on_gpu, mixed_precision=self.cfg.train.mixed_precision)
        self.main = self.acc.is_main_process
        self.emit(device_line(self.cfg.train.device, self.acc.device, self.cpu_because))
        self.gpu_meter = GpuMeter(self.acc.device)

    # -- reporting -------------------------------------------------------------------------------
    def emit(self, event: dict[str, Any]) -> None:
        if self.main:
            self.job.event(event)
            self.on_event(event)

    def phase(self, name: str, **fields: Any) -> None:
        """Enter a phase: in status.json for whoever polls, and as an event for the record."""
        if getattr(self, "main", os.environ.get("RANK", "0") == "0"):
            self.job.set_status("running", phase=name, **fields)
            self.job.event({"type": "phase", "phase": name})
            self.on_event({"type": "phase", "phase": name})

    # -- setup -----------------------------------------------------------------------------------
    def _check_environment(self) -> None:
        t = self.cfg.train
        check_package("train.optimizer", t.optimizer)
        check_package("model.quantize", self.cfg.model.quantize)
        # checked before the job existed too; again here, for a GPU gone since
        self.on_gpu, self.cpu_because = pick_device(t.device)
        if t.mixed_precision == "fp16" and not self.on_gpu:
            raise LoraLabError("train.mixed_precision: fp16 needs a CUDA GPU; use no or bf16")
        if self.cfg.model.quantize == "fp8" and not (self.on_gpu and _has_fp8()):
            raise LoraLabError("model.quantize: fp8 needs a GPU with fp8 support (compute capability "
                               "8.9 or later: Ada, Hopper, Blackwell); use int8, which runs anywhere")

    def load_data(self) -> None:
        self.phase("loading dataset")
        d = self.cfg.dataset
        images = gather_images(d.source, d.repeats, d.caption_extension, self.ws)
        self.images: list[TrainImage] = self._hold_out(images)
        self.buckets = assign_buckets(self.images, d.resolution, d.min_bucket, d.max_bucket,
                                      d.bucket_step)
        self.rules = CaptionRules(d.trigger, d.shuffle_tags, d.keep_tokens, d.caption_dropout,
                                  d.tag_dropout, d.flip)
        # checked before the job existed too; again here, for captions removed since
        check_captions(SourceCaptions.of_images(d.source, images), d.trigger)
        t = self.cfg.train
        world = self.acc.num_processes
        self.plan = BatchPlan(self.images, self.buckets, t.batch_size, t.seed, world)
        steps = plan_steps(list(self.plan.bucket_samples.values()), t.batch_size, t.grad_accum,
                           world, t.epochs, t.max_steps)  # the count `lora-lab calc` shows
        self.steps_per_epoch, self.total = steps.steps_per_epoch, steps.total_steps
        self.emit({"type": "log", "level": "info", "message":
                   f"{len(self.images)} images in {len(set(self.buckets))} buckets, "
                   f"{self.plan.batches_per_epoch} batches an epoch, {self.total} steps"
                   + (f", on {world} processes" if world > 1 else "")})
        if self.cfg.network.dora and self.cfg.save.format == "kohya":
            self.emit({"type": "log", "level": "warning", "message":
                       "DoRA in a kohya file: ComfyUI and Forge apply it as trained; A1111 normalises "
                       "input channels and diffusers drops the magnitudes, so they differ (save.format = "
                       "\"diffusers\" reloads exactly in diffusers)"})

    def load_model(self) -> None:
        self.phase("preparing model")
        m = self.cfg.model
        self.base: BaseModel = load_base_model(m.base, self.family, m.vae, m.config)
        self.spec = self.base.spec
        check_buckets(self.base, self.cfg.dataset)
        self.objective = self.spec.objective(self.base.pipeline, self.cfg.train, m.prediction)
        if m.adapter:
            merge_training_adapter(self.base, m.adapter)
        self.trained = trained = add_adapters(self.base, self.cfg.network, self.cfg.train.seed)
        if self.cfg.train.gradient_checkpointing:
            self.base.denoiser.enable_gradient_checkpointing()
            for te in trained[1:]:
                te.gradient_checkpointing_enable()
        self._place_modules()
        if m.quantize != "none":
            quantize_frozen(self.base.denoiser, m.quantize)
        self.dtype = self.base.denoiser.dtype  # read once: diffusers walks every module to answer
        self.optimizer = build_optimizer(trained, self.cfg.train)
        from diffusers.optimization import get_scheduler

        t = self.cfg.train
        self.lr_scheduler = get_scheduler(t.scheduler, self.optimizer, num_warmup_steps=t.warmup_steps,
                                          num_training_steps=self.total)
        # The LR scheduler is not prepared: a prepared one steps once per rank per update.
        *self.models, self.optimizer = self.acc.prepare(*trained, self.optimizer)

    def _place_modules(self) -> None:
        device = self.acc.device
        if device.type != "cuda":
            return  # loaded on the CPU, in fp32
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.cfg.train.mixed_precision)
        for module in (self.base.denoiser, *self.base.text_encoders):
            module.to(device, dtype=dtype)
        self.base.vae.to(device)  # fp32: the SDXL VAE overflows in fp16
        if dtype is not None:
            for module in self.trained:  # frozen weights in half precision, adapters in fp32
                for p in module.parameters():
                    if p.requires_grad:
                        p.data = p.data.float()

    # -- caching ---------------------------------------------------------------------------------
    def cache(self) -> None:
        self.phase("caching")
        d = self.cfg.dataset
        cache_dir = self.ws.root / "cache" / "latents" if d.cache_latents else None
        self.latents = LatentEncoder(self.base.vae, cache_dir)
        if cache_dir is not None:
            flips = (False, True) if d.flip else (False,)
            rank, world = self.acc.process_index, self.acc.num_processes
            try:
                for i in range(rank, len(self.images), world):
                    for flip in flips:
                        self.latents.params(self.images[i], self.buckets[i], flip)
            except OSError as e:
                raise LoraLabError(f"could not write the latent cache in {cache_dir} ({e}); free "
                                   "some space, or set dataset.cache_latents = false") from None
            self.acc.wait_for_everyone()
        if self.validating:
            self._cache_validation()
        self._cache_text()

    def _cache_text(self) -> None:
        """Captions that never change are encoded once, to disk, with the sample prompts; the
        text encoders are then freed (a T5-XXL or a Qwen VLM is 8-16 GB)."""
        self.text_cache: TextCache | None = None
        self.prompts: list[dict[str, Any]] | None = None  # the samples' encoded prompt inputs
        self.val_prompts: list[dict[str, Any]] | None = None  # and validation.prompts
        why_not = ("network.train_text_encoder is on" if self.cfg.network.train_text_encoder else
                   "captions change every step (tag shuffle or dropout)" if self.rules.randomised else
                   "dataset.cache_text is off" if not self.cfg.dataset.cache_text else "")
        if why_not:
            self.emit({"type": "log", "level": "info",
                       "message": f"the text encoders stay loaded and encode every step: {why_not}"})
            return
        self.text_cache = TextCache(self.spec, self.base.pipeline, self.acc.device,
                                    self.ws.root / "cache" / "text")
        captions = sorted({self.rules.caption(img.caption, None) for img in self.images}
                          | set(self._validation_captions()))
        rank, world = self.acc.process_index, self.acc.num_processes
        try:
            self.text_cache.fill(captions[rank::world])
            self.acc.wait_for_everyone()
            # the other ranks' share, where this rank's node does not share their cache folder
            self.text_cache.fill(self.text_cache.missing(captions))
        except OSError as e:
            raise LoraLabError(f"could not write the text cache in {self.text_cache.cache_dir} ({e}); "
                               "free some space, or set dataset.cache_text = false") from None
        s = self.cfg.sample
        with torch.no_grad():
            self.prompts, self.val_prompts = (
                [self.spec.prompt_inputs(self.base.pipeline, p, s.negative, s.guidance, self.acc.device)
                 for p in prompts] for prompts in (s.prompts, self.cfg.validation.prompts))
        if not self.keep_text_encoders:
            free_text_encoders(self.spec, self.base.pipeline)

    # -- the step --------------------------------------------------------------------------------
    def _encode_text(self, captions: list[str]) -> Conditioning:
        if self.text_cache is None:
            return self.spec.encode(self.base.pipeline, captions, self.acc.device)
        return self.spec.collate([self.text_cache.get(c) for c in captions])

    def micro_batch(self, m: int) -> Batch:
        """Micro-batch ``m`` (counted over all ranks from the start) as the loss takes it: what
        the training loop and :class:`.lab.TrainLab` both build."""
        samples = self.plan.samples(m, self.rules)
        images = [self.images[s.image] for s in samples]
        bucket = self.buckets[samples[0].image]
        g = torch.Generator().manual_seed(stable_seed(self.cfg.train.seed, "noise", m))
        flips, captions = [s.flip for s in samples], [s.caption for s in samples]
        params = self.latents.batch(images, bucket, flips)
        return Batch(params, self._encode_text(captions), images, bucket, g, flips=flips,
                     captions=captions)

    def micro_batch_loss(self, m: int) -> torch.Tensor:
        """The loss of micro-batch ``m``."""
        return self.objective.loss(self.models[0], self.micro_batch(m), self.acc.device, self.dtype)

    # -- the loop --------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> TrainResult:
        saved = self._read_checkpoint() if resume else None  # a bad one fails before the work
        if not self.main:  # the main process records the run for the trackers
            return self._train(saved)
        shown = self.on_event
        with RunTracker(self.cfg, self.job, self.ws, self.lora_name, saved[1]["step"] if saved else 0) as tracker:
            self.on_event = tracker.relay(shown)  # every event also goes to TensorBoard, MLflow, W&B
            try:
                return self._train(saved)
            finally:
                self.on_event = shown

    def prepare(self, saved: tuple[Path, dict[str, Any], dict[str, Any]] | None = None) -> int:
        """Data, model and caches ready to train (a checkpoint's state applied); the step to
        train next (what the job and :class:`.lab.TrainLab` both start with)."""
        self.load_data()
        self.load_model()
        self.cache()
        return self._apply_checkpoint(*saved) if saved else 0

    def _train(self, saved: tuple[Path, dict[str, Any], dict[str, Any]] | None) -> TrainResult:
        step = self.prepare(saved)
        self.phase("training", total=self.total)
        started, first_step, loss = time.monotonic(), step, float("nan")
        self._status_time = 0.0
        for model in self.models:
            model.train()
        with _StopOnSigint(self.stop_event) as stop:
            while step < self.total:
                loss, grad_norm, stopping = self._update(step, stop.requested)
                step += 1
                self._progress(step, loss, grad_norm, started, first_step)
                self._after_step(step, stopping)
        return self._export(step, loss, time.monotonic() - started)

    def _update(self, step: int, stop_requested: bool) -> tuple[float, float, bool]:
        """One optimizer step; (its loss, the gradients' norm before clipping, whether any rank
        was asked to stop)."""
        t = self.cfg.train
        world, rank = self.acc.num_processes, self.acc.process_index
        total = torch.zeros((), device=self.acc.device)
        for a in range(t.grad_accum):
            with contextlib.ExitStack() as unsynced:
                if a < t.grad_accum - 1:  # ranks exchange gradients once, on the last micro-batch
                    for model in self.models:
                        unsynced.enter_context(self.acc.no_sync(model))
                micro = self.micro_batch_loss((step * t.grad_accum + a) * world + rank) / t.grad_accum
                self.acc.backward(micro)
            total += micro.detach()
        # one all-reduce carries the loss and every rank's Ctrl-C, so all ranks stop together
        shared = self.acc.reduce(torch.stack([total, torch.tensor(float(stop_requested),
                                                                  device=total.device)]), "sum")
        loss = shared[0].item() / world
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            done = checkpoints.complete(self.job.path / "checkpoints")  # read only: any rank
            kept = f"the last good checkpoint is {done[-1].name}" if done else "no checkpoint was saved"
            raise LoraLabError(f"the loss became {loss} at step {step + 1}, so training stopped "
                               f"before that update; {kept}. Lower train.lr, or check the base "
                               "model and mixed precision")
        # the norm is wanted unclipped too (the trackers plot it): an infinite limit clips nothing
        grad_norm = self.acc.clip_grad_norm_(self._trainable(), t.max_grad_norm or math.inf).item()
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm, shared[1].item() > 0

    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _progress(self, step: int, loss: float, grad_norm: float, started: float, first_step: int) -> None:
        now = time.monotonic()
        rate = (step - first_step) / max(now - started, 1e-9)
        if self.main and (now - self._status_time > 1 or step == self.total):
            self._status_time = now  # status.json at most once a second; events every step
            self.job.set_status("running", phase="training", progress=round(step / self.total, 4))
        self.emit({"type": "progress", "step": step, "total": self.total, "loss": round(loss, 6),
                   "lr": self.lr_scheduler.get_last_lr()[0], "it_s": round(rate, 3),
                   # fp16 overflows to an infinite norm (that update is skipped); JSON has no inf
                   "grad_norm": round(grad_norm, 6) if math.isfinite(grad_norm) else None,
                   "eta_s": round((self.total - step) / rate, 1) if rate else None,
                   "epoch": math.ceil(step / self.steps_per_epoch), **self.gpu_meter.fields()})

    def _after_step(self, step: int, stopping: bool = False) -> None:
        """The step's validation, LoRA save and checkpoint when due, then its samples; when
        ``stopping``, what was due, a checkpoint, and the interrupt (a resume repeats none)."""
        s, every = self.cfg.sample, self.cfg.save.every_n_steps
        # validation before the checkpoint: it records the best, and a resume repeats no validation
        best = self._validate(step) if self._validation_due(step) else False
        due = step < self.total and (best or (every and step % every == 0))
        if due:
            lora = self._save_step_lora(step)  # first: a resume from this checkpoint never skips it
            if best and lora is not None:
                self.job.set_status("running", best_lora=str(lora))
        if due or stopping:
            self._checkpoint(step)
        if stopping:
            raise KeyboardInterrupt(f"interrupted at step {step}; resume to continue")
        if s.every_n_steps and step % s.every_n_steps == 0:
            self._samples(step)

def _has_fp8() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


class _StopOnSigint:
    """Ctrl-C (or ``also`` set) sets a flag the loop reads between steps, so a checkpoint is
    never taken mid-update; a second Ctrl-C interrupts at once."""

    def __init__(self, also: threading.Event | None = None):
        self.also = also

    @property
    def requested(self) -> bool:
        return self._requested or (self.also is not None and self.also.is_set())

    def __enter__(self) -> _StopOnSigint:
        self._requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self._requested:
            raise KeyboardInterrupt
        self._requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
