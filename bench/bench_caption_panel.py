"""CaptionPanel benchmarks: opening it on 10,000 images, save-and-next, and tag completion over
5,000 tags, each against a baseline measured in the same run.

    .venv/bin/python bench/bench_caption_panel.py                     # the issue's sizes (~3 min)
    .venv/bin/python bench/bench_caption_panel.py --images 1000 --repeats 1   # quick

Baselines: opening and stepping are compared with the separate DatasetBrowser + CaptionEditor
pair (what a user composed before the panel existed); completion with a plain scan of every tag.
The captions are tags drawn from a 5,000-tag vocabulary (a few common, most rare), 8 per image.
Everything lives in one temp folder that is removed at the end. The panels run in-process
without a kernel: their own work is measured, the widget messages are not sent anywhere.
"""
from __future__ import annotations

import random
import tempfile
from pathlib import Path

from benchlib import Row, Target, dataset_args, generate_jpegs, p50, print_machine, print_table, timed

from lora_lab.datasets import Dataset, ingest
from lora_lab.datasets.tags import TagIndex
from lora_lab.datasets.thumbs import build_thumbnails, cached_thumbnail, make_thumbnail_of
from lora_lab.widgets import CaptionEditor, CaptionPanel, DatasetBrowser
from lora_lab.workspace import Workspace

TAGS = 5_000
TAGS_PER_IMAGE = 8
OPEN_TARGET = Target(ms=300)
STEP_TARGET = Target(ms=100)
COMPLETE_TARGET = Target(ms=20)
PANEL = {"page_size": 48, "thumb_size": 112, "preview_size": 512}
OLD_THUMB = 160  # DatasetBrowser's default tile
STEPS = 60  # save-and-next this many times: across the end of the first page of 48
CHEAP_REPEATS = 10


def main(argv: list[str] | None = None) -> None:
    args = dataset_args(__doc__.splitlines()[0], argv, min_images=2 * PANEL["page_size"])
    print_machine()
    vocabulary = _vocabulary(min(TAGS, args.images))
    with tempfile.TemporaryDirectory(prefix="lora-lab-bench-") as tmp:
        root = Path(tmp)
        ws = Workspace(root / "workspace")
        ds = _dataset(ws, root, args.images, args.size, vocabulary)
        runs = args.repeats * CHEAP_REPEATS
        print_table(f"open on {args.images} images (thumbnails cached), median of {runs}",
                    "DatasetBrowser + CaptionEditor (defaults: 100 tiles of 160px) opened, "
                    "median of the same runs", bench_open(ws, ds, runs))
        print_table(f"tag completion over {len(vocabulary)} tags, median of {runs} prefixes each",
                    "a plain scan: every tag tested for the prefix, the 10 on most images kept, "
                    "median of the same prefixes", bench_complete(ws, ds, vocabulary, runs))
        print_table(f"save-and-next, typed text saved and the next image shown, {STEPS} steps "
                    f"x {args.repeats}", "CaptionEditor: the same text typed (saved as it lands) "
                    "+ next, median of the same steps", bench_step(ws, ds, args.repeats))


def _vocabulary(count: int) -> list[str]:
    """``count`` distinct tags of one to three made-up words."""
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = list({"".join(rng.choices(letters, k=rng.randint(3, 8))) for _ in range(3 * count)})
    tags: set[str] = set()
    while len(tags) < count:
        tags.add(" ".join(rng.sample(words, rng.choice((1, 1, 2, 2, 3)))))
    return sorted(tags)


def _dataset(ws: Workspace, root: Path, count: int, size: int, vocabulary: list[str]) -> Dataset:
    """``count`` generated JPEGs with tag captions (every tag of ``vocabulary`` on one image at
    least), ingested and thumbnailed (untimed)."""
    images = generate_jpegs(root / "src", count, size)
    rng = random.Random(1)
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]  # a few common, most rare
    for i, path in enumerate(images):
        tags = {vocabulary[i % len(vocabulary)], *rng.choices(vocabulary, weights, k=TAGS_PER_IMAGE - 1)}
        path.with_suffix(".txt").write_text(", ".join(sorted(tags)))
    ingest(images[0].parent, "bench-panel", workspace=ws)
    ds = Dataset.open("bench-panel", ws)
    if len(ds) != count:  # a benchmark that skipped images would measure less work than it claims
        raise SystemExit(f"dataset holds {len(ds)} images, expected {count}")
    build_thumbnails(ds, PANEL["thumb_size"])
    build_thumbnails(ds, OLD_THUMB)
    return ds


def _old_pair(ws: Workspace, ds: Dataset) -> tuple[DatasetBrowser, CaptionEditor]:
    browser = DatasetBrowser(ds.name, ws)
    return browser, CaptionEditor(browser, autostart=False)


def _close(*panels: object) -> None:
    for p in reversed(panels):
        p.close()


