"""A training run held in a notebook's kernel, to look inside and step by hand.

``TrainLab(config)`` runs the check ``lora-lab train`` runs (a config it refuses is refused with
the same message, and leaves no job), then prepares the run with the background job's own
:class:`.trainer.Trainer`: every method below calls the trainer's methods, so what the lab shows
and trains is what the job trains.

- :meth:`TrainLab.batch` — micro-batch ``n`` as the trainer builds it (images, flips, captions,
  token counts, latents decoded back);
- :meth:`TrainLab.step` — ``k`` optimizer steps (loss, gradient norm, lr), recorded as a job's;
- :meth:`TrainLab.loss_by_timestep` — the loss over timestep buckets on fixed noise;
- :meth:`TrainLab.sample` — images of any prompt now;
- :meth:`TrainLab.save` — a LoRA file, or a checkpoint a background job resumes from.

The job's record: a real train job folder. While a lab holds it, it is ``running`` (its pid the
kernel's, its heartbeat kept by a thread, phase "in a notebook" between calls, ``kernel``: its pid),
so the jobs list and the sidebar show it live and ``lora-lab jobs resume`` refuses it as still
running; a cancel from there asks the lab to stop (the kernel is never signalled). :meth:`close`
(or the kernel's end) ends it: ``succeeded`` when the lab trained every step and saved its final
LoRA, else ``cancelled``, which ``lora-lab jobs resume ID`` or ``lora-lab train --resume ID``
continues from the last checkpoint (:meth:`save` with ``checkpoint=True`` writes one). A kernel
killed outright stops the heartbeat: the job then reads ``interrupted``, resumable as well.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import torch

from ..errors import LoraLabError
from ..jobdir import JobRecord
from ..workspace import Workspace
from .config import TrainConfig
from .data import CaptionRules, stable_seed
from .families import Batch
from .lab_views import BatchItem, MicroBatch, Samples, StepLog, TimestepLoss, TokenCount, to_image
from .latents import decode_params, load_pixels
from .trainer_checkpoints import _rng_state, _set_rng_state

IDLE = "in a notebook"  # the job's phase between the lab's calls


class TrainLab:
    """A training run in this kernel (see the module's notes). ``config``: a TrainConfig, its
    data as a dict, or a TOML file; relative paths in it are taken from the current folder, as
    ``lora-lab train`` takes them."""

    def __init__(self, config: TrainConfig | dict[str, Any] | str | os.PathLike,
                 workspace: Workspace | str | os.PathLike | None = None):
        from .job import train_params
        from .tracking import RunTracker
        from .trainer import Trainer

        self.ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
        # the check `lora-lab train` makes, before any job exists
        params = train_params({"config": _config_data(config), "gpus": 1}, self.ws, Path.cwd())
        self.job = JobRecord.create("train", params, self.ws)
        self.job.set_status("running", phase="validating", started_at=time.time(), kernel=os.getpid())
        self._hold = contextlib.ExitStack()  # the heartbeat and the trackers, while the lab is open
        self._end: dict[str, Any] = {}  # the final TrainResult, once saved
        self._closer = weakref.finalize(self, _release, self.job, self._hold, self._end)
        try:
            self._hold.enter_context(self.job.heartbeat())
            trainer = Trainer(TrainConfig.from_dict(params["config"]), self.job, self.ws)
            trainer.keep_text_encoders = True  # sample() encodes any prompt
            tracker = self._hold.enter_context(RunTracker(trainer.cfg, self.job, self.ws,
                                                          trainer.lora_name, 0))
            trainer.on_event = tracker.relay(trainer.on_event)
            trainer.prepare()
        except BaseException as e:
            self._closer.detach()
            self._hold.__exit__(*sys.exc_info())
            self.job.record_end(e)
            raise
        self.trainer = trainer
        self.steps = 0  # optimizer steps trained
        self.loss = float("nan")  # of the last step
        self._started = time.monotonic()
        self._updates = 0  # the optimizer's own count (a hook), to settle an interrupted step
        self._in_update = False
        optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
        optimizer.register_step_pre_hook(lambda *_: setattr(self, "_in_update", True))
        optimizer.register_step_post_hook(self._updated)
        for model in trainer.models:
            model.train()
        trainer._status_time = 0.0
        self._idle()

    # -- what the run is -------------------------------------------------------------------------
    @property
    def total(self) -> int:
        """The optimizer steps of the run, as ``lora-lab calc`` counts them."""
        return self.trainer.total

    @property
    def micro_batches(self) -> int:
        """Micro-batches of the whole run: steps × train.grad_accum × processes."""
        t = self.trainer
        return t.total * t.cfg.train.grad_accum * t.acc.num_processes

    # -- batch ---------------------------------------------------------------------------------
    def batch(self, n: int) -> MicroBatch:
        """Micro-batch ``n`` (0-based, counted as the trainer counts them) exactly as the job
        builds it at its step: its :class:`.families.Batch` comes from the trainer's own
        ``micro_batch``, seeded per draw, so it is the same whatever was trained before."""
        self._check_open()
        t, count = self.trainer, self.micro_batches
        if not isinstance(n, int) or not 0 <= n < count:
            where = "is past the end of the run" if isinstance(n, int) and n > 0 else \
                "is not a micro-batch number"
            raise LoraLabError(f"micro-batch {n!r} {where}: it has {count} micro-batches "
                               f"(0 to {count - 1}: {t.total} steps of {count // t.total} micro-batches)")
        with _eval(t.models[1:]), torch.no_grad():  # a trained text encoder's dropout draws nothing
            batch = t.micro_batch(n)
            decoded = decode_params(t.base.vae, batch.params, t.latents.frames)
        limits = t.spec.token_limits(t.base.pipeline)
        items = [BatchItem(img.path, flip, caption, _token_counts(limits, caption),
                           to_image(load_pixels(img, batch.bucket, flip)), to_image(pixels))
                 for img, flip, caption, pixels in zip(batch.images, batch.flips, batch.captions, decoded)]
        return MicroBatch(n, n // (count // t.total), batch.bucket, items, batch)

    # -- step ----------------------------------------------------------------------------------
    def step(self, k: int = 1) -> StepLog:
        """Train ``k`` optimizer steps with the job's update, reporting each as the job does
        (events, status, trackers; checkpoints, samples and validation when the config says).
        Ctrl-C (interrupting the kernel) ends the call after the step in progress; a second
        Ctrl-C stops at once, the interrupted step completed if its update was applied, else
        not counted (its gradients cleared). Either way the lab trains on afterwards."""
        self._check_open()
        left = self.total - self.steps
        if not isinstance(k, int) or k < 1:
            raise LoraLabError(f"step(k): k is a number of steps, 1 or more, not {k!r}")
        if k > left:
            raise LoraLabError(f"step({k}): the run has {left} of its {self.total} steps left"
                               + ("; save() writes its final LoRA" if not left else ""))
        t, log = self.trainer, StepLog()
        t.phase("training", total=t.total)
        started, first = time.monotonic(), self.steps
        try:
            with _DeferSigint(self) as stop:
                for _ in range(k):
                    self._rng = _rng_state()  # LoRA dropout's draws: an uncounted step gives them back
                    self.loss, grad_norm, _ = t._update(self.steps, False)
                    self.steps += 1
                    t._progress(self.steps, self.loss, grad_norm, started, first)
                    log.rows.append({"step": self.steps, "loss": self.loss, "grad_norm": grad_norm,
                                     "lr": t.lr_scheduler.get_last_lr()[0]})
                    t._after_step(self.steps)
                    if stop.requested or self.job.cancel_requested:
                        break
        except KeyboardInterrupt:  # the second Ctrl-C
            self._settle()
            log.interrupted = f"interrupted: {self.steps} of {self.total} steps trained"
        else:
            if len(log.rows) < k:
                log.interrupted = (f"stopped after step {self.steps}: " +
                                   ("cancelled" if self.job.cancel_requested else "Ctrl-C"))
        if self.job.cancel_requested:
            self.close()
        else:
            self._idle()
        return log

    def _updated(self, *_: Any) -> None:
        self._updates += 1
        self._in_update = False

    def _settle(self) -> None:
        """After a step cut short: its gradients cleared, and counted only if the optimizer
        applied its update (the LR schedule then stepped too); the models back in training mode."""
        t = self.trainer
        t.optimizer.zero_grad(set_to_none=True)
        self._in_update = False
        if self._updates > self.steps:
            if t.lr_scheduler.last_epoch < self._updates:
                t.lr_scheduler.step()
            self.steps = self._updates
        else:
            _set_rng_state(self._rng)
        for model in t.models:
            model.train()

    # -- loss by timestep ----------------------------------------------------------------------
    def loss_by_timestep(self, buckets: int = 10, images: int = 4, draws: int = 2,
                         seed: int = 0) -> TimestepLoss:
        """The family's loss over ``buckets`` equal ranges of the timesteps, on ``images``
        training images (their captions without random changes) and ``draws`` timesteps spread
        over each range. The noise comes from generators of its own, seeded by (``seed``, image,
        bucket), and the models run in eval mode without gradients, as validation does: the same
        call gives the same noise at every step, and training's random streams are untouched."""
        self._check_open()
        t = self.trainer
        count = _timestep_count(t.objective)
        if not (isinstance(buckets, int) and 1 <= buckets <= count) or images < 1 or draws < 1:
            raise LoraLabError(f"loss_by_timestep: buckets must be 1 to {count}, images and draws "
                               "1 or more")
        chosen = list(dict.fromkeys(t.images))[:images]  # an image repeated counts once
        fixed = CaptionRules(t.cfg.dataset.trigger)
        sums = [0.0] * buckets
        with t._eval_mode(), torch.no_grad():
            for img in chosen:
                bucket = t.buckets[t.images.index(img)]
                params = t.latents.params(img, bucket, False)
                params = params.unsqueeze(0).repeat(draws, *[1] * params.ndim)
                cond = t._encode_text([fixed.caption(img.caption, None)] * draws)
                for b in range(buckets):
                    lo, hi = b * count // buckets, (b + 1) * count // buckets - 1
                    g = torch.Generator().manual_seed(stable_seed(seed, "timestep loss", img.sha256, b))
                    steps = torch.linspace(lo, hi, draws + 2)[1:-1].round().long() if draws > 1 \
                        else torch.tensor([(lo + hi) // 2])
                    batch = Batch(params, cond, [img] * draws, bucket, g, timesteps=steps)
                    sums[b] += t.objective.loss(t.models[0], batch, t.acc.device, t.dtype).item()
        rows = [(b * count // buckets, (b + 1) * count // buckets - 1, s / len(chosen))
                for b, s in enumerate(sums)]
        return TimestepLoss(rows, self.steps)

    # -- sample --------------------------------------------------------------------------------
    def sample(self, prompts: str | list[str], seed: int = 0, steps: int | None = None) -> Samples:
        """Images of ``prompts`` now (one each, seed ``seed`` + its index), drawn as the job
        draws its samples (sample.width/height/guidance; ``steps`` or sample.steps), saved
        in the job's samples folder and recorded as ``sample`` events."""
        self._check_open()
        from .adapters import without_training_adapter

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise LoraLabError("sample(prompts): one prompt or a list of prompts")
        t = self.trainer
        t.phase("sampling")
        folder = self.job.path / "samples"
        folder.mkdir(exist_ok=True)
        adapter = t.cfg.model.adapter
        with t._eval_mode(), (without_training_adapter(t.base, adapter) if adapter
                              else contextlib.nullcontext()):
            paths = t._render(self.steps, folder, tuple(prompts), None, seed, steps)
        for i, (prompt, path) in enumerate(zip(prompts, paths)):
            t.emit({"type": "sample", "step": self.steps, "index": i, "prompt": prompt,
                    "path": str(path.relative_to(self.job.path))})
        self._idle()
        return Samples(self.steps, prompts, paths)

    # -- save ----------------------------------------------------------------------------------
    def save(self, checkpoint: bool = False) -> Path:
        """The LoRA as it is now, by the job's own save: ``NAME-000005.safetensors`` mid-run,
        the run's final file once every step is trained; recorded in the job's LoRAs. With
        ``checkpoint``: a checkpoint in the job folder instead, which ``lora-lab jobs resume``
        continues from (once the lab is closed). Returns the path written."""
        self._check_open()
        t = self.trainer
        if checkpoint:
            t._checkpoint(self.steps)
            from .checkpoints import latest

            path = latest(self.job.path / "checkpoints")[0]
        elif self.steps == self.total:
            result = t._export(self.steps, self.loss, time.monotonic() - self._started)
            self._end["result"] = result
            path = result.output
        else:
            path = t._save_step_lora(self.steps)
        self._idle()
        return path

    # -- the record ----------------------------------------------------------------------------
    def close(self) -> None:
        """End the job's record (see the module's notes) and stop its heartbeat; the model
        stays in memory until the lab is dropped."""
        self._closer()

    @property
    def closed(self) -> bool:
        return not self._closer.alive

    def __enter__(self) -> TrainLab:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_open(self) -> None:
        if self.job.cancel_requested and not self.closed:
            self.close()
        if self.closed:
            raise LoraLabError(f"this TrainLab is closed (job {self.job.id} is "
                               f"{self.job.status()['state']}); open a new one, or continue from "
                               f"its last checkpoint with `lora-lab jobs resume {self.job.id}`")

    def _idle(self) -> None:
        self.job.set_status("running", phase=IDLE, total=self.total,
                            progress=round(self.steps / self.total, 4))

    def _repr_html_(self) -> str:
        state = "closed" if self.closed else "open"
        return (f"<b>TrainLab</b> {state}: job <code>{self.job.id}</code>, {self.trainer.family}, "
                f"step {self.steps} of {self.total}, {self.micro_batches} micro-batches")


def _release(job: JobRecord, hold: contextlib.ExitStack, end: dict[str, Any]) -> None:
    """The lab's end (close, or the lab dropped, or the kernel's exit)."""
    from .job import record_done

    hold.close()
    if job.status()["state"] != "running":  # cancelled from outside meanwhile: recorded there
        return
    if "result" in end:
        record_done(job, end["result"])
    else:
        job.event({"type": "cancelled", "by": "TrainLab.close"})
        job.set_status("cancelled", phase=None, error=None)


def _config_data(config: Any) -> Any:
    """TrainConfig data from a TrainConfig, a dict or a TOML file (loaded as `lora-lab train`
    loads it: its errors are that command's)."""
    if isinstance(config, TrainConfig):
        return config.to_dict()
    if isinstance(config, (str, os.PathLike)):
        return TrainConfig.load(Path(config)).to_dict()
    return config


def _token_counts(limits: list[tuple[str, Any, int]], caption: str) -> list[TokenCount]:
    """The caption's tokens for each text encoder (its special tokens included; a chat template
    the family wraps it in not counted), against how many that encoder reads."""
    return [TokenCount(name, len(tokenizer(caption).input_ids), limit)
            for name, tokenizer, limit in limits]


@contextlib.contextmanager
def _eval(models: list[torch.nn.Module]):
    """``models`` in eval mode for the body (the denoiser left alone: switching its thousands of
    modules takes longer than a tiny model's batch)."""
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for model in models:
            model.train()


def _timestep_count(objective: Any) -> int:
    """The length of the objective's timestep table (its scheduler's num_train_timesteps)."""
    path = getattr(objective, "path", None)
    return path.steps if path is not None else objective.scheduler.config.num_train_timesteps


class _DeferSigint:
    """Ctrl-C during :meth:`TrainLab.step`: the first asks to stop after the step in progress;
    a second interrupts at once, except inside the optimizer's update, which is never cut in
    half (the Ctrl-C then waits for its end)."""

    def __init__(self, lab: TrainLab):
        self.lab = lab

    def __enter__(self) -> _DeferSigint:
        import signal
        import threading

        self.requested, self._previous = False, None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and not self.lab._in_update:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
