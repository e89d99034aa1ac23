"""``lora-lab jobs submit|list|show|logs|cancel|resume|rm``: background jobs from the terminal."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..jobdir import STATES, JobFollower, JobRecord, open_job
from ..jobs import KINDS, LORA_CHOICES, cancel, delete, job_summaries, job_summary, resume, submit
from ..jobs.executors import EXECUTORS, reattach
from ..jobs.summary import COLUMNS, cells, format_bytes, table
from ..training.tracking import TENSORBOARD, tensorboard_command
from ..workspace import Workspace
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
        add_executor_flag(p)
        add_json_flag(p)
    for name, run, text in (("list", cmd_list, "every job, newest first"),
                            ("show", cmd_show, "one job's status and last events"),
                            ("logs", cmd_logs, "a job's log"),
                            ("cancel", cmd_cancel, "stop a queued or running job"),
                            ("resume", cmd_resume, "continue an interrupted, failed or cancelled job")):
        v = verbs.add_parser(name, help=text)
        if name == "list":
            v.add_argument("--state", choices=STATES, help="only the jobs in this state")
            v.add_argument("--kind", choices=tuple(KINDS), help="only the jobs of this kind")
        else:
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


def add_executor_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=EXECUTORS,
                   help="where the job runs: local (a process on this box) or ray (the Ray "
                        "cluster, see `lora-lab cluster`); default $LORA_LAB_EXECUTOR, else local")


def cmd_submit_caption(args: argparse.Namespace) -> None:
    _submitted(args, submit("caption", caption_args(args), workspace(args), notebook=args.notebook,
                            executor=args.executor))


def cmd_submit_train(args: argparse.Namespace) -> None:
    from ..training.config import TrainConfig

    config = TrainConfig.load(args.config)
    config = config.apply_overrides(args.set) if args.set else config
    _submitted(args, submit("train", {"config": config.to_dict(), "gpus": args.gpus},
                            workspace(args), notebook=args.notebook, executor=args.executor))


def _submitted(args: argparse.Namespace, job: JobRecord) -> None:
    view = job.view()
    view["executor"] = view.get("executor") or "local"
    where = " on the Ray cluster" if view["executor"] == "ray" else ""
    emit(args, view, f"submitted {job.id}{where}\n  follow it: lora-lab jobs logs {job.id} -f")


def cmd_list(args: argparse.Namespace) -> None:
    ws = workspace(args)
    _reattach(ws)
    rows = [{**s, "bytes": JobRecord(ws.jobs / s["id"]).disk_bytes()}
            for s in job_summaries(ws, state=args.state, kind=args.kind)]
    if not rows:
        which = " ".join(f for f in (args.state, args.kind) if f)
        emit(args, rows, f"no {which} jobs" if which else "no jobs yet")
        return
    total = f"total {format_bytes(sum(r['bytes'] for r in rows))} in {len(rows)} jobs"
    emit(args, rows, "\n".join([*table([_cells(r) for r in rows], LIST_COLUMNS), total]))


LIST_COLUMNS = (*COLUMNS[:-1], "size", COLUMNS[-1])  # the reason last: the longest


def _cells(summary: dict[str, Any]) -> dict[str, str]:
    """A summary's table cells, with the size of its folder."""
    return {**cells(summary), "size": format_bytes(summary["bytes"])}


def _reattach(ws: Workspace) -> None:
    """Follow again the bucket jobs nothing here follows (this box restarted while they ran)."""
    for job in reattach(ws):
        print(f"following {job.id} on the Ray cluster again", file=sys.stderr)


def cmd_show(args: argparse.Namespace) -> None:
    job = open_job(args.id, workspace(args))
    view = {**job_summary(job), "bytes": job.disk_bytes()}
    lines = [*table([_cells(view)], LIST_COLUMNS[:-1]), f"path: {job.path}", *_where_lines(job)]
    if view.get("error"):
        lines.append(f"error: {view['error']}")
    lines += [_lora_line(f) for f in view["loras"]]
    if (job.path / TENSORBOARD).is_dir():
        lines.append(f"tensorboard: {tensorboard_command(job.path / TENSORBOARD)}")
    lines += [f"  {e['type']} " + " ".join(f"{k}={v}" for k, v in e.items() if k not in ("type", "time"))
              for e in job.events()[-5:]]
    emit(args, {**view, "events": job.events()[-20:]}, "\n".join(lines))


def _where_lines(job: JobRecord) -> list[str]:
    """Where the job runs: the executor, a Ray job's cluster and submission id, and why a
    queued one waits (in full: the table cuts it)."""
    status = job.status()
    executor = status.get("executor") or "local"
    lines = [f"executor: {executor}"]
    handle = status.get("handle") or {}
    if executor == "ray":
        lines.append(f"ray cluster: {handle.get('address') or '?'}, submission id: "
                     f"{handle.get('submission_id') or 'not submitted yet'}")
    if status.get("reason") and status["state"] == "queued":
        lines.append(f"reason: {status['reason']}")
    return lines


def _lora_line(f: dict[str, Any]) -> str:
    """One LoRA file of a job: which save, where, how big (or that it was deleted since)."""
    which = "LoRA" if f["step"] is None else f"step {f['step']}"
    return f"{which}: {f['path']} ({'missing' if f['bytes'] is None else format_bytes(f['bytes'])})"


def cmd_logs(args: argparse.Namespace) -> None:
    ws = workspace(args)
    _reattach(ws)
    job = open_job(args.id, ws)
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
    line = f"deleted {d['id']} ({format_bytes(d['bytes'])})"
    if d["step_loras_removed"]:
        line += f"; removed its {d['step_loras_removed']} intermediate LoRA file(s)"
    if d["lora_removed"]:
        return f"{line}; removed its LoRA {d['lora']}"
    if d["lora"]:
        return f"{line}; kept its LoRA {d['lora']}" + (f": {d['lora_kept']}" if d["lora_kept"] else "")
    return line
