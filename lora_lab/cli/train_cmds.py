"""``lora-lab train CONFIG.toml``: train a LoRA in the foreground, recorded as a train job."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import LoraLabError
from ..jobdir import JobRecord, open_job
from ..jobs import check_params, reopen, run_here
from .output import add_json_flag, emit, progress_bar, progress_end, progress_note, workspace


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("train", help="train a LoRA (foreground, with a progress bar)",
                       description="Train a LoRA from a TOML config; `--init` writes a starter one.")
    c.add_argument("config", nargs="?", type=Path, help="training config (TOML)")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set train.lr=5e-5 (repeatable)")
    c.add_argument("--resume", metavar="JOB",
                   help="continue a train job from its last checkpoint (its own config is used)")
    c.add_argument("--gpus", type=int,
                   help="data-parallel processes through `accelerate launch` (default 1)")
    c.add_argument("--init", action="store_true",
                   help="write a commented starter config to CONFIG and exit")
    c.add_argument("--base", help="with --init: base model (diffusers folder, .safetensors, Hub id)")
    c.add_argument("--dataset", help="with --init: dataset name or folder")
    c.add_argument("--preset", help="with --init: start from a preset (sd15, sd15-lowvram, sdxl, "
                                    "sdxl-lowvram), as the notebook launcher does")
    add_json_flag(c)
    c.set_defaults(run=cmd_train)


def cmd_train(args: argparse.Namespace) -> None:
    from ..training.config import TrainConfig, default_toml

    ws = workspace(args)
    if args.init:
        return _init(args, default_toml)
    if args.resume:
        if args.set or args.gpus is not None:
            raise LoraLabError("a resumed job keeps its own config and GPU count (--set and "
                               "--gpus apply to a new run)")
        job = reopen(open_job(args.resume, ws), "train")
    elif args.config is None:
        raise LoraLabError("name a config file (or --resume JOB); `lora-lab train --init "
                           "my.toml --base MODEL --dataset NAME` writes one")
    else:
        config = TrainConfig.load(args.config)
        config = config.apply_overrides(args.set) if args.set else config
        gpus = 1 if args.gpus is None else args.gpus
        params = check_params("train", {"config": config.to_dict(), "gpus": gpus}, ws)
        job = JobRecord.create("train", params, ws)
    show = (lambda e: None) if args.json else _show
    try:
        result = run_here(job, ws, resume=bool(args.resume), on_event=show)
    finally:
        progress_end()
    out = {"output": str(result.output), "steps": result.steps, "seconds": result.seconds,
           "loss": result.loss, "job": job.id}
    status = job.status()
    out.update({k: status[k] for k in ("best_step", "best_val_loss", "best_lora") if k in status})
    best = (f"\nbest validation loss {out['best_val_loss']:.4f} at step {out['best_step']}: "
            f"{out.get('best_lora', out['output'])}" if "best_step" in out else "")
    emit(args, out, f"trained {out['steps']} steps in {out['seconds']:.1f} s\n"
                    f"LoRA: {out['output']}{best}\njob record: {job.path}")


def _init(args: argparse.Namespace, default_toml) -> None:
    if args.config is None or not (args.base and args.dataset):
        raise LoraLabError("--init needs CONFIG, --base and --dataset")
    if args.config.exists():
        raise LoraLabError(f"{args.config} exists; not overwriting it")
    from .. import atomic
    from ..training.presets import get_preset

    preset = get_preset(args.preset).overrides if args.preset else None
    atomic.write_text(args.config, default_toml(args.base, args.dataset, preset))
    emit(args, {"config": str(args.config)}, f"wrote {args.config}; edit it, then "
                                             f"`lora-lab train {args.config}`")


def _show(event: dict[str, Any]) -> None:
    if event["type"] == "progress":
        eta = f"ETA {event['eta_s']:.0f} s" if event.get("eta_s") is not None else ""
        progress_bar(event["step"], event["total"],
                     f"loss {event['loss']:.4f}  {event['it_s']:.2f} it/s  {eta}")
    elif event["type"] == "validation":
        progress_note(f"step {event['step']}: validation loss {event['loss']:.4f}"
                      + (" (best)" if event["best"] else ""))
    elif event["type"] == "phase" and event["phase"] not in ("training", "evaluating"):
        progress_note(f"{event['phase']}...")
    elif event["type"] == "log" and event.get("level") == "warning":  # a fall back to the CPU, ...
        progress_note(f"warning: {event['message']}")
