"""DatasetBrowser: a paged thumbnail grid over a dataset, with filters, sort and selection.

The tiles are made once and reused page after page (only their values change), so turning a
page sends the browser a few small updates per tile. Thumbnails come from the dataset's cache;
those a page lacks are made on a small thread pool (Pillow decodes and resizes outside the GIL)
and fill their tiles as they finish, so a page of a fresh dataset shows at once, placeholders
first. Called from code, bad arguments raise :class:`LoraLabError`; changed at the controls, bad
values show in the panel's notice line and leave the page as it was.
"""
from __future__ import annotations

import functools
import html
import io
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from itertools import zip_longest
from typing import Any

import ipywidgets as widgets
import traitlets
from ipywidgets.widgets.widget_bool import CheckboxStyle
from ipywidgets.widgets.widget_string import HTMLStyle

from ..datasets import Dataset
from ..datasets.index import ImageQuery
from ..datasets.thumbs import SIZES, cached_thumbnail, make_thumbnail_of
from ..errors import LoraLabError
from ..workspace import Workspace
from .common import Notice, Quiet, reporting, workspace_of

DEFAULT_QUERY: dict[str, Any] = {"q": "", "tag": "", "captioned": None, "shape": None, "min_side": 0,
                                 "duplicates": False, "truncated": None, "sort": "file"}
CAPTIONED = {"all": None, "captioned": True, "uncaptioned": False}
TRUNCATED = {False: None, True: True}  # the checkbox: ticked shows only captions cut off
SHAPES = {"any shape": None, "portrait": "portrait", "landscape": "landscape", "square": "square"}
SORTS = [("name A-Z", "file"), ("name Z-A", "-file"), ("most pixels", "-pixels"),
         ("fewest pixels", "pixels"), ("widest", "-aspect"), ("tallest", "aspect"),
         ("biggest file", "-bytes"), ("smallest file", "bytes"), ("longest caption", "-caption"),
         ("shortest caption", "caption"), ("newest", "-modified"), ("oldest", "modified")]
CAPTION_CHARS = 90  # shown under a tile; the whole caption is its tooltip
# three whole lines at most, the last one ending in an ellipsis when cut
CAPTION_STYLE = ("line-height:1.3em;font-size:90%;display:-webkit-box;-webkit-line-clamp:3;"
                 "-webkit-box-orient:vertical;overflow:hidden")
TRUNCATED_BORDER = "2px solid #8a5a00"  # a caption the model cut off at its token limit


def check_query(query: dict[str, Any]) -> ImageQuery:
    """The core query for the panel's filter values; unknown filters or bad values raise."""
    unknown = sorted(set(query) - set(DEFAULT_QUERY))
    if unknown:
        raise LoraLabError(f"unknown filter(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_QUERY)}")
    return ImageQuery(**{**query, "q": query["q"] or None, "tag": query["tag"] or None})


def short_caption(caption: str | None, chars: int = CAPTION_CHARS) -> str:
    """A caption cut to ``chars`` at a word boundary, with an ellipsis when cut."""
    text = " ".join((caption or "").split())
    if len(text) <= chars:
        return text
    return text[:chars].rsplit(" ", 1)[0].rstrip(",;") + " …"


