"""``lora-lab notebooks [DIR]``: copy the notebook kit into a workspace."""
from __future__ import annotations

import argparse

from ..notebook_kit import copy_kit
from .output import add_json_flag, emit, workspace


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("notebooks", help="copy the notebook kit (interactive/, pipelines/) into a folder",
                       description="Copy the interactive and pipeline notebooks into DIR. A notebook "
                                   "you edited there is kept (and named) unless --force.")
    c.add_argument("dir", nargs="?", help="destination (default: the workspace's notebooks/)")
    c.add_argument("--force", action="store_true", help="overwrite notebooks you edited")
    add_json_flag(c)
    c.set_defaults(run=cmd_notebooks)


def cmd_notebooks(args: argparse.Namespace) -> None:
    report = copy_kit(args.dir or workspace(args).root / "notebooks", force=args.force)
    lines = [f"notebooks in {report.dest}:"]
    for outcome, what in (("copied", "copied"), ("updated", "updated to this version"),
                          ("overwritten", "overwritten (--force)"), ("unchanged", "unchanged"),
                          ("kept", "kept, you edited them (--force overwrites)")):
        names = getattr(report, outcome)
        if names:
            lines.append(f"  {what}: {', '.join(names)}")
    lines.append("start with interactive/quickstart.ipynb")
    emit(args, report.to_dict(), "\n".join(lines))
