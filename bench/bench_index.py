"""Index benchmark: a page anywhere in a 100,000-image dataset, with each sort and each filter,
against the OFFSET queries the index ran before (its old schema and SQL, kept below as the
baseline and run on the same rows in the same run); and the writes a sync and a caption batch
make, new against old.

    .venv/bin/python bench/bench_index.py                                # the issue's size
    .venv/bin/python bench/bench_index.py --images 20000 --repeats 1     # quick (~1 min)

The rows are made up (no image files: paging reads only the index). Each page is timed right
after an untimed caption write, so it is the first page of its query since the index changed:
nothing of it is remembered (the slow case; the next page of the same query is timed too).
A text query reads the names and captions the index keeps in memory, carried past a caption
write; the first page after any other write, which reads them all again, is timed apart.
"""
from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchlib import Row, Target, p50, print_machine, print_table, timed

from lora_lab.datasets.captions import split_tags
from lora_lab.datasets.index import SORTS, ImageQuery, Index

PAGE = 100
TARGET = Target(ms=20)
SINGLES = 500  # captions saved one at a time, as a panel or a caption batch saves them
TRIGGER = "sks"

# -- the index before: its schema and the SQL page() ran ---------------------------------------------
# (plus the truncation column, unindexed, and its filter written the old way: the baseline for it)
OLD_SCHEMA = """
CREATE TABLE images (file TEXT PRIMARY KEY, width INTEGER NOT NULL, height INTEGER NOT NULL,
    format TEXT NOT NULL, orientation INTEGER NOT NULL, bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL, phash TEXT NOT NULL, mtime_ns INTEGER NOT NULL, caption TEXT,
    caption_mtime_ns INTEGER, near_dup_of TEXT, caption_model TEXT, caption_prompt TEXT,
    caption_truncated INTEGER);
CREATE INDEX images_sha256 ON images(sha256);
"""
OLD_COLUMNS = ("file", "width", "height", "format", "orientation", "bytes", "sha256", "phash",
               "mtime_ns", "caption", "caption_mtime_ns", "near_dup_of", "caption_model",
               "caption_prompt", "caption_truncated")


def old_where(view: ImageQuery) -> tuple[str, tuple]:
    clauses, args = [], []
    if view.q:
        clauses.append("(file LIKE ? ESCAPE '\\' OR caption LIKE ? ESCAPE '\\')")
        pattern = "%" + view.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        args += [pattern, pattern]
    if view.tag:
        clauses.append("has_tag(caption, ?)")
        args.append(" ".join(view.tag.split()))
    if view.captioned is True:
        clauses.append("caption IS NOT NULL AND caption != ''")
    elif view.captioned is False:
        clauses.append("(caption IS NULL OR caption = '')")
    if view.shape:
        clauses.append({"portrait": "height > width", "landscape": "width > height",
                        "square": "width = height"}[view.shape])
    if view.min_side:
        clauses.append("MIN(width, height) >= ?")
        args.append(view.min_side)
    if view.truncated is not None:
        clauses.append(f"caption_truncated {'=' if view.truncated else 'IS NOT'} 1")
    if view.duplicates:
        clauses.append("(near_dup_of IS NOT NULL OR file IN "
                       "(SELECT near_dup_of FROM images WHERE near_dup_of IS NOT NULL))")
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)


def old_page(db: sqlite3.Connection, offset: int, limit: int, view: ImageQuery) -> tuple[list, int]:
    where, args = old_where(view)
    key = SORTS[view.sort.removeprefix("-")] + (" DESC" if view.sort.startswith("-") else "")
    order = ("COALESCE(near_dup_of, file), " if view.duplicates else "") + f"{key}, file"
    total = db.execute(f"SELECT COUNT(*) FROM images {where}", args).fetchone()[0]
    rows = db.execute(f"SELECT * FROM images {where} ORDER BY {order} LIMIT ? OFFSET ?",
                      (*args, limit, offset))
    return [dict(r) for r in rows], total


def old_connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.create_function("has_tag", 2, lambda c, t: bool(c) and t in split_tags(c), deterministic=True)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


