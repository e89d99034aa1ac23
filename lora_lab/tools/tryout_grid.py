"""A tryout grid as one labelled image: a row per prompt and seed (the same seed across the
row), a column per checkpoint and strength after the base alone; and saved as that PNG plus a
JSON of its inputs, so it can be shared or put in a model card and rendered again."""
from __future__ import annotations

import io
import json
import os
import textwrap
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from lora_lab import atomic

from .tryout_loras import Checkpoint

PAD = 6
FONT_PX = 12
LABEL_W = 170  # the row labels' column, at least
MAX_LABEL = 200  # a column label is cut beyond this many pixels (where its images are narrower)
BACKGROUND, INK, MUTED = (255, 255, 255), (20, 20, 20), (110, 110, 110)


@dataclass
class Cell:
    """One image of the grid and what made it."""
    row: int
    col: int
    prompt: str
    seed: int
    lora: Checkpoint | None  # None: the base alone (strength 0)
    strength: float
    key: str  # its cache key (see tryout.cell_key)
    cached: bool  # read from the cache, not rendered
    image: Image.Image


@dataclass
class Grid:
    """The cells, row by row, and the inputs that made them (:meth:`inputs` is the JSON)."""
    cells: list[Cell]
    rows: list[tuple[str, int]]  # (prompt, seed)
    columns: list[tuple[Checkpoint | None, float]]
    loras: list[Checkpoint] = field(default_factory=list)  # every LoRA asked for (strength 0 alone: no column)
    settings: dict[str, Any] = field(default_factory=dict)  # base, family, steps, guidance...

    @property
    def hits(self) -> int:
        """How many cells came from the cache."""
        return sum(c.cached for c in self.cells)

    def cell(self, row: int, col: int) -> Cell:
        return self.cells[row * len(self.columns) + col]

    @cached_property
    def image(self) -> Image.Image:
        """The grid, labelled: checkpoints and strengths above, prompts and seeds beside."""
        return draw(self)

    def inputs(self) -> dict[str, Any]:
        """Everything needed to render this grid again, and to tell which files made it."""
        first = self.cells[0].image
        return {**self.settings,
                "loras": [{"path": str(c.path), "sha256": c.sha256, "step": c.step} for c in self.loras],
                "prompts": list(dict.fromkeys(p for p, _ in self.rows)),
                "seeds": list(dict.fromkeys(s for _, s in self.rows)),
                "strengths": list(dict.fromkeys(s for _, s in self.columns)),
                "width": first.width, "height": first.height,
                "rows": "prompt x seed", "columns": "checkpoint x strength, the base alone (strength 0) first"}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the grid as the PNG ``path`` and its inputs as ``path`` with ``.json``, each
        atomically; returns ``path``."""
        path = Path(path)
        buf = io.BytesIO()
        self.image.save(buf, "PNG")
        atomic.write_text(path.with_suffix(".json"), json.dumps(self.inputs(), indent=1) + "\n")
        atomic.write_bytes(path, buf.getvalue())
        return path


def column_label(lora: Checkpoint | None, strength: float) -> list[str]:
    if lora is None:
        return ["base alone", "strength 0"]
    return [lora.label, f"strength {strength:g}"]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _fit(font, text: str, width: int) -> str:
    """``text`` cut to ``width`` pixels, with an ellipsis where cut."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _wrap(font, text: str, width: int, lines: int) -> list[str]:
    chars = max(4, int(width / max(font.getlength("x"), 1)))
    wrapped = textwrap.wrap(text, chars) or [""]
    if len(wrapped) > lines:
        wrapped = [*wrapped[:lines - 1], " ".join(wrapped[lines - 1:])]
    return [_fit(font, line, width) for line in wrapped]


def draw(grid: Grid) -> Image.Image:
    """The cells pasted in place, with text labels drawn by PIL (no font file needed)."""
    w, h = grid.cells[0].image.size
    font = _font(FONT_PX)
    line = FONT_PX + 3
    label_w, head_h = max(LABEL_W, w), 2 * line + 2 * PAD
    widest = max(font.getlength(text) for lora, strength in grid.columns
                 for text in column_label(lora, strength))
    col_w = max(w, min(int(widest) + 1, MAX_LABEL))  # a small image's column fits its label
    cell_w, cell_h = col_w + PAD, h + PAD
    canvas = Image.new("RGB", (label_w + cell_w * len(grid.columns) + PAD, head_h + cell_h * len(grid.rows)),
                       BACKGROUND)
    pen = ImageDraw.Draw(canvas)
    for col, (lora, strength) in enumerate(grid.columns):
        x = label_w + col * cell_w
        for i, text in enumerate(column_label(lora, strength)):
            pen.text((x, PAD + i * line), _fit(font, text, col_w), fill=INK if i == 0 else MUTED, font=font)
    room = max(1, (h - line) // line)  # the prompt's lines, the seed's below them
    for row, (prompt, seed) in enumerate(grid.rows):
        y = head_h + row * cell_h
        lines = _wrap(font, prompt, label_w - 2 * PAD, room)
        for i, text in enumerate(lines):
            pen.text((PAD, y + i * line), text, fill=INK, font=font)
        pen.text((PAD, y + len(lines) * line), f"seed {seed}", fill=MUTED, font=font)
    for c in grid.cells:
        canvas.paste(c.image.convert("RGB"), (label_w + c.col * cell_w, head_h + c.row * cell_h))
    return canvas
