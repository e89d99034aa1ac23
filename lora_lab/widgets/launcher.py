"""TrainingLauncher: a form over the main TrainConfig fields, with presets, a live step count,
validation messages beside the fields, "Save TOML" and "Train" (a background job, then a
TrainingMonitor on it). Nothing is submitted while a field is invalid."""
from __future__ import annotations

import dataclasses
import html
from pathlib import Path
from typing import Any, get_args, get_type_hints

import ipywidgets as widgets

from ..datasets.dataset import list_datasets
from ..errors import LoraLabError
from ..jobdir import JobRecord
from ..jobs import submit
from ..training.config import ConfigError, TrainConfig, check_optimizer
from ..training.data import ImageSize, measure_images, steps_for
from ..training.presets import PRESETS, apply_preset
from ..workspace import Workspace
from .common import COLORS, Notice, reporting, workspace_of
from .monitor import TrainingMonitor

_SECTIONS = get_type_hints(TrainConfig)
LABEL = {"description_width": "150px"}


def _choices(dotted: str) -> tuple[Any, ...]:
    table, key = dotted.split(".")
    return get_args(get_type_hints(_SECTIONS[table])[key])


# (dotted key, label, widget); the form shows these, the preset supplies the rest
FIELDS: list[tuple[str, str, type]] = [
    ("model.base", "Base model", widgets.Text),
    ("dataset.source", "Dataset", widgets.Combobox),
    ("dataset.trigger", "Trigger word", widgets.Text),
    ("dataset.resolution", "Resolution", widgets.IntText),
    ("dataset.repeats", "Repeats", widgets.IntText),
    ("train.epochs", "Epochs", widgets.IntText),
    ("train.max_steps", "Max steps (0 = epochs)", widgets.IntText),
    ("train.batch_size", "Batch size", widgets.IntText),
    ("train.grad_accum", "Gradient accumulation", widgets.IntText),
    ("train.lr", "Learning rate", widgets.FloatText),
    ("network.rank", "Rank", widgets.IntText),
    ("network.alpha", "Alpha (0 = rank)", widgets.FloatText),
    ("train.optimizer", "Optimizer", widgets.Dropdown),
    ("train.mixed_precision", "Precision", widgets.Dropdown),
    ("train.gradient_checkpointing", "Gradient checkpointing", widgets.Checkbox),
    ("save.name", "Save name", widgets.Text),
    ("save.every_n_steps", "Save every N steps", widgets.IntText),
    ("sample.prompts", "Sample prompts (one a line)", widgets.Textarea),
    ("sample.every_n_steps", "Sample every N steps", widgets.IntText),
]


