"""Shared pieces of the benchmarks: test images, cache warming, timing and the result table.

Every benchmark compares lora_lab against a bare floor (the least work anyone could do for the
same job) measured in the same run, so the ratio holds on any machine; absolute times do not.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import platform
import statistics
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageDraw


# -- arguments -------------------------------------------------------------------------------------
def dataset_args(description: str, argv: list[str] | None, min_images: int) -> argparse.Namespace:
    """The arguments of a benchmark over a dataset of generated JPEGs: how many, how large,
    and how many runs per measurement."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--images", type=int, default=10_000, help="images in the dataset")
    parser.add_argument("--size", type=int, default=256, help="their width and height")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement")
    args = parser.parse_args(argv)
    if args.images < min_images or min(args.size, args.repeats) < 1:
        parser.error(f"--images must be at least {min_images}; --size and --repeats at least 1")
    return args


# -- test images -----------------------------------------------------------------------------------
def generate_jpegs(folder: Path, count: int, size: int, quality: int = 90) -> list[Path]:
    """``count`` distinct ``size``-pixel JPEGs in ``folder``; the same bytes on every run."""
    folder.mkdir(parents=True, exist_ok=True)
    # One shared noise field, cropped at a different place per image: photo-like grain makes
    # decoding realistic, and drawing noise per image would make generation the slow part.
    noise = np.random.default_rng(0).normal(0, 10, (2 * size, 2 * size, 3)).astype(np.int16)
    paths = []
    for i in range(count):
        path = folder / f"img_{i:05d}.jpg"
        path.write_bytes(_jpeg(np.random.default_rng([size, i]), noise, size, quality))
        paths.append(path)
    return paths


def _jpeg(rng: np.random.Generator, noise: np.ndarray, size: int, quality: int) -> bytes:
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    slope_x, slope_y = rng.uniform(-1, 1, 2)
    t = np.clip((slope_x * ramp[None, :] + slope_y * ramp[:, None] + 1) / 2, 0, 1)[..., None]
    start, end = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    ox, oy = rng.integers(0, size, 2)
    pixels = (start + (end - start) * t).astype(np.int16) + noise[oy:oy + size, ox:ox + size]
    im = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    # Random shapes give each image its own structure, so near-duplicate detection finds
    # (almost) nothing, as in a real photo set.
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x, y = rng.integers(0, size, 2)
        w, h = rng.integers(max(size // 16, 1), max(size // 3, 2), 2)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x, y, x + w, y + h), fill=fill)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def zip_files(paths: list[Path], zip_path: Path) -> Path:
    """A zip of ``paths``, deflated as zip tools and file managers make them by default."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in paths:
            zf.write(p, p.name)
    return zip_path


# -- floors ----------------------------------------------------------------------------------------
def warm(paths: list[Path]) -> None:
    """Read every file once so the floor and the measured code both find them in the page cache."""
    for p in paths:
        p.read_bytes()


def decode_loop(paths: list[Path]) -> None:
    """The decode floor: a plain single-process Pillow loop, nothing else."""
    for p in paths:
        with Image.open(p) as im:
            im.load()


# -- timing ----------------------------------------------------------------------------------------
def best_of(fn: Callable[[], object], repeats: int,
            setup: Callable[[], object] | None = None) -> float:
    """The fastest of ``repeats`` timed calls of ``fn``, each after an untimed ``setup``.

    The minimum, not the mean: on a shared machine noise only ever adds time, so the fastest run
    is the closest to what the code itself costs.
    """
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def cpu_busy() -> float:
    """CPU seconds every process has used since boot (Linux /proc/stat; nan elsewhere).
    Steal time counts: it is a neighbouring VM taking our CPUs."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return math.nan
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU seconds this process and its waited-for children have used."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def p50(times: list[float]) -> float:
    return statistics.median(times)


# -- results ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A goal from the issue: a ratio to the floor at most ``ratio``, or a time at most ``ms``."""
    ratio: float | None = None
    ms: float | None = None

    def met(self, time_s: float, floor_s: float) -> bool:
        if self.ratio is not None and time_s / floor_s > self.ratio:
            return False
        return self.ms is None or time_s * 1000 <= self.ms

    def __str__(self) -> str:
        parts = ([f"<= {self.ratio:g}x"] if self.ratio is not None else []) + \
                ([f"< {self.ms:g} ms"] if self.ms is not None else [])
        return " and ".join(parts)


@dataclass(frozen=True)
class Row:
    what: str
    time_s: float
    floor_s: float
    target: Target | None = None


def print_table(title: str, floor: str, rows: list[Row]) -> None:
    """One section's results; 'ok'/'MISS' only inform, the benchmark never fails on them."""
    print(f"\n## {title}\nfloor: {floor}")
    header = ("what", "time", "floor", "ratio", "target", "")
    lines = [header] + [
        (r.what, _duration(r.time_s), _duration(r.floor_s), f"{r.time_s / r.floor_s:.2f}x",
         str(r.target or "-"), "" if r.target is None else
         ("ok" if r.target.met(r.time_s, r.floor_s) else "MISS"))
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(line, widths))).rstrip())


def tiny_family(root: Path, family: str) -> dict[str, Path]:
    """The tiny model of ``family`` (sd15, sdxl, zimage, ...) and the sample images, under ``root``."""
    from lora_lab.tiny import fabricate

    sd = family in ("sd15", "sdxl")
    return fabricate(root, caption=False, sd15=family == "sd15", sdxl=family == "sdxl",
                     flow=() if sd else (family,))


def print_machine() -> None:
    print(f"# {platform.python_implementation()} {platform.python_version()}, Pillow "
          f"{PIL.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs ({platform.machine()})")


def _duration(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:.2f} ms"
