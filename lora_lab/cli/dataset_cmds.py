"""``lora-lab dataset ...``: ingest, list, show, images, caption, edit, export, thumbs, reindex."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..datasets import Dataset, ingest, list_datasets
from ..datasets.export import export_dataset
from ..datasets.ingest import Limits
from ..datasets.stats import dataset_stats
from ..datasets.thumbs import build_thumbnails
from .output import add_json_flag, emit, workspace


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dataset", help="create, inspect, edit and export datasets")
    cmds = p.add_subparsers(title="dataset commands", metavar="COMMAND", required=True)

    c = cmds.add_parser("ingest", help="add images from a zip, a folder or files")
    c.add_argument("source", nargs="+", help="a .zip, a folder, or image (and .txt) files")
    c.add_argument("--name", required=True, help="dataset name")
    c.add_argument("--add", action="store_true", help="add to an existing dataset of that name")
    c.add_argument("--max-pixels", type=int, default=Limits.max_pixels,
                   help="skip images with more pixels than this (default %(default)s)")
    c.set_defaults(run=cmd_ingest)

    c = cmds.add_parser("list", help="list datasets")
    c.set_defaults(run=cmd_list)

    c = cmds.add_parser("show", help="stats: counts, captions, buckets, tags")
    c.add_argument("name")
    c.set_defaults(run=cmd_show)

    c = cmds.add_parser("images", help="list images page by page")
    c.add_argument("name")
    c.add_argument("--offset", type=int, default=0)
    c.add_argument("--limit", type=int, default=50)
    c.add_argument("-q", "--query", help="only images whose name or caption contains this")
    state = c.add_mutually_exclusive_group()
    state.add_argument("--captioned", dest="captioned", action="store_const", const=True)
    state.add_argument("--uncaptioned", dest="captioned", action="store_const", const=False)
    cut = c.add_mutually_exclusive_group()
    cut.add_argument("--truncated", dest="truncated", action="store_const", const=True,
                     help="only captions the caption model cut off at its token limit")
    cut.add_argument("--not-truncated", dest="truncated", action="store_const", const=False,
                     help="no caption cut off")
    c.set_defaults(run=cmd_images)

    c = cmds.add_parser("caption", help="print one image's caption, or set it")
    c.add_argument("name")
    c.add_argument("file")
    c.add_argument("text", nargs="?", help="the new caption (omit to print the current one)")
    c.set_defaults(run=cmd_caption)

    _register_edit(cmds)

    c = cmds.add_parser("export", help="write a kohya folder (+ dataset.toml) or a zip")
    c.add_argument("name")
    c.add_argument("--format", choices=("kohya", "zip"), default="kohya")
    c.add_argument("--repeats", type=int, default=10)
    c.add_argument("--trigger", help="trigger word (default: the dataset name)")
    c.add_argument("--family", choices=("sd15", "sdxl"), default="sd15",
                   help="sets the resolution in dataset.toml")
    c.add_argument("--out", help="output path inside the workspace (default: exports/NAME-FORMAT)")
    c.set_defaults(run=cmd_export)

    c = cmds.add_parser("thumbs", help="build the thumbnail cache")
    c.add_argument("name")
    c.add_argument("--size", type=int, default=256)
    c.set_defaults(run=cmd_thumbs)

    c = cmds.add_parser("reindex", help="rebuild the index from the files on disk")
    c.add_argument("name")
    c.set_defaults(run=cmd_reindex)

    for c in cmds.choices.values():
        add_json_flag(c)


class _Op(argparse.Action):
    """Collect caption operations in command-line order: they apply in that order."""

    def __call__(self, parser, namespace, values, option_string=None):
        op: dict[str, Any] = {"op": self.const}
        names = {"prefix": ["text"], "replace": ["old", "new"], "regex": ["pattern", "new"],
                 "add_tags": ["tags"], "remove_tags": ["tags"]}.get(self.const, [])
        values = values if isinstance(values, list) else [values]
        op.update(zip(names, values))
        namespace.ops = (namespace.ops or []) + [op]


def _register_edit(cmds: argparse._SubParsersAction) -> None:
    c = cmds.add_parser("edit", help="bulk caption edits (one undo step per command)")
    c.add_argument("name")
    c.add_argument("--prefix", action=_Op, const="prefix", metavar="TEXT",
                   help="put a trigger word first")
    c.add_argument("--replace", action=_Op, const="replace", nargs=2, metavar=("OLD", "NEW"))
    c.add_argument("--regex", action=_Op, const="regex", nargs=2, metavar=("PATTERN", "NEW"))
    c.add_argument("--add-tags", action=_Op, const="add_tags", metavar="T1,T2")
    c.add_argument("--remove-tags", action=_Op, const="remove_tags", metavar="T1,T2")
    c.add_argument("--dedupe", action=_Op, const="dedupe", nargs=0, help="drop repeated tags")
    c.add_argument("--normalize", action=_Op, const="normalize", nargs=0,
                   help="tags separated by ', ', no empty tags")
    c.add_argument("--files", nargs="+", metavar="FILE", help="only these images")
    c.add_argument("-q", "--query", help="only images whose name or caption contains this")
    c.add_argument("--undo", action="store_true", help="revert the last edit")
    c.add_argument("--history", action="store_true", help="list the edits that can be undone")
    c.set_defaults(run=cmd_edit, ops=None)


def cmd_ingest(args: argparse.Namespace) -> None:
    source = args.source[0] if len(args.source) == 1 else args.source
    report = ingest(source, args.name, workspace=workspace(args), add=args.add,
                    limits=Limits(max_pixels=args.max_pixels))
    captioned = sum(1 for a in report.added if a["caption"])
    lines = [f"added {len(report.added)} images ({captioned} with captions) to dataset "
             f"{report.dataset!r}"]
    lines += [f"  skipped {s['source']}: {s['reason']}" for s in report.skipped]
    lines += [f"  duplicate {d['source']}: same bytes as {d['duplicate_of']} (not added)"
              for d in report.duplicates]
    lines += [f"  near-duplicate {n['file']}: looks like {n['similar_to']} (added, flagged)"
              for n in report.near_duplicates]
    lines += [f"  renamed {a['source']} -> {a['file']}" for a in report.added
              if Path(a["source"]).name != a["file"]]
    emit(args, report.to_dict(), "\n".join(lines))


def cmd_list(args: argparse.Namespace) -> None:
    rows = list_datasets(workspace(args))
    text = "\n".join(f"{r['name']}\t{r['images']} images\t{r['captioned']} captioned" for r in rows)
    emit(args, rows, text or "no datasets yet: lora-lab dataset ingest SRC --name NAME")


def cmd_show(args: argparse.Namespace) -> None:
    ds = Dataset.open(args.name, workspace(args))
    s = dataset_stats(ds)
    lines = [f"dataset {s['name']}: {s['images']} images, {s['captioned']} captioned, "
             f"{s['uncaptioned']} uncaptioned, {s['near_duplicates']} near-duplicates flagged",
             f"path: {ds.path}",
             "formats: " + ", ".join(f"{k} {v}" for k, v in s["formats"].items()),
             "sizes: " + ", ".join(f"{k}: {v}" for k, v in s["megapixels"].items())]
    for family, b in s["buckets"].items():
        lines.append(f"{family} buckets ({b['resolution']}px): "
                     + ", ".join(f"{k} x{v}" for k, v in b["counts"].items())
                     + (f"  ({b['upscaled']} smaller than their bucket)" if b["upscaled"] else ""))
    w = s["caption_words"]
    lines.append(f"caption words: min {w['min']}, mean {w['mean']}, max {w['max']}")
    lines.append(f"top tags ({s['distinct_tags']} distinct): "
                 + ", ".join(f"{t} ({n})" for t, n in list(s["tags"].items())[:15]))
    emit(args, {**s, "path": str(ds.path)}, "\n".join(lines))


def cmd_images(args: argparse.Namespace) -> None:
    page = Dataset.open(args.name, workspace(args)).images(
        args.offset, args.limit, q=args.query, captioned=args.captioned, truncated=args.truncated)
    lines = [f"{r['file']}\t{r['width']}x{r['height']}\t{r['caption'] or '(no caption)'}"
             for r in page.items]
    lines.append(f"-- {args.offset + 1}-{args.offset + len(page.items)} of {page.total}")
    emit(args, {"items": page.items, "total": page.total, "offset": page.offset,
                "limit": page.limit}, "\n".join(lines))


def cmd_caption(args: argparse.Namespace) -> None:
    ds = Dataset.open(args.name, workspace(args))
    if args.text is not None:
        ds.set_caption(args.file, args.text)
    caption = ds.caption(args.file)
    emit(args, {"file": args.file, "caption": caption}, caption or "(no caption)")


def cmd_edit(args: argparse.Namespace) -> None:
    ds = Dataset.open(args.name, workspace(args))
    if args.history:
        history = ds.journal.history()
        return emit(args, history, "\n".join(f"{h['label']} ({h['changed']} captions)"
                                             for h in history) or "no edits to undo")
    if args.undo:
        result = ds.undo()
        return emit(args, result, f"undid {result['undone']} ({result['restored']} captions restored)")
    result = ds.edit(args.ops or [], files=args.files, q=args.query)
    emit(args, result, f"{result['operation']}: changed {result['changed']} of "
                       f"{result['selected']} captions (undo with --undo)")


def cmd_export(args: argparse.Namespace) -> None:
    ws = workspace(args)
    ds = Dataset.open(args.name, ws)
    default = f"{ds.name}-{args.format}" + (".zip" if args.format == "zip" else "")
    out = ws.resolve(args.out or default, ws.exports)
    result = export_dataset(ds, out, args.format, args.repeats, args.trigger, args.family)
    emit(args, result, f"exported {result['images']} images to {result['out']} "
                       f"({result['subset']}; trigger added to {result['trigger_added']} captions)")


def cmd_thumbs(args: argparse.Namespace) -> None:
    ds = Dataset.open(args.name, workspace(args))
    made = build_thumbnails(ds, args.size)
    emit(args, {"made": made, "size": args.size}, f"made {made} thumbnails of {args.size}px")


def cmd_reindex(args: argparse.Namespace) -> None:
    ds = Dataset.open(args.name, workspace(args))
    ds.index.close()
    (ds.meta_dir / "index.sqlite").unlink()
    for leftover in ds.meta_dir.glob("index.sqlite-*"):  # WAL and shared-memory files
        leftover.unlink()
    ds = Dataset(ds.path)
    result = ds.sync()
    emit(args, result, f"reindexed {result['added']} images, {result['captions']} captions")
