"""GPU training benchmark: LoRA steps on full-size SDXL, Z-Image and FLUX.1 [dev] with random
weights, through lora_lab's own trainer, against a bare loop written like diffusers' training
examples on the same model in the same run (under five minutes on one H100 or H200).

    .venv/bin/python bench/gpu/bench_train_gpu.py                 # every row; a markdown table to paste
    .venv/bin/python bench/gpu/bench_train_gpu.py --only flux     # one family (or several)
    .venv/bin/python bench/gpu/bench_train_gpu.py --json          # the results as JSON on stdout
    .venv/bin/python bench/gpu/bench_train_gpu.py --small         # shrunk models, 3 steps: every code path on a CPU

Nothing is downloaded: the models are built from their Hub configs (random_models.py). Per row
and side: time to first step (model construction to the end of step 1), s/step and steps/s (the
median of the steps after two warm-up steps), peak GPU memory (counted from the built model, so
the weights plus training), and model-FLOPs utilisation against the card's dense bf16 peak.
"""
from __future__ import annotations

import os

# before diffusers / transformers are imported: offline, and without their warnings
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the CPU benches' example loops

import argparse
import gc
import json
import multiprocessing
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import replace
from typing import Any
from unittest import mock

import torch
from random_models import MODELS, RandomInputs, build_pipeline
from train_results import SIDES, SMALL_SHRINK, WARMUP, Case, Result, Run, describe, device_name, print_table, to_json

from lora_lab.training import trainer as trainer_module
from lora_lab.training.base_model import BaseModel
from lora_lab.training.config import TrainConfig
from lora_lab.training.outputs import TrainResult
from lora_lab.training.trainer import Trainer

FAMILIES = ("sdxl", "zimage", "flux")
DEFAULT_STEPS, SMALL_STEPS = 8, 3
CHECKPOINTING_SLOWER = 1.4  # a guess, for whether a gradient-checkpointing row still fits the budget
UNKNOWN_ROW_S = 60.0  # the same guess when its twin without checkpointing did not finish
ROWS = [Case("sdxl", 1024, 4, 32),
        Case("zimage", 512, 1, 64), Case("zimage", 512, 1, 64, "int8"), Case("zimage", 1024, 1, 64),
        Case("flux", 512, 1, 64), Case("flux", 1024, 1, 64)]
BIG = [replace(c, checkpointing=True) for c in ROWS if c.resolution == 1024]  # again, if time allows


# -- lora_lab ----------------------------------------------------------------------------------------
class RandomBase(BaseModel):
    """A base model whose pipeline has no text encoders: random conditioning stands in for them."""

    @property
    def text_encoders(self) -> list:
        return []


class RandomDataTrainer(Trainer):
    """lora_lab's Trainer run as it is: its model setup (LoRA, placement, quantization, gradient
    checkpointing, optimizer, accelerate) and its loop (the update, progress events, status) on
    the family's own objective. Where a dataset would be, random inputs: no images to gather, no
    latents or captions to encode, no LoRA file written at the end."""

    def __init__(self, config: TrainConfig, job: Any, workspace: Any, on_event: Callable, pipe: Any,
                 resolution: int):
        super().__init__(config, job, workspace, on_event)
        self.random_base, self.resolution = RandomBase(self.family, pipe, "random"), resolution

    def load_data(self) -> None:
        self.phase("loading dataset")
        self.total = self.steps_per_epoch = self.cfg.train.max_steps

    def load_model(self) -> None:
        with mock.patch.object(trainer_module, "load_base_model", return_value=self.random_base):
            super().load_model()
        self.inputs = RandomInputs(self.family, self.base.pipeline, self.resolution, self.cfg.train.batch_size,
                                   self.acc.device, self.dtype)

    def cache(self) -> None:
        self.phase("caching")
        self.text_cache = None  # nothing to encode: the conditioning is already tensors

    def micro_batch_loss(self, m: int) -> torch.Tensor:
        return self.objective.loss(self.models[0], self.inputs.batch(m), self.acc.device, self.dtype)

    def _export(self, step: int, loss: float, seconds: float) -> TrainResult:
        return TrainResult(Path(), step, round(seconds, 3), loss)


