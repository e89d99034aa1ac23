"""Line charts as SVG text (no plotting library): the loss and learning-rate curves a monitor
draws live and a pipeline notebook draws once, and a bounded series to feed them.

A series of a long run is decimated, not cut: past ``limit`` points every other point is
dropped and the stride doubles, so an hour at 50 events a second keeps at most ``limit``
points spread over the whole run, plus the newest one.
"""
from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Point = tuple[float, float]
COLORS = ("var(--jp-brand-color1, #1f77b4)", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
# JupyterLab's theme variables, so a chart reads in the light and the dark theme alike; the
# fallbacks (light) apply where no theme is (an SVG shown as an image, a file opened alone).
# As style properties: var() does not work in SVG presentation attributes.
THEME = {"background": "var(--jp-layout-color0, #fff)", "text": "var(--jp-ui-font-color1, #333)",
         "muted": "var(--jp-ui-font-color2, #888)", "axis": "var(--jp-border-color1, #999)",
         "grid": "var(--jp-border-color2, #e0e0e0)"}
EMA_WEIGHT = 0.9  # the smoothed loss: what kohya's and ai-toolkit's "average loss" show


class Series:
    """Points in order of x, at most ``limit`` of them (plus the newest, always kept)."""

    def __init__(self, limit: int = 1000):
        if limit < 2:
            raise ValueError("a series keeps at least 2 points")
        self.limit, self.stride = limit, 1
        self._kept: list[Point] = []
        self._newest: Point | None = None
        self._since = 0  # points added since the last one kept

    def __len__(self) -> int:
        return len(self.points())

    def add(self, x: float, y: float) -> None:
        """Append a point; a non-finite y is skipped, and an x at or before the newest one
        (a resumed run going back to its checkpoint) first drops the points it replaces."""
        if y is None or not math.isfinite(y):
            return
        if self._newest is not None and x <= self._newest[0]:
            self._rewind(x)
        self._newest = (x, y)
        self._since += 1
        if not self._kept or self._since >= self.stride:
            self._kept.append((x, y))
            self._since = 0
            if len(self._kept) > self.limit:
                self._decimate()

    def _decimate(self) -> None:
        last = self._kept[-1]
        self._kept = self._kept[::2]
        # points since the last one kept: none, or the one just dropped and those before it
        self._since = 0 if self._kept[-1] == last else self.stride
        self.stride *= 2

    def _rewind(self, x: float) -> None:
        while self._kept and self._kept[-1][0] >= x:
            self._kept.pop()
        self._newest = self._kept[-1] if self._kept else None
        self._since = 0

    @property
    def newest(self) -> Point | None:
        return self._newest

    def points(self) -> list[Point]:
        if self._newest is None or (self._kept and self._kept[-1] == self._newest):
            return list(self._kept)
        return [*self._kept, self._newest]


def line_chart_svg(series: Mapping[str, Sequence[Point]], *, width: int = 480, height: int = 240,
                   title: str = "", x_label: str = "", y_label: str = "",
                   colors: Sequence[str] = COLORS) -> str:
    """An SVG line chart of each named series (x ascending), with ticked, labelled axes and a
    legend when there are several; an empty chart says "no data yet"."""
    pad_l, pad_r, pad_t, pad_b = 58, 12, 24 if title else 10, 40 if x_label else 26
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b
    drawn = {name: pts for name, pts in series.items() if pts}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" style="fill:{THEME["background"]}"/>',
             f'<rect x="{pad_l}" y="{pad_t}" width="{plot_w}" height="{plot_h}" '
             f'style="fill:none;stroke:{THEME["axis"]}"/>']
    if title:
        parts.append(_text(pad_l + plot_w / 2, 15, title, anchor="middle", bold=True))
    if x_label:
        parts.append(_text(pad_l + plot_w / 2, height - 6, x_label, anchor="middle"))
    if y_label:
        parts.append(_text(12, pad_t + plot_h / 2, y_label, anchor="middle",
                           rotate=(12, pad_t + plot_h / 2)))
    if not drawn:
        parts.append(_text(pad_l + plot_w / 2, pad_t + plot_h / 2, "no data yet", anchor="middle",
                           fill=THEME["muted"]))
        return "".join(parts) + "</svg>"
    xs = [p[0] for pts in drawn.values() for p in pts]
    ys = [p[1] for pts in drawn.values() for p in pts]
    x_ticks, (x0, x1) = nice_ticks(min(xs), max(xs))
    y_ticks, (y0, y1) = nice_ticks(min(ys), max(ys))

    def sx(x: float) -> float:
        return pad_l + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return pad_t + plot_h - (y - y0) / (y1 - y0) * plot_h

    for t in x_ticks:
        parts.append(f'<line x1="{sx(t):.1f}" y1="{pad_t + plot_h}" x2="{sx(t):.1f}" '
                     f'y2="{pad_t + plot_h + 4}" style="stroke:{THEME["axis"]}"/>')
        parts.append(_text(sx(t), pad_t + plot_h + 15, format_tick(t, x_ticks), anchor="middle"))
    for t in y_ticks:
        parts.append(f'<line x1="{pad_l}" y1="{sy(t):.1f}" x2="{pad_l + plot_w}" y2="{sy(t):.1f}" '
                     f'style="stroke:{THEME["grid"]}"/>')
        parts.append(_text(pad_l - 4, sy(t) + 4, format_tick(t, y_ticks), anchor="end"))
    for i, (name, pts) in enumerate(drawn.items()):
        color = colors[i % len(colors)]
        path = _polyline(pts, (x0, x1, pad_l, plot_w), (y0, y1, pad_t + plot_h, -plot_h))
        parts.append(f'<polyline style="fill:none;stroke:{color};stroke-width:1.5" points="{path}">'
                     f"<title>{html.escape(name)}</title></polyline>")
        if len(drawn) > 1:  # a swatch in the line's colour, the name in the theme's text colour
            x, y = pad_l + plot_w - 6, pad_t + 14 + 13 * i
            parts.append(f'<line x1="{x - 14}" y1="{y - 4}" x2="{x}" y2="{y - 4}" '
                         f'style="stroke:{color};stroke-width:2"/>')
            parts.append(_text(x - 18, y, name, anchor="end"))
    return "".join(parts) + "</svg>"


