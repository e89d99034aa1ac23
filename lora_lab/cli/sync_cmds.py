"""``lora-lab sync push|pull|ls``: datasets and LoRA files to and from the bucket (lora_lab.sync)."""
from __future__ import annotations

import argparse

from .output import add_json_flag, emit, workspace


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sync", help="push datasets and LoRAs to an S3-compatible bucket, pull them back",
                       description="Copy datasets and LoRA files between the workspace and the bucket "
                                   "$LORA_LAB_BUCKET (s3://BUCKET/PREFIX; R2 or MinIO through "
                                   "$LORA_LAB_BUCKET_ENDPOINT; credentials from AWS_ACCESS_KEY_ID / "
                                   "AWS_SECRET_ACCESS_KEY or ~/.aws). Only files whose content differs "
                                   "are sent; nothing is deleted on either side.")
    verbs = p.add_subparsers(title="verbs", metavar="VERB", required=True)

    c = verbs.add_parser("push", help="send a dataset or a LoRA file to the bucket",
                         description="Send a dataset (images, captions, caption sources) to "
                                     "<bucket>/datasets/NAME/, or a LoRA file to <bucket>/loras/FILE. "
                                     "Local files are only read.")
    c.add_argument("kind", choices=("dataset", "lora"))
    c.add_argument("name", help="the dataset's name, or the LoRA .safetensors file's path")
    _common(c)
    c.set_defaults(run=cmd_push)

    c = verbs.add_parser("pull", help="fetch a dataset or a LoRA file from the bucket",
                         description="Fetch <bucket>/datasets/NAME/ into the workspace's datasets, or "
                                     "<bucket>/loras/FILE into its loras/. Refuses, naming them, to "
                                     "replace local files that differ from the bucket's, unless --force.")
    c.add_argument("kind", choices=("dataset", "lora"))
    c.add_argument("name", help="the dataset's name, or the LoRA file's name in the bucket")
    c.add_argument("--force", action="store_true", help="replace local files that differ from the bucket's")
    _common(c)
    c.set_defaults(run=cmd_pull)

    c = verbs.add_parser("ls", help="the datasets and LoRA files the bucket holds, with sizes")
    _common(c)
    c.set_defaults(run=cmd_ls)


def _common(c: argparse.ArgumentParser) -> None:
    c.add_argument("--bucket", metavar="URL", help="s3://BUCKET/PREFIX (default: $LORA_LAB_BUCKET)")
    add_json_flag(c)


def cmd_push(args: argparse.Namespace) -> None:
    from ..bucket import open_bucket
    from ..sync import push_dataset, push_lora

    bucket = open_bucket(args.bucket)
    done = (push_dataset(bucket, args.name, workspace(args)) if args.kind == "dataset"
            else push_lora(bucket, args.name))
    emit(args, done, f"{done['name']} -> {done['url']}: {done['sent']} file(s) sent "
                     f"({_size(done['bytes'])}), {done['skipped']} unchanged, {done['seconds']:.1f} s")


def cmd_pull(args: argparse.Namespace) -> None:
    from ..bucket import open_bucket
    from ..sync import pull_dataset, pull_lora

    bucket = open_bucket(args.bucket)
    pull = pull_dataset if args.kind == "dataset" else pull_lora
    done = pull(bucket, args.name, workspace(args), force=args.force)
    replaced = f", {done['replaced']} local file(s) replaced" if done["replaced"] else ""
    emit(args, done, f"{done['url']} -> {done['name']}: {done['received']} file(s) received "
                     f"({_size(done['bytes'])}), {done['skipped']} unchanged{replaced}, {done['seconds']:.1f} s")


def cmd_ls(args: argparse.Namespace) -> None:
    from ..bucket import open_bucket
    from ..sync import bucket_listing

    found = bucket_listing(open_bucket(args.bucket))
    lines = [f"{found['url']}:", "datasets:"]
    lines += [f"  {d['name']}  {d['files']} files, {_size(d['bytes'])}" for d in found["datasets"]] or ["  (none)"]
    lines += ["loras:"]
    lines += [f"  {lo['name']}  {_size(lo['bytes'])}" for lo in found["loras"]] or ["  (none)"]
    emit(args, found, "\n".join(lines))


def _size(n: float) -> str:
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            break
        n /= 1024
    return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