class TrainingLauncher(widgets.VBox):
    """``TrainingLauncher("mydata", base="models/sd15")``: fill in, check, train.

    ``.config()`` is the valid TrainConfig (or raises ConfigError); after "Train", ``.job`` is the
    submitted job and ``.monitor`` follows it (its poller off with ``autostart=False``).
    """

    def __init__(self, dataset: str | None = None, base: str | None = None, preset: str = "sd15",
                 workspace: Workspace | str | None = None, autostart: bool = True):
        super().__init__()
        self.add_class("lora-lab-launcher")
        self.monitor: TrainingMonitor | None = None  # first: close() needs it if the rest fails
        self.ws = workspace_of(workspace)
        self.autostart = autostart
        self.notice = Notice()
        self.job: JobRecord | None = None
        self.problems: dict[str, str] = {}  # dotted key -> its message (or "" for the form)
        self.steps: int | None = None
        self._sizes: dict[str, list[ImageSize] | str] = {}  # source -> its images' sizes, or a problem
        self._loading = False
        self._build(preset)
        self._load(_defaults())
        self._load({"model": {"base": base or ""}, "dataset": {"source": dataset or ""}})
        self._apply_preset(preset)

    # -- building --------------------------------------------------------------------------------
    def _build(self, preset: str) -> None:
        if preset not in PRESETS:
            raise LoraLabError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
        self.preset = widgets.Dropdown(description="Preset", style=LABEL,
                                       options=[(p.label, p.name) for p in PRESETS.values()],
                                       value=preset)
        self.preset_note = widgets.HTML()
        self.preset.observe(lambda change: self._apply_preset(change["new"]), "value")
        self.fields: dict[str, widgets.ValueWidget] = {}
        self.messages: dict[str, widgets.HTML] = {}
        rows = [widgets.HBox([self.preset, self.preset_note])]
        for dotted, label, kind in FIELDS:
            self.fields[dotted] = _field(dotted, label, kind, self.ws)
            self.messages[dotted] = widgets.HTML()
            self.fields[dotted].observe(self._on_change, "value")
            rows.append(widgets.HBox([self.fields[dotted], self.messages[dotted]]))
        self.plan = widgets.HTML()
        self.toml_path = widgets.Text(description="TOML file", style=LABEL,
                                      placeholder="SAVE_NAME.toml, in the current folder")
        self.save_button = widgets.Button(description="Save TOML", icon="save")
        self.train_button = widgets.Button(description="Train", icon="play", button_style="primary")
        # data-parallel processes (accelerate launch), as `lora-lab train --gpus N`
        self.gpus = widgets.IntText(value=1, description="GPUs", style={"description_width": "40px"},
                                    layout={"width": "110px"})
        self.gpus.observe(self._on_change, "value")  # the step count divides by it
        self.save_button.on_click(self._on_save)
        self.train_button.on_click(self._on_train)
        self.monitor_box = widgets.VBox()
        self.children = [*rows, self.plan, widgets.HBox([self.toml_path, self.save_button]),
                         widgets.HBox([self.train_button, self.gpus]), self.notice, self.monitor_box]

    def _load(self, config: dict[str, Any]) -> None:
        """Set the fields that ``config`` (TrainConfig data) names, then check the form once."""
        self._loading = True
        try:
            for table, values in config.items():
                for key, value in values.items():
                    widget = self.fields.get(f"{table}.{key}")
                    if widget is not None:
                        widget.value = "\n".join(value) if isinstance(widget, widgets.Textarea) \
                            else value
        finally:
            self._loading = False
        self.check()

    @reporting
    def _apply_preset(self, name: str) -> None:
        self.preset_note.value = f"<i>{html.escape(PRESETS[name].description)}</i>"
        self._load(PRESETS[name].overrides)

    def _on_change(self, _: Any) -> None:
        if not self._loading:
            self.check()

    # -- checking --------------------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        """The config data the form describes: the preset's settings under the fields' values."""
        d = apply_preset(self.preset.value, {})
        for dotted, widget in self.fields.items():
            table, key = dotted.split(".")
            value = widget.value
            if isinstance(widget, widgets.Textarea):
                value = [line.strip() for line in value.splitlines() if line.strip()]
            d.setdefault(table, {})[key] = value.strip() if isinstance(value, str) else value
        return d

    def config(self) -> TrainConfig:
        """The form as a valid TrainConfig; ConfigError (every problem) when it is not one."""
        return TrainConfig.from_dict(self.values())

    def check(self) -> bool:
        """Validate the form, show each problem beside its field and the step count; valid?"""
        self.problems = {}
        try:
            cfg = self.config()
        except ConfigError as e:
            cfg = None
            for line in e.problems:
                key, _, message = line.partition(": ")
                if key in self.fields:
                    self.problems.setdefault(key, message)
                else:
                    self.problems[""] = "\n".join(filter(None, [self.problems.get(""), line]))
        source = self.fields["dataset.source"].value.strip()
        if source and "dataset.source" not in self.problems:
            self._check_source(source)
        try:  # a low-VRAM preset's 8-bit AdamW needs bitsandbytes: say so now, not at step 0
            check_optimizer(self.fields["train.optimizer"].value)
        except LoraLabError as e:
            self.problems["train.optimizer"] = str(e).partition(": ")[2]
        self._show_problems()
        self._show_plan(cfg)
        self.train_button.disabled = bool(self.problems)
        return not self.problems

    def _check_source(self, source: str) -> None:
        if source not in self._sizes:
            try:
                self._sizes[source] = measure_images(source, self.ws)
            except LoraLabError as e:
                self._sizes[source] = str(e)
        sizes = self._sizes[source]
        if isinstance(sizes, str):
            self.problems["dataset.source"] = sizes
        elif not sizes:
            self.problems["dataset.source"] = f"{source!r} has no images"

    def _show_problems(self) -> None:
        for dotted, label in self.messages.items():
            message = self.problems.get(dotted, "")
            label.value = (f'<span class="lora-lab-field-error" style="color:{COLORS["error"]}">'
                           f"{html.escape(message)}</span>" if message else "")
        if self.problems.get(""):
            self.notice.show(self.problems[""], "error")
        elif self.notice.kind == "error":
            self.notice.clear()

    def _show_plan(self, cfg: TrainConfig | None) -> None:
        """The steps the trainer will run, counted as it counts them (aspect-ratio buckets)."""
        sizes = self._sizes.get(self.fields["dataset.source"].value.strip())
        self.steps = None
        if cfg is None or not isinstance(sizes, list) or not sizes:
            self.plan.value = "<i>steps: fill in a valid form and an existing dataset</i>"
            return
        try:
            plan = steps_for(cfg, sizes, world=self.gpus.value)
        except LoraLabError as e:  # e.g. a resolution the family's default buckets cannot hold
            self.plan.value = f"<i>steps: {html.escape(str(e))}</i>"
            return
        self.steps = plan.total_steps
        self.plan.value = f"<b>{self.steps} steps</b>: {html.escape(plan.explain())}"

    # -- buttons ---------------------------------------------------------------------------------
    def _valid_config(self) -> TrainConfig:
        self._sizes.clear()  # measure the images again: the folder may have changed since
        if not self.check():
            raise LoraLabError("fix the fields marked in red first; nothing was saved or started")
        return self.config()

    @reporting
    def _on_save(self, _: Any = None) -> None:
        cfg = self._valid_config()
        stem = cfg.save.name or Path(cfg.dataset.source).name
        path = Path(self.toml_path.value.strip() or f"{stem}.toml").expanduser()
        written = cfg.write(path)
        self.notice.show(f"saved {written.resolve()}", "ok")

    @reporting
    def _on_train(self, _: Any = None) -> None:
        cfg = self._valid_config()
        self.job = submit("train", {"config": cfg.to_dict(), "gpus": self.gpus.value}, self.ws)
        if self.monitor is not None:
            self.monitor.close()
        self.monitor = TrainingMonitor(self.job, self.ws, autostart=self.autostart)
        self.monitor_box.children = [self.monitor]
        self.notice.show(f"submitted job {self.job.id}", "ok")

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
        super().close()


def _field(dotted: str, label: str, kind: type, ws: Workspace) -> widgets.ValueWidget:
    common: dict[str, Any] = {"description": label, "style": LABEL, "layout": {"width": "420px"}}
    if kind is widgets.Dropdown:
        return kind(options=list(_choices(dotted)), **common)
    if kind is widgets.Combobox:  # the workspace's datasets, or any folder typed in
        names = [d["name"] for d in list_datasets(ws)]
        return kind(options=names, placeholder="a dataset name or a folder", ensure_option=False,
                    **common)
    if kind is widgets.Checkbox:
        return kind(indent=True, **common)
    if kind is widgets.Textarea:
        return kind(rows=3, **common)
    if dotted == "model.base":
        common["placeholder"] = "a diffusers folder, a .safetensors file or a Hub id"
    if dotted == "save.name":
        common["placeholder"] = "empty: the dataset's name and the job's date and time"
    return kind(**common)


def _defaults() -> dict[str, dict[str, Any]]:
    """TrainConfig's defaults, for the fields that have one."""
    return {name: {f.name: _plain(f.default) for f in dataclasses.fields(cls)
                   if f.default is not dataclasses.MISSING}
            for name, cls in _SECTIONS.items()}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