# -- made-up rows ----------------------------------------------------------------------------------
def make_rows(count: int, seed: int = 0) -> list[dict]:
    """Rows like a real dataset's: a few common sizes (long runs of ties) and odd ones, 70%
    captioned (half booru tags led by a trigger word, half sentences), 2% captions cut off,
    1% near-duplicates."""
    rng = random.Random(seed)
    vocab = [f"{rng.choice(WORDS)} {rng.choice(WORDS)}" if i % 3 else rng.choice(WORDS) + str(i)
             for i in range(5000)]
    weights = [1 / (i + 1) for i in range(len(vocab))]  # a few tags common, most rare
    sizes = [(512, 512), (768, 512), (512, 768), (1024, 1024), (832, 1216), (1216, 832)]
    rows = []
    for i in range(count):
        w, h = rng.choice(sizes) if rng.random() < 0.7 else (rng.randint(256, 2048), rng.randint(256, 2048))
        kind = rng.random()
        if kind < 0.35:
            caption = ", ".join([TRIGGER, *dict.fromkeys(rng.choices(vocab, weights, k=rng.randint(5, 25)))])
        elif kind < 0.7:
            caption = ". ".join(" ".join(rng.choices(WORDS, k=rng.randint(6, 14))).capitalize()
                                for _ in range(rng.randint(1, 3))) + "."
        else:
            caption = None
        rows.append({"file": f"img_{i:06d}.jpg", "width": w, "height": h, "format": "JPEG",
                     "orientation": 1, "bytes": rng.randint(20_000, 8_000_000),
                     "sha256": f"{rng.getrandbits(256):064x}", "phash": f"{rng.getrandbits(64):016x}",
                     "mtime_ns": 1_700_000_000_000_000_000 + rng.getrandbits(50), "caption": caption,
                     "caption_mtime_ns": 1 if caption else None,
                     "near_dup_of": f"img_{i - 1:06d}.jpg" if i % 100 == 99 else None,
                     "caption_truncated": int(caption is not None and rng.random() < 0.03)})
    return rows


WORDS = ("red blue green woman man dog cat sitting standing outdoors indoors smiling hair long "
         "short dress shirt city street forest beach night day light shadow portrait close up "
         "looking at viewer holding cup window table chair grass sky cloud sun rain snow car "
         "photo painting detailed soft warm cold bright dark").split()

FILTERS = {  # name -> the query's filters; each is timed with every sort
    "none": {},
    "q common": {"q": "red"},
    "q rare": {"q": "sitting grass forest"},
    "tag trigger": {"tag": TRIGGER},
    "tag common": {"tag": None},  # the 10th most frequent tag, found in the rows
    "captioned": {"captioned": True},
    "uncaptioned": {"captioned": False},
    "landscape": {"shape": "landscape"},
    "min_side 1000": {"min_side": 1000},
    "duplicates": {"duplicates": True},
    "truncated": {"truncated": True},
    "not truncated": {"truncated": False},
}
ALL_SORTS = [s for name in SORTS for s in (name, "-" + name)]


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    print_machine()
    print(f"# sqlite {sqlite3.sqlite_version}")
    rows = make_rows(args.images)
    counts = Counter(t for r in rows if r["caption"] for t in set(split_tags(r["caption"])))
    FILTERS["tag common"]["tag"] = counts.most_common(11)[10][0]
    with tempfile.TemporaryDirectory(prefix="lora-lab-bench-index-") as tmp:
        root = Path(tmp)
        build_s = timed(lambda: Index(root / "new.sqlite").upsert(rows))
        old = old_connect(root / "old.sqlite")
        old.executescript(OLD_SCHEMA)
        old_s = timed(lambda: _old_upsert(old, rows))
        print(f"\nbuilt the index of {args.images} rows in {build_s:.2f} s "
              f"(the old one in {old_s:.2f} s)")
        index = Index(root / "new.sqlite")
        bench_pages(index, old, len(rows), args.repeats, args.only)
        bench_writes(root, args.write_rows, args.repeats)