def train_config(case: Case, small: bool, steps: int) -> TrainConfig:
    px = case.pixels(small)
    return TrainConfig.from_dict({
        "model": {"base": f"random {case.family}", "family": case.family, "quantize": case.quantize},
        "dataset": {"source": "random", "resolution": px, "min_bucket": px, "max_bucket": px},
        "network": {"rank": case.rank},  # targets "attn", alpha = rank
        "train": {"batch_size": case.batch, "max_steps": steps, "mixed_precision": "bf16",
                  "gradient_checkpointing": case.checkpointing}})


def lora_lab_run(case: Case, small: bool, steps: int, device: torch.device, root: Path) -> Run:
    from lora_lab.jobdir import JobRecord
    from lora_lab.workspace import Workspace

    run = Run()
    pipe = build_pipeline(case.family, small, device)
    _reset_peak(device)
    config = train_config(case, small, steps)
    ws = Workspace(root)
    job = JobRecord.create("train", {"config": config.to_dict(), "gpus": 1}, ws)

    def on_event(event: dict[str, Any]) -> None:
        if event.get("type") == "progress":
            run.step(device, event["loss"])

    RandomDataTrainer(config, job, ws, on_event, pipe, case.pixels(small)).run()
    return run.done(device)


# -- the bare loop -----------------------------------------------------------------------------------
def bare_run(case: Case, small: bool, steps: int, device: torch.device) -> Run:
    """diffusers' training examples reduced to the step, on latents and prompt embeddings they
    would have cached: the model in the weight dtype (bf16), ``add_adapter`` with lora_lab's
    targets (alpha = rank; the LoRA stays bf16, as the examples leave it unless fp16), AdamW,
    accelerate's bf16 autocast; per step noise, the model call, MSE, backward, clip, step."""
    from accelerate import Accelerator
    from peft import LoraConfig

    from lora_lab.training.families import get_family

    run = Run()
    pipe = build_pipeline(case.family, small, device)
    _reset_peak(device)
    family, dtype = get_family(case.family), torch.bfloat16
    accelerator = Accelerator(mixed_precision="bf16", cpu=device.type != "cuda")
    model = getattr(pipe, family.denoiser)
    model.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    model.to(accelerator.device, dtype=dtype)
    if case.checkpointing:
        model.enable_gradient_checkpointing()
    model.add_adapter(LoraConfig(r=case.rank, lora_alpha=case.rank, init_lora_weights="gaussian",
                                 target_modules=family.lora_targets(model, "attn")))
    if case.quantize != "none":
        _torchao_quantize(model)
    lora = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    model, optimizer = accelerator.prepare(model, optimizer)
    inputs = RandomInputs(case.family, pipe, case.pixels(small), case.batch, accelerator.device, dtype)
    latents, loss_of = inputs.latents(accelerator.device, dtype), example_loss(case.family, pipe, dtype)
    model.train()
    for _ in range(steps):
        loss = loss_of(model, latents, inputs.cond)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(lora, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        run.step(device, loss.detach().item())  # the examples' progress bar reads it every step
    return run.done(device)


def _torchao_quantize(model: torch.nn.Module) -> None:
    """The frozen linears in int8, weight-only, with torchao directly."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantize_(model, Int8WeightOnlyConfig(),
              filter_fn=lambda m, _: isinstance(m, torch.nn.Linear) and not m.weight.requires_grad)


Loss = Callable[[torch.nn.Module, torch.Tensor, tuple[Any, ...]], torch.Tensor]


def example_loss(family_name: str, pipe: Any, dtype: torch.dtype) -> Loss:
    return _unet_loss(pipe) if family_name == "sdxl" else _flow_loss(family_name, pipe, dtype)


def _unet_loss(pipe: Any) -> Loss:
    """train_text_to_image_lora_sdxl.py: DDPM noise at a uniform timestep, the UNet with the
    pooled embedding and size/crop ids, MSE against the noise."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    def loss(model: torch.nn.Module, latents: torch.Tensor, cond: tuple[Any, ...]) -> torch.Tensor:
        prompt_embeds, pooled = cond
        noise = torch.randn_like(latents)
        bsz, side = latents.shape[0], latents.shape[-1] * pipe.vae_scale_factor
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device)
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        time_ids = torch.tensor([[side, side, 0, 0, side, side]] * bsz, device=latents.device, dtype=latents.dtype)
        model_pred = model(noisy_latents, timesteps, prompt_embeds, return_dict=False,
                           added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids})[0]
        return F.mse_loss(model_pred.float(), noise.float(), reduction="mean")

    return loss


