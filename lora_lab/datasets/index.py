"""The dataset index: a SQLite cache of what the files on disk say.

The image files and their ``.txt`` sidecars are the truth; this index only makes listing,
filtering and stats fast, and :meth:`Dataset.sync` rebuilds it from the files at any time.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Iterable

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


class Index:
    """Rows of ``images`` as dicts; one connection per Index, used from one thread at a time."""

    def __init__(self, path: Path):
        self.path = path
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

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

    def page(self, offset: int, limit: int, q: str | None = None,
             captioned: bool | None = None) -> tuple[list[dict[str, Any]], int]:
        """One page of rows in file order, filtered by a text query and caption state."""
        where, args = self._filter(q, captioned)
        total = self.db.execute(f"SELECT COUNT(*) FROM images {where}", args).fetchone()[0]
        rows = self.db.execute(
            f"SELECT * FROM images {where} ORDER BY file LIMIT ? OFFSET ?", (*args, limit, offset)
        )
        return [dict(r) for r in rows], total

    def files(self, q: str | None = None, captioned: bool | None = None) -> list[str]:
        where, args = self._filter(q, captioned)
        return [r[0] for r in self.db.execute(f"SELECT file FROM images {where} ORDER BY file", args)]

    @staticmethod
    def _filter(q: str | None, captioned: bool | None) -> tuple[str, tuple]:
        clauses, args = [], []
        if q:
            clauses.append("(file LIKE ? ESCAPE '\\' OR caption LIKE ? ESCAPE '\\')")
            pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            args += [pattern, pattern]
        if captioned is True:
            clauses.append("caption IS NOT NULL AND caption != ''")
        elif captioned is False:
            clauses.append("(caption IS NULL OR caption = '')")
        return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def by_sha256(self) -> dict[str, str]:
        return {sha: f for f, sha in self.db.execute("SELECT file, sha256 FROM images")}

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
