"""The GPU training benchmark's rows and measurements, and how they are reported: a markdown
table with the device in its header, or JSON."""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import torch
from random_models import MODELS

WARMUP = 2  # steps left out of s/step: the first builds the optimizer state, both grow the allocator
SMALL_SHRINK = 8  # --small trains at 1/8 of each row's resolution
# Dense bf16 peak by device name (first match wins); an unknown card gets no MFU.
PEAK_TFLOPS = (("H100 PCIe", 756), ("H100 80GB HBM3", 989), ("H100 SXM", 989), ("H200", 989), ("A100", 312),
               ("L40S", 362), ("RTX 4090", 165), ("RTX 3090 Ti", 80))
ANCHOR = ("Z-Image 512 px, int8 base: public anchor 1.09 s/step (a Z-Image-Turbo LoRA, rank 64, 512 px, "
          "int8 base, on an H100); goal under 0.5 s/step")
SIDES = ("lora_lab", "bare")


@dataclass(frozen=True)
class Case:
    """One row: a model at a resolution and batch, a LoRA rank, the base's storage, checkpointing."""
    family: str
    resolution: int
    batch: int
    rank: int
    quantize: str = "none"
    checkpointing: bool = False

    def pixels(self, small: bool) -> int:
        return self.resolution // SMALL_SHRINK if small else self.resolution

    @property
    def shape_key(self) -> tuple[str, int, int, int]:
        """What the model FLOPs depend on: int8 storage and recomputation do not change them."""
        return self.family, self.resolution, self.batch, self.rank

    def label(self, small: bool) -> str:
        px = f"{self.resolution} px" + (f" (--small: {self.pixels(small)} px)" if small else "")
        return (f"{MODELS[self.family].title}, {px}, batch {self.batch}, rank {self.rank}, "
                f"{self.quantize if self.quantize != 'none' else 'bf16'} base"
                + (", grad ckpt" if self.checkpointing else ""))


@dataclass
class Run:
    """One side of a row: its step end times, counted from the start of model construction."""
    status: str = "ok"  # or "OOM", "error: ...", "skipped"
    start: float = field(default_factory=time.perf_counter)
    ends: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    wall_s: float = 0.0

    def step(self, device: torch.device, loss: float) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()  # the optimizer step's kernels too
        self.ends.append(time.perf_counter())
        self.losses.append(loss)

    def done(self, device: torch.device) -> Run:
        self.peak_bytes = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
        self.wall_s = time.perf_counter() - self.start
        return self

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def first_step_s(self) -> float:
        return self.ends[0] - self.start

    @property
    def s_per_step(self) -> float:
        return statistics.median(b - a for a, b in zip(self.ends[WARMUP - 1:], self.ends[WARMUP:]))


@dataclass
class Result:
    case: Case
    runs: dict[str, Run]  # by side
    order: tuple[str, ...] = SIDES
    flops: float | None = None  # one lora_lab step's model FLOPs

    @property
    def ratio(self) -> float | None:
        lora, bare = (self.runs[s] for s in SIDES)
        return lora.s_per_step / bare.s_per_step if lora.ok and bare.ok else None

    @property
    def wall_s(self) -> float:
        return sum(r.wall_s for r in self.runs.values())

    @property
    def skipped(self) -> bool:
        return self.runs["lora_lab"].status == "skipped"


# -- figures -----------------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((float(t) for key, t in PEAK_TFLOPS if key in name), None)


def mfu(run: Run, flops: float | None, device: torch.device) -> float | None:
    peak = peak_tflops(device)
    return flops / run.s_per_step / (peak * 1e12) if run.ok and flops and peak else None


def describe(run: Run) -> str:
    """A progress line's account of one run."""
    if not run.ok:
        return run.status
    return (f"first step {run.first_step_s:.1f} s, {run.s_per_step:.3f} s/step ({1 / run.s_per_step:.2f} steps/s), "
            f"peak {_gib(run.peak_bytes)}, mean loss {statistics.fmean(run.losses):.3f}")