def _flow_loss(family_name: str, pipe: Any, dtype: torch.dtype) -> Loss:
    """The DreamBooth LoRA examples' flow matching (weighting scheme "none"): σ at a uniform index
    of the scheduler's table, the transformer called as bench_train_flow's Example for the model
    calls it, MSE against noise - latents."""
    from bench_train_flow import FluxExample, ZImageExample
    from diffusers.training_utils import compute_density_for_timestep_sampling

    scheduler = pipe.scheduler
    example = FluxExample() if family_name == "flux" else ZImageExample()
    example.vae_scale_factor, example.dtype = pipe.vae_scale_factor, dtype  # what Flux's load() would set

    def loss(model: torch.nn.Module, latents: torch.Tensor, cond: tuple[Any, ...]) -> torch.Tensor:
        bsz, example.device = latents.shape[0], latents.device
        noise = torch.randn_like(latents)
        u = compute_density_for_timestep_sampling(weighting_scheme="none", batch_size=bsz, logit_mean=0.0,
                                                  logit_std=1.0, mode_scale=1.29)
        indices = (u * scheduler.config.num_train_timesteps).long()
        timesteps = scheduler.timesteps[indices].to(device=latents.device)
        sigmas = scheduler.sigmas[indices].to(latents.device, latents.dtype).view(-1, 1, 1, 1)
        noisy_model_input = (1.0 - sigmas) * latents + sigmas * noise
        model_pred = example.predict(model, noisy_model_input, timesteps, cond if family_name == "flux" else cond[0])
        target = noise - latents
        return torch.mean(((model_pred.float() - target.float()) ** 2).reshape(bsz, -1), 1).mean()

    return loss


