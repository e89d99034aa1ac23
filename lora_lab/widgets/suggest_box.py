"""The launcher's config assistant: a request in words ("25 photos of my dog, SDXL") and a
"Suggest" button that fills the launcher's form with the suggested config (a local GGUF model,
then the dataset-aware rules: lora_lab.assistant) and lists each value's reason beside it.

With ``autostart`` the model runs on a thread, so the kernel stays free while it answers;
without (tests), in the click.
"""
from __future__ import annotations

import html
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from ..errors import LoraLabError
from ..workspace import Workspace
from .common import COLORS, Notice, reporting

_SOURCES = {"model": ("the model", COLORS["info"]), "rule": ("a rule", COLORS["warning"]),
            "preset": ("the preset", COLORS["ok"])}


class SuggestBox(widgets.VBox):
    """``SuggestBox(ws, form, apply)``: ``form()`` gives (dataset, base) as the launcher holds
    them; ``apply(suggestion)`` fills the launcher. ``.suggestion`` is the last one."""

    def __init__(self, ws: Workspace, form: Callable[[], tuple[str, str]],
                 apply: Callable[[Any], None], autostart: bool = True):
        super().__init__()
        self.add_class("lora-lab-suggest")
        self.ws, self.form, self.apply, self.autostart = ws, form, apply, autostart
        self.suggestion: Any = None
        self.thread: threading.Thread | None = None
        self.text = widgets.Textarea(description="Assistant", rows=2, layout={"width": "460px"},
                                     style={"description_width": "190px"},
                                     placeholder='what you want, e.g. "25 photos of my dog, SDXL"')
        self.model = widgets.Text(description="Model (GGUF)", style={"description_width": "190px"},
                                  layout={"width": "460px"},
                                  placeholder="default: the caption model's text side")
        self.button = widgets.Button(description="Suggest", icon="magic",
                                     tooltip="fill the form with a suggested config, each value "
                                             "with its reason")
        self.notice = Notice()
        self.reasons = widgets.HTML()
        self.reasons.add_class("lora-lab-suggest-reasons")
        self.button.on_click(self._on_suggest)
        self.children = [widgets.HBox([self.text, self.button]), self.model, self.notice, self.reasons]

    @reporting
    def _on_suggest(self, _: Any = None) -> None:
        dataset, base = self.form()
        if not dataset:
            raise LoraLabError("fill in the dataset first: the suggestion is made for its images")
        if self.thread is not None and self.thread.is_alive():
            raise LoraLabError("a suggestion is being made; wait for it")
        self.button.disabled = True
        self.notice.show("asking the model...", "info")
        args = (self.text.value, dataset, self.model.value.strip() or None, base)
        if not self.autostart:
            self._run(*args)
            return
        self.thread = threading.Thread(target=self._run, args=args, name="lora-lab suggest", daemon=True)
        self.thread.start()

    def _run(self, text: str, dataset: str, model: str | None, base: str) -> None:
        try:
            self._suggest(text, dataset, model, base)
        finally:
            self.button.disabled = False

    @reporting
    def _suggest(self, text: str, dataset: str, model: str | None, base: str) -> None:
        from ..assistant import suggest

        s = suggest(text, dataset, model=model, base=base, workspace=self.ws)
        self.suggestion = s
        self.apply(s)
        self.reasons.value = _table(s)
        corrected = sum(r.source == "rule" for r in s.reasons.values())
        self.notice.show(f"filled in {len(s.reasons)} values from {s.model} ({s.seconds:.1f} s); "
                         f"{corrected} set or corrected by the rules", "ok")


def _table(s: Any) -> str:
    rows = []
    for key, r in s.reasons.items():
        who, color = _SOURCES[r.source]
        value = "; ".join(r.value) if isinstance(r.value, list) else r.value
        rows.append(f"<tr><td><code>{html.escape(key)}</code></td><td>{html.escape(str(value))}</td>"
                    f'<td style="color:{color}">{who}</td><td>{html.escape(r.reason)}</td></tr>')
    return (f"<details open><summary>Why these values ({s.plan.total_steps} steps)</summary>"
            f"<table>{''.join(rows)}</table></details>")