@functools.cache
def placeholder() -> bytes:
    """A grey pixel, stretched over a tile whose thumbnail is still being made."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 200, 200)).save(buf, "JPEG")
    return buf.getvalue()


def _read(path: os.PathLike) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def tile_parts(size: int) -> dict[str, widgets.Widget]:
    """Layouts and styles every tile shares: one model each instead of one per tile halves
    the widgets a panel creates (and the time it takes to open)."""
    return {
        "image": widgets.Layout(width=f"{size}px", height=f"{size}px", object_fit="contain"),
        "caption": widgets.Layout(width=f"{size}px", height="3.9em", overflow="hidden"),
        "check": widgets.Layout(width="24px"), "button": widgets.Layout(width=f"{size - 28}px"),
        "row": widgets.Layout(), "html_style": HTMLStyle(),
        "check_style": CheckboxStyle(), "button_style": widgets.ButtonStyle(),
    }


class Tile(widgets.VBox):
    """One image of the grid: thumbnail, shortened caption, a select box and an edit button
    (class ``lora-lab-open``: the JupyterLab extension makes a click on the image click it)."""

    def __init__(self, parts: dict[str, widgets.Widget]):
        self.file = ""
        self.image = widgets.Image(format="jpeg", layout=parts["image"])
        self.caption = widgets.HTML(layout=parts["caption"], style=parts["html_style"])
        self.check = widgets.Checkbox(indent=False, layout=parts["check"], style=parts["check_style"])
        self.edit_button = widgets.Button(layout=parts["button"], style=parts["button_style"])
        self.edit_button.add_class("lora-lab-open")
        super().__init__([self.image, self.caption,
                          widgets.HBox([self.check, self.edit_button], layout=parts["row"])],
                         layout=widgets.Layout(display="none", padding="4px"))
        self.add_class("lora-lab-tile")

    def show(self, row: dict[str, Any], thumb: bytes, selected: bool, current: bool) -> None:
        self.file = row["file"]
        self.image.value = thumb
        text = short_caption(row["caption"])
        self.caption.value = (f'<div title="{html.escape(row["caption"] or "")}" '
                              f'style="{CAPTION_STYLE}">{html.escape(text)}</div>'
                              if text else '<i style="color:#888">no caption</i>')
        self.check.value = selected
        with self.edit_button.hold_sync():
            self.edit_button.description = self.file
            self.edit_button.tooltip = f"{self.file} ({row['width']}x{row['height']}): edit its caption"
            self.edit_button.button_style = "info" if current else ""
        self._mark_truncated(bool(row.get("caption_truncated")))
        self.layout.display = None

    def _mark_truncated(self, truncated: bool) -> None:
        if truncated:
            self.add_class("lora-lab-truncated")
            self.layout.border = TRUNCATED_BORDER
        else:
            self.remove_class("lora-lab-truncated")
            self.layout.border = None

    def hide(self) -> None:
        self.file = ""
        self.layout.display = "none"

    @property
    def caption_text(self) -> str:
        """The caption as the tile shows it (what a test or a screen reader reads)."""
        return "" if "no caption" in self.caption.value else html.unescape(
            self.caption.value.rsplit("</div>", 1)[0].rsplit(">", 1)[-1])


class DatasetBrowser(Quiet, widgets.VBox):
    """``DatasetBrowser("mydata")``: page through a dataset's images and their captions, filter
    and sort them, select some. Other panels observe ``selected`` (the selected files) and
    ``current`` (the image last opened for editing). A panel that holds a browser may pass its
    own ``notice`` line, which the browser then writes to instead of showing one of its own."""

    selected = traitlets.List(traitlets.Unicode())
    current = traitlets.Unicode()

    def __init__(self, dataset: str, workspace: Workspace | str | None = None,
                 page_size: int = 100, thumb_size: int = 160, notice: Notice | None = None):
        # First: close() (also run by __del__ when this constructor raises) shuts it down.
        self._pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                        thread_name_prefix="lora-lab thumbs")
        if not 1 <= page_size <= 1000:
            raise LoraLabError(f"page_size must be between 1 and 1000, not {page_size}")
        if thumb_size not in SIZES:
            raise LoraLabError(f"thumb_size must be between {SIZES.start} and {SIZES.stop - 1}")
        self.workspace = workspace_of(workspace)
        self.dataset = Dataset.open(dataset, self.workspace)  # NotFound names the dataset
        self.page_size, self.thumb_size = page_size, thumb_size
        self.query, self.offset, self.total, self.rows = dict(DEFAULT_QUERY), 0, 0, []
        self.notice = notice or Notice()
        self._lock = threading.RLock()  # paging and painting vs thumbnails and pollers' refreshes
        self._generation = 0
        self._pending: list[Future] = []
        parts = tile_parts(thumb_size)
        self.tiles = [Tile(parts) for _ in range(page_size)]
        self._build_controls()
        super().__init__([self.title, self._filter_bar(), self._paging_bar()]
                         + ([] if notice else [self.notice]) + [self.grid])
        self.add_class("lora-lab-browser")  # for CSS, and for the browser test to find it
        self._wire()
        self._go(0)

    # -- building --------------------------------------------------------------------------------
    def _build_controls(self) -> None:
        self.title = widgets.HTML(f"<b>{html.escape(self.dataset.name)}</b>")
        self.filters: dict[str, widgets.ValueWidget] = {
            "q": widgets.Text(placeholder="search captions and file names",
                              continuous_update=False, layout=widgets.Layout(width="260px")),
            "tag": widgets.Text(placeholder="tag (exactly)", continuous_update=False,
                                layout=widgets.Layout(width="150px")),
            "captioned": widgets.Dropdown(options=list(CAPTIONED), layout=widgets.Layout(width="130px")),
            "shape": widgets.Dropdown(options=list(SHAPES), layout=widgets.Layout(width="120px")),
            "min_side": widgets.IntText(0, description="min side", continuous_update=False,
                                        layout=widgets.Layout(width="150px")),
            "duplicates": widgets.Checkbox(description="near-duplicates only", indent=False),
            "truncated": widgets.Checkbox(description="cut-off captions only", indent=False,
                                          tooltip="captions the model stopped at its token limit"),
            "sort": widgets.Dropdown(options=SORTS, description="sort",
                                     layout=widgets.Layout(width="210px")),
        }
        self.prev_button = widgets.Button(description="◀ prev", layout=widgets.Layout(width="80px"))
        self.next_button = widgets.Button(description="next ▶", layout=widgets.Layout(width="80px"))
        self.range_label = widgets.Label()
        self.selection_label = widgets.Label()
        self.select_all_button = widgets.Button(description="select all",
                                                tooltip="select every image the filters show")
        self.clear_button = widgets.Button(description="clear selection")
        self.grid = widgets.GridBox(self.tiles, layout=widgets.Layout(
            grid_template_columns=f"repeat(auto-fill, minmax({self.thumb_size + 8}px, 1fr))",
            grid_gap="6px"))

    def _filter_bar(self) -> widgets.Box:
        return widgets.HBox(list(self.filters.values()), layout=widgets.Layout(flex_flow="row wrap"))

    def _paging_bar(self) -> widgets.Box:
        return widgets.HBox([self.prev_button, self.next_button, self.range_label,
                             self.select_all_button, self.clear_button, self.selection_label],
                            layout=widgets.Layout(align_items="center"))

    def _wire(self) -> None:
        for key, control in self.filters.items():
            control.observe(functools.partial(self._on_filter, key), "value")
        self.prev_button.on_click(lambda _: self._turn(-1))
        self.next_button.on_click(lambda _: self._turn(1))
        self.select_all_button.on_click(lambda _: self.select_all())
        self.clear_button.on_click(lambda _: self.clear_selection())
        for tile in self.tiles:
            tile.check.observe(functools.partial(self._on_check, tile), "value")
            tile.edit_button.on_click(functools.partial(self._on_open, tile))

    # -- public ----------------------------------------------------------------------------------
    def show(self, **query: Any) -> None:
        """Set filters and sort, from the first page: ``q`` (text in captions or file names),
        ``captioned`` (True/False/None), ``shape`` (portrait/landscape/square/None),
        ``min_side`` (pixels), ``duplicates`` (near-duplicates only), ``truncated`` (True: only
        captions cut off at the caption model's token limit), ``sort`` (file, pixels,
        aspect, bytes, caption, modified; a leading "-" reverses). Filters not named keep
        their values; a bad one raises and changes nothing."""
        merged = {**self.query, **query}
        check_query(merged)
        self.query = merged
        self._set_controls()
        self.notice.clear()
        self._go(0)

    def refresh(self) -> None:
        """Read the current page again (after captions or files changed)."""
        self.dataset.sync_if_changed()
        self._go(self.offset)

    def select_all(self) -> None:
        """Select every image the filters show, on every page."""
        self.selected = self.dataset.index.files(check_query(self.query))

    def clear_selection(self) -> None:
        self.selected = []

    def step(self, delta: int) -> None:
        """Make the image ``delta`` places after ``current`` (in the shown order) the current
        one, turning the page when it is on another."""
        files = [r["file"] for r in self.rows]
        here = self.offset + files.index(self.current) if self.current in files else None
        target = (self.offset if delta > 0 else self.offset + len(files) - 1) if here is None \
            else here + delta
        if not 0 <= target < self.total:
            self.notice.show("no more images that way", "info")
            return
        if not self.offset <= target < self.offset + len(files):
            self._go(target // self.page_size * self.page_size)
        self.current = self.rows[target - self.offset]["file"]

    def wait_thumbnails(self, timeout: float | None = None) -> None:
        """Block until the shown page's missing thumbnails are made (scripts, tests)."""
        wait(self._pending, timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        super().close()

    # -- reading and painting --------------------------------------------------------------------
    def _go(self, offset: int) -> None:
        with self._lock:  # a poller's refresh and a click never paint one page over the other
            query = vars(check_query(self.query))
            page = self.dataset.images(max(offset, 0), self.page_size, **query)
            if page.total and offset >= page.total:  # the filters now show fewer: the last page
                last = (page.total - 1) // self.page_size * self.page_size
                page = self.dataset.images(last, self.page_size, **query)
            self.offset, self.total, self.rows = page.offset, page.total, page.items
            self._paint()

    def _paint(self) -> None:
        selected, missing = set(self.selected), []
        with self._lock, self._quietly():
            self._generation += 1
            for future in self._pending:
                future.cancel()  # a page left behind: its thumbnails can wait
            for tile, row in zip_longest(self.tiles, self.rows):
                if row is None:
                    tile.hide()
                    continue
                thumb = _read(cached_thumbnail(self.dataset, row, self.thumb_size))
                if thumb is None:
                    missing.append((tile, row))
                tile.show(row, thumb or placeholder(), row["file"] in selected,
                          row["file"] == self.current)
        self._pending = [self._pool.submit(self._make_thumbnail, tile, row, self._generation)
                         for tile, row in missing]
        self._show_counts()

    def _make_thumbnail(self, tile: Tile, row: dict[str, Any], generation: int) -> None:
        try:
            thumb, error = make_thumbnail_of(self.dataset, row, self.thumb_size).read_bytes(), None
        except Exception as e:  # a pool thread has no one to raise to: the tile says it
            thumb, error = None, f"<i>no thumbnail: {html.escape(str(e))}</i>"
        with self._lock:
            if generation == self._generation and tile.file == row["file"]:
                if thumb is not None:
                    tile.image.value = thumb
                else:
                    tile.caption.value = error

    def _show_counts(self) -> None:
        self.prev_button.disabled = self.offset == 0
        self.next_button.disabled = self.offset + len(self.rows) >= self.total
        if self.total:
            self.range_label.value = f"{self.offset + 1}-{self.offset + len(self.rows)} of {self.total}"
        elif len(self.dataset):
            self.range_label.value = "no images match these filters"
        else:
            self.range_label.value = "no images in this dataset yet"
        self.selection_label.value = f"{len(self.selected)} selected" if self.selected else ""

    def _set_controls(self) -> None:
        with self._quietly():
            for key, control in self.filters.items():
                control.value = _control_value(key, self.query[key])

    # -- events ----------------------------------------------------------------------------------
    @reporting
    def _on_filter(self, key: str, change: dict[str, Any]) -> None:
        if self._quiet:
            return
        query = {**self.query, key: _query_value(key, change["new"])}
        check_query(query)
        self.notice.clear()
        self.query = query
        self._go(0)

    @reporting
    def _turn(self, pages: int) -> None:
        self._go(self.offset + pages * self.page_size)

    @reporting
    def _on_check(self, tile: Tile, change: dict[str, Any]) -> None:
        if self._quiet or not tile.file:
            return
        others = [f for f in self.selected if f != tile.file]
        self.selected = others + [tile.file] if change["new"] else others

    @reporting
    def _on_open(self, tile: Tile, _button: widgets.Button) -> None:
        self.current = tile.file

    @traitlets.observe("selected")
    def _selected_changed(self, change: dict[str, Any]) -> None:
        chosen = set(change["new"])
        with self._lock, self._quietly():
            for tile in self.tiles:
                if tile.file:
                    tile.check.value = tile.file in chosen
        self.selection_label.value = f"{len(chosen)} selected" if chosen else ""

    @traitlets.observe("current")
    def _current_changed(self, change: dict[str, Any]) -> None:
        with self._lock:
            for tile in self.tiles:
                if tile.file:
                    tile.edit_button.button_style = "info" if tile.file == change["new"] else ""


def _control_value(key: str, value: Any) -> Any:
    """The filter control's value for a query value."""
    if key == "truncated":  # a checkbox: show(truncated=False), whole captions only, is unticked
        return value is True
    names = {"captioned": CAPTIONED, "shape": SHAPES}.get(key)
    return next(k for k, v in names.items() if v == value) if names else value


def _query_value(key: str, value: Any) -> Any:
    """The query value for a filter control's value."""
    names = {"captioned": CAPTIONED, "shape": SHAPES, "truncated": TRUNCATED}.get(key)
    return names[value] if names else value
