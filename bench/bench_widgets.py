"""Panel benchmarks: a page of 100 thumbnails of a 10,000-image dataset through DatasetBrowser.

    .venv/bin/python bench/bench_widgets.py                      # the issue's sizes (~1 min)
    .venv/bin/python bench/bench_widgets.py --images 1000 --repeats 1   # quick

Everything (images, workspace) lives in one temp folder that is removed at the end. The panel
runs in-process without a kernel, so its own work is measured (queries, reading thumbnails,
setting and serialising widget values) and the messages are not sent anywhere.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from benchlib import Row, Target, dataset_args, generate_jpegs, p50, print_machine, print_table, timed, warm

from lora_lab.datasets import Dataset, ingest
from lora_lab.datasets.thumbs import build_thumbnails, cached_thumbnail
from lora_lab.widgets.browser import DatasetBrowser
from lora_lab.workspace import Workspace

PAGE = 100
THUMB = 160
PAGE_TARGET = Target(ms=300)
CHEAP_REPEATS = 10  # millisecond-scale measurements get this many times more runs
TAGS = 5  # captions carry one of this many "tagN" words: the filtered page shows a fifth


def main(argv: list[str] | None = None) -> None:
    args = dataset_args(__doc__.splitlines()[0], argv, min_images=2 * PAGE)
    print_machine()
    with tempfile.TemporaryDirectory(prefix="lora-lab-bench-") as tmp:
        root = Path(tmp)
        ws = Workspace(root / "workspace")
        ds = _dataset(ws, root, args.images, args.size)
        runs = args.repeats * CHEAP_REPEATS
        floor = (f"reading the shown page's {PAGE} cached {THUMB}px thumbnails' bytes "
                 f"(Path.read_bytes), median of {runs}")
        print_table(f"a page of {PAGE} of {args.images} images, cached thumbnails, median of {runs}",
                    floor, bench_cached(ws, ds, runs))
        print_table(f"a page of {PAGE} of {args.images} images, no thumbnails cached, "
                    f"median of {args.repeats}", floor, bench_uncached(ws, ds, args.repeats))


def _dataset(ws: Workspace, root: Path, count: int, size: int) -> Dataset:
    """``count`` generated JPEGs with caption sidecars, ingested and thumbnailed (untimed)."""
    images = generate_jpegs(root / "src", count, size)
    for i, path in enumerate(images):
        path.with_suffix(".txt").write_text(f"a photo, shapes on a gradient, tag{i % TAGS}")
    ingest(images[0].parent, "bench-widgets", workspace=ws)
    ds = Dataset.open("bench-widgets", ws)
    if len(ds) != count:  # a benchmark that skipped images would measure less work than it claims
        raise SystemExit(f"dataset holds {len(ds)} images, expected {count}")
    build_thumbnails(ds, THUMB)
    return ds


def bench_cached(ws: Workspace, ds: Dataset, runs: int) -> list[Row]:
    middle = len(ds) // 2 // PAGE * PAGE
    rows = []
    opened = [timed(lambda: DatasetBrowser(ds.name, ws).close()) for _ in range(runs)]
    browser = DatasetBrowser(ds.name, ws)
    rows.append(Row("open the panel: build 100 tiles + first page", p50(opened),
                    _floor(browser, runs), PAGE_TARGET))
    later = []
    for _ in range(runs):
        browser._go(middle - PAGE)  # untimed: the page before
        later.append(timed(browser.next_button.click))
    rows.append(Row(f"next page, to {middle + 1}-{middle + PAGE}", p50(later),
                    _floor(browser, runs), PAGE_TARGET))
    filtered = []
    for _ in range(runs):
        browser.show(q="", captioned=None, sort="file")
        filtered.append(timed(lambda: browser.show(q="tag3", captioned=True, sort="-modified")))
    rows.append(Row(f"filtered page: show(q='tag3', captioned=True, sort='-modified') "
                    f"({browser.total} match)", p50(filtered), _floor(browser, runs), PAGE_TARGET))
    browser.close()
    return rows


def bench_uncached(ws: Workspace, ds: Dataset, repeats: int) -> list[Row]:
    """The page shows at once with placeholders; the pool fills the thumbnails in after."""
    shown, filled, floor = [], [], 0.0
    for _ in range(repeats):
        shutil.rmtree(ds.meta_dir / "thumbs")
        warm([ds.path / r["file"] for r in ds.images(0, PAGE).items])
        made: list[DatasetBrowser] = []
        shown.append(timed(lambda: made.append(DatasetBrowser(ds.name, ws))))  # noqa: B023 (called here)
        browser = made[0]
        filled.append(shown[-1] + timed(browser.wait_thumbnails))
        floor = _floor(browser, repeats * CHEAP_REPEATS)
        browser.close()
    return [Row("open the panel: first page shown (placeholders)", p50(shown), floor, PAGE_TARGET),
            Row(f"... and its {PAGE} thumbnails made and filled in", p50(filled), floor)]


def _floor(browser: DatasetBrowser, runs: int) -> float:
    """Median time to read the bytes of the thumbnails ``browser`` shows now."""
    paths = [cached_thumbnail(browser.dataset, row, THUMB) for row in browser.rows]
    if len(paths) != PAGE:
        raise SystemExit(f"the page shows {len(paths)} images, expected {PAGE}")
    return p50([timed(lambda: [p.read_bytes() for p in paths]) for _ in range(runs)])



if __name__ == "__main__":
    main()
