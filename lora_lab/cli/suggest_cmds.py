"""``lora-lab suggest "TEXT" --dataset NAME``: the config assistant (lora_lab.assistant)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import LoraLabError
from .output import add_json_flag, emit, workspace


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("suggest", help="suggest a training config from a request in words (local LLM)",
                       description="Ask a local GGUF chat model (default: the caption model's text "
                                   "side) for training settings, held to the config's schema by a "
                                   "grammar; rules then check and fill them from the dataset, the "
                                   "base model and the GPU. Every value comes with its reason.")
    c.add_argument("text", help='what you want, e.g. "25 photos of my dog, SDXL"')
    c.add_argument("--dataset", required=True, help="a dataset name or a folder")
    c.add_argument("--model", help="a GGUF chat model (default: $LORA_LAB_CAPTION_MODEL, else the "
                                   "caption model `lora-lab models pull caption` put in models/)")
    c.add_argument("--base", default="", help="the base model to train on (default: a model of the "
                                              "suggested family in models/, else its Hub repo)")
    c.add_argument("--seed", type=int, default=0, help="the model's sampling seed (default 0)")
    c.add_argument("--out", type=Path, help="write the config here as TOML (for `lora-lab train`), "
                                            "each reason a comment; an existing file is refused")
    add_json_flag(c)
    c.set_defaults(run=cmd_suggest)


def cmd_suggest(args: argparse.Namespace) -> None:
    from ..assistant import suggest

    if args.out is not None and args.out.exists():
        raise LoraLabError(f"{args.out} exists; not overwriting it (pick another --out)")
    s = suggest(args.text, args.dataset, model=args.model, base=args.base, seed=args.seed,
                workspace=workspace(args))
    data = s.to_dict()
    lines = [*s.lines(), f"({s.model} answered in {s.seconds:.1f} s)"]
    if args.out is not None:
        data["written"] = str(s.write(args.out, args.text))
        lines.append(f"wrote {args.out}; train with `lora-lab train {args.out}`")
    emit(args, data, "\n".join(lines))
