"""Dataset benchmarks: ingest (folder and zip), paging through a big dataset, building thumbnails,
and the single-writer path (caption writes, bulk edit, undo, ingest) with the write lock and
without it.

    .venv/bin/python bench/bench_datasets.py              # the issue's sizes
    .venv/bin/python bench/bench_datasets.py --images 200 --list-images 1000 --repeats 1   # quick

Everything (images, zip, workspace) lives in one temp folder that is removed at the end.
"""
from __future__ import annotations

import argparse
import functools
import os
import shutil
import tempfile
from pathlib import Path

from benchlib import (
    Row,
    Target,
    best_of,
    decode_loop,
    generate_jpegs,
    p50,
    print_machine,
    print_table,
    timed,
    warm,
    zip_files,
)

from lora_lab.datasets import Dataset, ingest, lock
from lora_lab.datasets.thumbs import build_thumbnails
from lora_lab.workspace import Workspace

SECTIONS = ("ingest", "listing", "thumbs", "writes")
INGEST_TARGET = Target(ratio=1.5)
PAGE = 100
PAGE_TARGET = Target(ms=20)
THUMB_SIZE = 256
CHEAP_REPEATS = 10  # millisecond-scale measurements get this many times more runs, for a stable median
LOCK_TARGET = Target(ratio=1.05)  # the issue: the write lock costs a single writer under 5%
SETS = 20  # set_caption calls per timed run


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    print_machine()
    with tempfile.TemporaryDirectory(prefix="lora-lab-bench-") as tmp:
        root = Path(tmp)
        ws = Workspace(root / "workspace")
        if {"ingest", "thumbs"} & set(args.only):
            _bench_full_size(args, root, ws)
        if "listing" in args.only:
            bench_listing(ws, root, args.list_images, args.list_size, args.repeats)
        if "writes" in args.only:
            bench_writes(ws, root, args.write_images, args.repeats)


def _bench_full_size(args: argparse.Namespace, root: Path, ws: Workspace) -> None:
    """Ingest and thumbnails share the full-size images and their decode floor."""
    images = generate_jpegs(root / "src", args.images, args.size)
    warm(images)
    floor_s = best_of(lambda: decode_loop(images), args.repeats)
    mib = sum(p.stat().st_size for p in images) / 2**20
    floor = (f"single-process Pillow open()+load() of the {len(images)} {args.size}px JPEGs "
             f"({mib:.0f} MiB), best of {args.repeats}")
    if "ingest" in args.only:
        zip_path = zip_files(images, root / "src.zip")
        warm([zip_path])
        print_table(f"ingest {len(images)} JPEGs, best of {args.repeats}", floor,
                    bench_ingest(ws, images[0].parent, zip_path, len(images), floor_s, args.repeats))
    if "thumbs" in args.only:
        print_table(f"build {THUMB_SIZE}px thumbnails of {len(images)} JPEGs, best of {args.repeats}",
                    floor, bench_thumbnails(ws, images[0].parent, len(images), floor_s, args.repeats))


def bench_ingest(ws: Workspace, folder: Path, zip_path: Path, count: int, floor_s: float,
                 repeats: int) -> list[Row]:
    """``ingest`` of the folder and of the zip, each into a fresh dataset."""
    return [Row(f"ingest folder ({count} images)", _time_ingest(ws, folder, count, repeats),
                floor_s, INGEST_TARGET),
            Row(f"ingest zip ({count} images)", _time_ingest(ws, zip_path, count, repeats),
                floor_s, INGEST_TARGET)]


def _time_ingest(ws: Workspace, source: Path, count: int, repeats: int) -> float:
    name = "bench-ingest"
    seconds = best_of(lambda: ingest(source, name, workspace=ws), repeats,
                      setup=lambda: shutil.rmtree(ws.datasets / name, ignore_errors=True))
    _check_count(Dataset.open(name, ws), count)
    shutil.rmtree(ws.datasets / name)
    return seconds


def bench_thumbnails(ws: Workspace, folder: Path, count: int, floor_s: float,
                     repeats: int) -> list[Row]:
    """``build_thumbnails`` from nothing cached, on a dataset made by a real (untimed) ingest."""
    ingest(folder, "bench-thumbs", workspace=ws)
    ds = Dataset.open("bench-thumbs", ws)
    _check_count(ds, count)
    warm([ds.path / f for f in ds.index.files()])
    made = []
    seconds = best_of(lambda: made.append(build_thumbnails(ds, THUMB_SIZE)), repeats,
                      setup=lambda: shutil.rmtree(ds.meta_dir / "thumbs", ignore_errors=True))
    if set(made) != {count}:
        raise SystemExit(f"build_thumbnails made {made} thumbnails, expected {count} each time")
    return [Row(f"build_thumbnails {THUMB_SIZE}px ({count} images)", seconds, floor_s)]


