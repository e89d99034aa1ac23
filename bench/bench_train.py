"""Training benchmark: lora_lab's LoRA trainer against a bare diffusers-example loop, same job.

    .venv/bin/python bench/bench_train.py                 # tiny SD1.5, 3 rounds (~1.5 min, 2 cores)
    .venv/bin/python bench/bench_train.py --quick         # a smoke run (~15 s)
    .venv/bin/python bench/bench_train.py --family sdxl   # the tiny SDXL instead (~1.5 min)
    .venv/bin/python bench/bench_train.py --profile       # + cProfile of both loops

The tiny random-weight model (lora_lab.tiny), the images and every workspace live in one temp
folder that is removed at the end; nothing is downloaded (HF_HUB_OFFLINE=1). bench_train_flow.py
runs the same benchmark (importing it from here) for the flow-matching families.
"""
from __future__ import annotations

import os

# before diffusers / transformers are imported: offline, and without their warnings
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import argparse
import cProfile
import io
import math
import pstats
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import Row, Target, cpu_busy, generate_jpegs, own_cpu, print_machine, print_table, warm
from PIL import Image
from PIL.ImageOps import exif_transpose

FAMILIES = ("sd15", "sdxl")
NO_CACHE_TARGET = Target(ratio=1.05)
CACHED_TARGET = Target(ratio=0.9)  # "clearly faster" than the bare loop: at least 10% less time
# A run during whose timed part other processes used more than this many cores is run again (up
# to TRIES times), after waiting up to QUIET_WAIT_S for them to calm down; the last try is kept.
# A try that may be retried is abandoned as soon as it is disturbed (checked every CHECK_S), so
# a retry costs little more than loading the models.
DISTURBED_CORES = 0.25
TRIES = 8
QUIET_WAIT_S = 60.0
CHECK_S = 1.0
WARMUP_STEPS = 3  # the first steps (allocator, lazy init) are left out of s/step on both sides
# Caption words the tiny tokenizer has whole-word tokens for, so captions tokenize like real ones.
COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
PATHS = ("bare", "nocache", "cached", "cached-warm")
LABELS = {
    "bare": "bare loop (diffusers example)",  # "nocache": its Floor's
    "cached": "lora_lab, cached (cold cache)",
    "cached-warm": "lora_lab, cached (warm cache)",
}


@dataclass(frozen=True)
class Job:
    """What both sides train: one model, one dataset, one set of settings."""
    family: str
    model: Path
    data: Path
    images: list[tuple[Path, str]]  # (image, caption)
    resolution: int
    steps: int
    batch: int
    rank: int
    lr: float
    seed: int = 0
    max_grad_norm: float = 1.0
    weight_decay: float = 1e-2


class Disturbed(Exception):
    """Raised from a watched run's step: other processes are disturbing it, no use finishing."""


_watching = False  # undisturbed() is timing a try it may retry: abandon it once disturbed


