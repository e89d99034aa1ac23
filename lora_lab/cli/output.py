"""Shared helpers for commands: the workspace from the flags, and text-or-JSON output."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..workspace import Workspace


def workspace(args: argparse.Namespace) -> Workspace:
    return Workspace(args.workspace) if args.workspace else Workspace()


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print ``data`` as JSON with ``--json``, else the human ``text``."""
    print(json.dumps(data, indent=2, ensure_ascii=False) if args.json else text)


class _Progress:
    """The progress line being drawn: a terminal redraws it in place; anything else (a log
    file, a pipe, a notebook cell) gets a whole line every 10% or 10 s and at the end."""
    every_s = 10.0
    drawn = False  # a terminal line is open (no newline yet)
    total = step = tenth = 0
    printed_at = 0.0


def progress_bar(step: int, total: int, detail: str, width: int = 30) -> None:
    """Show ``step`` of ``total`` on stderr: redrawn in place on a terminal, else as lines."""
    filled = int(width * step / max(total, 1))
    line = f"[{'#' * filled}{'.' * (width - filled)}] {step}/{total} {detail}"
    p = _Progress
    if sys.stderr.isatty():
        print(f"\r{line}  ", end="", file=sys.stderr, flush=True)
        p.drawn = True
        return
    if total != p.total or step < p.step:  # a new run: start counting again
        p.total, p.tenth, p.printed_at = total, -1, 0.0
    p.step = step
    now, tenth = time.monotonic(), 10 * step // max(total, 1)
    if tenth > p.tenth or step >= total or now - p.printed_at >= p.every_s:
        print(line, file=sys.stderr, flush=True)
        p.tenth, p.printed_at = tenth, now


def progress_end() -> None:
    """End a progress bar drawn in place (on a terminal) with its newline."""
    if _Progress.drawn:
        print(file=sys.stderr, flush=True)
        _Progress.drawn = False


def progress_note(text: str) -> None:
    """A line of its own (a phase, a warning) between progress updates."""
    progress_end()
    print(text, file=sys.stderr, flush=True)
