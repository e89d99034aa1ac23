"""What a dataset holds: counts, captions, sizes against the training buckets, tag frequency."""
from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from ..aspect_buckets import FAMILIES, assign_bucket, family_buckets
from .dataset import Dataset
from .tags import tag_counts

MEGAPIXEL_BINS = [(0.25, "< 0.25 MP"), (0.5, "0.25-0.5 MP"), (1.0, "0.5-1 MP"), (2.0, "1-2 MP"),
                  (4.0, "2-4 MP"), (float("inf"), ">= 4 MP")]


def dataset_stats(ds: Dataset, top_tags: int = 30) -> dict[str, Any]:
    rows = ds.index.all()
    captions = [r["caption"] for r in rows if r["caption"]]
    tags = tag_counts(captions)
    words = [len(c.split()) for c in captions]
    return {
        "name": ds.name,
        "images": len(rows),
        "captioned": len(captions),
        "uncaptioned": len(rows) - len(captions),
        "near_duplicates": sum(1 for r in rows if r["near_dup_of"]),
        "bytes": sum(r["bytes"] for r in rows),
        "formats": dict(Counter(r["format"] for r in rows).most_common()),
        "megapixels": _megapixel_histogram(rows),
        "buckets": {family: _bucket_histogram(rows, family) for family in FAMILIES},
        "caption_words": _summary(words),
        "tags": dict(tags.most_common(top_tags)),
        "distinct_tags": len(tags),
    }


def tag_frequency(ds: Dataset, top: int = 30) -> list[tuple[str, int]]:
    """The ``top`` tags most images of the dataset carry, with how many, most first."""
    return tag_counts(ds.index.captions()).most_common(top)


def _summary(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "mean": 0, "max": 0}
    return {"min": min(values), "mean": round(statistics.fmean(values), 1), "max": max(values)}


def _megapixel_histogram(rows: list[dict]) -> dict[str, int]:
    hist = dict.fromkeys((label for _, label in MEGAPIXEL_BINS), 0)
    for r in rows:
        mp = r["width"] * r["height"] / 1e6
        hist[next(label for limit, label in MEGAPIXEL_BINS if mp < limit)] += 1
    return {k: v for k, v in hist.items() if v}


def _bucket_histogram(rows: list[dict], family: str) -> dict[str, Any]:
    """Images per bucket, and how many are smaller than their bucket (so will be upscaled)."""
    buckets = family_buckets(family)
    counts: Counter[str] = Counter()
    upscaled = 0
    for r in rows:
        bw, bh = assign_bucket(r["width"], r["height"], buckets)
        counts[f"{bw}x{bh}"] += 1
        upscaled += r["width"] < bw or r["height"] < bh
    return {"resolution": FAMILIES[family][0], "counts": dict(counts.most_common()), "upscaled": upscaled}
