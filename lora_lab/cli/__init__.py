"""The ``lora-lab`` command: one verb per step of the data flow, thin over the core library.

A user mistake exits 1 with a one-line ``lora-lab: error: ...`` message; a usage mistake exits 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import LoraLabError
from . import (
    caption_cmds,
    cluster_cmds,
    dataset_cmds,
    doctor_cmds,
    job_cmds,
    lora_cmds,
    misc_cmds,
    models_cmds,
    notebook_cmds,
    suggest_cmds,
    sync_cmds,
    train_cmds,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lora-lab", description="Prepare image datasets, caption them and train LoRA adapters.")
    parser.add_argument("--workspace", metavar="DIR",
                        help="workspace root (default: $LORA_LAB_HOME, /workspace/lora-lab or ~/lora-lab)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    dataset_cmds.register(sub)
    caption_cmds.register(sub)
    train_cmds.register(sub)
    job_cmds.register(sub)
    misc_cmds.register(sub)
    notebook_cmds.register(sub)
    models_cmds.register(sub)
    doctor_cmds.register(sub)
    lora_cmds.register(sub)
    suggest_cmds.register(sub)
    cluster_cmds.register(sub)
    sync_cmds.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args) or 0
    except LoraLabError as e:
        print(f"lora-lab: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lora-lab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lora-lab jobs list | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
