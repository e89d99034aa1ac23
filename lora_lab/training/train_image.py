"""One training image as the trainer sees it; a leaf, so the families can name it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainImage:
    path: Path
    caption: str
    width: int  # as displayed (EXIF orientation applied)
    height: int
    sha256: str
    repeats: int
    folder: str  # the folder it came from, as kohya's ss_dataset_dirs names it