@dataclass
class Run:
    """One timed training run: step timestamps and, for lora_lab, its phase timestamps."""
    steps: list[float] = field(default_factory=list)  # perf_counter after each optimizer step
    loop_start: float = math.nan
    cache_start: float = math.nan  # lora_lab: its one-off caching phase began
    foreign: float = math.nan  # other processes' CPU use during its timed part, in cores
    losses: list[float] = field(default_factory=list)
    timed_from: CpuMark | None = None  # when its timed part (caching or the loop) began
    checked: float = 0.0  # perf_counter of the last check for disturbance

    def start(self, phase: str) -> None:
        """The caching phase ("caching") or the loop ("loop") begins now."""
        mark = CpuMark()
        self.timed_from = self.timed_from or mark
        self.checked = mark.time
        if phase == "caching":
            self.cache_start = mark.time
        else:
            self.loop_start = mark.time

    def step(self, loss: float) -> None:
        """An optimizer step has just ended with ``loss``; while watched, a run that other
        processes disturb is abandoned (Disturbed)."""
        now = time.perf_counter()
        self.steps.append(now)
        self.losses.append(loss)
        if _watching and now - self.checked >= CHECK_S:
            self.checked = now
            self.foreign = self.timed_from.foreign()
            if self.disturbed:
                raise Disturbed

    @property
    def disturbed(self) -> bool:
        return self.foreign > DISTURBED_CORES

    def s_per_step(self) -> float:
        """Steady-state seconds per step: the steps after the warm-up ones."""
        w = WARMUP_STEPS  # --steps is always more than this
        return (self.steps[-1] - self.steps[w - 1]) / (len(self.steps) - w)

    @property
    def loop_s(self) -> float:
        return self.steps[-1] - self.loop_start

    @property
    def cache_s(self) -> float:
        return self.loop_start - self.cache_start if not math.isnan(self.cache_start) else 0.0

    @property
    def total_s(self) -> float:
        """The loop plus lora_lab's caching phase (the bare loop has none)."""
        return self.loop_s + self.cache_s


@dataclass(frozen=True)
class Floor:
    """The bare loop lora_lab is measured against, and how lora_lab's uncached run is set up to
    do the same work every step."""
    loop: Callable[[Job, cProfile.Profile | None], Run]
    what: str  # the tables' floor line: which example it follows and what it does every step
    shuffle_tags: bool  # lora_lab's uncached run: true makes it encode the text every step
    nocache: str  # that run's row in the tables
    note: str  # printed under the tables


# -- data ------------------------------------------------------------------------------------------
def make_dataset(folder: Path, count: int, size: int) -> list[tuple[Path, str]]:
    """``count`` square JPEGs (one bucket) with comma-tag captions in .txt sidecars."""
    paths = generate_jpegs(folder, count, size)
    images = []
    for i, path in enumerate(paths):
        rng = np.random.default_rng([7, i])
        colour, other = rng.choice(COLOURS, 2, replace=False)
        caption = (f"photo of a {colour} {rng.choice(SHAPES)}, {other} sky, green grass, "
                   f"{rng.choice(SHAPES)} style")
        path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
        images.append((path, caption))
    warm(paths)
    return images


# -- the bare loop ---------------------------------------------------------------------------------
def example_pixels(path: Path, resolution: int, upright: bool = False
                   ) -> tuple[Any, tuple[int, int], tuple[int, int]]:
    """An image as the diffusers examples' transforms make it: turned upright by its EXIF
    orientation (the DreamBooth examples, ``upright``), resized (shorter side, bilinear),
    centre-cropped, normalised to [-1, 1], CHW; with its original size and the crop's top-left.
    (torchvision's Resize on a PIL image is a PIL bilinear resize, which is what this does.)"""
    import torch

    image = Image.open(path)
    image = (exif_transpose(image) if upright else image).convert("RGB")
    original_size = (image.height, image.width)
    scale = resolution / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)),
                         Image.Resampling.BILINEAR)  # transforms.Resize(res, BILINEAR)
    top = int(round((image.height - resolution) / 2.0))  # transforms.CenterCrop(res)
    left = int(round((image.width - resolution) / 2.0))
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div(255)  # ToTensor
    return (pixels - 0.5) / 0.5, original_size, (top, left)  # Normalize([0.5], [0.5])


class ExampleDataset:
    """The example's ``imagefolder`` + ``with_transform(preprocess_train)``, without the datasets
    package: each item is decoded, transformed (:func:`example_pixels`) and its caption tokenized,
    every time it is read."""

    def __init__(self, images: list[tuple[Path, str]], tokenizers: list, resolution: int):
        self.images, self.tokenizers, self.res = images, tokenizers, resolution

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, caption = self.images[i]
        pixels, original_size, crop_top_left = example_pixels(path, self.res)
        item = {"pixel_values": pixels, "original_size": original_size, "crop_top_left": crop_top_left}
        for k, tok in enumerate(self.tokenizers):
            item[f"input_ids_{k}"] = tok(caption, max_length=tok.model_max_length, padding="max_length",
                                         truncation=True, return_tensors="pt").input_ids[0]
        return item


