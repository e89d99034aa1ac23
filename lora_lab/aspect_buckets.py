"""Aspect-ratio buckets, as kohya sd-scripts makes them: sizes in steps of 64 under a pixel budget.

Dataset stats show where images fall; the trainer groups batches by them.
"""
from __future__ import annotations

import math
from functools import cache

# family -> (base resolution, smallest side, largest side)
FAMILIES = {"sd15": (512, 256, 1024), "sdxl": (1024, 512, 2048), "zimage": (1024, 512, 2048),
            "flux": (1024, 512, 2048), "chroma": (1024, 512, 2048), "qwenimage": (1024, 512, 2048),
            "flux2klein": (1024, 512, 2048)}


@cache
def make_buckets(resolution: int, min_side: int, max_side: int, step: int = 64) -> tuple[tuple[int, int], ...]:
    """Every (width, height) with sides in [min_side, max_side], multiples of ``step``,
    whose area is at most ``resolution``², sorted by aspect ratio."""
    area = resolution * resolution
    side = int(math.sqrt(area) // step) * step
    buckets = {(side, side)}
    for width in range(min_side, max_side + 1, step):
        height = min(max_side, (area // width) // step * step)
        if height >= min_side:
            buckets.update({(width, height), (height, width)})
    return tuple(sorted(buckets, key=lambda wh: wh[0] / wh[1]))


def assign_bucket(width: int, height: int, buckets: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to the image's (compared in log space)."""
    ratio = math.log(width / height)
    return min(buckets, key=lambda wh: abs(math.log(wh[0] / wh[1]) - ratio))


def family_buckets(family: str) -> tuple[tuple[int, int], ...]:
    return make_buckets(*FAMILIES[family])
