"""The dataset index: a SQLite cache of what the files on disk say.

The image files and their ``.txt`` sidecars are the truth; this index only makes listing,
filtering and stats fast, and :meth:`Dataset.sync` rebuilds it from the files at any time.

A page costs about the same at any offset (see :meth:`Index.page`). Every sort has an index, one
ascending and one descending, that also holds the columns the simple filters read, so a page is
a walk along one index that reads no table row, from whichever end, or whichever row of a page
already served, lies nearest; a tag filter looks the tag up in ``tags``. A text query, the
near-duplicates and a rare tag are selected and sorted in one pass instead, and the ordered ids
kept, so that any later page of that query is a slice. What pages found out is kept until the
index changes (a change count in ``meta``, bumped by every write). A text query alone reads no
caption from SQLite: every name and caption, lowercased, is kept in memory with each sort's
order (see :class:`_Texts`), and carried past a caption saved by this process.
"""
from __future__ import annotations

import contextlib
import json
import operator
import secrets
import sqlite3
import threading
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LoraLabError
from .captions import split_tags

SCHEMA_VERSION = 1  # PRAGMA user_version; 0: an index made before the tags and sort indexes

TABLES = (
    """CREATE TABLE IF NOT EXISTS images (
        file TEXT PRIMARY KEY,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        format TEXT NOT NULL,
        orientation INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        phash TEXT NOT NULL,
        mtime_ns INTEGER NOT NULL,
        caption TEXT,
        caption_mtime_ns INTEGER,
        near_dup_of TEXT,
        caption_model TEXT,  -- what made the caption, when a caption batch did
        caption_prompt TEXT,
        caption_truncated INTEGER  -- 1: the model stopped at its token limit (the text may be cut)
    )""",
    "CREATE INDEX IF NOT EXISTS images_sha256 ON images(sha256)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    # each distinct tag of each caption, as split_tags splits it, with the image's rowid: a tag
    # filter is a lookup, and its rows are found by rowid (cheaper than by name)
    "CREATE TABLE IF NOT EXISTS tags (tag TEXT NOT NULL, image INTEGER NOT NULL, "
    "PRIMARY KEY (tag, image)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS images_near_dup ON images(near_dup_of) WHERE near_dup_of IS NOT NULL",
)

COLUMNS = ("file", "width", "height", "format", "orientation", "bytes", "sha256", "phash",
           "mtime_ns", "caption", "caption_mtime_ns", "near_dup_of", "caption_model",
           "caption_prompt", "caption_truncated")

CAPTION_LENGTH = "LENGTH(COALESCE(caption, ''))"
SORTS = {  # sort key -> SQL; a "-" before the key reverses it
    "file": "file",
    "pixels": "width * height",
    "aspect": "CAST(width AS REAL) / height",
    "bytes": "bytes",
    "caption": CAPTION_LENGTH,
    "modified": "mtime_ns",
}
SHAPES = {"portrait": "height > width", "landscape": "width > height", "square": "width = height"}
# What the simple filters read, written as they read it (SQLite matches index expressions by
# their text). Every sort index carries these, so a filtered walk never reads a table row.
FILTERED = f"width, height, {CAPTION_LENGTH}, caption_truncated"
COUNTED = "images_filtered"  # the narrowest index with them: counts scan it
FEW_TAGGED = 8000  # a tag on at most this many images: its rows are sorted, not walked to
MARKS = 64  # rows remembered per query, each a place a later page's walk can start from
QUERIES = 8  # queries remembered per index file (a listed one holds 8 bytes an image)
FILES = 4  # index files remembered
IN_JSON = "WHERE file IN (SELECT value FROM json_each(?))"  # a list of names as one parameter
WAIT_MS = 5000  # how long a write waits for another's lock (sqlite3's default)
MIGRATE_WAIT_MS = 120_000  # ... and for another process migrating the same file


def _sort_index(name: str, desc: bool) -> str:
    # -file walks the file index backwards: file names are unique, so no tie order to keep
    return "images_by_file" if name == "file" else f"images_by_{name}{'_desc' if desc else ''}"


def _sort_indexes() -> list[str]:
    out = [f"CREATE INDEX IF NOT EXISTS {COUNTED} ON images({FILTERED})"]
    for name, expr in SORTS.items():
        for desc in (False, True) if name != "file" else (False,):
            key = "file" if name == "file" else f"{expr}{' DESC' if desc else ''}, file"
            out.append(f"CREATE INDEX IF NOT EXISTS {_sort_index(name, desc)} "
                       f"ON images({key}, {FILTERED})")
    return out