# -- model FLOPs -------------------------------------------------------------------------------------
def count_flops(case: Case, small: bool) -> float:
    """Model FLOPs of one lora_lab step (forward + backward, no recomputation): its LoRA and its
    family objective on the row's shapes, counted by FlopCounterMode on the meta device, which
    runs the same code with neither memory nor arithmetic. Attention counts as its math (the
    same figure FlopCounterMode gives CUDA's fused attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    from lora_lab.training.adapters import add_adapters

    meta = torch.device("meta")
    config = train_config(case, small, SMALL_STEPS).resolved(case.family)
    base = RandomBase(case.family, build_pipeline(case.family, small, meta), "random")
    with meta:
        add_adapters(base, config.network, config.train.seed)
    objective = base.spec.objective(base.pipeline, config.train, config.model.prediction)
    dtype = base.denoiser.dtype
    inputs = RandomInputs(case.family, base.pipeline, case.pixels(small), case.batch, meta, dtype)
    with FlopCounterMode(display=False) as counter:
        objective.loss(base.denoiser, inputs.batch(0), meta, dtype).backward()
    return float(counter.get_total_flops())


def start_flop_counts(cases: list[Case], small: bool) -> dict[tuple, Future]:
    """Counting on the meta device is CPU work (up to a minute a full-size model): it runs in a
    process of its own while the GPU trains, so the steps neither wait for it nor share its GIL."""
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    futures: dict[tuple, Future] = {}
    for case in cases:
        if case.shape_key not in futures:
            futures[case.shape_key] = pool.submit(count_flops, case, small)
    pool.shutdown(wait=False)  # the counts go on; results are read at the end
    return futures


def counted(future: Future) -> float | None:
    try:
        return future.result()
    except Exception as e:  # then the table shows no MFU for these rows
        log(f"model FLOPs not counted: {type(e).__name__}: {e}")
        return None


# -- running -----------------------------------------------------------------------------------------
def measure(case: Case, index: int, args: argparse.Namespace, device: torch.device, root: Path) -> Result:
    order = SIDES if index % 2 == 0 else SIDES[::-1]  # neither side always runs second
    log(f"{case.label(args.small)}: {' then '.join(order)}")
    runs = {}
    for side in order:
        if side == "lora_lab":
            runs[side] = attempt(lambda: lora_lab_run(case, args.small, args.steps, device, root), device)
        else:
            runs[side] = attempt(lambda: bare_run(case, args.small, args.steps, device), device)
        log(f"  {side:<8} {describe(runs[side])}")
    return Result(case, runs, order)


def attempt(go: Callable[[], Run], device: torch.device) -> Run:
    """``go()``, or a Run saying why not: running out of memory ends a row, not the bench."""
    try:
        run = go()
    except torch.cuda.OutOfMemoryError:
        run = Run(status="OOM")
    except Exception as e:  # one row's failure must not cost the rest of a leased GPU's run
        traceback.print_exc()
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        run = Run(status="OOM" if "out of memory" in first else f"error: {type(e).__name__}: {first[:120]}")
    gc.collect()  # after the except clause, whose traceback held the run's tensors
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return run


def preload(cases: list[Case]) -> None:
    """Import what the rows use (diffusers loads its classes lazily), so that no row's time to
    first step pays for a first import."""
    import accelerate  # noqa: F401
    import bench_train_flow  # noqa: F401
    import diffusers
    import peft  # noqa: F401
    from diffusers import training_utils  # noqa: F401

    from lora_lab.training.families import get_family

    for case in cases:
        getattr(diffusers, MODELS[case.family].denoiser_class)
        getattr(diffusers, get_family(case.family).pipeline)
        if case.quantize != "none":
            import torchao.quantization  # noqa: F401


def run_all(args: argparse.Namespace, device: torch.device) -> list[Result]:
    """The rows, then the big ones again with gradient checkpointing while the budget holds them
    (first those that ran out of memory without it)."""
    rows = [c for c in ROWS if c.family in args.only]
    big = [c for c in BIG if c.family in args.only]
    started = time.perf_counter()
    preload(rows)
    flops = start_flop_counts(rows, args.small)
    with tempfile.TemporaryDirectory(prefix="lora-lab-gpubench-") as tmp:
        results = [measure(case, i, args, device, Path(tmp)) for i, case in enumerate(rows)]
        twins = {r.case: r for r in results}
        for i, case in enumerate(sorted(big, key=lambda c: twins[replace(c, checkpointing=False)].ratio is not None),
                                 start=len(rows)):
            twin = twins[replace(case, checkpointing=False)]
            guess = twin.wall_s * CHECKPOINTING_SLOWER if twin.ratio is not None else UNKNOWN_ROW_S
            if args.small or time.perf_counter() - started + guess <= args.budget:
                results.append(measure(case, i, args, device, Path(tmp)))
            else:
                log(f"{case.label(args.small)}: skipped, the {args.budget:g} s budget would not hold it")
                results.append(Result(case, {side: Run("skipped") for side in SIDES}))
    for r in results:
        r.flops = counted(flops[r.case.shape_key])
    log(f"measured in {time.perf_counter() - started:.0f} s")
    return results


# -- helpers ---------------------------------------------------------------------------------------
def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


# -- main --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true",
                        help=f"shrunk models at 1/{SMALL_SHRINK} of each row's resolution, {SMALL_STEPS} steps: "
                             "runs on a CPU, to check every code path")
    parser.add_argument("--only", nargs="+", choices=FAMILIES, default=list(FAMILIES), help="these families only")
    parser.add_argument("--steps", type=int, help=f"optimizer steps a run (default {DEFAULT_STEPS}; --small "
                                                  f"{SMALL_STEPS}); the first {WARMUP} are warm-up")
    parser.add_argument("--budget", type=float, default=280.0,
                        help="seconds: a gradient-checkpointing row runs only if the bench would still end "
                             "within this (default 280; 0 skips them; --small runs them all)")
    parser.add_argument("--json", action="store_true", help="the results as JSON on stdout (the table on stderr)")
    args = parser.parse_args(argv)
    args.steps = args.steps or (SMALL_STEPS if args.small else DEFAULT_STEPS)
    if args.steps <= WARMUP:
        parser.error(f"--steps must be more than {WARMUP} (the warm-up steps)")
    if not args.small and not torch.cuda.is_available():
        parser.exit(2, f"{parser.prog}: no CUDA GPU here (torch {torch.__version__}); run it on a GPU, "
                       "or add --small to run shrunk models on the CPU\n")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":  # the CUDA context and cuBLAS, before any row's time to first step
        torch.ones(256, 256, device=device, dtype=torch.bfloat16).matmul(torch.ones(256, 256, device=device,
                                                                                    dtype=torch.bfloat16))
        torch.cuda.synchronize()
    else:  # --small: torch's threads wait on each other on a busy CPU (a step 20x slower seen)
        torch.set_num_threads(1)
    log(f"{device_name(device)}, torch {torch.__version__}, {args.steps} steps a run")
    results = run_all(args, device)
    print_table(results, args.small, args.steps, device, sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(to_json(results, args.small, args.steps, device), indent=2))


if __name__ == "__main__":
    main()
