"""``lora-lab caption NAME``: caption a dataset in the foreground, recorded as a caption job."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ..captioning.batch import MODES, CaptionSettings, caption_dataset, check_settings
from ..datasets import Dataset
from ..errors import LoraLabError
from ..jobs import JobRecord
from .output import add_json_flag, emit, progress_bar, workspace


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("caption", help="caption a dataset with a local vision-language model")
    c.add_argument("name", help="dataset")
    c.add_argument("--model", help="GGUF language model (default: $LORA_LAB_CAPTION_MODEL or "
                                   "models/caption/Qwen2.5-VL-7B-Instruct-Q8_0.gguf)")
    c.add_argument("--mmproj", help="GGUF vision projector (default: $LORA_LAB_CAPTION_MMPROJ or "
                                    "models/caption/mmproj-Qwen2.5-VL-7B-Instruct-f16.gguf)")
    c.add_argument("--handler", choices=("qwen25vl", "mtmd"), default="qwen25vl",
                   help="chat handler: Qwen2.5-VL, or the generic one for other GGUF VLMs")
    c.add_argument("--server", metavar="URL",
                   help="use an OpenAI-compatible server (llama-server -np N, vLLM) instead")
    c.add_argument("--concurrency", type=int, default=4, help="requests in flight with --server")
    c.add_argument("--preset", choices=("tags", "short", "detailed"), help="prompt preset")
    c.add_argument("--prompt", help="custom prompt; placeholders {trigger} {filename} {existing}")
    c.add_argument("--mode", choices=MODES, default="skip",
                   help="skip captioned images (default), or overwrite / append / prepend")
    c.add_argument("--trigger", default="", help="trigger word put first in every caption")
    c.add_argument("--max-words", type=int, help="cut captions at this many words")
    c.add_argument("--max-tokens", type=int, default=300, help="generation limit per caption")
    c.add_argument("--files", nargs="+", metavar="FILE", help="only these images")
    add_json_flag(c)
    c.set_defaults(run=cmd_caption)


def _captioner(args: argparse.Namespace):
    if args.server:
        from ..captioning.openai_server import OpenAIServerCaptioner

        return OpenAIServerCaptioner(args.server, concurrency=args.concurrency,
                                     max_tokens=args.max_tokens)
    from ..captioning.llama import LlamaCaptioner

    return LlamaCaptioner(args.model, args.mmproj, handler=args.handler,
                          max_tokens=args.max_tokens, workspace=workspace(args))


def cmd_caption(args: argparse.Namespace) -> None:
    from ..captioning import prompts

    ws = workspace(args)
    ds = Dataset.open(args.name, ws)
    template = prompts.resolve_prompt(args.preset, args.prompt)
    settings = CaptionSettings(template, args.trigger, args.mode, args.max_words,
                               "tags" if args.preset == "tags" else "sentence")
    check_settings(settings)
    job = JobRecord.create("caption", {"dataset": ds.name, **vars(settings),
                                       "server": args.server, "files": args.files}, ws)
    job.set_status("running", phase="loading model")
    try:
        captioner = _captioner(args)
        job.set_status("running", phase="captioning", model=captioner.name)
        report = caption_dataset(ds, captioner, settings, files=args.files,
                                 on_event=lambda e: _on_progress(job, e, args.json))
        captioner.close()
    except (LoraLabError, KeyboardInterrupt) as e:
        message = str(e) or "interrupted"
        job.event({"type": "failed", "error": message})
        job.set_status("failed" if isinstance(e, LoraLabError) else "interrupted", error=message)
        raise
    finally:
        if not args.json:
            print(file=sys.stderr)
    job.event({"type": "done", **report.to_dict()})
    job.set_status("succeeded", progress=1.0)
    lines = [f"captioned {report.captioned} of {report.selected} images in {report.seconds:.1f} s "
             f"({report.already_done} already done, {len(report.failed)} failed) with {report.model}",
             f"job record: {job.path}"]
    lines += [f"  failed {f['file']}: {f['error']}" for f in report.failed]
    emit(args, {**report.to_dict(), "job": job.id}, "\n".join(lines))


def _on_progress(job: JobRecord, event: dict[str, Any], quiet: bool) -> None:
    job.event(event)
    if event["type"] != "progress":
        return
    if event["step"] % 10 == 0 or event["step"] == event["total"]:
        job.set_status("running", phase="captioning", progress=event["step"] / event["total"])
    if not quiet:
        progress_bar(event["step"], event["total"],
                     f"{event['images_per_s']:.2f} img/s  ETA {event['eta_s']:.0f} s")