def _is_flag(value: Any) -> bool:
    return value is None or value is True or value is False


@dataclass(frozen=True)
class ImageQuery:
    """Which images, in which order: a text query over names and captions, a tag (exactly, as
    one of the caption's comma-separated tags), caption state, captions cut at the caption
    model's token limit (or none of those), shape, a minimum short side, near-duplicates only
    (each beside the image it duplicates), a sort."""

    q: str | None = None
    tag: str | None = None
    captioned: bool | None = None
    shape: str | None = None
    min_side: int = 0
    duplicates: bool = False
    truncated: bool | None = None
    sort: str = "file"

    def __post_init__(self) -> None:
        if self.shape not in (None, *SHAPES):
            raise LoraLabError(f"shape must be one of {', '.join(SHAPES)}, not {self.shape!r}")
        if not isinstance(self.sort, str) or self.sort.removeprefix("-") not in SORTS:
            raise LoraLabError(f"sort must be one of {', '.join(SORTS)} (a leading - reverses), "
                               f"not {self.sort!r}")
        if not isinstance(self.min_side, int) or isinstance(self.min_side, bool) or self.min_side < 0:
            raise LoraLabError(f"min_side must be a whole number >= 0, not {self.min_side!r}")
        if not _is_flag(self.captioned) or self.duplicates not in (True, False):
            raise LoraLabError("captioned must be true, false or unset, and duplicates true or "
                               f"false (not {self.captioned!r}, {self.duplicates!r})")
        if not _is_flag(self.truncated):
            raise LoraLabError(f"truncated must be true, false or unset, not {self.truncated!r}")
        for name in ("q", "tag"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise LoraLabError(f"{name} must be text, not {getattr(self, name)!r}")

    def where(self) -> tuple[str, tuple]:
        clauses, args = [], []
        if self.q:
            clauses.append("(file LIKE ? ESCAPE '\\' OR caption LIKE ? ESCAPE '\\')")
            pattern = "%" + self.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            args += [pattern, pattern]
        if self.tag:
            clauses.append("rowid IN (SELECT image FROM tags WHERE tag = ?)")
            args.append(self.tag_name())
        if self.captioned is not None:
            clauses.append(f"{CAPTION_LENGTH} {'>' if self.captioned else '='} 0")
        if self.truncated is not None:
            clauses.append(f"caption_truncated {'=' if self.truncated else 'IS NOT'} 1")
        if self.shape:
            clauses.append(SHAPES[self.shape])
        if self.min_side:
            clauses.append("MIN(width, height) >= ?")
            args.append(self.min_side)
        if self.duplicates:
            clauses.append("file IN (SELECT file FROM images WHERE near_dup_of IS NOT NULL "
                           "UNION SELECT near_dup_of FROM images WHERE near_dup_of IS NOT NULL)")
        return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)

    def order(self) -> str:
        key = SORTS[self.sort.removeprefix("-")] + (" DESC" if self.sort.startswith("-") else "")
        group = "COALESCE(near_dup_of, file), " if self.duplicates else ""
        return f"{group}{key}" if key.startswith("file") else f"{group}{key}, file"

    def tag_name(self) -> str:
        """The tag as the tags table holds it (whitespace collapsed, as split_tags does)."""
        return " ".join((self.tag or "").split())

    @property
    def listed(self) -> bool:
        """Whether no index walks this view's rows well: a text query reads every caption
        anyway, and near-duplicates are grouped. Those are selected and sorted in one pass
        (so is a rare tag: see :meth:`Index._rarely_tagged`)."""
        return bool(self.q or self.duplicates)

    def listing(self, columns: str) -> tuple[str, tuple]:
        """SQL selecting ``columns`` of all the view's rows, then sorting them: for a view no
        index walks well (a text query, near-duplicates, a rare tag)."""
        where, args = self.where()
        # NOT INDEXED: the rows come from a scan or by rowid, never from a walk of a sort index
        # (which would read each row anyway); near-duplicates need the file index
        how = "" if self.duplicates else "NOT INDEXED"
        return f"SELECT {columns} FROM images {how} {where} ORDER BY {self.order()}", args

    def walk(self, columns: str, forward: bool = True,
             after: tuple[Any, str] | None = None) -> tuple[str, tuple]:
        """SQL selecting ``columns`` along the sort's own index: in the view's order, or
        (``forward=False``) in the exact reverse; with ``after``, only the rows past that
        row's (sort key, file) in the direction walked."""
        name, desc = self.sort.removeprefix("-"), self.sort.startswith("-")
        expr, down = SORTS[name], desc != (not forward)  # does the key descend along the walk?
        where, args = self.where()
        clauses = [where.removeprefix("WHERE ")] if where else []
        if after is not None:
            key, file = after
            if name == "file":
                clauses.append(f"file {'<' if down else '>'} ?")
                args += (file,)
            else:  # a range on the key the index can seek to, less the ties already passed
                clauses.append(f"{expr} {'<=' if down else '>='} ? AND NOT ({expr} = ? AND "
                               f"file {'<=' if forward else '>='} ?)")
                args += (key, key, file)
        order = (f"file {'DESC' if down else 'ASC'}" if name == "file" else
                 f"{expr} {'DESC' if down else 'ASC'}, file {'ASC' if forward else 'DESC'}")
        sql = (f"SELECT {columns} FROM images INDEXED BY {_sort_index(name, desc)} "
               f"{'WHERE ' + ' AND '.join(clauses) if clauses else ''} ORDER BY {order}")
        return sql, args