def _collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    batch = {"pixel_values": torch.stack([e["pixel_values"] for e in examples])
             .to(memory_format=torch.contiguous_format).float(),
             "original_sizes": [e["original_size"] for e in examples],
             "crop_top_lefts": [e["crop_top_left"] for e in examples]}
    for key in examples[0]:
        if key.startswith("input_ids_"):
            batch[key] = torch.stack([e[key] for e in examples])
    return batch


def bare_loop(job: Job, profile: cProfile.Profile | None = None) -> Run:
    """diffusers' examples/text_to_image/train_text_to_image_lora.py (and its _sdxl sibling),
    reduced to the training: components loaded one by one, LoRA through ``unet.add_adapter``,
    AdamW over the LoRA parameters, a shuffled DataLoader over ExampleDataset, and per step a VAE
    encode, a text encode, noise, MSE, backward, clip, step, all through ``accelerate``.
    Model loading and preparation are not timed; the loop is."""
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    sdxl = job.family == "sdxl"
    accelerator = Accelerator(gradient_accumulation_steps=1, mixed_precision="no")
    set_seed(job.seed)
    model = str(job.model)
    noise_scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
    tokenizers = [CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")]
    text_encoders = [CLIPTextModel.from_pretrained(model, subfolder="text_encoder")]
    if sdxl:
        tokenizers.append(CLIPTokenizer.from_pretrained(model, subfolder="tokenizer_2"))
        text_encoders.append(CLIPTextModelWithProjection.from_pretrained(
            model, subfolder="text_encoder_2"))
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    unet.requires_grad_(False)
    vae.requires_grad_(False)
    for te in text_encoders:
        te.requires_grad_(False)
    weight_dtype = torch.float32
    unet.to(accelerator.device, dtype=weight_dtype)
    vae.to(accelerator.device, dtype=torch.float32 if sdxl else weight_dtype)
    for te in text_encoders:
        te.to(accelerator.device, dtype=weight_dtype)
    unet.add_adapter(LoraConfig(r=job.rank, lora_alpha=job.rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    # The example passes a filter() here and later clips that same, by then exhausted, filter:
    # its clipping does nothing. A list clips for real, as lora_lab does (max_grad_norm 1).
    lora_layers = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora_layers, lr=job.lr, betas=(0.9, 0.999),
                                  weight_decay=job.weight_decay, eps=1e-8)
    dataset = ExampleDataset(job.images, tokenizers, job.resolution)
    train_dataloader = torch.utils.data.DataLoader(dataset, shuffle=True, collate_fn=_collate,
                                                   batch_size=job.batch, num_workers=0)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0,
                                 num_training_steps=job.steps * accelerator.num_processes)
    unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        unet, optimizer, train_dataloader, lr_scheduler)
    epochs = math.ceil(job.steps / len(train_dataloader))

    def compute_time_ids(original_size, crop_top_left):
        target_size = (job.resolution, job.resolution)
        ids = torch.tensor([list(original_size + crop_top_left + target_size)])
        return ids.to(accelerator.device, dtype=weight_dtype)

    run = Run()
    global_step = 0
    if profile is not None:
        profile.enable()
    run.start("loop")
    for _epoch in range(epochs):
        unet.train()
        train_loss = 0.0
        for batch in train_dataloader:
            with accelerator.accumulate(unet):
                pixel_values = batch["pixel_values"]  # the _sdxl example keeps its VAE in fp32
                if not sdxl:
                    pixel_values = pixel_values.to(dtype=weight_dtype)
                latents = vae.encode(pixel_values).latent_dist.sample()
                latents = (latents * vae.config.scaling_factor).to(weight_dtype)
                noise = torch.randn_like(latents)
                bsz = latents.shape[0]
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,),
                                          device=latents.device).long()
                noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
                extra = {}
                if sdxl:  # the _sdxl example's encode_prompt + compute_time_ids
                    embeds, pooled = [], None
                    for k, te in enumerate(text_encoders):
                        out = te(batch[f"input_ids_{k}"].to(te.device), output_hidden_states=True)
                        pooled = out[0]
                        embeds.append(out.hidden_states[-2])
                    encoder_hidden_states = torch.cat(embeds, dim=-1)
                    time_ids = torch.cat([compute_time_ids(s, c) for s, c in
                                          zip(batch["original_sizes"], batch["crop_top_lefts"])])
                    extra["added_cond_kwargs"] = {"text_embeds": pooled.view(bsz, -1),
                                                  "time_ids": time_ids}
                else:
                    encoder_hidden_states = text_encoders[0](batch["input_ids_0"],
                                                             return_dict=False)[0]
                if noise_scheduler.config.prediction_type == "epsilon":
                    target = noise
                else:
                    target = noise_scheduler.get_velocity(latents, noise, timesteps)
                model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False,
                                  **extra)[0]
                loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
                avg_loss = accelerator.gather(loss.repeat(bsz)).mean()
                train_loss += avg_loss.item()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(lora_layers, job.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                global_step += 1
                run.step(train_loss)
                train_loss = 0.0
            if global_step >= job.steps:
                break
    if profile is not None:
        profile.disable()
    accelerator.end_training()
    return run


# -- lora_lab --------------------------------------------------------------------------------------
def lora_lab_config(job: Job, out: Path, cache_latents: bool, shuffle_tags: bool):
    from lora_lab.training.config import TrainConfig

    return TrainConfig.from_dict({
        "model": {"base": str(job.model)},
        "dataset": {"source": str(job.data), "resolution": job.resolution,
                    "min_bucket": job.resolution, "max_bucket": 2 * job.resolution,
                    "cache_latents": cache_latents, "shuffle_tags": shuffle_tags},
        "network": {"rank": job.rank, "alpha": float(job.rank)},
        "train": {"batch_size": job.batch, "max_steps": job.steps, "lr": job.lr, "seed": job.seed,
                  "max_grad_norm": job.max_grad_norm, "weight_decay": job.weight_decay},
        "save": {"output_dir": str(out), "name": "bench"},
    })


def lora_lab_run(job: Job, ws_root: Path, cache_latents: bool, shuffle_tags: bool,
                 profile: cProfile.Profile | None = None) -> Run:
    """``lora_lab.training.trainer.train`` on ``job``; the loop is timed from its events."""
    from lora_lab.training.job import train
    from lora_lab.workspace import Workspace

    run = Run()

    def on_event(event: dict[str, Any]) -> None:
        if event.get("type") == "phase":
            if event["phase"] == "caching":
                run.start("caching")
            elif event["phase"] == "training" and math.isnan(run.loop_start):
                run.start("loop")
                if profile is not None:
                    profile.enable()
        elif event.get("type") == "progress":
            if event["step"] == event["total"] and profile is not None:
                profile.disable()
            run.step(event["loss"])

    ws = Workspace(ws_root)
    config = lora_lab_config(job, ws_root / "out", cache_latents, shuffle_tags)
    result = train(config, workspace=ws, on_event=on_event)
    if result.steps != job.steps or len(run.steps) != job.steps:
        raise SystemExit(f"lora_lab ran {result.steps} steps ({len(run.steps)} progress events), "
                         f"expected {job.steps}")
    return run


# -- measuring -------------------------------------------------------------------------------------
class CpuMark:
    """A moment, with the CPU time every process and this one had used by then."""

    def __init__(self) -> None:
        self.time, self.busy, self.own = time.perf_counter(), cpu_busy(), own_cpu()

    def foreign(self) -> float:
        """How many cores other processes have used since, on average. Worker processes that
        lora_lab's dataset scan starts are not this process's children: that is why a run's
        figure counts from its timed part, which starts none."""
        wall = max(time.perf_counter() - self.time, 1e-9)
        return ((cpu_busy() - self.busy) - (own_cpu() - self.own)) / wall


def undisturbed(fn: Callable[[], Run]) -> Run:
    """``fn`` run once the CPUs are quiet, and again (up to TRIES times) while other processes
    disturbed it: torch's threads wait on each other, so one busy neighbour on a 2-core box
    makes a step many times slower (a 40 ms step has been seen taking 4.6 s). A try that may be
    retried stops at the first check that finds it disturbed; the last one runs to its end."""
    global _watching
    for last in [False] * (TRIES - 1) + [True]:
        wait_for_quiet()
        _watching = not last
        try:
            run = fn()
        except Disturbed:
            print(f"#   (disturbed: other processes used more than {DISTURBED_CORES} cores; "
                  "abandoned, to be run again)", flush=True)
            continue
        finally:
            _watching = False
        run.foreign = run.timed_from.foreign()
        if not run.disturbed:
            break
        report("(disturbed)", run)
    return run


def wait_for_quiet(limit_s: float = QUIET_WAIT_S) -> None:
    """Wait (up to ``limit_s``) until other processes leave the CPUs alone for a second."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        mark = CpuMark()
        time.sleep(1.0)
        if mark.foreign() <= DISTURBED_CORES:
            return


def rounds(job: Job, root: Path, repeats: int, floor: Floor) -> dict[str, list[Run]]:
    """Every path ``repeats`` times, the order reversed every round; each cached run gets a fresh
    workspace (a cold latent cache) and is followed at once by a second run on the same one."""
    runs: dict[str, list[Run]] = {k: [] for k in PATHS}
    counter = iter(range(10_000))
    filled: list[Path] = []  # workspaces whose latent cache a cold run has filled

    def cold() -> None:
        ws = root / f"ws-cached-{next(counter)}"
        runs["cached"].append(undisturbed(lambda: lora_lab_run(job, _fresh(ws), True, False)))
        report("cached", runs["cached"][-1])
        filled.append(ws)

    def warm() -> None:
        ws = filled[-1]
        runs["cached-warm"].append(undisturbed(lambda: lora_lab_run(job, ws, True, False)))
        report("cached-warm", runs["cached-warm"][-1])

    def cached_pair() -> None:
        # warm first when an earlier round left a filled cache, so neither always runs second
        for go in ([warm, cold] if filled and order[0] is cached_pair else [cold, warm]):
            go()

    def single(name: str, fn: Callable[[], Run]) -> Callable[[], None]:
        def go() -> None:
            runs[name].append(undisturbed(fn))
            report(name, runs[name][-1])
        return go

    order = [single("bare", lambda: floor.loop(job, None)),
             single("nocache", lambda: lora_lab_run(job, root / f"ws-nocache-{next(counter)}",
                                                    False, floor.shuffle_tags)),
             cached_pair]
    for _ in range(repeats):
        for go in order:
            go()
        order.reverse()
    return runs


def _fresh(ws: Path) -> Path:
    """``ws`` emptied: a cold latent cache even when a disturbed run is tried again."""
    shutil.rmtree(ws, ignore_errors=True)
    return ws


def report(name: str, run: Run) -> None:
    extra = f", caching {run.cache_s:.2f} s" if run.cache_s else ""
    print(f"#   {name:<12} {run.s_per_step() * 1000:7.1f} ms/step, loop {run.loop_s:.2f} s{extra}, "
          f"other processes {run.foreign:.2f} cores", flush=True)


# -- profile ---------------------------------------------------------------------------------------
def profile_paths(job: Job, root: Path, floor: Floor) -> None:
    """cProfile of the timed loop of the bare loop and of lora_lab without a latent cache: the
    functions with the most own time, and lora_lab's own functions by cumulative time."""
    bare_prof, lora_prof = cProfile.Profile(), cProfile.Profile()
    wait_for_quiet()
    floor.loop(job, bare_prof)
    wait_for_quiet()
    lora_lab_run(job, root / "ws-profile", False, floor.shuffle_tags, profile=lora_prof)
    steps = job.steps
    for name, prof in (("bare loop", bare_prof), (f"{floor.nocache} (loop only)", lora_prof)):
        print(f"\n## profile: {name}, {steps} steps, own time per step")
        _print_stats(prof, "tottime", steps, 18)
    print("\n## profile: lora_lab functions in its loop, cumulative time per step")
    _print_stats(lora_prof, "cumulative", steps, 25, only="lora_lab")


def _print_stats(prof: cProfile.Profile, key: str, steps: int, limit: int, only: str = "") -> None:
    stats = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (file, line, func), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():
        if only and f"/{only}/" not in file:
            continue
        rows.append((tottime if key == "tottime" else cumtime, calls, file, line, func))
    rows.sort(reverse=True)
    print(f"{'ms/step':>8} {'calls/step':>10}  function")
    for t, calls, file, line, func in rows[:limit]:
        short = file.split("site-packages/")[-1].split("/main/")[-1]
        print(f"{t / steps * 1000:8.2f} {calls / steps:10.1f}  {short}:{line} {func}")


# -- main ------------------------------------------------------------------------------------------
SD_FLOOR = Floor(
    bare_loop,
    what="the bare loop: diffusers' train_text_to_image_lora example's loop, decoding, resizing, "
         "VAE-encoding and text-encoding every step",
    shuffle_tags=True,
    nocache="lora_lab, nothing cached (cache_latents=false, shuffle_tags=true)",
    note="nothing cached: lora_lab caches text embeddings by itself whenever captions cannot change "
         "between steps, so this row sets shuffle_tags=true (same tags, same token count) to make it "
         "encode the text every step, as the bare loop does.")


def main(argv: list[str] | None = None) -> None:
    from lora_lab.tiny import diffusion

    args = parse_args(argv, FAMILIES, __doc__)
    bench(args, diffusion.write_sdxl if args.family == "sdxl" else diffusion.write_sd15, SD_FLOOR)


def bench(args: argparse.Namespace, write_model: Callable[[Path], Path], floor: Floor) -> None:
    """The whole benchmark of ``args.family``: its tiny model (``write_model(folder)``) and the
    images in a temp folder, every path ``args.repeats`` times, the tables, the profile."""
    warnings.filterwarnings("ignore")
    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # the bare loop loads as the example does: quietly
    transformers_logging.disable_progress_bar()

    print_machine()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}")
    with tempfile.TemporaryDirectory(prefix="lora-lab-bench-") as tmp:
        root = Path(tmp)
        model = write_model(root / args.family)
        images = make_dataset(root / "data", args.images, args.size)
        job = Job(args.family, model, root / "data", images, args.resolution, args.steps, args.batch,
                  args.rank, args.lr)
        print(f"# tiny {args.family}, {args.images} {args.size}px JPEGs trained at "
              f"{args.resolution}px, batch {args.batch}, {args.steps} steps, rank {args.rank}, "
              f"lr {args.lr:g}, AdamW, clip 1.0; {args.repeats} rounds, order alternated", flush=True)
        started = time.perf_counter()
        runs = rounds(job, root, args.repeats, floor)
        print_results(job, runs, args.repeats, floor)
        if args.profile:
            profile_paths(job, root, floor)
        print(f"\n# measured in {time.perf_counter() - started:.0f} s")


