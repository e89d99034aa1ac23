"""``lora-lab train CONFIG.toml``: train a LoRA in the foreground, recorded as a train job."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import Conflict, LoraLabError
from ..jobs import JobRecord, open_job
from ..workspace import Workspace
from .output import add_json_flag, emit, progress_bar, workspace


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("train", help="train a LoRA (foreground, with a progress bar)",
                       description="Train a LoRA from a TOML config; `--init` writes a starter one.")
    c.add_argument("config", nargs="?", type=Path, help="training config (TOML)")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set train.lr=5e-5 (repeatable)")
    c.add_argument("--resume", metavar="JOB",
                   help="continue a train job from its last checkpoint (its own config is used)")
    c.add_argument("--gpus", type=int, default=1,
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
        job = _job(ws, args.resume)
        config = TrainConfig.from_dict(job.spec()["params"]["config"])
    elif args.config is None:
        raise LoraLabError("name a config file (or --resume JOB); `lora-lab train --init "
                           "my.toml --base MODEL --dataset NAME` writes one")
    else:
        config = TrainConfig.load(args.config)
        job = None
    config = config.apply_overrides(args.set) if args.set else config
    if args.gpus < 1:
        raise LoraLabError(f"--gpus must be at least 1, not {args.gpus}")
    job = job or JobRecord.create("train", {"config": config.to_dict()}, ws)
    show = (lambda e: None) if args.json else _show
    try:
        if args.gpus > 1:
            result = _launch(job, args.gpus, bool(args.resume), show)
        else:
            from ..training.trainer import train

            result = train(config, job, resume=bool(args.resume), workspace=ws, on_event=show).__dict__
    finally:
        if not args.json:
            print(file=sys.stderr)
    result = {**{k: str(v) if isinstance(v, Path) else v for k, v in result.items()}, "job": job.id}
    emit(args, result, f"trained {result['steps']} steps in {result['seconds']:.1f} s\n"
                       f"LoRA: {result['output']}\njob record: {job.path}")


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


def _job(ws: Workspace, job_id: str) -> JobRecord:
    job = open_job(job_id, ws)
    if job.spec()["kind"] != "train":
        raise LoraLabError(f"job {job_id} is a {job.spec()['kind']} job, not a train job")
    state = job.view()["state"]
    if state == "succeeded":
        raise LoraLabError(f"job {job_id} already succeeded; nothing to resume")
    if state in ("queued", "running"):
        raise Conflict(f"job {job_id} is still {state}; `lora-lab jobs cancel {job_id}` first, "
                       "or wait for it")
    return job


def _show(event: dict[str, Any]) -> None:
    if event["type"] == "progress":
        eta = f"ETA {event['eta_s']:.0f} s" if event.get("eta_s") is not None else ""
        progress_bar(event["step"], event["total"],
                     f"loss {event['loss']:.4f}  {event['it_s']:.2f} it/s  {eta}")
    elif event["type"] == "phase" and event["phase"] != "training":
        print(f"\r{event['phase']}...", file=sys.stderr, flush=True)


def _launch(job: JobRecord, gpus: int, resume: bool, show) -> dict[str, Any]:
    """Run the job under ``accelerate launch`` with ``gpus`` processes, following its events."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
           str(gpus), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "0", "-m", "lora_lab.training", str(job.path)]
    if resume:
        cmd.append("--resume")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    seen = len(job.events())
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        time.sleep(0.2)
        for event in job.events(seen):
            show(event)
            seen += 1
    stderr = proc.stderr.read()
    status = job.status()
    if proc.returncode != 0 or status["state"] != "succeeded":
        cause = status.get("error") or (stderr.strip().splitlines() or ["no output"])[-1]
        raise LoraLabError(f"training with {gpus} processes failed: {cause}")
    return {k: status[k] for k in ("output", "steps", "seconds", "loss")}
