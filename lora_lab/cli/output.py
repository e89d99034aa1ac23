"""Shared helpers for commands: the workspace from the flags, and text-or-JSON output."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..workspace import Workspace


def workspace(args: argparse.Namespace) -> Workspace:
    return Workspace(args.workspace) if args.workspace else Workspace()


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print ``data`` as JSON with ``--json``, else the human ``text``."""
    print(json.dumps(data, indent=2, ensure_ascii=False) if args.json else text)


def progress_bar(step: int, total: int, detail: str, width: int = 30) -> None:
    """Redraw a one-line progress bar on stderr."""
    filled = int(width * step / max(total, 1))
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {step}/{total} {detail}  ",
          end="", file=sys.stderr, flush=True)
