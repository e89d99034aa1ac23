"""``lora-lab lora inspect|resize|merge|convert|push|try``: tools for LoRA files (lora_lab.tools)."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..errors import LoraLabError
from .output import add_json_flag, emit, workspace


def register(sub: argparse._SubParsersAction) -> None:
    lora = sub.add_parser("lora", help="inspect, resize, merge, convert and push LoRA files",
                          description="Tools for .safetensors LoRA files of every family lora-lab "
                                      "trains, in kohya, diffusers/peft or ComfyUI layout.")
    verbs = lora.add_subparsers(title="verbs", metavar="VERB")
    _register_inspect(verbs)
    _register_convert(verbs)
    _register_resize(verbs)
    _register_merge(verbs)
    _register_push(verbs)
    _register_try(verbs)


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


def _register_push(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("push", help="upload a LoRA to the Hugging Face Hub with a model card",
                         description="Upload a LoRA file with a generated model card (base model, "
                                     "trigger word, settings, sample images, loss curves) to a Hub "
                                     "model repo, in one commit. Needs a write token: HF_TOKEN or "
                                     "`hf auth login`; HF_ENDPOINT names another Hub.")
    p.add_argument("file", help="the LoRA .safetensors file")
    p.add_argument("--repo", required=True, metavar="ID",
                   help="the model repo, ORG/NAME (or NAME in your namespace); created if missing")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", action="store_true",
                   help="upload nothing: write the card, images and file list to --out")
    p.add_argument("--out", metavar="DIR", help="with --dry-run: a new folder for the card and file list")
    add_json_flag(p)
    p.set_defaults(run=_cmd_push)


def _cmd_push(args: argparse.Namespace) -> None:
    from ..tools.push import FILE_LIST, push_lora

    if args.dry_run != bool(args.out):
        raise LoraLabError("--dry-run and --out DIR go together: the dry run writes the card there")
    result = push_lora(args.file, args.repo, private=args.private, dry_run=args.out,
                       workspace=workspace(args))
    if result["dry_run"]:
        names = "\n".join(f"  {f['path']}  ({f['bytes']} bytes)" for f in result["files"])
        text = (f"dry run: nothing uploaded; {args.out} holds the card and {FILE_LIST}, the files "
                f"a push to {result['repo']} would upload:\n{names}")
    else:
        text = (f"pushed {', '.join(result['files'])} to {result['url']} "
                f"(commit {result['commit'][:12]})")
    emit(args, result, text)


def _register_resize(verbs: argparse._SubParsersAction) -> None:
    c = verbs.add_parser("resize", help="reduce a LoRA's rank by SVD, fixed or per layer (kohya's dynamic methods)",
                         description="Resize a LoRA to a lower rank by SVD of each module's update, into a "
                                     "new file in the same layout, dtype and metadata (the resize recorded "
                                     "in it), and report the error per module. --dynamic chooses each "
                                     "module's rank as kohya's resize_lora.py does, --rank its cap.")
    c.add_argument("file", type=Path, help="the LoRA (.safetensors: kohya, diffusers/peft or ComfyUI layout)")
    c.add_argument("--rank", type=int, required=True, help="the new rank (the largest, with --dynamic)")
    c.add_argument("--conv-rank", type=int, help="rank of convolutions larger than 1x1 (default: --rank)")
    c.add_argument("--dynamic", choices=("sv_ratio", "sv_fro", "sv_cumulative"),  # tools.resize.METHODS
                   help="per-module rank: sv_ratio keeps singular values above max/X, sv_fro the fewest "
                        "holding the share X of the Frobenius norm, sv_cumulative of their sum")
    c.add_argument("--dynamic-param", type=float, metavar="X", help="X for --dynamic")
    c.add_argument("--out", type=Path, required=True, help="the new .safetensors file (must not exist)")
    add_json_flag(c)
    c.set_defaults(run=_cmd_resize)


def _cmd_resize(args: argparse.Namespace) -> None:
    from ..tools.resize import resize_lora

    report = resize_lora(args.file, args.out, args.rank, conv_rank=args.conv_rank,
                         method=args.dynamic or "fixed", param=args.dynamic_param)
    emit(args, report.to_dict(), report.table())


def _register_merge(verbs: argparse._SubParsersAction) -> None:
    c = verbs.add_parser("merge", help="merge LoRAs into one (concatenated ranks, or SVD to --rank), or into "
                                       "a base model saved as a diffusers pipeline",
                         description="Merge LoRA files of one family with weights into one file: exactly, by "
                                     "concatenating their ranks, or with --rank by SVD of each module's summed "
                                     "update. With --into, fuse them into a base model and save it as a "
                                     "diffusers pipeline folder.")
    c.add_argument("files", type=Path, nargs="+",
                   help="the LoRA files (.safetensors, one family, any layouts: the result is in the first one's)")
    c.add_argument("--weights", type=float, nargs="+", metavar="W", help="one weight per file (default 1 each)")
    c.add_argument("--rank", type=int, help="SVD the merged LoRA to this rank (default: exact, the ranks summed)")
    c.add_argument("--into", metavar="BASE_MODEL", help="a base model (diffusers folder, checkpoint or Hub id) "
                                                        "to fuse the LoRAs into; --out is then a new folder")
    c.add_argument("--out", type=Path, required=True, help="the new .safetensors file, or folder with --into")
    add_json_flag(c)
    c.set_defaults(run=_cmd_merge)


def _cmd_merge(args: argparse.Namespace) -> None:
    from ..tools.merge import merge_into_base, merge_loras

    if args.into:
        if args.rank is not None:
            raise LoraLabError("--rank and --into do not go together: a base model has no rank")
        done = merge_into_base(args.files, args.into, args.out, args.weights)
        emit(args, done, f"fused {', '.join(f'{w:g} x {Path(f).name}' for f, w in zip(done['files'], done['weights']))}"
                         f" into {done['base']} ({done['family']}): diffusers pipeline in {done['path']}")
        return
    report = merge_loras(args.files, args.out, args.weights, rank=args.rank)
    emit(args, report.to_dict(), report.text())


def _numbers(kind: type, what: str):
    """An argparse type: a comma-separated list of ``kind`` ("0,0.5,1")."""
    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be numbers separated by commas, not {text!r}") from None
    return parse


def _size(text: str) -> tuple[int, int]:
    width, x, height = text.lower().partition("x")
    if not (x and width.isdigit() and height.isdigit()):
        raise argparse.ArgumentTypeError(f"--size is WIDTHxHEIGHT, like 512x768, not {text!r}")
    return int(width), int(height)


def _register_try(verbs: argparse._SubParsersAction) -> None:
    c = verbs.add_parser("try", help="a grid of images: prompts x seeds against checkpoints x strengths",
                         description="Render LoRAs on their base model as one labelled grid: a row per "
                                     "prompt and seed, a column per checkpoint and strength (the base "
                                     "alone first, for strength 0). The base loads once, each image is "
                                     "cached by its inputs, and the grid is saved as a PNG with a JSON "
                                     "of its inputs beside it.")
    c.add_argument("loras", nargs="+", metavar="LORA",
                   help="a .safetensors LoRA, a folder of them (each a checkpoint, by step) or a job (its id "
                        "or folder: its LoRA files by step, the final last)")
    c.add_argument("--base", required=True, help="the base model (diffusers folder, checkpoint or Hub id)")
    c.add_argument("--prompt", action="append", required=True, metavar="P", help="a prompt (repeatable)")
    c.add_argument("--negative", help="the negative prompt (default: the family's preset's; \"\" for none)")
    c.add_argument("--strength", type=_numbers(float, "--strength"), default=[0.0, 0.5, 1.0], metavar="S,S",
                   help="LoRA strengths from -2 to 2 (default 0,0.5,1; 0 is the base alone), e.g. -0.5,0,1")
    c.add_argument("--seed", type=_numbers(int, "--seed"), action="append", metavar="N",
                   help="seeds, repeatable or N,N (default 0)")
    c.add_argument("--steps", type=int, help="denoising steps (default: the family's preset's, e.g. 50 for "
                                             "FLUX.1 [dev], 8 for Z-Image Turbo, 20 for SD)")
    c.add_argument("--guidance", type=float, help="guidance scale (default: the family's preset's, e.g. 3.5 for "
                                                  "FLUX.1 [dev], 0 for Z-Image Turbo, 7 for SD)")
    c.add_argument("--size", type=_size, metavar="WxH", help="image size (default: the model's)")
    c.add_argument("--out", type=Path, required=True, help="the grid's .png (its inputs go beside it as .json)")
    c.add_argument("--force", action="store_true", help="replace --out and its .json if they exist")
    add_json_flag(c)
    c.set_defaults(run=_cmd_try)
    # a value starting with a minus and a digit is a value, not an option, as Python 3.13's argparse
    # reads it: --strength -0.5,1 (3.11 takes only a lone number, -0.5, as one)
    c._negative_number_matcher = re.compile(r"-\.?\d")


def _grid_out(out: Path, force: bool) -> Path:
    """--out checked before anything renders: a new .png (unless --force) in a folder that exists."""
    if out.suffix.lower() != ".png":
        raise LoraLabError(f"--out must name a .png file: {out.name}")
    if not out.parent.is_dir():
        raise LoraLabError(f"--out {out}: folder {out.parent} does not exist")
    taken = [p for p in (out, out.with_suffix(".json")) if p.exists()]
    if taken and not force:
        raise LoraLabError(f"--out: {taken[0]} already exists; choose a new name or add --force")
    if any(p.is_dir() for p in taken):
        raise LoraLabError(f"--out: {taken[0]} is a folder")
    return out


def _cmd_try(args: argparse.Namespace) -> None:
    from ..tools.tryout import Tryout

    out = _grid_out(args.out, args.force)
    width, height = args.size or (None, None)
    tryout = Tryout(args.base, workspace(args))
    grid = tryout.grid(args.loras, args.prompt, args.strength, [s for seeds in args.seed or [[0]] for s in seeds],
                       steps=args.steps, guidance=args.guidance, width=width, height=height,
                       negative=args.negative)
    grid.save(out)
    result = {"grid": str(out), "json": str(out.with_suffix(".json")), "images": len(grid.cells),
              "cache_hits": grid.hits, "rendered": tryout.renders, "inputs": grid.inputs()}
    emit(args, result, f"grid of {len(grid.rows)} rows x {len(grid.columns)} columns -> {out}\n"
                       f"inputs -> {result['json']}\n"
                       f"{grid.hits} of {len(grid.cells)} images from the cache, {tryout.renders} rendered")
