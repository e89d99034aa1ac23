"""``lora-lab jobs submit|list|show|logs|cancel|resume|rm``: background jobs from the terminal."""
from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..jobdir import JobFollower, JobRecord, list_jobs, open_job
from ..jobs import LORA_CHOICES, cancel, delete, resume, submit
from .caption_cmds import add_caption_arguments, caption_args
from .output import add_json_flag, emit, workspace

FOLLOW_POLL_S = 0.25


def register(sub: argparse._SubParsersAction) -> None:
    jobs = sub.add_parser("jobs", help="background caption and training jobs",
                          description="Jobs run as their own processes: they outlive the "
                                      "terminal, the Jupyter server and the browser.")
    verbs = jobs.add_subparsers(title="verbs", metavar="VERB")
    s = verbs.add_parser("submit", help="start a job in the background")
    kinds = s.add_subparsers(title="kinds", metavar="KIND")
    c = kinds.add_parser("caption", help="caption a dataset (the options of `lora-lab caption`)")
    add_caption_arguments(c)
    c.set_defaults(run=cmd_submit_caption)
    t = kinds.add_parser("train", help="train a LoRA from a TOML config")
    t.add_argument("config", type=Path, help="training config (TOML)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting (repeatable)")
    t.add_argument("--gpus", type=int, default=1,
                   help="data-parallel processes through `accelerate launch` (default 1)")
    t.set_defaults(run=cmd_submit_train)
    for p in (c, t):
        p.add_argument("--notebook", type=Path, metavar="IPYNB",
                       help="run it through this notebook with papermill (parameters job_dir, "
                            "resume); the executed copy is the job's run.ipynb")
        add_json_flag(p)
    for name, run, text in (("list", cmd_list, "every job, newest first"),
                            ("show", cmd_show, "one job's status and last events"),
                            ("logs", cmd_logs, "a job's log"),
                            ("cancel", cmd_cancel, "stop a queued or running job"),
                            ("resume", cmd_resume, "continue an interrupted, failed or cancelled job")):
        v = verbs.add_parser(name, help=text)
        if name != "list":
            v.add_argument("id", help="job id (see `lora-lab jobs list`)")
        if name == "logs":
            v.add_argument("-f", "--follow", action="store_true",
                           help="keep printing until the job ends")
        if name == "cancel":
            v.add_argument("--grace", type=float, default=10.0, metavar="S",
                           help="seconds to stop by itself before it is killed (default 10)")
        if name != "logs":
            add_json_flag(v)
        v.set_defaults(run=run)
    rm = verbs.add_parser("rm", help="delete ended jobs: their folders (checkpoints, samples, logs)")
    rm.add_argument("ids", nargs="+", metavar="ID", help="job ids (see `lora-lab jobs list`)")
    rm.add_argument("--lora", choices=LORA_CHOICES, default="keep",
                    help="the LoRA file a job wrote: keep it (default) or remove it too (only "
                         "inside the workspace)")
    add_json_flag(rm)
    rm.set_defaults(run=cmd_rm)


def cmd_submit_caption(args: argparse.Namespace) -> None:
    _submitted(args, submit("caption", caption_args(args), workspace(args), notebook=args.notebook))


def cmd_submit_train(args: argparse.Namespace) -> None:
    from ..training.config import TrainConfig

    config = TrainConfig.load(args.config)
    config = config.apply_overrides(args.set) if args.set else config
    _submitted(args, submit("train", {"config": config.to_dict(), "gpus": args.gpus},
                            workspace(args), notebook=args.notebook))


def _submitted(args: argparse.Namespace, job: JobRecord) -> None:
    emit(args, job.view(), f"submitted {job.id}\n  follow it: lora-lab jobs logs {job.id} -f")


def cmd_list(args: argparse.Namespace) -> None:
    views = [_sized(job) for job in list_jobs(workspace(args))]
    total = f"total {_size(sum(v['bytes'] for v in views))} in {len(views)} jobs"
    emit(args, views, "\n".join([*(_line(v) for v in views), total]) if views else "no jobs yet")


def _sized(job: JobRecord) -> dict[str, Any]:
    """The job's view with the size of its folder (read here only: it walks the folder)."""
    return {**job.view(), "bytes": job.disk_bytes()}


def _line(view: dict[str, Any]) -> str:
    progress = f"{view['progress']:.0%}" if view.get("progress") is not None else ""
    return "\t".join([view["id"], view["state"], view.get("phase") or "", progress,
                      _size(view["bytes"])])


def _size(n: float) -> str:
    """Bytes as people read them: 812 B, 3.4 MB."""
    units = ["B", "KB", "MB", "GB", "TB"]
    while n >= 1000 and len(units) > 1:
        n, units = n / 1000, units[1:]
    return f"{n:.0f} B" if units[0] == "B" else f"{n:.1f} {units[0]}"


def cmd_show(args: argparse.Namespace) -> None:
    job = open_job(args.id, workspace(args))
    view = _sized(job)
    lines = [_line(view), f"path: {job.path}"]
    if view.get("error"):
        lines.append(f"error: {view['error']}")
    lines += [f"  {e['type']} " + " ".join(f"{k}={v}" for k, v in e.items() if k not in ("type", "time"))
              for e in job.events()[-5:]]
    emit(args, {**view, "events": job.events()[-20:]}, "\n".join(lines))


def cmd_logs(args: argparse.Namespace) -> None:
    job = open_job(args.id, workspace(args))
    follower = JobFollower(job)
    if args.follow:
        messages: Iterable[dict[str, Any]] = follower.follow(FOLLOW_POLL_S)
    else:
        final = job.finished
        messages = (m for piece in iter(lambda: follower.read(final), []) for m in piece)
    for message in messages:
        if message["type"] == "log_line":
            print(message["line"], flush=True)


def cmd_cancel(args: argparse.Namespace) -> None:
    view = cancel(open_job(args.id, workspace(args)), grace_s=args.grace)
    emit(args, view, f"{view['id']} {view['state']}")


def cmd_resume(args: argparse.Namespace) -> None:
    _submitted(args, resume(open_job(args.id, workspace(args))))


def cmd_rm(args: argparse.Namespace) -> None:
    ws = workspace(args)
    jobs = [open_job(job_id, ws) for job_id in dict.fromkeys(args.ids)]  # every id checked first
    deleted = delete(jobs, ws, lora=args.lora)
    emit(args, deleted, "\n".join(_deleted_line(d) for d in deleted))


def _deleted_line(d: dict[str, Any]) -> str:
    line = f"deleted {d['id']} ({_size(d['bytes'])})"
    if d["lora_removed"]:
        return f"{line}; removed its LoRA {d['lora']}"
    if d["lora"]:
        return f"{line}; kept its LoRA {d['lora']}" + (f": {d['lora_kept']}" if d["lora_kept"] else "")
    return line
