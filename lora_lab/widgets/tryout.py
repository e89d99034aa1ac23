"""LoraTryout: try LoRAs in a notebook. Pick a base model, LoRA files and jobs of the workspace
(a job: each of its saved steps a checkpoint), prompts, strengths and seeds; Render shows the
grid (:class:`lora_lab.tools.tryout.Tryout`), Save grid writes it with its inputs as JSON.
Steps, guidance and the negative prompt start at the base's family's preset sample settings,
and follow a base of another family.

With ``autostart`` a grid renders on a thread, so the kernel stays free; without (tests), in the
click. The panel's pipeline stays loaded between renders, and lets go of its memory when a
training job starts, wherever it was started, as the caption panel's model does; the next
Render loads it again.
"""
from __future__ import annotations

import io
import threading
import time
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets

from ..errors import LoraLabError
from ..jobdir.record import list_jobs, lora_files
from ..jobdir.watch import TrainStarts
from ..tools.tryout import Tryout, sample_defaults
from ..tools.tryout_grid import Grid
from ..tools.tryout_loras import folder_files
from ..training.base_model import detect_family, local_models
from ..workspace import Workspace
from .common import Notice, Poller, reporting, workspace_of

WATCH_S = 2.0  # while the pipeline is loaded, how often the jobs are looked at for a training run
WIDE = {"width": "560px"}
LABELS = {"description_width": "110px"}


def lora_choices(ws: Workspace) -> list[tuple[str, str]]:
    """(label, value) for the LoRAs of the workspace: its jobs that saved LoRA files, newest
    first, then the files in loras/."""
    jobs = []
    for job in list_jobs(ws):
        try:
            files = [f for f in lora_files(job.status()) if not f.get("missing")]
        except (OSError, ValueError):  # a job folder mid-creation or damaged: not offered
            continue
        if files:
            jobs.append((f"job {job.id} ({len(files)} file{'s' * (len(files) > 1)})", job.id))
    return jobs + [(p.name, str(p)) for p in folder_files(ws.loras)]


