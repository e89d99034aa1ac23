"""The captioning panel's editor column: the open image large, its caption, its tags as chips,
the tag box, and the buttons the keys click. Widgets and their layout only; what they do is
:class:`~lora_lab.widgets.caption_panel.CaptionPanel`'s.

The DOM classes are the JupyterLab extension's: its key bindings click ``.lora-lab-prev``,
``.lora-lab-next``, ``.lora-lab-save-next`` and ``.lora-lab-caption-ai`` inside the focused panel.
"""
from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets

from ..captioning.prompts import DEFAULT_PRESET, PRESETS
from ..datasets.captions import caption_tags

KEYS = [("Alt+←", "previous"), ("Alt+→", "next"), ("Ctrl+Enter", "save and next"),
        ("Alt+C", "caption with AI"), ("Enter", "in the tag box: add the tag")]
CHIPS = 50  # tags of the open caption shown as chips (a click removes one)


def _button(description: str, cls: str, **kw: Any) -> widgets.Button:
    button = widgets.Button(description=description, **kw)
    button.add_class(cls)
    return button


class SideEditor(widgets.VBox):
    """The column beside the grid; ``preview_size`` is the preview's width and height."""

    def __init__(self, preview_size: int):
        self.header = widgets.HTML()
        self.header.add_class("lora-lab-current")
        self.preview = widgets.Image(format="jpeg", layout=widgets.Layout(
            width=f"{preview_size}px", height=f"{preview_size}px", object_fit="contain"))
        self.text = widgets.Textarea(rows=6, layout=widgets.Layout(width="100%"),
                                     placeholder="open an image: click its tile")
        self.text.add_class("lora-lab-caption-text")
        # One widget for all the chips: a button each would double the panel's opening time.
        self.chips = widgets.ToggleButtons(options=(), index=None, style={"button_width": "auto"},
                                           layout=widgets.Layout(flex_flow="row wrap"))
        self.chips.add_class("lora-lab-chips")
        self.tag_input = widgets.Combobox(placeholder="add a tag: type, pick, Enter",
                                          layout=widgets.Layout(flex="1"))
        self.tag_input.add_class("lora-lab-tag-input")
        self.add_tag_button = _button("add", "lora-lab-add-tag", tooltip="add the tag to the caption",
                                      layout=widgets.Layout(width="60px"))
        self.prev_button = _button("◀ previous", "lora-lab-prev", tooltip="Alt+←")
        self.next_button = _button("next ▶", "lora-lab-next", tooltip="Alt+→")
        self.save_next_button = _button("save and next", "lora-lab-save-next", button_style="primary",
                                        tooltip="Ctrl+Enter")
        self.ai_button = _button("Caption with AI", "lora-lab-caption-ai", icon="magic",
                                 tooltip="Alt+C: caption this image with the caption model "
                                         "(replaces its caption)")
        self.preset = widgets.Dropdown(options=list(PRESETS), value=DEFAULT_PRESET,
                                       layout=widgets.Layout(width="110px"))
        self.trigger = widgets.Text(placeholder="trigger word", layout=widgets.Layout(width="120px"))
        self.save_button = _button("save", "lora-lab-save", tooltip="save now (after a conflict: "
                                   "write your text over the one on disk)")
        self.revert_button = _button("revert", "lora-lab-revert", tooltip="take the caption on disk")
        keys = " · ".join(f"<kbd>{html.escape(k)}</kbd> {what}" for k, what in KEYS)
        self.help = widgets.HTML(f'<span style="font-size:90%">{keys}. Leaving an image saves '
                                 "its caption.</span>")
        self.help.add_class("lora-lab-keys")
        row = widgets.Layout(flex_flow="row wrap", align_items="center")
        super().__init__([
            self.header, self.preview, self.text, self.chips,
            widgets.HBox([self.tag_input, self.add_tag_button]),
            widgets.HBox([self.prev_button, self.next_button, self.save_next_button], layout=row),
            widgets.HBox([self.ai_button, self.preset, self.trigger], layout=row),
            widgets.HBox([self.save_button, self.revert_button], layout=row), self.help,
        ], layout=widgets.Layout(width=f"{preview_size + 24}px", flex="0 0 auto",
                                 padding="0 0 0 12px"))
        self.add_class("lora-lab-side-editor")

    def show(self, row: dict[str, Any] | None, preview: bytes) -> None:
        """Show the image of index row ``row`` (None: no image open) and its ``preview``."""
        self.text.disabled = row is None
        self.preview.layout.visibility = "hidden" if row is None else "visible"  # no broken icon
        self.header.value = "<i>no image open</i>" if row is None else _header(row)
        self.preview.value = preview

    def show_chips(self) -> None:
        """The caption's tags as chips, none selected; a prose caption has none."""
        tags = list(dict.fromkeys(caption_tags(self.text.value)))[:CHIPS]
        if [tag for _, tag in self.chips.options] != tags:
            with self.chips.hold_sync():
                self.chips.options = [(f"{tag} ✕", tag) for tag in tags]
                self.chips.tooltips = [f"remove {tag!r}" for tag in tags]
                self.chips.index = None


def _header(row: dict[str, Any]) -> str:
    """The file, its size, who captioned it, and a mark when its caption was cut off."""
    cut = (' <span class="lora-lab-truncated" style="color:#8a5a00">✂ cut off at the caption '
           "model's token limit: check its end</span>" if row.get("caption_truncated") else "")
    made = f", captioned by {html.escape(row['caption_model'])}" if row.get("caption_model") else ""
    return f"<b>{html.escape(row['file'])}</b> {row['width']}x{row['height']}{made}{cut}"
