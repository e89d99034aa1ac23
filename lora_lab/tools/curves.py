"""Small loss curves as PNG, drawn with PIL alone (matplotlib is no dependency): the training
loss of a run's ``progress`` events and the validation loss of its ``validation`` events, for
the model card a LoRA goes to the Hub with."""
from __future__ import annotations

import io
from collections.abc import Sequence

WIDTH, HEIGHT = 560, 260
_MARGIN = (64, 16, 16, 40)  # left, top, right, bottom: room for the axis labels
_INK, _GRID, _LINE, _MARK = (40, 40, 40), (225, 225, 225), (31, 119, 180), (214, 39, 40)
_RAW = (170, 200, 225)  # a noisy curve's own points, under its moving average
SMOOTH_ABOVE = 50  # points: longer curves get a moving average drawn over them


def loss_chart(points: Sequence[tuple[int, float]], title: str,
               marked: Sequence[tuple[int, float]] = (), dots: bool = False, by: str = "step") -> bytes:
    """A PNG line chart of (step, loss) ``points``, with ``marked`` points circled in red
    (the best validation loss) and, with ``dots``, every point drawn (few, far-apart points).
    A long curve (training losses are noisy step to step) is drawn faint, with its moving
    average over it. ``by``: what the x axis counts."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(12)
    left, top, right, bottom = _MARGIN[0], _MARGIN[1], WIDTH - _MARGIN[2], HEIGHT - _MARGIN[3]
    steps, losses = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(losses), max(losses)
    pad = (y1 - y0) * 0.05 or abs(y0) * 0.05 or 1.0  # a flat curve still gets a y range
    y0, y1 = y0 - pad, y1 + pad

    def at(step: float, loss: float) -> tuple[float, float]:
        x = left + (step - x0) / ((x1 - x0) or 1) * (right - left)
        return x, bottom - (loss - y0) / (y1 - y0) * (bottom - top)

    for i in range(5):  # horizontal grid lines, each labelled with its loss
        loss = y0 + (y1 - y0) * i / 4
        y = at(x0, loss)[1]
        draw.line([(left, y), (right, y)], fill=_GRID)
        draw.text((left - 6, y), f"{loss:.4g}", fill=_INK, font=font, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline=_INK)
    for step in sorted({x0, (x0 + x1) // 2, x1}):
        draw.text((at(step, y0)[0], bottom + 6), str(step), fill=_INK, font=font, anchor="mt")
    draw.text(((left + right) / 2, HEIGHT - 4), f"{title} by {by}", fill=_INK, font=font, anchor="mb")
    xy = [at(s, v) for s, v in points]
    if len(xy) > SMOOTH_ABOVE:
        draw.line(xy, fill=_RAW, width=1)
        xy = [at(s, v) for s, v in zip(steps, _moving_average(losses, len(losses) // 25))]
    if len(xy) > 1:
        draw.line(xy, fill=_LINE, width=2, joint="curve")
    if dots or len(xy) == 1:
        for x, y in xy:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=_LINE)
    for step, loss in marked:
        x, y = at(step, loss)
        draw.ellipse([x - 6, y - 6, x + 6, y + 6], outline=_MARK, width=2)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _moving_average(values: Sequence[float], half: int) -> list[float]:
    """Each value averaged with up to ``half`` neighbours on either side."""
    sums = [0.0]
    for v in values:
        sums.append(sums[-1] + v)
    out = []
    for i in range(len(values)):
        lo, hi = max(0, i - half), min(len(values), i + half + 1)
        out.append((sums[hi] - sums[lo]) / (hi - lo))
    return out