class LoraTryout(widgets.VBox):
    """``LoraTryout(base, loras, prompts)``: a grid of LoRAs on their base model. ``.grid`` is the
    last grid rendered, ``.tryout`` the :class:`Tryout` that keeps the pipeline."""

    def __init__(self, base: str | None = None, loras: Sequence[str] = (), prompts: Sequence[str] = (),
                 workspace: Workspace | str | None = None, autostart: bool = True):
        super().__init__()
        self.add_class("lora-lab-tryout")
        self.watch = Poller(self.make_way, WATCH_S)  # first: close() needs it if the rest fails
        self.ws = workspace_of(workspace)
        self.autostart = autostart
        self.tryout: Tryout | None = None
        self.grid: Grid | None = None
        self.thread: threading.Thread | None = None
        self._starts: TrainStarts | None = None  # train jobs seen running since the pipeline loaded
        self._family: str | None = None  # the base's, whose defaults the form holds
        self.notice = Notice()
        self.base = widgets.Combobox(description="Base model", value=str(base or ""), ensure_option=False,
                                     options=[str(p) for p, _ in local_models(self.ws.models)],
                                     placeholder="a diffusers folder, checkpoint or Hub id",
                                     layout=WIDE, style=LABELS)
        choices = lora_choices(self.ws)
        known = {value for _, value in choices}
        choices += [(str(lora), str(lora)) for lora in loras if str(lora) not in known]
        self.loras = widgets.SelectMultiple(description="LoRAs", options=choices, rows=5,
                                            value=tuple(str(lora) for lora in loras), layout=WIDE, style=LABELS)
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh",
                                             tooltip="list the workspace's LoRA files and jobs again")
        self.prompts = widgets.Textarea(description="Prompts", value="\n".join(prompts), rows=3,
                                        placeholder="one prompt a line", layout=WIDE, style=LABELS)
        self.negative = widgets.Text(description="Negative", layout=WIDE, style=LABELS)
        self.strengths = widgets.Text(description="Strengths", value="0, 0.5, 1", style=LABELS,
                                      tooltip="from -2 to 2; 0 is the base alone")
        self.seeds = widgets.Text(description="Seeds", value="0", style=LABELS)
        self.steps = widgets.BoundedIntText(description="Steps", value=20, min=1, max=150, style=LABELS)
        self.guidance = widgets.BoundedFloatText(description="Guidance", value=7.0, min=0, max=30,
                                                 step=0.5, style=LABELS)
        self.size = widgets.Text(description="Size", placeholder="WxH (default: the model's)", style=LABELS)
        self.render_button = widgets.Button(description="Render", icon="th", button_style="primary",
                                            tooltip="render the grid (images rendered before come from the cache)")
        self.image = widgets.Image(format="png", layout={"max_width": "100%"})
        self.out = widgets.Text(description="Save as", style=LABELS, layout=WIDE,
                                placeholder="a .png in the workspace, e.g. exports/grid.png")
        self.save_button = widgets.Button(description="Save grid", icon="save", disabled=True,
                                          tooltip="write the grid as a PNG and its inputs as JSON beside it")
        self.refresh_button.on_click(self._on_refresh)
        self.render_button.on_click(self._on_render)
        self.save_button.on_click(self._on_save)
        self.children = [self.base, widgets.HBox([self.loras, self.refresh_button]), self.prompts,
                         self.negative, widgets.HBox([self.strengths, self.seeds]),
                         widgets.HBox([self.steps, self.guidance, self.size]), self.render_button,
                         self.notice, self.image, widgets.HBox([self.out, self.save_button])]
        self.base.observe(self._on_base, names="value")
        self._on_base()

    def _on_base(self, _: Any = None) -> None:
        """Steps, guidance and negative prompt at the family's preset sample settings, when the
        base's family changes (FLUX.1 [dev]: 50 steps at 3.5, Z-Image Turbo: 8 without guidance)."""
        base = self.base.value.strip()
        try:
            family = detect_family(base) if base else None
        except LoraLabError:  # a path half typed: the form stays as it is
            return
        if family is None or family == self._family:
            return
        self._family = family
        defaults = sample_defaults(base, family)
        self.steps.value, self.guidance.value = defaults.steps, defaults.guidance
        self.negative.value = defaults.negative

    @reporting
    def _on_refresh(self, _: Any = None) -> None:
        chosen = self.loras.value
        choices = lora_choices(self.ws)
        known = {value for _, value in choices}
        self.loras.options = choices + [(v, v) for v in chosen if v not in known]
        self.loras.value = chosen

    # ------------------------------------------------------------ render

    def _form(self) -> dict[str, Any]:
        """The grid's arguments as the form holds them; a LoraLabError for one that does not read."""
        def numbers(text: str, kind: type, what: str) -> list:
            try:
                return [kind(part) for part in text.replace(",", " ").split()]
            except ValueError:
                raise LoraLabError(f"{what}: numbers separated by commas, not {text!r}") from None
        size = self.size.value.strip().lower()
        width = height = None
        if size:
            w, x, h = size.partition("x")
            if not (x and w.strip().isdigit() and h.strip().isdigit()):
                raise LoraLabError(f"size is WIDTHxHEIGHT, like 512x768, not {self.size.value!r}")
            width, height = int(w), int(h)
        if not self.base.value.strip():
            raise LoraLabError("choose a base model first")
        return {"loras": list(self.loras.value), "prompts": self.prompts.value.splitlines(),
                "strengths": numbers(self.strengths.value, float, "strengths"),
                "seeds": numbers(self.seeds.value, int, "seeds"), "steps": self.steps.value,
                "guidance": self.guidance.value, "width": width, "height": height,
                "negative": self.negative.value}

    @reporting
    def _on_render(self, _: Any = None) -> None:
        if self.thread is not None and self.thread.is_alive():
            raise LoraLabError("a grid is being rendered; wait for it")
        form = self._form()
        base = self.base.value.strip()
        if self.tryout is None or self.tryout.base != base:
            if self.tryout is not None:
                self.tryout.close()
            self.tryout = Tryout(base, self.ws)
        self.render_button.disabled = True
        self.notice.show("rendering...", "info")
        if not self.autostart:
            self._run(form)
            return
        self.thread = threading.Thread(target=self._run, args=(form,), name="lora-lab tryout", daemon=True)
        self.thread.start()

    def _run(self, form: dict[str, Any]) -> None:
        try:
            self._render(form)
        finally:
            self.render_button.disabled = False

    @reporting
    def _render(self, form: dict[str, Any]) -> None:
        tryout = self.tryout
        loaded, rendered, start = tryout.loaded, tryout.renders, time.monotonic()
        try:
            grid = tryout.grid(**form, progress=self._progress)
        finally:  # even a grid that failed half-way may have loaded the pipeline
            if tryout.loaded and not loaded:  # a training run already going is no reason to let go
                self._starts = TrainStarts(self.ws)
                if self.autostart:
                    self.watch.start()
        buf = io.BytesIO()
        grid.image.save(buf, "PNG")
        self.grid, self.image.value = grid, buf.getvalue()
        self.save_button.disabled = False
        if not self.out.value:
            self.out.value = f"exports/tryout-{time.strftime('%Y%m%d-%H%M%S')}.png"
        self.notice.show(f"{len(grid.rows)} x {len(grid.columns)} grid: {tryout.renders - rendered} image(s) "
                         f"rendered, {grid.hits} from the cache ({time.monotonic() - start:.1f} s)", "ok")

    def _progress(self, done: int, total: int) -> None:
        self.notice.show(f"rendering... {done}/{total}", "info")

    # ------------------------------------------------------------ save

    @reporting
    def _on_save(self, _: Any = None) -> None:
        if self.grid is None:
            raise LoraLabError("render a grid first")
        name = self.out.value.strip()
        if not name.lower().endswith(".png"):
            raise LoraLabError(f"save the grid as a .png file, not {name!r}")
        path = self.ws.resolve(name)
        taken = [p for p in (path, path.with_suffix(".json")) if p.exists()]
        if taken:
            raise LoraLabError(f"{taken[0]} already exists: choose a new name (nothing is overwritten)")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.grid.save(path)
        self.notice.show(f"saved the grid as {path} and its inputs as {path.with_suffix('.json').name}", "ok")

    # ------------------------------------------------------------ memory

    def make_way(self) -> bool:
        """Let the pipeline go if a training job started since the last look (a grid under way
        finishes first); whether it is still loaded, to be looked after."""
        if self.tryout is None or not self.tryout.loaded or self._starts is None:
            return False
        started = self._starts.poll()
        if not started:
            return True
        self.tryout.close()
        self.notice.show(f"training job {started[0]} started: the tryout pipeline let go of its memory "
                         "for it and loads again on the next Render", "info")
        return False

    def close(self) -> None:
        self.watch.stop()
        if self.tryout is not None:
            self.tryout.close()
        super().close()
