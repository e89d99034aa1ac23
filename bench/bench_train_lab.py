"""TrainLab benchmark: ``lab.batch(n)`` once the run is loaded, against the trainer building the
same micro-batch and against one training step, in the same run.

    .venv/bin/python bench/bench_train_lab.py                 # tiny SD1.5, batch sizes 1 and 2 (~1 min)
    .venv/bin/python bench/bench_train_lab.py --family sdxl --batch-sizes 4

``lab.batch(n)`` builds micro-batch ``n`` with the trainer's own ``micro_batch`` and adds what it
shows: the images loaded, cropped and flipped again, the latents decoded back to pixels by the
VAE, and each caption tokenized per text encoder (the HTML display, thumbnails as PNG, is timed
too). Floors: ``trainer.micro_batch(n)`` alone (what
the training loop builds), and one optimizer step (``lab.step()``: what a user waits for anyway).
Each figure is the median over ``--batches`` micro-batches, best of ``--repeats`` rounds.
Target (issue 17): ``lab.batch(n)`` under 50 ms on the tiny model.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import argparse
import tempfile
import time
import warnings
from pathlib import Path

from benchlib import Row, Target, p50, print_machine, print_table, tiny_family

TARGET = Target(ms=50)


def _medians(fns: list, count: int, repeats: int) -> list[float]:
    """For each of ``fns``: the best over ``repeats`` rounds of the median time of ``fn(n)`` for
    n in 0..count-1, the functions taking turns on each n (load on a shared machine then falls
    on all of them alike)."""
    rounds: list[list[list[float]]] = [[[] for _ in fns] for _ in range(repeats)]
    for r in range(repeats):
        for n in range(count):
            for i, fn in enumerate(fns):
                start = time.perf_counter()
                fn(n)
                rounds[r][i].append(time.perf_counter() - start)
    return [min(p50(rounds[r][i]) for r in range(repeats)) for i in range(len(fns))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="sd15", help="a tiny model family (sd15, sdxl, zimage, ...)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2],
                        help="train.batch_size of each run (1: the default)")
    parser.add_argument("--batches", type=int, default=20, help="micro-batches timed per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    from lora_lab import Workspace
    from lora_lab.training import TrainLab

    print_machine()
    with tempfile.TemporaryDirectory(prefix="bench-train-lab-") as tmp:
        root = Path(tmp)
        tiny = tiny_family(root / "tiny", args.family)
        for size in args.batch_sizes:
            lab = TrainLab({"model": {"base": str(tiny[args.family])},
                            "dataset": {"source": str(tiny["samples"]), "resolution": 64,
                                        "min_bucket": 64, "max_bucket": 128, "trigger": "sks",
                                        "flip": True},
                            "train": {"max_steps": args.batches + args.repeats + 1, "lr": 1e-4,
                                      "batch_size": size}},
                           Workspace(root / f"ws-{size}"))
            _measure(lab, args, f"tiny {args.family}, 64 px, batch size {size}, median of {args.batches}")
            lab.close()


def _measure(lab, args: argparse.Namespace, title: str) -> None:
    import torch

    trainer = lab.trainer
    lab.batch(0)._repr_html_()  # first calls pay one-off costs (allocations, tokenizer caches)
    with torch.no_grad():
        trainer.micro_batch(0)
    with torch.no_grad():
        shown, displayed, built = _medians(
            [lab.batch, lambda n: lab.batch(n)._repr_html_(), trainer.micro_batch],
            args.batches, args.repeats)
    stepped, again = _medians([lambda n: lab.step(), lab.batch], 1, args.repeats + 1)
    print_table(f"lab.batch(n) against the trainer building it ({title})",
                "trainer.micro_batch(n): the micro-batch the loop trains on",
                [Row("lab.batch(n)", shown, built, TARGET),
                 Row("lab.batch(n) and its HTML display", displayed, built)])
    print_table(f"lab.batch(n) against a training step ({title})", "lab.step(): one optimizer step",
                [Row("lab.batch(n) (the step's own, timed beside it)", again, stepped, TARGET)])

if __name__ == "__main__":
    main()