@dataclass
class _Remembered:
    """What one query's pages have found out, valid while the index is unchanged."""
    total: int
    marks: dict[int, tuple[Any, str]]  # position in the order -> that row's (sort key, file)
    ids: array | None = None  # a listed view's rowids, all of them, in order


@dataclass
class _Texts:
    """An index's names and captions as a text query's LIKE reads them, valid at one change count:
    by rowid, ``texts`` holds ``lower(file || char(10) || caption)`` ("" where no image has that
    rowid) and ``lengths`` each caption's length; ``orders[sort]`` holds every rowid in that
    sort's order, read when a query first needs it (not for the caption sorts, which a caption
    edit reorders: their matches are sorted by ``lengths`` instead). A write makes a new one, so
    a page being served keeps the one of its own snapshot."""
    changes: str
    texts: list[str]
    lengths: np.ndarray
    orders: dict[str, np.ndarray] = field(default_factory=dict)

    def matching(self, needle: str, sort: str) -> array:
        """The rowids whose text holds ``needle`` (lowercased), in the order of ``sort``."""
        hit = np.frombuffer(bytes(map(operator.contains, self.texts, repeat(needle))), bool)
        if sort.removeprefix("-") == "caption":
            found = np.flatnonzero(hit)
            file_rank = np.empty(len(hit), np.int64)
            file_rank[self.orders["file"]] = np.arange(len(self.orders["file"]))
            lengths = self.lengths[found]
            found = found[np.lexsort((file_rank[found], -lengths if sort[0] == "-" else lengths))]
        else:
            found = self.orders[sort][hit[self.orders[sort]]]
        return array("q", found.astype(np.int64).tobytes())


# SQLite's own lower(): it folds ASCII only, as LIKE does, so the texts compare as LIKE compares
TEXT = f"lower(file || char(10) || COALESCE(caption, '')), {CAPTION_LENGTH}"

# Index file -> (its change count, what pages of it found out). Shared by every Index of this
# process, so a server that opens the dataset anew for each request still pages from memory.
_memos: dict[str, tuple[str, dict[ImageQuery, _Remembered]]] = {}
_memos_lock = threading.Lock()
_texts: dict[str, _Texts] = {}  # index file -> its texts (guarded by _memos_lock too)


