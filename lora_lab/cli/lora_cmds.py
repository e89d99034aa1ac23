"""``lora-lab lora inspect|resize|merge|convert|push``: tools for LoRA files (lora_lab.tools)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    lora = sub.add_parser("lora", help="inspect, resize, merge, convert and push LoRA files",
                          description="Tools for .safetensors LoRA files of every family lora-lab "
                                      "trains, in kohya, diffusers/peft or ComfyUI layout.")
    verbs = lora.add_subparsers(title="verbs", metavar="VERB")
    del verbs  # each verb registers here
