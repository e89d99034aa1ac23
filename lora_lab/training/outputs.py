"""What a training run hands over: sample images and intermediate LoRA files along the way,
and the LoRA file at the end, under names that never replace another run's (see :mod:`.loras`)."""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import atomic
from ..errors import LoraLabError
from .adapters import without_training_adapter
from .loras import SUFFIX, base_of, lora_name, lora_path, place_lora
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
            folder = self.job.path / "samples"
            folder.mkdir(exist_ok=True)
            for model in self.models:
                model.eval()
            adapter = self.cfg.model.adapter
            with without_training_adapter(self.base, adapter) if adapter else contextlib.nullcontext():
                self._render_samples(step, folder)
            for model in self.models:
                model.train()
            self.phase("training", total=self.total)
        self.acc.wait_for_everyone()

    def _render_samples(self, step: int, folder: Path) -> None:
        s = self.cfg.sample
        for i, (prompt, path) in enumerate(zip(s.prompts, self._render(step, folder, s.prompts,
                                                                       self.prompts, s.seed))):
            self.emit({"type": "sample", "step": step, "index": i, "prompt": prompt,
                       "path": str(path.relative_to(self.job.path))})

    def _render(self, step: int, folder: Path, prompts: tuple[str, ...],
                encoded: list[dict[str, Any]] | None, seed: int, steps: int | None = None) -> list[Path]:
        """One image per prompt (``seed`` + its index) as sample.steps (or ``steps``), guidance
        and size say, into ``folder/step-000100-0.png``...; ``encoded``: the prompts' inputs,
        made before the text encoders were freed (None: they are still loaded)."""
        s, pipe, paths = self.cfg.sample, self.base.pipeline, []
        for i, prompt in enumerate(prompts):
            g = torch.Generator().manual_seed(seed + i)
            with torch.no_grad():
                inputs = encoded[i] if encoded is not None else \
                    self.spec.prompt_inputs(pipe, prompt, s.negative, s.guidance, self.acc.device)
                image = pipe(**inputs, num_inference_steps=steps or s.steps, width=s.width, height=s.height,
                             generator=g).images[0]
            paths.append(folder / f"step-{step:06d}-{i}.png")
            atomic.write_bytes(paths[-1], _png(image))
        return paths

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

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.save.output_dir).expanduser() if self.cfg.save.output_dir else self.ws.loras

    @property
    def lora_name(self) -> str:
        return lora_name(self.cfg.save.name, self.cfg.dataset.source, self.job.id)

    def _save_step_lora(self, step: int) -> Path | None:
        """An intermediate save, ``NAME-000500.safetensors`` beside where the final file goes."""
        if not self.main:
            return None
        try:
            return self._place_lora(step, final=False)
        except OSError as e:
            raise LoraLabError(f"could not save the LoRA of step {step} in {self.out_dir} ({e}); "
                               "free some space, or set save.output_dir") from None

    def _place_lora(self, step: int, final: bool) -> Path:
        """Save the LoRA as it is at ``step`` under this run's name (see :mod:`.loras`) and
        record it in the job's status, where every view of the job lists it."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        staged = self._save_lora(self.out_dir / f".{self.job.id}.part{SUFFIX}", step)
        name, named_step = self.lora_name, None if final else step
        path = place_lora(staged, self.out_dir, name, named_step, self.job.id)
        saved = [e for e in self.job.status().get("loras") or [] if e.get("step") != named_step]
        if base_of(path) != name and base_of(path) not in {base_of(Path(e["path"])) for e in saved}:
            self.emit({"type": "log", "level": "warning", "message":
                       f"{name} in {self.out_dir} is another run's LoRA name, its files kept as "
                       f"they are; this run's files are named {base_of(path)}"})
        saved.append({"path": str(path), "step": named_step})
        self.job.set_status("running", loras=sorted(saved, key=_step_order))
        self.emit({"type": "lora", "step": named_step, "path": str(path)})
        return path

    def _export(self, step: int, loss: float, seconds: float) -> TrainResult:
        self.acc.wait_for_everyone()
        output = lora_path(self.out_dir, self.lora_name, None)
        if self.main:
            self.phase("exporting")
            output = self._place_lora(step, final=True)
            if self.best_step == step:  # the last validation was the best: the final file is it
                self.job.set_status("running", best_lora=str(output))
        self.acc.wait_for_everyone()
        return TrainResult(output, step, round(seconds, 3), loss)


def _step_order(entry: dict[str, Any]) -> tuple[bool, int]:
    return entry["step"] is None, entry["step"] or 0  # by step, the final file last


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()