class Index:
    """Rows of ``images`` as dicts. Each thread that uses an Index gets its own connection
    (a panel's thumbnail pool and a server's request threads read the index at once)."""

    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()
        self._open: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        self._key = str(path.resolve())
        self._migrate()

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection, opened on its first use."""
        db = getattr(self._local, "db", None)
        return db if db is not None else self._connect()

    def _connect(self) -> sqlite3.Connection:
        # check_same_thread=False only so close() can close every thread's connection
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                             timeout=WAIT_MS / 1000)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        self._local.db = db
        with self._guard:
            self._open.append(db)
        return db

    def _migrate(self) -> None:
        """Bring an index file of any earlier version (or a new, empty one) to this one: the
        truncation column, the tags table filled from the captions, the sort indexes."""
        db = self.db
        if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        # Of two processes opening it at once, one migrates while the other waits for it (a
        # 100,000-image index takes seconds: longer than the usual wait for a lock).
        db.execute(f"PRAGMA busy_timeout = {MIGRATE_WAIT_MS}")
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")
                if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                    self._upgrade(db)
        finally:
            db.execute(f"PRAGMA busy_timeout = {WAIT_MS}")

    def _upgrade(self, db: sqlite3.Connection) -> None:
        for sql in TABLES:
            db.execute(sql)
        if "caption_truncated" not in {r[1] for r in db.execute("PRAGMA table_info(images)")}:
            db.execute("ALTER TABLE images ADD COLUMN caption_truncated INTEGER")
        for sql in _sort_indexes():
            db.execute(sql)
        db.execute("DELETE FROM tags")
        _retag(db, [(image, None, caption) for image, caption in
                    db.execute("SELECT rowid, caption FROM images WHERE caption != ''").fetchall()])
        # counted from a random start, so that a rebuilt file never repeats a count
        db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('changes', ?)",
                   (str(secrets.randbits(62)),))
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        """Close every thread's connection (a later use opens a new one)."""
        with self._guard:
            dbs, self._open, self._local = self._open, [], threading.local()
        for db in dbs:
            db.close()

    # -- writing -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _changing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction that also counts a change, which every remembered page of
        every process reading this index then no longer matches."""
        with self.db as db:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'changes'")

    def upsert(self, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        if not rows:  # nothing changed: what pages found out still holds
            return
        # An update in place, not a replace: an image keeps its id, which its tags name.
        sql = (f"INSERT INTO images ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
               "ON CONFLICT (file) DO UPDATE SET "
               + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[1:]))
        files = json.dumps([row["file"] for row in rows])
        with self._changing() as db:
            before = dict(db.execute(f"SELECT file, caption FROM images {IN_JSON}", (files,)))
            db.executemany(sql, ([row.get(c) for c in COLUMNS] for row in rows))
            ids = dict(db.execute(f"SELECT file, rowid FROM images {IN_JSON}", (files,)))
            _retag(db, [(ids[row["file"]], before.get(row["file"]), row.get("caption"))
                        for row in rows])

    def delete(self, files: Iterable[str]) -> None:
        names = json.dumps(list(files))
        if names == "[]":
            return
        with self._changing() as db:
            gone = db.execute(f"SELECT rowid, caption FROM images {IN_JSON}", (names,)).fetchall()
            _retag(db, [(image, caption, None) for image, caption in gone])
            db.execute(f"DELETE FROM images {IN_JSON}", (names,))

    def set_caption(self, file: str, caption: str | None, mtime_ns: int | None,
                    source: dict[str, Any] | None = None) -> None:
        """Cache a caption; ``source`` names the model and prompt that made it (none: by hand)
        and has ``"truncated": True`` when the model stopped at its token limit."""
        self.set_captions([(file, caption, mtime_ns, source)])

    def set_captions(self, captions: Iterable[tuple[str, str | None, int | None,
                                                    dict[str, Any] | None]]) -> None:
        """Cache many captions, each ``(file, caption, mtime_ns, source)`` as :meth:`set_caption`
        takes them, in one transaction (a sync's thousands cost one commit, not thousands)."""
        captions = list(captions)
        if not captions:
            return
        retag = []
        with self._changing() as db:
            changes = db.execute("SELECT value FROM meta WHERE key = 'changes'").fetchone()[0]
            for file, caption, mtime_ns, source in captions:
                source = source or {}
                old = db.execute("SELECT rowid, caption FROM images WHERE file = ?", (file,)).fetchone()
                if old is None:
                    continue  # not (or no longer) indexed
                db.execute(
                    "UPDATE images SET caption = ?, caption_mtime_ns = ?, caption_model = ?, "
                    "caption_prompt = ?, caption_truncated = ? WHERE rowid = ?",
                    (caption, mtime_ns, source.get("model"), source.get("prompt"),
                     int(source.get("truncated") is True), old[0]))
                retag.append((old[0], old[1], caption))
            _retag(db, retag)
            saved = _tuples(db).execute(f"SELECT rowid, {TEXT} FROM images WHERE rowid IN "
                                        "(SELECT value FROM json_each(?))",
                                        (json.dumps([r[0] for r in retag]),)).fetchall()
        self._captions_saved(changes, saved)

    # -- reading -----------------------------------------------------------------------------------
    def get(self, file: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM images WHERE file = ?", (file,)).fetchone()
        return dict(row) if row else None

    def all(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM images ORDER BY file")]

    def page(self, offset: int, limit: int,
             view: ImageQuery = ImageQuery()) -> tuple[list[dict[str, Any]], int]:
        """One page of the rows ``view`` selects, in its order, and how many it selects."""
        with self.db as db:
            db.execute("BEGIN")  # one snapshot: the change count, the total and the rows agree
            memo = self._remembered(view, db)
            if memo.ids is not None:
                ids = list(memo.ids[offset:offset + limit])
            else:
                ids = self._walk(db, view, memo, offset, max(min(limit, memo.total - offset), 0))
            return self._rows(db, ids), memo.total

    def _remembered(self, view: ImageQuery, db: sqlite3.Connection) -> _Remembered:
        changes = db.execute("SELECT value FROM meta WHERE key = 'changes'").fetchone()[0]
        with _memos_lock:
            at, views = _memos.pop(self._key, (changes, {}))
            views = views if at == changes else {}
            _memos[self._key] = (changes, views)  # newest last: the oldest is forgotten first
            while len(_memos) > FILES:
                _memos.pop(next(iter(_memos)))
            memo = views.pop(view, None)
            counted = memo or next((m for v, m in views.items()
                                    if replace(v, sort="file") == replace(view, sort="file")), None)
        if memo is None and (view.listed or self._rarely_tagged(db, view)):
            ids = self._listed(db, view, changes)
            memo = _Remembered(len(ids), {}, ids)
        elif memo is None:  # the total does not depend on the sort
            memo = _Remembered(counted.total if counted else self._count(db, view), {})
        with _memos_lock:
            views[view] = memo
            while len(views) > QUERIES:
                views.pop(next(iter(views)))
        return memo

    def _listed(self, db: sqlite3.Connection, view: ImageQuery, changes: str) -> array:
        """A listed view's rowids in its order: a text query alone from the texts in memory
        (a newline could span name and caption there), any other view in one SQL pass."""
        if not view.q or "\n" in view.q or replace(view, sort="file") != ImageQuery(q=view.q):
            return array("q", (r[0] for r in _tuples(db).execute(*view.listing("rowid"))))
        texts = self._texts(db, changes)
        for sort in {"file", view.sort} - {"caption", "-caption"} - texts.orders.keys():
            sql, args = ImageQuery(sort=sort).walk("rowid")
            order = np.array([r[0] for r in _tuples(db).execute(sql, args)], np.int64)
            with _memos_lock:
                texts.orders[sort] = order
        return texts.matching(db.execute("SELECT lower(?)", (view.q,)).fetchone()[0], view.sort)

    def _texts(self, db: sqlite3.Connection, changes: str) -> _Texts:
        """This index's texts at change ``changes``, read anew unless this process has them."""
        with _memos_lock:
            texts = _texts.get(self._key)
        if texts is None or texts.changes != changes:
            rows = _tuples(db).execute(f"SELECT rowid, {TEXT} FROM images ORDER BY rowid").fetchall()
            size = rows[-1][0] + 1 if rows else 0
            texts = _Texts(changes, [""] * size, np.zeros(size, np.int64))
            for rowid, text, length in rows:
                texts.texts[rowid], texts.lengths[rowid] = text, length
            self._keep_texts(texts)
        return texts

    def _keep_texts(self, texts: _Texts) -> None:
        with _memos_lock:
            _texts.pop(self._key, None)
            _texts[self._key] = texts  # newest last, as in _memos
            while len(_texts) > FILES:
                _texts.pop(next(iter(_texts)))

    def _captions_saved(self, changes: str, saved: list[tuple[int, str, int]]) -> None:
        """Carry the texts this process has past its own caption write (change ``changes``),
        rather than read them all again: a caption changes no sort's order but the caption's."""
        with _memos_lock:
            old = _texts.get(self._key)
            if old is None or old.changes != changes:
                return
            orders = dict(old.orders)
        new = _Texts(str(int(changes) + 1), list(old.texts), old.lengths.copy(), orders)
        for rowid, text, length in saved:
            new.texts[rowid], new.lengths[rowid] = text, length
        self._keep_texts(new)

    @staticmethod
    def _rarely_tagged(db: sqlite3.Connection, view: ImageQuery) -> bool:
        """Whether few enough images carry the view's tag that sorting them all beats a walk."""
        if not view.tag:
            return False
        few = db.execute("SELECT COUNT(*) FROM (SELECT 1 FROM tags WHERE tag = ? LIMIT ?)",
                         (view.tag_name(), FEW_TAGGED + 1)).fetchone()[0]
        return few <= FEW_TAGGED

    def _count(self, db: sqlite3.Connection, view: ImageQuery) -> int:
        if view.tag and replace(view, tag=None, sort="file") == ImageQuery():
            sql, args = "SELECT COUNT(*) FROM tags WHERE tag = ?", (view.tag_name(),)
        else:  # a walked view: no text query, no near-duplicates
            where, args = view.where()
            sql = f"SELECT COUNT(*) FROM images {'' if view.tag else f'INDEXED BY {COUNTED}'} {where}"
        return db.execute(sql, args).fetchone()[0]

    def _walk(self, db: sqlite3.Connection, view: ImageQuery, memo: _Remembered, offset: int,
              count: int) -> list[int]:
        """The rowids of ``count`` rows from ``offset`` in the view's order. The walk starts
        from whichever is nearest: the first row, the last, or a row a page already found."""
        if count <= 0:
            return []
        end = offset + count
        with _memos_lock:
            marks = dict(memo.marks)
        skip, forward, start = min(
            (offset, True, None), (memo.total - end, False, None),
            *((offset - pos - 1, True, pos) for pos in marks if pos < offset),
            *((pos - end, False, pos) for pos in marks if pos >= end),
            key=lambda c: c[0])
        name = view.sort.removeprefix("-")
        sql, args = view.walk(f"rowid, {SORTS[name]}, file", forward,
                              marks[start] if start is not None else None)
        rows = _tuples(db).execute(f"{sql} LIMIT ? OFFSET ?", (*args, count, skip)).fetchall()
        if not rows:
            return []
        if not forward:
            rows.reverse()
        with _memos_lock:
            for pos, row in ((offset, rows[0]), (offset + len(rows) - 1, rows[-1])):
                memo.marks.pop(pos, None)
                memo.marks[pos] = (row[1], row[2])
            while len(memo.marks) > MARKS:
                memo.marks.pop(next(iter(memo.marks)))
        return [r[0] for r in rows]

    @staticmethod
    def _rows(db: sqlite3.Connection, ids: list[int]) -> list[dict[str, Any]]:
        if not ids:
            return []
        cur = db.execute(f"SELECT rowid, * FROM images WHERE rowid IN ({', '.join('?' * len(ids))})",
                         ids)
        names = [d[0] for d in cur.description[1:]]
        found = {r[0]: r for r in cur}
        return [dict(zip(names, tuple(found[i])[1:])) for i in ids]

    def files(self, view: ImageQuery = ImageQuery()) -> list[str]:
        sql, args = view.listing("file") if view.listed else view.walk("file")
        return [r[0] for r in _tuples(self.db).execute(sql, args)]

    def captions(self) -> list[str]:
        """Every non-empty caption (for tag counts: no other column is read)."""
        return [r[0] for r in self.db.execute("SELECT caption FROM images WHERE caption != ''")]

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def by_sha256(self) -> dict[str, str]:
        return {sha: f for f, sha in self.db.execute("SELECT file, sha256 FROM images")}

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def _retag(db: sqlite3.Connection, changes: list[tuple[int, str | None, str | None]]) -> None:
    """Bring ``tags`` in step with captions changed, each (image rowid, before, after): only
    the tags that changed are written (a tag added to every caption: one row each), in key
    order (neighbouring rows land on the same pages)."""
    gone, new = [], []
    for image, before, after in changes:
        old, now = _tags(before), _tags(after)
        gone += ((t, image) for t in old - now)
        new += ((t, image) for t in now - old)
    db.executemany("DELETE FROM tags WHERE tag = ? AND image = ?", sorted(gone))
    db.executemany("INSERT OR IGNORE INTO tags (tag, image) VALUES (?, ?)", sorted(new))


def _tags(caption: str | None) -> set[str]:
    return set(split_tags(caption)) if caption else set()


def _tuples(db: sqlite3.Connection) -> sqlite3.Cursor:
    """A cursor whose rows are plain tuples (cheaper than Rows, for long id lists)."""
    cur = db.cursor()
    cur.row_factory = None
    return cur
