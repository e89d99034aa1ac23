"""Validate one image by decoding it, and describe it: size, format, orientation, hashes.

Runs in ingest worker processes, so it takes bytes and returns plain data.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image, ImageFile, UnidentifiedImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated image must fail, not decode grey

FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp"}
EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
MAX_PIXELS = 64_000_000  # far above any training resolution; a PNG bomb claims billions
MAX_BYTES = 256 * 1024 * 1024

# EXIF orientation -> the transpose that shows the image upright (values 5-8 swap width/height).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class BadImage(Exception):
    """The file is not a usable image; the message is the reason it was skipped."""


@dataclass(frozen=True)
class ImageInfo:
    width: int  # as displayed, EXIF orientation applied
    height: int
    format: str
    orientation: int
    bytes: int
    sha256: str
    phash: str  # 64-bit difference hash, hex


def probe(data: bytes, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Decode ``data`` fully and describe it, or raise :class:`BadImage` with the reason."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    if len(data) > MAX_BYTES:
        raise BadImage(f"file too large ({len(data) // 2**20} MiB; limit {MAX_BYTES // 2**20} MiB)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in FORMATS:
                raise BadImage(f"unsupported format {im.format} (use jpg, png, webp or bmp)")
            w, h = im.size
            if w * h > max_pixels:
                raise BadImage(f"image too large: {w}x{h} pixels (limit {max_pixels / 1e6:.0f} MP)")
            orientation = _orientation(im)
            im.load()
            phash = _dhash(im, orientation)
            fmt = im.format
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image: the format cannot be identified") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"image too large: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadImage(f"corrupt or truncated image ({e})") from None
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return ImageInfo(w, h, fmt, orientation, len(data), hashlib.sha256(data).hexdigest(), phash)


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block must not reject an otherwise good image
        return 1
    return value if value in _TRANSPOSE else 1


def _dhash(im: Image.Image, orientation: int) -> str:
    """Difference hash of the upright image: 8 rows x 8 horizontal gradients -> 64 bits."""
    swap = orientation in (5, 6, 7, 8)
    rgb = im if im.mode in ("L", "RGB") else im.convert("RGB")
    small = rgb.resize((8, 9) if swap else (9, 8), Image.Resampling.BILINEAR, reducing_gap=2.0)
    if orientation in _TRANSPOSE:
        small = small.transpose(_TRANSPOSE[orientation])
    import numpy as np  # here, not at the top: the server extension imports this module at start-up

    px = np.asarray(small.convert("L"), dtype=np.int16)
    bits = (px[:, 1:] > px[:, :-1]).flatten()
    return f"{int(np.packbits(bits).view('>u8')[0]):016x}"


def hamming_pairs(hashes: list[str], new_from: int, max_distance: int) -> list[tuple[int, int]]:
    """Pairs (i, j), j >= new_from, i < j, whose hashes differ in at most ``max_distance`` bits.

    Only pairs that involve a new hash are returned: old ones were compared when they arrived.
    """
    if len(hashes) < 2 or new_from >= len(hashes):
        return []
    import numpy as np

    values = np.array([int(h, 16) for h in hashes], dtype=np.uint64)
    pairs = []
    for j in range(max(new_from, 1), len(hashes)):
        dist = np.bitwise_count(values[:j] ^ values[j])
        for i in np.flatnonzero(dist <= max_distance):
            pairs.append((int(i), j))
    return pairs