def bench_open(ws: Workspace, ds: Dataset, runs: int) -> list[Row]:
    first = ds.images(0, 1).items[0]
    make_thumbnail_of(ds, first, PANEL["preview_size"])  # the first preview, as after any visit
    new, old = [], []
    for _ in range(runs):  # interleaved: both see the same machine load
        new.append(timed(lambda: CaptionPanel(ds.name, ws, autostart=False, **PANEL).close()))
        old.append(timed(lambda: _close(*_old_pair(ws, ds))))
    tags = p50([timed(lambda: TagIndex(ds.index.captions())) for _ in range(runs)])
    panel = CaptionPanel(ds.name, ws, autostart=False, **PANEL)
    if len(panel.browser.rows) != PANEL["page_size"] or panel.opened.file != first["file"]:
        raise SystemExit("the panel did not open on a full page with its first image")
    distinct = len(panel.tags)
    panel.close()
    return [Row(f"CaptionPanel: {PANEL['page_size']} tiles + editor + first image", p50(new),
                p50(old), OPEN_TARGET),
            Row(f"... of which counting the tags ({distinct} distinct)", tags, p50(old))]


def bench_step(ws: Workspace, ds: Dataset, repeats: int) -> list[Row]:
    size = PANEL["preview_size"]
    rows = ds.images(0, STEPS + 1).items
    within, turn, cold, old = [], [], [], []
    for r in range(repeats):
        for row in rows:  # previews ready: the panel makes the next one while the user types
            make_thumbnail_of(ds, row, size)
        panel = CaptionPanel(ds.name, ws, autostart=False, **PANEL)
        for i in range(STEPS):
            typed = f"typed caption {r} {i}, sks"
            panel.editor.text.value = typed
            if i == STEPS - 2:  # one step whose preview is made in it (a jump, no prefetch)
                cached_thumbnail(ds, rows[i + 1], size).unlink()
            t = timed(panel.editor.save_next_button.click)
            (cold if i == STEPS - 2 else turn if (i + 1) % PANEL["page_size"] == 0 else within).append(t)
            if panel.opened.file != rows[i + 1]["file"] or ds.caption(rows[i]["file"]) != typed:
                raise SystemExit(f"step {i}: not saved or not moved on")
        panel.close()
        browser, editor = _old_pair(ws, ds)
        for i in range(STEPS):
            text = f"old caption {r} {i}, sks"
            old.append(timed(lambda e=editor, t=text: _old_step(e, t)))
        _close(browser, editor)
    return [Row("save-and-next, within a page (p50)", p50(within), p50(old), STEP_TARGET),
            Row("save-and-next, within a page (max)", max(within), p50(old), STEP_TARGET),
            Row(f"save-and-next onto the next page of {PANEL['page_size']}", p50(turn), p50(old),
                STEP_TARGET),
            Row(f"save-and-next, next preview not made yet ({size}px from the image)", p50(cold),
                p50(old), STEP_TARGET)]


def _old_step(editor: CaptionEditor, text: str) -> None:
    editor.text.value = text  # CaptionEditor saves on every change that reaches the kernel
    editor.next_button.click()


def bench_complete(ws: Workspace, ds: Dataset, vocabulary: list[str], runs: int) -> list[Row]:
    tags = TagIndex(ds.index.captions())
    if len(tags) != len(vocabulary):
        raise SystemExit(f"the dataset carries {len(tags)} distinct tags, expected {len(vocabulary)}")
    rng = random.Random(2)
    out = []
    for letters in (1, 2, 3):
        prefixes = [rng.choice(vocabulary)[:letters] for _ in range(runs)]
        got = [timed(lambda p=p: tags.complete(p)) for p in prefixes]
        scan = [timed(lambda p=p: _scan(tags.counts, p)) for p in prefixes]
        for p in prefixes[:5]:
            if tags.complete(p) != _scan(tags.counts, p):
                raise SystemExit(f"completions of {p!r} differ from the scan's")
        out.append(Row(f"complete({letters}-letter prefix)", p50(got), p50(scan), COMPLETE_TARGET))
        out.append(Row(f"complete({letters}-letter prefix), max", max(got), p50(scan), COMPLETE_TARGET))
    panel = CaptionPanel(ds.name, ws, autostart=False, **PANEL)
    prefixes = [rng.choice(vocabulary)[:2] for _ in range(runs)]
    typed = [timed(lambda p=p: setattr(panel.editor.tag_input, "value", p)) for p in prefixes]
    scan = [timed(lambda p=p: _scan(tags.counts, p)) for p in prefixes]
    panel.close()
    out.append(Row("typed in the panel's tag box: options updated (2 letters)", p50(typed), p50(scan),
                   COMPLETE_TARGET))
    return out


def _scan(counts: dict[str, int], typed: str) -> list[tuple[str, int]]:
    """The plain way: test every tag (and each of its words) for the prefix, keep the 10 best
    (ranked as :meth:`TagIndex.complete` ranks them, so the answers can be compared)."""
    typed = typed.casefold()
    hits = [(t, n) for t, n in counts.items()
            if any(w.startswith(typed) for w in [t.casefold(), *t.casefold().split(" ")[1:]])]
    return sorted(hits, key=lambda tn: (-tn[1], not tn[0].casefold().startswith(typed), tn[0]))[:10]



if __name__ == "__main__":
    main()
