"""The dataset index: a SQLite cache of what the files on disk say.

The image files and their ``.txt`` sidecars are the truth; this index only makes listing,
filtering and stats fast, and :meth:`Dataset.sync` rebuilds it from the files at any time.
"""
from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LoraLabError
from .captions import split_tags

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
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
    caption_prompt TEXT
);
CREATE INDEX IF NOT EXISTS images_sha256 ON images(sha256);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""

COLUMNS = ("file", "width", "height", "format", "orientation", "bytes", "sha256", "phash",
           "mtime_ns", "caption", "caption_mtime_ns", "near_dup_of", "caption_model",
           "caption_prompt")


SORTS = {  # sort key -> SQL; a "-" before the key reverses it
    "file": "file",
    "pixels": "width * height",
    "aspect": "CAST(width AS REAL) / height",
    "bytes": "bytes",
    "caption": "LENGTH(COALESCE(caption, ''))",
    "modified": "mtime_ns",
}
SHAPES = {"portrait": "height > width", "landscape": "width > height", "square": "width = height"}


@dataclass(frozen=True)
class ImageQuery:
    """Which images, in which order: a text query over names and captions, a tag (exactly, as
    one of the caption's comma-separated tags), caption state, shape, a minimum short side,
    near-duplicates only (each beside the image it duplicates), a sort."""

    q: str | None = None
    tag: str | None = None
    captioned: bool | None = None
    shape: str | None = None
    min_side: int = 0
    duplicates: bool = False
    sort: str = "file"

    def __post_init__(self) -> None:
        if self.shape not in (None, *SHAPES):
            raise LoraLabError(f"shape must be one of {', '.join(SHAPES)}, not {self.shape!r}")
        if not isinstance(self.sort, str) or self.sort.removeprefix("-") not in SORTS:
            raise LoraLabError(f"sort must be one of {', '.join(SORTS)} (a leading - reverses), "
                               f"not {self.sort!r}")
        if not isinstance(self.min_side, int) or isinstance(self.min_side, bool) or self.min_side < 0:
            raise LoraLabError(f"min_side must be a whole number >= 0, not {self.min_side!r}")
        if self.captioned not in (None, True, False) or not isinstance(self.duplicates, bool):
            raise LoraLabError("captioned must be true, false or unset, and duplicates true or "
                               f"false (not {self.captioned!r}, {self.duplicates!r})")
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
            clauses.append("has_tag(caption, ?)")
            args.append(" ".join(self.tag.split()))
        if self.captioned is True:
            clauses.append("caption IS NOT NULL AND caption != ''")
        elif self.captioned is False:
            clauses.append("(caption IS NULL OR caption = '')")
        if self.shape:
            clauses.append(SHAPES[self.shape])
        if self.min_side:
            clauses.append("MIN(width, height) >= ?")
            args.append(self.min_side)
        if self.duplicates:
            clauses.append("(near_dup_of IS NOT NULL OR file IN "
                           "(SELECT near_dup_of FROM images WHERE near_dup_of IS NOT NULL))")
        return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)

    def order(self) -> str:
        key = SORTS[self.sort.removeprefix("-")] + (" DESC" if self.sort.startswith("-") else "")
        group = "COALESCE(near_dup_of, file), " if self.duplicates else ""
        return f"{group}{key}, file"


def _has_tag(caption: str | None, tag: str) -> bool:
    return bool(caption) and tag in split_tags(caption)


class Index:
    """Rows of ``images`` as dicts. Each thread that uses an Index gets its own connection
    (a panel's thumbnail pool and a server's request threads read the index at once)."""

    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()
        self._open: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        self.db.executescript(SCHEMA)

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection, opened on its first use."""
        db = getattr(self._local, "db", None)
        return db if db is not None else self._connect()

    def _connect(self) -> sqlite3.Connection:
        # check_same_thread=False only so close() can close every thread's connection
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        # tags as the caption tools split them, so a tag filter finds what the tag table counts
        db.create_function("has_tag", 2, _has_tag, deterministic=True)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        self._local.db = db
        with self._guard:
            self._open.append(db)
        return db

    def close(self) -> None:
        """Close every thread's connection (a later use opens a new one)."""
        with self._guard:
            dbs, self._open, self._local = self._open, [], threading.local()
        for db in dbs:
            db.close()

    def upsert(self, rows: Iterable[dict[str, Any]]) -> None:
        sql = (f"INSERT OR REPLACE INTO images ({', '.join(COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(COLUMNS))})")
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(sql, ([row.get(c) for c in COLUMNS] for row in rows))

    def delete(self, files: Iterable[str]) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("DELETE FROM images WHERE file = ?", ((f,) for f in files))

    def set_caption(self, file: str, caption: str | None, mtime_ns: int | None,
                    source: dict[str, str] | None = None) -> None:
        """Cache a caption; ``source`` names the model and prompt that made it (none: by hand)."""
        source = source or {}
        self.db.execute(
            "UPDATE images SET caption = ?, caption_mtime_ns = ?, caption_model = ?, "
            "caption_prompt = ? WHERE file = ?",
            (caption, mtime_ns, source.get("model"), source.get("prompt"), file))

    def get(self, file: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM images WHERE file = ?", (file,)).fetchone()
        return dict(row) if row else None

    def all(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM images ORDER BY file")]

    def page(self, offset: int, limit: int,
             view: ImageQuery = ImageQuery()) -> tuple[list[dict[str, Any]], int]:
        """One page of the rows ``view`` selects, in its order, and how many it selects."""
        where, args = view.where()
        total = self.db.execute(f"SELECT COUNT(*) FROM images {where}", args).fetchone()[0]
        rows = self.db.execute(f"SELECT * FROM images {where} ORDER BY {view.order()} "
                               "LIMIT ? OFFSET ?", (*args, limit, offset))
        return [dict(r) for r in rows], total

    def files(self, view: ImageQuery = ImageQuery()) -> list[str]:
        where, args = view.where()
        return [r[0] for r in self.db.execute(
            f"SELECT file FROM images {where} ORDER BY {view.order()}", args)]

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
