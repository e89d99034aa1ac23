"""Export a dataset in the layouts trainers read.

kohya:  OUT/<repeats>_<trigger>/ with image + .txt pairs, and OUT/dataset.toml for sd-scripts'
        ``--dataset_config``.  zip:  the same tree in one .zip file.
Captions lacking the trigger word get it in front (the dataset itself is left as it is).
An export is built beside its target and renamed into place, so it is never half-written.
"""
from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import tomli_w

from ..aspect_buckets import FAMILIES
from ..errors import Conflict, LoraLabError
from ..workspace import check_name
from .captions import prefix, split_tags
from .dataset import Dataset


def export_dataset(ds: Dataset, out: Path, fmt: str = "kohya", repeats: int = 10,
                   trigger: str | None = None, family: str = "sd15") -> dict[str, Any]:
    """Write the export to ``out`` (a folder for kohya, a .zip file for zip), which must not exist."""
    if fmt not in ("kohya", "zip"):
        raise LoraLabError(f"unknown export format {fmt!r}; use kohya or zip")
    if not isinstance(repeats, int) or not 1 <= repeats <= 10_000:
        raise LoraLabError(f"repeats must be a whole number from 1 to 10000, got {repeats!r}")
    if family not in FAMILIES:
        raise LoraLabError(f"unknown model family {family!r}; use {' or '.join(FAMILIES)}")
    trigger = check_name(trigger or ds.name, "trigger word")
    if out.exists():
        raise Conflict(f"{out} already exists; choose another output or remove it")
    rows = ds.index.all()
    if not rows:
        raise LoraLabError(f"dataset {ds.name!r} has no images to export")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        build = Path(tmp) / "export"
        subset = f"{repeats}_{trigger}"
        image_dir = (out / subset) if fmt == "kohya" else Path(subset)
        triggered = _write_pairs(ds, rows, build / subset, trigger)
        toml = _sd_scripts_toml(image_dir, repeats, trigger, FAMILIES[family][0])
        (build / "dataset.toml").write_text(toml, encoding="utf-8")
        if fmt == "zip":
            _zip_tree(build, Path(tmp) / "export.zip")
            build = Path(tmp) / "export.zip"
        build.rename(out)
    return {"out": str(out), "format": fmt, "subset": subset, "images": len(rows),
            "trigger_added": triggered}


def _write_pairs(ds: Dataset, rows: list[dict], folder: Path, trigger: str) -> int:
    folder.mkdir(parents=True)
    triggered = 0
    for r in rows:
        shutil.copyfile(ds.path / r["file"], folder / r["file"])
        caption = r["caption"] or ""
        if trigger not in split_tags(caption) and not caption.startswith(trigger):
            caption = prefix(caption, trigger)
            triggered += 1
        (folder / r["file"]).with_suffix(".txt").write_text(caption, encoding="utf-8")
    return triggered


def _sd_scripts_toml(image_dir: Path, repeats: int, trigger: str, resolution: int) -> str:
    config = {
        "general": {"caption_extension": ".txt", "shuffle_caption": False, "keep_tokens": 1,
                    "enable_bucket": True},
        "datasets": [{
            "resolution": resolution,
            "batch_size": 1,
            "subsets": [{"image_dir": image_dir.as_posix(), "num_repeats": repeats,
                         "class_tokens": trigger}],
        }],
    }
    return tomli_w.dumps(config)


def _zip_tree(root: Path, zip_path: Path) -> None:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:  # images are compressed already
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(root).as_posix())
