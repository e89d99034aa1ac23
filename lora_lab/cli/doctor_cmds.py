"""``lora-lab doctor``: what this box can do, one line per check."""
from __future__ import annotations

import argparse
import os
import sys

from ..doctor import diagnose, failed, table
from .output import add_json_flag, emit, workspace


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "doctor", help="what this box can do: GPU, torch CUDA, llama.cpp GPU offload, disk, models, cluster",
        description="One line per check, each ok, warn or fail, with what was found and the fix: "
                    "the GPU (name, memory, driver), torch built with CUDA and seeing the GPU, "
                    "bf16, llama-cpp-python built with GPU offload, free disk on the workspace's "
                    "volume, the base and caption models in the workspace, the Jupyter server "
                    "extension, the Ray cluster (when one is configured: its nodes and free "
                    "GPUs). Exit status 0 unless a check fails (1).")
    add_json_flag(c)
    c.set_defaults(run=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    lines = diagnose(workspace(args))
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    emit(args, [line.to_dict() for line in lines], table(lines, colour))
    return 1 if failed(lines) else 0
