"""Thumbnails, cached under ``.lora_lab/thumbs/SIZE/`` and keyed by the image's sha256, so a
changed image gets a new one and a renamed image keeps its own."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps

from .. import atomic
from ..errors import LoraLabError
from . import workers
from .dataset import Dataset

SIZES = range(32, 1025)


def thumbnail_path(ds: Dataset, file: str, size: int = 256) -> Path:
    """The cached thumbnail of ``file``, made now if it is missing."""
    _check_size(size)
    src = ds.image_path(file)
    dst = _cache_path(ds, ds.image(file)["sha256"], size)
    if not dst.exists():
        make_thumbnail((str(src), str(dst), size))
    return dst


def cached_thumbnail(ds: Dataset, row: dict, size: int = 256) -> Path:
    """Where the thumbnail of index row ``row`` is cached, made or not (no file is touched)."""
    return _cache_path(ds, row["sha256"], size)


def make_thumbnail_of(ds: Dataset, row: dict, size: int = 256) -> Path:
    """Make the thumbnail of index row ``row`` (safe on a pool thread); returns its path."""
    _check_size(size)
    dst = _cache_path(ds, row["sha256"], size)
    make_thumbnail((str(ds.path / row["file"]), str(dst), size))
    return dst


def build_thumbnails(ds: Dataset, size: int = 256, processes: int | None = None) -> int:
    """Make every missing thumbnail of the dataset (on all cores); returns how many were made."""
    _check_size(size)
    todo = [(str(ds.path / r["file"]), str(_cache_path(ds, r["sha256"], size)), size)
            for r in ds.index.all() if not _cache_path(ds, r["sha256"], size).exists()]
    workers.parallel_map(make_thumbnail, todo, processes)
    return len(todo)


def make_thumbnail(job: tuple[str, str, int]) -> None:
    src, dst, size = job
    with Image.open(src) as im:
        im.draft("RGB", (size, size))  # JPEG: decode at 1/2..1/8 scale, far less work
        im = ImageOps.exif_transpose(im)
        im.thumbnail((size, size), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "JPEG", quality=85)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(dst, buf.getvalue())


def _cache_path(ds: Dataset, sha256: str, size: int) -> Path:
    return ds.meta_dir / "thumbs" / str(size) / f"{sha256[:32]}.jpg"


def _check_size(size: int) -> None:
    if size not in SIZES:
        raise LoraLabError(f"thumbnail size {size} is out of range ({SIZES.start}-{SIZES.stop - 1})")
