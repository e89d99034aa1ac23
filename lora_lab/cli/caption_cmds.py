"""``lora-lab caption NAME``: caption a dataset in the foreground, recorded as a caption job."""
from __future__ import annotations

import argparse
from typing import Any

from ..captioning.batch import MODES, BatchReport
from ..captioning.job import PARAMS
from ..jobdir import JobRecord
from ..jobs import check_params, run_here
from .output import add_json_flag, emit, progress_bar, progress_end, workspace


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("caption", help="caption a dataset with a local vision-language model")
    add_caption_arguments(c)
    add_json_flag(c)
    c.set_defaults(run=cmd_caption)


def add_caption_arguments(c: argparse.ArgumentParser) -> None:
    c.add_argument("name", help="dataset")
    c.add_argument("--model", help="GGUF language model (default: $LORA_LAB_CAPTION_MODEL, else "
                                   "the one `lora-lab models pull caption` or caption-small put in models/)")
    c.add_argument("--mmproj", help="GGUF vision projector (default: $LORA_LAB_CAPTION_MMPROJ, else "
                                    "the pulled caption model's)")
    c.add_argument("--handler", choices=("qwen25vl", "mtmd"), default="qwen25vl",
                   help="chat handler: Qwen2.5-VL, or the generic one for other GGUF VLMs")
    c.add_argument("--server", metavar="URL", action="append",
                   help="use an OpenAI-compatible server (llama-server -np N, vLLM) instead; "
                        "repeat it (or list URLs with commas) to share the run among servers")
    c.add_argument("--concurrency", type=int, default=4,
                   help="requests in flight per --server")
    c.add_argument("--preset", choices=("tags", "short", "detailed"), help="prompt preset")
    c.add_argument("--prompt", help="custom prompt; placeholders {trigger} {filename} {existing}")
    c.add_argument("--mode", choices=MODES, default="skip",
                   help="skip captioned images (default), or overwrite / append / prepend")
    c.add_argument("--trigger", default="", help="trigger word put first in every caption")
    c.add_argument("--max-words", type=int, help="cut captions at this many words")
    c.add_argument("--max-tokens", type=int, default=300,
                   help="generation limit per caption; a caption cut there is asked again at "
                        "double the limit, then saved marked truncated")
    c.add_argument("--files", nargs="+", metavar="FILE", help="only these images")
    c.add_argument("--gpus", type=int, default=1,
                   help="on a Ray cluster (--executor ray): caption on this many GPUs, one "
                        "model each (default 1)")

def cmd_caption(args: argparse.Namespace) -> None:
    ws = workspace(args)
    job = JobRecord.create("caption", check_params("caption", caption_args(args), ws), ws)
    show = None if args.json else _show
    try:
        report = run_here(job, ws, on_event=show)
    finally:
        progress_end()
    lines = [f"captioned {report.captioned} of {report.selected} images in {report.seconds:.1f} s "
             f"({report.already_done} already done, {len(report.failed)} failed) with {report.model}",
             *_token_limit_lines(report),
             f"job record: {job.path}"]
    lines += [f"  failed {f['file']}: {f['error']}" for f in report.failed]
    lines += [f"  truncated {f}" for f in report.truncated]
    emit(args, {**report.to_dict(), "job": job.id}, "\n".join(lines))

def _token_limit_lines(report: BatchReport) -> list[str]:
    """What the token limit did to the batch, if anything."""
    lines = []
    if report.retried:
        lines.append(f"{report.retried} answer(s) hit the token limit (--max-tokens) and were "
                     "asked again with a larger one")
    if report.truncated:
        lines.append(f"{len(report.truncated)} caption(s) still hit it: saved but marked "
                     "truncated, they may end mid-sentence (raise --max-tokens and caption them "
                     "again with --mode overwrite, or edit them)")
    return lines

def caption_args(args: argparse.Namespace) -> dict[str, Any]:
    """The caption job parameters the command line gives."""
    params = {"dataset": args.name, **{k: getattr(args, k) for k in PARAMS if k != "dataset"}}
    urls = [url.strip() for given in args.server or () for url in given.split(",") if url.strip()]
    params["server"] = urls[0] if len(urls) == 1 else urls or None  # one URL: a spec as before
    return params

def _show(event: dict[str, Any]) -> None:
    if event["type"] == "progress":
        progress_bar(event["step"], event["total"],
                     f"{event['images_per_s']:.2f} img/s  ETA {event['eta_s']:.0f} s")