def print_results(job: Job, runs: dict[str, list[Run]], repeats: int, floor: Floor) -> None:
    med = {k: statistics.median(r.s_per_step() for r in v) for k, v in runs.items()}
    bare = med["bare"]
    print_table(
        f"train tiny {job.family} LoRA, {job.steps} steps of batch {job.batch}: seconds per step "
        f"(steps {WARMUP_STEPS + 1}-{job.steps}), median of {repeats}",
        floor.what,
        [Row(floor.nocache, med["nocache"], bare, NO_CACHE_TARGET),
         Row("lora_lab, latents + text cached, cold cache (loop only)", med["cached"], bare,
             CACHED_TARGET),
         Row("lora_lab, latents + text cached, warm cache (loop only)", med["cached-warm"], bare,
             CACHED_TARGET)])
    loop = {k: statistics.median(r.loop_s for r in v) for k, v in runs.items()}
    total = {k: statistics.median(r.total_s for r in v) for k, v in runs.items()}
    cache = {k: statistics.median(r.cache_s for r in v) for k, v in runs.items()}
    print_table(
        f"the same, whole loop in seconds (all {job.steps} steps) plus lora_lab's one-off caching "
        f"phase, median of {repeats}",
        f"the bare loop's {job.steps} steps",
        [Row(f"{floor.nocache}: loop", loop["nocache"], loop["bare"], NO_CACHE_TARGET),
         Row(f"lora_lab, cold cache: caching ({cache['cached']:.2f} s) + loop", total["cached"],
             loop["bare"], CACHED_TARGET),
         Row(f"lora_lab, warm cache: caching ({cache['cached-warm']:.2f} s) + loop",
             total["cached-warm"], loop["bare"], CACHED_TARGET)])
    print(f"\n{floor.note}")
    best = min(r.s_per_step() for r in runs["bare"])
    print(f"every run (ms/step, in the order run; best-of ratio to the bare loop's best "
          f"{best * 1000:.1f} ms; mean loss over all steps):")
    labels = {**LABELS, "nocache": floor.nocache}
    for k in PATHS:
        rs = runs[k]
        fastest = min(r.s_per_step() for r in rs)
        print(f"  {labels[k]}: " + ", ".join(f"{r.s_per_step() * 1000:.1f}" for r in rs)
              + f" (best {fastest / best:.2f}x); other processes "
              + ", ".join(f"{r.foreign:.2f}" for r in rs)
              + f" cores; loss {statistics.fmean(statistics.fmean(r.losses) for r in rs):.3f}, "
              + f"at the last step {statistics.fmean(r.losses[-1] for r in rs):.3f}")


