"""Tryout benchmark: a 3 x 3 LoRA grid on the tiny model through one loaded pipeline (lora_lab's
Tryout) against loading the pipeline for every image, measured in one run.

    .venv/bin/python bench/bench_tryout.py                  # tiny SD1.5, best of 3 (~1.5 min, 2 cores)
    .venv/bin/python bench/bench_tryout.py --repeats 1      # quick
    .venv/bin/python bench/bench_tryout.py --family sdxl    # the tiny SDXL

The grid: 3 prompts (rows, seed 0) x the base alone and a LoRA at 0.5 and 1 (columns), 64 px,
--steps denoising steps. Floor, the same images without a resident pipeline: for each image the
base loaded (the same load_base_model), the LoRA loaded and set to the image's strength, one
render, exactly the calls the Tryout makes. Its images are checked equal to the grid's. A second
row times the same grid asked for again: every image from the cache, nothing loaded. A last table
sets the Tryout against the 9 renders alone (a pipeline loaded beforehand, untimed): the least
any tryout can take, so the ratio is what loading once, reading the LoRA and caching add.
Everything lives in one temp folder that is removed at the end; nothing is downloaded.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from benchlib import Row, best_of, print_machine, print_table

from lora_lab.tiny.diffusion import write_sd15, write_sdxl
from lora_lab.tools.tryout import Tryout
from lora_lab.training.base_model import load_base_model
from lora_lab.training.families import get_family
from lora_lab.training.lora_file import save_lora
from lora_lab.workspace import Workspace

PROMPTS = ["a red circle", "a blue square", "a green triangle"]
STRENGTHS = [0.0, 0.5, 1.0]
SIZE = 64
GUIDANCE = 7.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("sd15", "sdxl"), default="sd15")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per image")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (the best is kept)")
    args = parser.parse_args(argv)
    if min(args.steps, args.repeats) < 1:
        parser.error("--steps and --repeats must be at least 1")
    print_machine()
    with tempfile.TemporaryDirectory(prefix="lora-lab-bench-") as tmp:
        root = Path(tmp)
        base = (write_sdxl if args.family == "sdxl" else write_sd15)(root / args.family)
        lora = _lora(base, args.family, root / "lora.safetensors")
        ws = Workspace(root / "ws")
        cache = ws.root / "cache"
        grids: list = []

        def grid() -> None:
            tryout = Tryout(base, ws)
            grids.append(tryout.grid([lora], PROMPTS, STRENGTHS, [0], steps=args.steps, guidance=GUIDANCE,
                                     width=SIZE, height=SIZE))
            tryout.close()

        images: list[np.ndarray] = []
        per_image = best_of(lambda: images.extend(_per_image(base, args.family, lora, args.steps)), args.repeats)
        resident = best_of(grid, args.repeats, setup=lambda: shutil.rmtree(cache, ignore_errors=True))
        cached = best_of(grid, args.repeats)
        pipe = load_base_model(str(base), args.family).pipeline
        pipe.load_lora_weights(str(lora), adapter_name="lora")
        renders = best_of(lambda: _renders(pipe, args.family, args.steps), args.repeats)
        assert grids[-1].hits == 9 and grids[0].hits == 0
        cells = [np.asarray(c.image) for c in grids[0].cells]
        same = all(np.array_equal(a, b) for a, b in zip(cells, images[:9]))
    print_table(f"3 x 3 grid, tiny {args.family}, {SIZE} px, {args.steps} steps, best of {args.repeats}"
                f" (images equal to the floor's: {'yes' if same else 'NO'})",
                "the pipeline loaded for each image (base, LoRA at its strength, one render)",
                [Row("Tryout: one pipeline, LoRA swapped by strength", resident, per_image),
                 Row("the same grid again (all 9 from the cache)", cached, per_image)])
    print_table("the same Tryout grid against its 9 renders alone",
                "9 renders on a pipeline loaded beforehand with the LoRA in it (untimed)",
                [Row("Tryout: one load, the LoRA read and loaded, 9 renders, cache writes", resident, renders)])


def _lora(base: Path, family: str, path: Path) -> Path:
    """A LoRA of the UNet's attention whose every weight matters (lora_B random, not zero)."""
    from peft import LoraConfig

    pipe = load_base_model(str(base), family).pipeline
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.1)
    return save_lora(path, pipe.unet, [], family=family)


def _per_image(base: Path, family: str, lora: Path, steps: int) -> list[np.ndarray]:
    """The grid's images, row by row, each from a pipeline loaded for it alone."""
    images = []
    for prompt in PROMPTS:
        for strength in STRENGTHS:
            pipe = load_base_model(str(base), family).pipeline
            if strength:
                pipe.load_lora_weights(str(lora), adapter_name="lora")
                pipe.set_adapters(["lora"], [strength])
            images.append(_render(pipe, family, prompt, steps))
    return images


def _renders(pipe, family: str, steps: int) -> None:
    """The grid's 9 renders alone, on a pipeline that holds the LoRA already: what no tryout
    can go below."""
    for prompt in PROMPTS:
        for strength in STRENGTHS:
            if strength:
                pipe.enable_lora()
                pipe.set_adapters(["lora"], [strength])
            else:
                pipe.disable_lora()
            _render(pipe, family, prompt, steps)


def _render(pipe, family: str, prompt: str, steps: int) -> np.ndarray:
    with torch.no_grad():
        inputs = get_family(family).prompt_inputs(pipe, prompt, "", GUIDANCE, torch.device("cpu"))
        image = pipe(**inputs, num_inference_steps=steps, width=SIZE, height=SIZE,
                     generator=torch.Generator().manual_seed(0)).images[0]
    return np.asarray(image)


if __name__ == "__main__":
    main()
