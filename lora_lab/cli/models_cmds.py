"""``lora-lab models list|pull``: the model catalogue, and pulls into the workspace's models/."""
from __future__ import annotations

import argparse
from typing import Any

from ..errors import LoraLabError
from ..jobs import submit
from ..jobs.executors import EXECUTORS
from ..jobs.summary import format_bytes, table
from ..models import CATALOGUE, list_models, pull
from .output import add_json_flag, emit, progress_bar, progress_end, workspace


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="the model catalogue: list and pull base and caption models",
                            description="Models live in the workspace's models/, one folder each. "
                                        "Pulls resume where an interrupted one stopped, and every "
                                        "file is checked against the Hub's size and hash.")
    verbs = models.add_subparsers(title="verbs", metavar="VERB")
    ls = verbs.add_parser("list", help="the catalogue and what models/ holds, with sizes")
    add_json_flag(ls)
    ls.set_defaults(run=cmd_list)
    p = verbs.add_parser("pull", help="download a model into models/ (resumable)",
                         description="Download a catalogue model, a whole Hub repo or one file "
                                     "of it. Gated models need their licence accepted on the "
                                     "Hub and HF_TOKEN set (or `hf auth login`).")
    p.add_argument("model", help=f"a catalogue name ({', '.join(CATALOGUE)}), a Hub repo ORG/NAME, "
                                 "or one file ORG/NAME/PATH")
    p.add_argument("--name", help="the folder under models/ (default: the catalogue name, or the "
                                  "repo's name)")
    p.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="with ORG/NAME: only the files matching (repeatable; default: every file)")
    p.add_argument("--background", action="store_true",
                   help="pull as a background job (see `lora-lab jobs`), and return at once")
    p.add_argument("--executor", choices=EXECUTORS,
                   help="with --background: where the job runs, local (this box) or ray (the "
                        "Ray cluster); default $LORA_LAB_EXECUTOR, else local")
    add_json_flag(p)
    p.set_defaults(run=cmd_pull)


def cmd_list(args: argparse.Namespace) -> None:
    listing = list_models(workspace(args))
    emit(args, listing, "\n".join(_listing_lines(listing)))


def _listing_lines(listing: dict[str, Any]) -> list[str]:
    rows = [{"name": m["name"], "state": m["state"],
             "size": format_bytes(m["bytes"]) if m["bytes"] else f"~{m['size_gb']:g} GB",
             "gated": "gated" if m["gated"] else "", "repo": m["repo"]} for m in listing["catalogue"]]
    lines = table(rows, ("name", "state", "size", "gated", "repo"))
    if listing["other"]:
        lines += ["", "also in models/:"]
        lines += [f"  {o['name']}{'/' if o['folder'] else ''}  {format_bytes(o['bytes'])}"
                  + (f"  ({o['repo']}{'' if o['complete'] else ', unfinished'})" if o["repo"] else "")
                  for o in listing["other"]]
    lines.append(f"{listing['folder']}: {format_bytes(listing['free_bytes'])} free")
    return lines


def cmd_pull(args: argparse.Namespace) -> None:
    ws = workspace(args)
    include = tuple(args.include)
    if args.executor and not args.background:
        raise LoraLabError("--executor is for a background pull: add --background")
    if args.background:
        params = {"model": args.model, "name": args.name, "include": list(include)}
        job = submit("pull", params, ws, executor=args.executor)
        emit(args, {"id": job.id, "path": str(job.path),
                    "executor": job.status().get("executor") or "local"},
             f"pulling {args.model} in job {job.id}; follow it with `lora-lab jobs logs {job.id} -f`")
        return
    try:
        result = pull(args.model, ws, name=args.name, include=include,
                      on_event=None if args.json else _show)
    finally:
        progress_end()
    resumed = f", {format_bytes(result['resumed_bytes'])} of it resumed" if result["resumed_bytes"] else ""
    text = (f"{result['model']}: {result['downloaded']} file(s) downloaded "
            f"({format_bytes(result['downloaded_bytes'])}{resumed}), {result['kept']} already there, "
            f"in {result['seconds']:.1f} s\n{result['path']} ({format_bytes(result['bytes'])}, "
            f"{result['repo']} at {result['revision'][:12]})")
    emit(args, result, text)


def _show(event: dict[str, Any]) -> None:
    unit, size = ("MB", 10**6) if event["total"] >= 10**7 else ("KB", 10**3)
    eta = f"ETA {event['eta_s']:.0f} s" if event["eta_s"] is not None else ""
    progress_bar(event["step"] // size, event["total"] // size,
                 f"{unit}  {event['bytes_per_s'] / 1e6:.1f} MB/s  {eta}  {event['file']}")