def parse_args(argv: list[str] | None, families: tuple[str, ...], doc: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--family", choices=families, default=families[0],
                        help=f"which tiny model to train (default {families[0]})")
    parser.add_argument("--images", type=int, help="images in the dataset (default 32; --quick 8)")
    parser.add_argument("--size", type=int, default=96, help="their width and height in pixels (default 96)")
    parser.add_argument("--resolution", type=int, default=64, help="training resolution (default 64)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default 100; --quick 20)")
    parser.add_argument("--batch", type=int, default=2, help="images per step (default 2)")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank, alpha = rank (default 4)")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    parser.add_argument("--repeats", "--repeat", type=int,
                        help="rounds of every path, order alternated (default 3; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 8 images, 20 steps, 1 round")
    parser.add_argument("--profile", action="store_true",
                        help="then profile one bare and one lora_lab uncached run")
    args = parser.parse_args(argv)
    args.images = args.images or (8 if args.quick else 32)
    args.steps = args.steps or (20 if args.quick else 100)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if min(args.images, args.steps, args.batch, args.rank, args.repeats) < 1:
        parser.error("--images, --steps, --batch, --rank and --repeats must be at least 1")
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must be more than {WARMUP_STEPS} (the warm-up steps)")
    if args.resolution % 64 or args.size < args.resolution:
        parser.error("--resolution must be a multiple of 64 and --size at least --resolution")
    return args


if __name__ == "__main__":
    main()
