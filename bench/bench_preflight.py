"""The checks before a training job exists (check_params), and the launcher re-running them when a
field changes, on the tiny SD1.5 model with a dataset and a folder of many images.

    .venv/bin/python bench/bench_preflight.py                      # 10,000 / 500 images (~2 min)
    .venv/bin/python bench/bench_preflight.py --images 1000 --folder 100 --repeats 3   # quick

Floors, measured in the same run: for a dataset, one SQL count of its uncaptioned images plus
reading the model's model_index.json (what any such check must read); for a folder, listing it
and reading every caption file. The checks decode no image and load no weight; a folder's image
headers are read (a file that is no image is refused), which is most of the folder's cost.
"""
from __future__ import annotations

import argparse
import os
import random
import sqlite3
import tempfile
from pathlib import Path

from benchlib import Row, Target, generate_jpegs, p50, print_machine, print_table, timed, warm
from PIL import Image

from lora_lab.datasets import Dataset, ingest
from lora_lab.jobs import check_params
from lora_lab.tiny import fabricate
from lora_lab.widgets.launcher import TrainingLauncher
from lora_lab.workspace import Workspace

FORM_TARGET = Target(ms=100)  # a form that answers within a tenth of a second feels immediate


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    print_machine()
    with tempfile.TemporaryDirectory(prefix="lora-lab-bench-") as tmp:
        root = Path(tmp)
        ws = Workspace(root / "ws")
        base = fabricate(root / "tiny", sdxl=False, caption=False)["sd15"]
        ds = _dataset(ws, root, args.images)
        folder = _folder(root / "folder", args.folder)
        runs = args.repeats
        params = {"config": {"model": {"base": str(base)}, "dataset": {"source": ds.name, "resolution": 64,
                                                                    "trigger": "sks"},
                             "train": {"max_steps": 10}}}
        rows = [Row(f"check_params, a {args.images}-image dataset", _median(
            lambda: check_params("train", params, ws), runs), _median(lambda: _dataset_floor(ds, base), runs))]
        params["config"]["dataset"]["source"] = str(folder)
        rows.append(Row(f"check_params, a {args.folder}-image folder", _median(
            lambda: check_params("train", params, ws), runs), _median(lambda: _folder_floor(folder), runs)))
        print_table(f"the checks before a training job exists, median of {runs}",
                    "the index count / the caption files read, and model_index.json", rows)
        launcher = TrainingLauncher(ds.name, str(base), workspace=ws, autostart=False)
        launcher.fields["dataset.trigger"].value = "sks"
        epochs = launcher.fields["train.epochs"]
        changed = _median(lambda: setattr(epochs, "value", epochs.value % 50 + 1), runs)
        print_table(f"the launcher on the {args.images}-image dataset: a field changed (a full "
                    f"check, the step count, the default samples), median of {runs}",
                    "the dataset's check_params floor",
                    [Row("set train.epochs", changed, _median(lambda: _dataset_floor(ds, base), runs),
                         FORM_TARGET)])
        launcher.close()


def _dataset(ws: Workspace, root: Path, count: int) -> Dataset:
    """``count`` images of as many sizes (the worst case for the step count, which assigns a
    bucket once per size), every 10th without a caption (the checks list those), ingested."""
    folder = root / "src"
    folder.mkdir()
    rng = random.Random(0)
    for i in range(count):
        size = (rng.randint(32, 160), rng.randint(32, 160))
        Image.new("RGB", size, (i % 256, i // 256 % 256, 128)).save(folder / f"img_{i:05d}.png")
        if i % 10:
            (folder / f"img_{i:05d}.txt").write_text(f"a photo, shapes, tag{i % 7}")
    ingest(folder, "bench-preflight", workspace=ws)
    ds = Dataset.open("bench-preflight", ws)
    if len(ds) != count:
        raise SystemExit(f"dataset holds {len(ds)} images, expected {count}")
    return ds


def _folder(folder: Path, count: int) -> Path:
    images = generate_jpegs(folder, count, 64)
    for path in images:
        path.with_suffix(".txt").write_text("a photo, shapes")
    warm(images)
    return folder


def _dataset_floor(ds: Dataset, base: Path) -> None:
    with sqlite3.connect(ds.index.path) as db:
        db.execute("SELECT COUNT(*) FROM images WHERE caption IS NULL OR caption = ''").fetchone()
    db.close()
    (base / "model_index.json").read_bytes()


def _folder_floor(folder: Path) -> None:
    for name in os.listdir(folder):
        if name.endswith(".txt"):
            (folder / name).read_bytes()


def _median(fn, runs: int) -> float:
    fn()  # warm: imports, caches
    return p50([timed(fn) for _ in range(runs)])


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="images in the dataset")
    parser.add_argument("--folder", type=int, default=500, help="images in the folder")
    parser.add_argument("--repeats", type=int, default=10, help="runs per measurement")
    args = parser.parse_args(argv)
    if min(args.images, args.folder, args.repeats) < 1:
        parser.error("--images, --folder and --repeats must be at least 1")
    return args


if __name__ == "__main__":
    main()