def bench_pages(index: Index, old: sqlite3.Connection, count: int, repeats: int,
                only: list[str] | None) -> None:
    """Every filter x every sort: the first, middle and last page, each the first page of its
    query since a change; then the page after it (its query remembered). Checked against the
    old SQL's rows."""
    writer, bump = index.all()[0]["file"], [0]

    def change() -> None:  # an untimed caption write: whatever pages knew is forgotten
        bump[0] += 1
        index.set_caption(writer, f"{TRIGGER}, bench {bump[0]}", 1)
        old.execute("UPDATE images SET caption = ? WHERE file = ?", (f"{TRIGGER}, bench {bump[0]}", writer))

    summary = []
    for name, filters in FILTERS.items():
        if only and name not in only:
            continue
        new_t: dict[str, list[float]] = {"first": [], "middle": [], "last": [], "next": []}
        old_t: dict[str, list[float]] = {"first": [], "middle": [], "last": [], "next": []}
        total = 0
        for sort in ALL_SORTS:
            view = ImageQuery(**filters, sort=sort)
            total = index.page(0, 1, view)[1]
            last = max(total - 1, 0) // PAGE * PAGE
            for where, offset in (("first", 0), ("middle", last // 2 // PAGE * PAGE), ("last", last)):
                nxt = min(offset + PAGE, last)  # the page after, its query now remembered
                for _ in range(repeats):
                    change()
                    for at, times in ((offset, where), (nxt, "next")):
                        _page_pair(index, old, at, view, new_t[times], old_t[times])
        print_table(f"{name}: {total} of {count} images match; pages of {PAGE}, every sort, "
                    f"{repeats} runs each ({len(new_t['first'])} per row)",
                    "the old OFFSET query on the old schema, same rows, same run",
                    [Row(f"{where} page, {stat}", fn(new_t[where]), fn(old_t[where]), TARGET)
                     for where in ("first", "middle", "last", "next")
                     for stat, fn in (("p50", p50), ("max", max))])
        if filters.get("q"):
            print(f"the floor of any text query, one scan of every name and caption: "
                  f"{p50([timed(lambda v=view: _scan(index, v)) for _ in range(5)]) * 1000:.2f} ms")
            print(f"its first page after a write other than a caption's (every name and caption "
                  f"read into memory again): {p50(_reread(index, writer, view)) * 1000:.2f} ms")
        cold = ("first", "middle", "last")
        summary.append(Row(f"{name}: slowest p50 of first/middle/last",
                           max(p50(new_t[w]) for w in cold), max(p50(old_t[w]) for w in cold), TARGET))
    print_table("summary: each filter's slowest page position (median over every sort), "
                "the first page of its query since a change", "the old query, same rows", summary)


def _reread(index: Index, writer: str, view: ImageQuery) -> list[float]:
    times = []
    for _ in range(3):
        index.upsert([index.get(writer)])  # the same row again: a change, not a caption's
        times.append(timed(lambda: index.page(0, PAGE, view)))
    return times


def _scan(index: Index, view: ImageQuery) -> None:
    where, args = view.where()
    index.db.execute(f"SELECT COUNT(*) FROM images NOT INDEXED {where}", args).fetchone()


def _page_pair(index: Index, old: sqlite3.Connection, offset: int, view: ImageQuery,
               new_times: list[float], old_times: list[float]) -> None:
    """Time one page, new then old, and check they hold the same rows (a fast page with the
    wrong rows would be no result at all)."""
    start = time.perf_counter()
    got, total = index.page(offset, PAGE, view)
    new_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    want, want_total = old_page(old, offset, PAGE, view)
    old_times.append(time.perf_counter() - start)
    if total != want_total or [r["file"] for r in got] != [r["file"] for r in want]:
        raise SystemExit(f"page({offset}, {PAGE}, {view}) differs from the old query's")


def bench_writes(root: Path, count: int, repeats: int) -> None:
    """What a sync of ``count`` new images writes (one upsert), then what their captions cost
    (``count`` set_caption calls, as a sync or a caption batch makes them), new against old."""
    rows = [{**r, "caption": None, "caption_mtime_ns": None, "caption_truncated": None}
            for r in make_rows(count, seed=1)]
    captions = [(r["file"], c["caption"]) for r, c in zip(rows, make_rows(count, seed=2))]
    times: dict[str, list[float]] = {}
    for run in range(repeats):
        for name, seconds in _write_run(root / str(run), rows, captions).items():
            times.setdefault(name, []).append(seconds)
    print_table(f"writes: a sync of {count} new images (one upsert, then their captions in one "
                f"transaction), then {SINGLES} captions saved one by one; {repeats} runs, medians",
                "the old schema and SQL, same rows (the old sync wrote captions one by one)",
                [Row(f"upsert {count} rows", p50(times["upsert"]), p50(times["old upsert"])),
                 Row(f"set_captions, {count} captions", p50(times["batch"]), p50(times["old batch"])),
                 Row(f"set_caption x{SINGLES}, one transaction each", p50(times["one"]),
                     p50(times["old one"]))])


OLD_CAPTION = ("UPDATE images SET caption = ?, caption_mtime_ns = ?, caption_model = ?, "
               "caption_prompt = ? WHERE file = ?")


def _write_run(folder: Path, rows: list[dict], captions: list[tuple[str, str | None]]) -> dict[str, float]:
    """One run of the writes on fresh index files, new and old, in the order a sync makes them."""
    folder.mkdir()
    index, old = Index(folder / "new.sqlite"), old_connect(folder / "old.sqlite")
    old.executescript(OLD_SCHEMA)
    singles = captions[:SINGLES]
    out = {"upsert": timed(lambda: index.upsert(rows)),
           "old upsert": timed(lambda: _old_upsert(old, rows)),
           "batch": timed(lambda: index.set_captions([(f, c, 1, {"model": "m"}) for f, c in captions])),
           "old batch": timed(lambda: [old.execute(OLD_CAPTION, (c, 1, "m", None, f)) for f, c in captions]),
           "one": timed(lambda: [index.set_caption(f, c and c + ".", 2) for f, c in singles]),
           "old one": timed(lambda: [old.execute(OLD_CAPTION, (c and c + ".", 2, None, None, f))
                                     for f, c in singles])}
    index.close()
    old.close()
    return out


def _old_upsert(db: sqlite3.Connection, rows: list[dict]) -> None:
    sql = (f"INSERT OR REPLACE INTO images ({', '.join(OLD_COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(OLD_COLUMNS))})")
    with db:
        db.execute("BEGIN")
        db.executemany(sql, ([row.get(c) for c in OLD_COLUMNS] for row in rows))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000, help="rows in the index")
    parser.add_argument("--write-rows", type=int, default=10_000, help="rows the write bench syncs")
    parser.add_argument("--repeats", type=int, default=3, help="runs per page and sort")
    parser.add_argument("--only", nargs="+", choices=FILTERS, help="only these filters")
    args = parser.parse_args(argv)
    if min(args.images, args.write_rows, args.repeats) < 1:
        parser.error("sizes and --repeats must be at least 1")
    return args


if __name__ == "__main__":
    main()