def nice_ticks(lo: float, hi: float, count: int = 5) -> tuple[list[float], tuple[float, float]]:
    """About ``count`` round tick values (steps of 1, 2 or 5 × 10^k) covering lo..hi, and the
    axis range they span."""
    if hi <= lo:  # one value: a small range around it
        spread = abs(lo) * 0.1 or 1.0
        lo, hi = lo - spread, hi + spread
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first, last = math.floor(lo / step), math.ceil(hi / step)
    ticks = [k * step for k in range(first, last + 1)]
    return ticks, (ticks[0], ticks[-1])


def format_tick(value: float, ticks: Sequence[float]) -> str:
    """A tick's label, with as many digits as the step between ticks needs."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(value) or 1.0
    if value == 0:
        return "0"
    if abs(value) < 1e-3 or abs(value) >= 1e6:
        return f"{value:.{max(0, -math.floor(math.log10(step)) + math.floor(math.log10(abs(value))))}e}"
    decimals = max(0, -math.floor(math.log10(step)))
    return f"{value:.{decimals}f}"


class Curves:
    """The loss, smoothed loss, validation loss and learning-rate series of a job, fed one event
    at a time."""

    def __init__(self, limit: int = 1000):
        self.loss, self.average, self.lr = Series(limit), Series(limit), Series(limit)
        self.val = Series(limit)  # a point every validation.every_n_steps: few, never decimated
        self._ema: float | None = None

    def add(self, event: dict[str, Any]) -> None:
        """Take in one event (only ``progress`` events with a loss or lr, and ``validation``
        events, count)."""
        if event.get("type") == "validation" and "step" in event:
            self.val.add(event["step"], event.get("loss"))
            return
        if event.get("type") != "progress" or "step" not in event:
            return
        loss, step = event.get("loss"), event["step"]
        if loss is not None and math.isfinite(loss):
            resumed = self.loss.newest is not None and step <= self.loss.newest[0]
            self._ema = loss if self._ema is None or resumed else \
                EMA_WEIGHT * self._ema + (1 - EMA_WEIGHT) * loss
            self.loss.add(step, loss)
            self.average.add(step, self._ema)
        if event.get("lr") is not None:
            self.lr.add(step, event["lr"])

    @property
    def has_loss(self) -> bool:
        return self.loss.newest is not None

    def loss_svg(self, width: int = 480, height: int = 240) -> str:
        series = {"loss": self.loss.points(), "loss (avg)": self.average.points()}
        if self.val.newest is not None:  # held-out images: the curve that shows overfitting
            series["validation loss"] = self.val.points()
        return line_chart_svg(series, width=width, height=height, title="loss", x_label="step")

    def lr_svg(self, width: int = 480, height: int = 240) -> str:
        return line_chart_svg({"lr": self.lr.points()}, width=width, height=height,
                              title="learning rate", x_label="step")


def curves_of(events: Iterable[dict[str, Any]], limit: int = 1000) -> Curves:
    curves = Curves(limit)
    for e in events:
        curves.add(e)
    return curves


def loss_chart_svg(events: Iterable[dict[str, Any]], *, width: int = 480, height: int = 240) -> str:
    """The loss curve (raw and smoothed) of a job's events, e.g. ``job.events()``."""
    return curves_of(events).loss_svg(width, height)


def lr_chart_svg(events: Iterable[dict[str, Any]], *, width: int = 480, height: int = 240) -> str:
    """The learning-rate curve of a job's events."""
    return curves_of(events).lr_svg(width, height)


def _polyline(pts: Sequence[Point], xs: tuple[float, ...], ys: tuple[float, ...]) -> str:
    """The points scaled onto the plot: (lo, hi, pixel origin, pixel span) per axis. Inlined
    arithmetic, as this is most of the cost of redrawing a live chart."""
    x0, x1, ox, wx = xs
    y0, y1, oy, wy = ys
    kx, ky = wx / (x1 - x0), wy / (y1 - y0)
    return " ".join(f"{ox + (x - x0) * kx:.1f},{oy + (y - y0) * ky:.1f}" for x, y in pts)


def _text(x: float, y: float, text: str, *, anchor: str = "start", fill: str = THEME["text"],
          bold: bool = False, rotate: tuple[float, float] | None = None) -> str:
    extra = (' font-weight="bold"' if bold else "") + \
        (f' transform="rotate(-90 {rotate[0]:.1f} {rotate[1]:.1f})"' if rotate else "")
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" style="fill:{fill}"{extra}>'
            f"{html.escape(text)}</text>")