# -- the table ---------------------------------------------------------------------------------------
def print_table(results: list[Result], small: bool, steps: int, device: torch.device, out: TextIO) -> None:
    import diffusers
    import peft

    peak = peak_tflops(device)
    print(f"## lora_lab LoRA training, full-size models with random weights: {device_name(device)} "
          f"({f'dense bf16 peak {peak:g} TFLOPS' if peak else 'peak unknown: no MFU'})\n", file=out)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, peft {peft.__version__}; {steps} steps "
          f"a run, s/step the median of steps {WARMUP + 1}-{steps}"
          + ("; --small: shrunk models, the figures only show that the code runs" if small else "") + "\n", file=out)
    print("| row | model FLOPs/step | lora_lab: first step | s/step (steps/s) | peak memory | MFU "
          "| bare loop: first step | s/step | peak memory | MFU | lora_lab ÷ bare |", file=out)
    print("|" + "---|" * 11, file=out)
    for r in results:
        cells = [r.case.label(small), _flops(r.flops)]
        for side in SIDES:
            cells += _cells(r.runs[side], r.flops, device, with_rate=side == "lora_lab")
        cells.append(f"{r.ratio:.2f}×" if r.ratio is not None else "-")
        print("| " + " | ".join(cells) + " |", file=out)
    for line in notes(results, small):
        print(line, file=out)


def _cells(run: Run, flops: float | None, device: torch.device, with_rate: bool) -> list[str]:
    if not run.ok:
        return [run.status, "-", "-", "-"]
    rate = f" ({1 / run.s_per_step:.2f})" if with_rate else ""
    return [f"{run.first_step_s:.1f} s", f"{run.s_per_step:.3f}{rate}", _gib(run.peak_bytes),
            _pct(mfu(run, flops, device))]


def notes(results: list[Result], small: bool) -> list[str]:
    lines = ["", "lora_lab: its Trainer with random inputs where a dataset would be (latents as its cache holds "
             "them, text conditioning shaped as the encoders give it). Bare loop: diffusers' training examples "
             "reduced to the step on cached latents and prompt embeddings (model in bf16, add_adapter, AdamW, "
             "accelerate's bf16 autocast, noise, model call, MSE, backward, clip, step). Model FLOPs: one "
             "lora_lab step, forward + backward without recomputation (FlopCounterMode)."]
    ran = [r.case.label(small) for r in results if r.case.checkpointing and not r.skipped]
    skipped = [r.case.label(small) for r in results if r.skipped]
    lines.append(f"Gradient checkpointing rows run: {'; '.join(ran) or 'none'}"
                 + (f"; skipped for time: {'; '.join(skipped)}" if skipped else "") + ".")
    anchor = next((r for r in results if r.case == Case("zimage", 512, 1, 64, "int8")), None)
    if anchor is not None and anchor.runs["lora_lab"].ok and not small:
        s = anchor.runs["lora_lab"].s_per_step
        lines.append(f"{ANCHOR}: lora_lab {s:.3f} s/step ({'under' if s < 0.5 else 'over'} the goal).")
    return lines


def to_json(results: list[Result], small: bool, steps: int, device: torch.device) -> dict[str, Any]:
    def side(run: Run, flops: float | None) -> dict[str, Any]:
        if not run.ok:
            return {"status": run.status}
        return {"status": "ok", "first_step_s": round(run.first_step_s, 3), "s_per_step": round(run.s_per_step, 4),
                "steps_per_s": round(1 / run.s_per_step, 3), "peak_bytes": run.peak_bytes,
                "mfu": mfu(run, flops, device), "mean_loss": statistics.fmean(run.losses),
                "wall_s": round(run.wall_s, 1)}

    def row(r: Result) -> dict[str, Any]:
        c = r.case
        return {"label": c.label(small), "family": c.family, "resolution": c.pixels(small), "batch": c.batch,
                "rank": c.rank, "quantize": c.quantize, "gradient_checkpointing": c.checkpointing,
                "flops_per_step": r.flops, "order": list(r.order), "ratio": r.ratio,
                **{s: side(r.runs[s], r.flops) for s in SIDES}}

    return {"device": device_name(device), "peak_bf16_tflops": peak_tflops(device), "torch": torch.__version__,
            "small": small, "steps": steps, "warmup_steps": WARMUP, "rows": [row(r) for r in results]}


def _flops(x: float | None) -> str:
    if not x:
        return "-"
    return f"{x / 1e12:.1f} T" if x >= 1e11 else f"{x / 1e9:.2f} G"


def _gib(n: int | None) -> str:
    return f"{n / 2**30:.1f} GiB" if n is not None else "-"


def _pct(x: float | None) -> str:
    return f"{x * 100:.1f}%" if x is not None else "-"
