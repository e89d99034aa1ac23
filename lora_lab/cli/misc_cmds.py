"""``lora-lab calc`` and ``lora-lab tiny``."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..aspect_buckets import FAMILIES
from ..calc import StepPlan, plan_steps
from ..errors import LoraLabError
from ..tiny import FLOW_FAMILIES
from .output import add_json_flag, emit, workspace

# what `lora-lab tiny --only` may name
_TINY_PARTS = ("sd15", "sdxl", "caption", "samples", *FLOW_FAMILIES)

# calc flag -> the config key it sets (given flags override a --config's values)
_SETTINGS = {"family": "model.family", "repeats": "dataset.repeats",
             "resolution": "dataset.resolution", "epochs": "train.epochs", "batch": "train.batch_size",
             "grad_accum": "train.grad_accum", "max_steps": "train.max_steps"}


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("calc", help="steps per epoch and total steps, as the trainer counts them",
                       description="Steps per epoch and in total. A batch never mixes aspect-ratio "
                                   "buckets, so with --dataset or --config each bucket is counted "
                                   "apart, from the images' sizes, exactly as `lora-lab train` will "
                                   "(the images validation holds out left aside).")
    count = c.add_mutually_exclusive_group(required=True)
    count.add_argument("--images", type=int, help="number of images (all in one bucket)")
    count.add_argument("--dataset", help="a dataset name or a folder: its images' buckets")
    count.add_argument("--config", type=Path, help="a training config (TOML): its dataset and settings")
    c.add_argument("--repeats", type=int, help="times each image is seen per epoch (default 1)")
    c.add_argument("--epochs", type=int, help="default 1, or the config's")
    c.add_argument("--batch", type=int, help="batch size (default 1, or the config's)")
    c.add_argument("--grad-accum", type=int, help="gradient accumulation steps (default 1)")
    c.add_argument("--max-steps", type=int, help="a total that wins over epochs (default 0 = off)")
    c.add_argument("--gpus", type=int, default=1, help="data-parallel processes (default 1)")
    c.add_argument("--family", choices=FAMILIES, help="whose default buckets (default sd15, or "
                                                      "the config's model)")
    c.add_argument("--resolution", type=int, help="training resolution (default: the family's)")
    add_json_flag(c)
    c.set_defaults(run=cmd_calc)

    c = sub.add_parser("tiny", help="fabricate tiny SD1.5/SDXL and flow-matching (Z-Image, Flux, Flux.2 klein, "
                                    "Qwen-Image, Chroma) pipelines, caption GGUFs and samples")
    c.add_argument("dir", help="output folder")
    c.add_argument("--only", nargs="+", choices=_TINY_PARTS, metavar="NAME",
                   help=f"write only these ({' '.join(_TINY_PARTS)}); default: all")
    add_json_flag(c)
    c.set_defaults(run=cmd_tiny)


def cmd_calc(args: argparse.Namespace) -> None:
    if args.gpus < 1:
        raise LoraLabError(f"--gpus must be at least 1, not {args.gpus}")
    if args.images is not None:
        plan = _flat_plan(args)
    else:
        from ..training.config import TrainConfig
        from ..training.data import measure_images, needs_hashes, steps_for

        if args.config:
            config = TrainConfig.load(args.config)
        else:  # the family is given, so model.base is never read
            config = TrainConfig.from_dict({"model": {"base": "-", "family": args.family or "sd15"},
                                            "dataset": {"source": args.dataset}, "train": {"epochs": 1}})
        given = [f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"
                 for flag, key in _SETTINGS.items() if (value := getattr(args, flag)) is not None]
        config = config.apply_overrides(given) if given else config
        sizes = measure_images(config.dataset.source, workspace(args), needs_hashes(config))
        if not sizes:
            raise LoraLabError(f"{config.dataset.source!r} has no images")
        plan = steps_for(config, sizes, args.gpus)
    emit(args, plan.to_dict(), plan.explain())


def _flat_plan(args: argparse.Namespace) -> StepPlan:
    """--images: every image in one bucket, as for a dataset of one aspect ratio."""
    unused = [f"--{flag}" for flag in ("family", "resolution") if getattr(args, flag) is not None]
    if unused:
        raise LoraLabError(f"{' and '.join(unused)} need --dataset or --config (buckets come "
                           "from the images' sizes)")
    repeats, batch, accum, epochs, max_steps = (
        default if value is None else value for value, default in
        ((args.repeats, 1), (args.batch, 1), (args.grad_accum, 1), (args.epochs, 1), (args.max_steps, 0)))
    for flag, value in (("images", args.images), ("repeats", repeats)):
        if value < 1:
            raise LoraLabError(f"--{flag} must be at least 1, not {value}")
    return plan_steps([args.images * repeats], batch, accum, args.gpus, epochs, max_steps,
                      images=args.images, repeats=repeats)


def cmd_tiny(args: argparse.Namespace) -> None:
    from ..tiny import fabricate

    if args.only:
        only = set(args.only)
        paths = fabricate(Path(args.dir), sd15="sd15" in only, sdxl="sdxl" in only, caption="caption" in only,
                          samples="samples" in only, flow=[f for f in FLOW_FAMILIES if f in only])
    else:
        paths = fabricate(Path(args.dir))
    emit(args, {k: str(v) for k, v in paths.items()},
         "\n".join(f"{k}: {v}" for k, v in paths.items()))