def bench_listing(ws: Workspace, root: Path, count: int, size: int, repeats: int) -> None:
    """Every page of 100 of a ``count``-image dataset, against a plain scandir of its folder."""
    name = "bench-listing"
    images = generate_jpegs(root / "small", count, size)
    build_s = timed(lambda: ingest(images[0].parent, name, workspace=ws))
    ds = Dataset.open(name, ws)
    _check_count(ds, count)
    runs = repeats * CHEAP_REPEATS
    # Median, not best: the page rows are medians, so the floor they are divided by is one too.
    floor_s = p50([timed(lambda: _scandir(ds.path)) for _ in range(runs)])
    offsets = list(range(0, count, PAGE))
    pages = {offset: [] for offset in offsets}
    for _ in range(runs):
        for offset in offsets:
            pages[offset].append(_time_page(ds, offset))
    middle = offsets[len(offsets) // 2]
    reopened = [timed(lambda: _open_and_page(name, ws, middle)) for _ in range(runs)]
    rows = [Row(f"images({offset}, {PAGE}) p50", p50(pages[offset]), floor_s, PAGE_TARGET)
            for offset in (offsets[0], middle, offsets[-1])]
    rows += [Row(f"any page, max of {runs * len(offsets)}", max(max(t) for t in pages.values()),
                 floor_s, PAGE_TARGET),
             Row(f"Dataset.open + images({middle}, {PAGE}) p50", p50(reopened), floor_s, PAGE_TARGET)]
    print_table(f"list {count} images ({size}px JPEGs, built by ingest in {build_s:.1f} s), "
                f"pages of {PAGE}, {runs} runs each",
                f"os.scandir of the dataset folder ({count} entries), median of {runs}", rows)


def bench_writes(ws: Workspace, root: Path, count: int, repeats: int) -> None:
    """One writer's caption writes, bulk edit, undo and ingest, each timed with the write lock
    and with it switched off. Runs alternate between the two (neither always goes first), so
    the disk's and the neighbours' noise falls on both alike."""
    images = generate_jpegs(root / "writes", count, 64)
    warm(images)
    ingest(images[0].parent, "bench-writes", workspace=ws)
    ds = Dataset.open("bench-writes", ws)
    _check_count(ds, count)
    files = ds.index.files()[:SETS]
    new = "bench-writes-new"

    def tag(run: str) -> list[dict]:
        return [{"op": "add_tags", "tags": [f"t{run}"]}]

    ops = [  # what, untimed setup, the timed call, untimed cleanup; each gets a unique run tag
        (f"set_caption x{SETS} (each journaled, fsynced)", None,
         lambda run: [ds.set_caption(f, f"{run} caption {i}") for i, f in enumerate(files)], None),
        (f"edit add_tags ({count} captions)", None, lambda run: ds.edit(tag(run)),
         lambda run: ds.undo()),
        (f"undo that edit ({count} captions)", lambda run: ds.edit(tag(run)),
         lambda run: ds.undo(), None),
        (f"ingest folder ({count} images) as a new dataset", None,
         lambda run: ingest(images[0].parent, new, workspace=ws),
         lambda run: shutil.rmtree(ws.datasets / new)),
    ]
    runs = repeats * CHEAP_REPEATS
    rows = [Row(what, *_with_and_without_lock(call, runs, setup, cleanup), LOCK_TARGET)
            for what, setup, call, cleanup in ops]
    holds = 1000
    rows.append(Row(f"ds.writing() x{holds}, nothing inside (what the lock itself costs)",
                    *_with_and_without_lock(lambda run: _hold(ds, holds), runs)))
    print_table(f"one writer, with the write lock (time) and without it (floor), "
                f"{runs} runs each, medians",
                "the same call with lora_lab.datasets.lock.ENABLED = False", rows)


def _with_and_without_lock(call, runs: int, setup=None, cleanup=None) -> tuple[float, float]:
    """Median seconds of ``call`` with the write lock and without it, in alternating runs."""
    times: dict[bool, list[float]] = {True: [], False: []}
    try:
        for r in range(runs):
            for on in ((True, False) if r % 2 else (False, True)):
                lock.ENABLED = on
                run = f"{r}{'+' if on else '-'}"
                if setup:
                    setup(run)
                times[on].append(timed(functools.partial(call, run)))
                if cleanup:
                    cleanup(run)
    finally:
        lock.ENABLED = True
    return p50(times[True]), p50(times[False])


def _hold(ds: Dataset, times: int) -> None:
    for _ in range(times):
        with ds.writing():
            pass


def _time_page(ds: Dataset, offset: int) -> float:
    return timed(lambda: ds.images(offset, PAGE))


def _open_and_page(name: str, ws: Workspace, offset: int) -> None:
    """What a request that opens the dataset anew pays (a REST call, a CLI run)."""
    ds = Dataset.open(name, ws)
    ds.images(offset, PAGE)
    ds.index.close()


def _scandir(path: Path) -> list[str]:
    with os.scandir(path) as it:
        return [e.name for e in it]


def _check_count(ds: Dataset, count: int) -> None:
    # A benchmark that silently skipped images would measure less work than it claims.
    if len(ds) != count:
        raise SystemExit(f"dataset {ds.name!r} holds {len(ds)} images, expected {count}")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="images to ingest and thumbnail")
    parser.add_argument("--size", type=int, default=512, help="their width and height")
    parser.add_argument("--list-images", type=int, default=10_000, help="images in the listed dataset")
    parser.add_argument("--list-size", type=int, default=64,
                        help="their width and height (small: only the count matters to listing)")
    parser.add_argument("--write-images", type=int, default=200,
                        help="images in the dataset the write benchmark edits and ingests")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="sections to run")
    args = parser.parse_args(argv)
    if min(args.images, args.size, args.list_images, args.list_size, args.write_images,
           args.repeats) < 1:
        parser.error("sizes and --repeats must be at least 1")
    return args


if __name__ == "__main__":
    main()
