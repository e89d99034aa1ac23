"""A handful of small, varied sample images (some captioned) for the demo, binder and tests.

Drawn, not shipped: simple scenes of coloured shapes on a sky, in several aspect ratios and
the formats users bring (jpg, png, webp), so ingest, stats and bucketing all have work to do.
"""
from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

# name, size, shape, colour, caption (None: left for the captioner)
SAMPLES = [
    ("red_circle.jpg", (512, 512), "circle", "red", "a red circle above green grass"),
    ("blue_square.png", (512, 384), "square", "blue", "a blue square floating in a clear sky"),
    ("yellow_triangle.webp", (384, 512), "triangle", "yellow", None),
    ("green_circle.jpg", (640, 384), "circle", "green", "green circle, grass, sky"),
    ("purple_square.jpg", (448, 576), "square", "purple", None),
    ("orange_triangle.png", (512, 512), "triangle", "orange", "an orange triangle on a hill"),
    ("white_circle.webp", (576, 448), "circle", "white", None),
    ("cyan_square.jpg", (512, 640), "square", "cyan", "cyan square, blue sky, simple shapes"),
]


def draw(size: tuple[int, int], shape: str, colour: str, seed: int) -> Image.Image:
    rng = random.Random(seed)
    w, h = size
    im = Image.new("RGB", size)
    d = ImageDraw.Draw(im)
    horizon = int(h * rng.uniform(0.55, 0.75))
    tilt = rng.uniform(-1, 1)  # a sky lit from one side: each scene has its own gradient
    for x in range(0, w, 4):
        t = min(1.0, max(0.0, 0.5 + tilt * (x / w - 0.5)))
        d.rectangle([x, 0, x + 4, horizon], fill=(int(70 + 120 * t), int(130 + 90 * t), 235))
    hills = [(0, h)] + [(x, horizon - rng.randint(0, h // 6)) for x in range(0, w + 1, w // 4)]
    d.polygon(hills + [(w, h)], fill=(60, 140 + rng.randint(0, 40), 60))
    r = min(w, h) // 5
    cx, cy = rng.randint(r, w - r), rng.randint(r, horizon)
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        d.ellipse(box, fill=colour, outline="black", width=3)
    elif shape == "square":
        d.rectangle(box, fill=colour, outline="black", width=3)
    else:
        d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=colour, outline="black")
    return im


def write_samples(folder: str | Path) -> Path:
    """Write the sample images (and the captions some of them come with) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (name, size, shape, colour, caption) in enumerate(SAMPLES):
        path = folder / name
        draw(size, shape, colour, seed).save(path, quality=90)
        if caption:
            path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
    return folder
