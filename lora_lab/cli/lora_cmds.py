"""``lora-lab lora inspect|resize|merge|convert|push``: tools for LoRA files (lora_lab.tools)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .output import add_json_flag, emit


def register(sub: argparse._SubParsersAction) -> None:
    lora = sub.add_parser("lora", help="inspect, resize, merge, convert and push LoRA files",
                          description="Tools for .safetensors LoRA files of every family lora-lab "
                                      "trains, in kohya, diffusers/peft or ComfyUI layout.")
    verbs = lora.add_subparsers(title="verbs", metavar="VERB")
    _register_inspect(verbs)
    _register_convert(verbs)


def _register_inspect(verbs: argparse._SubParsersAction) -> None:
    c = verbs.add_parser("inspect", help="format, family, ranks, targets, training metadata, tags, hashes",
                         description="Show what a LoRA file holds: its layout and family, ranks and "
                                     "alphas, targeted modules by kind, sd-scripts' training metadata, "
                                     "the dataset's tag frequencies and the hashes A1111/Civitai show.")
    c.add_argument("file", type=Path, help="a .safetensors LoRA")
    c.add_argument("--tags", type=int, default=20, metavar="N", help="show the N most frequent tags (text output)")
    add_json_flag(c)
    c.set_defaults(run=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> None:
    from ..tools.inspect import inspect_lora, render

    report = inspect_lora(args.file)
    emit(args, report, render(report, top_tags=args.tags))


def _register_convert(verbs: argparse._SubParsersAction) -> None:
    c = verbs.add_parser("convert", help="rewrite a LoRA in kohya, diffusers or ComfyUI layout (lossless)",
                         description="Write FILE's LoRA in another key layout: the weights move "
                                     "unchanged, metadata is kept, hashes are recomputed. A file "
                                     "already in that layout is copied unchanged.")
    c.add_argument("file", type=Path, help="a .safetensors LoRA (never modified)")
    c.add_argument("--to", required=True, choices=("kohya", "diffusers", "comfyui"), help="the layout to write")
    c.add_argument("--out", required=True, type=Path, help="the new .safetensors file")
    c.add_argument("--family", help="the model family, for a file whose metadata and keys do not say it")
    c.add_argument("--force", action="store_true", help="replace OUT if it exists")
    add_json_flag(c)
    c.set_defaults(run=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> None:
    from ..tools.convert import convert_file

    done = convert_file(args.file, args.to, args.out, family=args.family, force=args.force)
    what = (f"already in {done['to']} layout: copied unchanged" if done["copied"]
            else f"{done['from']} -> {done['to']}, {done['modules']} LoRA modules")
    emit(args, done, f"{done['path']}: {done['family']} LoRA, {what}")
