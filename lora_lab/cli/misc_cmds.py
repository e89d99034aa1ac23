"""``lora-lab calc`` and ``lora-lab tiny``."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..calc import plan_steps
from ..datasets import Dataset
from ..errors import LoraLabError
from .output import add_json_flag, emit, workspace


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("calc", help="steps per epoch and total steps")
    count = c.add_mutually_exclusive_group(required=True)
    count.add_argument("--images", type=int, help="number of images")
    count.add_argument("--dataset", help="count the images of this dataset")
    c.add_argument("--repeats", type=int, default=1)
    c.add_argument("--epochs", type=int, default=1)
    c.add_argument("--batch", type=int, default=1, help="batch size")
    c.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    add_json_flag(c)
    c.set_defaults(run=cmd_calc)

    c = sub.add_parser("tiny", help="fabricate tiny SD1.5/SDXL pipelines, caption GGUFs and samples")
    c.add_argument("dir", help="output folder")
    add_json_flag(c)
    c.set_defaults(run=cmd_tiny)


def cmd_calc(args: argparse.Namespace) -> None:
    images = args.images
    if args.dataset:
        images = len(Dataset.open(args.dataset, workspace(args)))
        if not images:
            raise LoraLabError(f"dataset {args.dataset!r} has no images")
    plan = plan_steps(images, args.repeats, args.epochs, args.batch, args.grad_accum)
    emit(args, plan.to_dict(), plan.explain())


def cmd_tiny(args: argparse.Namespace) -> None:
    from ..tiny import fabricate

    paths = fabricate(Path(args.dir))
    emit(args, {k: str(v) for k, v in paths.items()},
         "\n".join(f"{k}: {v}" for k, v in paths.items()))
