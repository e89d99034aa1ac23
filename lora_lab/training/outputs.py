"""What a training run hands over: sample images along the way, and the LoRA file at the end,
under a name that never replaces another run's."""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import atomic
from .config import TrainConfig
from .metadata import run_facts


@dataclass
class TrainResult:
    output: Path
    steps: int
    seconds: float
    loss: float


class TrainerOutputs:
    """The Trainer's samples and exports (a mixin: it reads the Trainer's state)."""

    def _samples(self, step: int) -> None:
        if self.main:
            self.phase("sampling")
            s = self.cfg.sample
            folder = self.job.path / "samples"
            folder.mkdir(exist_ok=True)
            for model in self.models:
                model.eval()
            for i, prompt in enumerate(s.prompts):
                g = torch.Generator().manual_seed(s.seed + i)
                with torch.no_grad():
                    image = self.base.pipeline(prompt, negative_prompt=s.negative or None,
                                               num_inference_steps=s.steps, guidance_scale=s.guidance,
                                               width=s.width, height=s.height, generator=g).images[0]
                path = folder / f"step-{step:06d}-{i}.png"
                atomic.write_bytes(path, _png(image))
                self.emit({"type": "sample", "step": step, "prompt": prompt,
                           "path": str(path.relative_to(self.job.path))})
            for model in self.models:
                model.train()
            self.phase("training", total=self.total)
        self.acc.wait_for_everyone()

    def _save_lora(self, path: Path, step: int) -> Path:
        from .lora_file import save_lora, ss_metadata

        unet, *tes = [self.acc.unwrap_model(m) for m in self.models]
        tes = tes or [None] * len(self.base.text_encoders)
        # Saved in the training precision, as kohya does: fp32 files reproduce the trained
        # model exactly; mixed-precision runs give the usual fp16/bf16 files.
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.cfg.train.mixed_precision,
                                                                     torch.float32)
        return save_lora(path, unet, tes, family=self.family, fmt=self.cfg.save.format,
                         metadata=ss_metadata(self._facts(step)), dtype=dtype)

    def _facts(self, step: int) -> dict[str, Any]:
        return run_facts(self.cfg, self.family, self.images, step=step, total=self.total,
                         steps_per_epoch=self.steps_per_epoch, base_name=self.base.name,
                         started_at=self.job.status().get("started_at"), job_id=self.job.id)

    def _export(self, step: int, loss: float, seconds: float) -> TrainResult:
        self.acc.wait_for_everyone()
        out_dir = Path(self.cfg.save.output_dir).expanduser() if self.cfg.save.output_dir else self.ws.loras
        output = out_dir / f"{lora_name(self.cfg, self.job.id)}.safetensors"
        if self.main:
            self.phase("exporting")
            out_dir.mkdir(parents=True, exist_ok=True)
            staged = self._save_lora(out_dir / f".{self.job.id}.part.safetensors", step)
            wanted, output = output, place_lora(staged, output, self.job.id)
            if output != wanted:
                self.emit({"type": "log", "level": "warning", "message":
                           f"{wanted} is another run's LoRA, kept as it is; this one is {output.name}"})
        self.acc.wait_for_everyone()
        return TrainResult(output, step, round(seconds, 3), loss)


def lora_name(config: TrainConfig, job_id: str) -> str:
    """save.name, or by default the dataset's name and the job's date and time (to the second)."""
    if config.save.name:
        return config.save.name
    return f"{Path(config.dataset.source).name}-{job_id[:15]}"


def place_lora(staged: Path, wanted: Path, job_id: str) -> Path:
    """Give a finished LoRA its name, or ``NAME-2``, ``NAME-3``... when another job's file has
    that name: a LoRA never silently replaces another run's (a resumed job replaces its own)."""
    target, n = wanted, 1
    while not _written_by(target, job_id):
        try:
            os.link(staged, target)  # fails if the name is taken, even by a run finishing now
        except FileExistsError:
            n += 1
            target = wanted.with_name(f"{wanted.stem}-{n}{wanted.suffix}")
            continue
        staged.unlink()
        return target
    os.replace(staged, target)
    return target


def _written_by(path: Path, job_id: str) -> bool:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("ss_session_id") == job_id
    except (OSError, SafetensorError):
        return False


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()
