"""TrainingLauncher: a form over every TrainConfig field, with presets, the base models found in
the workspace's models/, sample prompts drawn from the dataset's captions, a live step count,
"Save TOML" and "Train" (a background job, then a TrainingMonitor on it).

The form runs the very check a job runs before it exists (:func:`lora_lab.jobs.check_params`)
as fields change, and shows each problem beside its field: Train stays disabled, with the
reason beside it, while anything is wrong. The common fields come first; every other one sits
in a collapsed "Advanced" section built from the config's own field metadata (type, default,
one-line doc, limits), so a field added to ``training/sections.py`` appears there by itself.
The assistant box at the top (:mod:`.suggest_box`) fills the form from a request in words.
"""
from __future__ import annotations

import dataclasses
import functools
import html
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import ipywidgets as widgets

from ..datasets.dataset import list_datasets
from ..errors import LoraLabError
from ..jobdir import JobRecord
from ..jobs import check_params, submit
from ..jobs.executors import chosen
from ..training.base_model import detect_family, local_models
from ..training.config import ConfigError, TrainConfig
from ..training.data import ImageSize, measure_images, needs_hashes, source_captions, steps_for
from ..training.presets import PRESETS, preset_config, preset_for, sample_every, sample_prompts
from ..training.sections import show_value
from ..workspace import Workspace
from .common import COLORS, Notice, reporting, run_on_choice, workspace_of
from .monitor import TrainingMonitor
from .suggest_box import SuggestBox

_SECTIONS = get_type_hints(TrainConfig)
_HINTS = {table: get_type_hints(cls) for table, cls in _SECTIONS.items()}
_FIELDS = {f"{table}.{f.name}": f for table, cls in _SECTIONS.items() for f in dataclasses.fields(cls)}
LABEL = {"description_width": "190px"}  # the longest label whole ("Sample prompts (one a line)")

# The fields shown first, with their labels; every other one is under "Advanced".
COMMON: dict[str, str] = {
    "model.base": "Base model",
    "dataset.source": "Dataset",
    "dataset.trigger": "Trigger word",
    "dataset.resolution": "Resolution",
    "dataset.repeats": "Repeats",
    "train.epochs": "Epochs",
    "train.max_steps": "Max steps (0 = epochs)",
    "train.batch_size": "Batch size",
    "train.grad_accum": "Gradient accumulation",
    "train.lr": "Learning rate",
    "network.rank": "Rank",
    "network.alpha": "Alpha (0 = rank)",
    "save.name": "Save name",
    "save.every_n_steps": "Save every N steps",
    "sample.prompts": "Sample prompts (one a line)",
    "sample.every_n_steps": "Sample every N steps",
}
# What decides whether a model fits the card, shown apart with each field's one-line doc.
MEMORY: dict[str, str] = {
    "train.mixed_precision": "Precision",
    "train.gradient_checkpointing": "Gradient checkpointing",
    "train.optimizer": "Optimizer",
    "model.quantize": "Frozen base stored in",
    "dataset.cache_text": "Text encoder outputs cached",
}
ADVANCED = [dotted for dotted in _FIELDS if dotted not in COMMON and dotted not in MEMORY]


class TrainingLauncher(widgets.VBox):
    """``TrainingLauncher("mydata", base="models/sd15")``: fill in, check, train.

    ``.config()`` is the valid TrainConfig (or raises ConfigError); ``.problems`` maps each
    field (or "" for the form) to what is wrong with it; after "Train", ``.job`` is the
    submitted job and ``.monitor`` follows it (its poller off with ``autostart=False``).
    """

    def __init__(self, dataset: str | None = None, base: str | None = None, preset: str | None = None,
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
        self.edited: set[str] = set()  # fields the user changed: presets and defaults leave them
        # (source, hashed) -> its images' sizes, or a problem; hashed: a validation.split needs them
        self._sizes: dict[tuple[str, bool], list[ImageSize] | str] = {}
        self._captions: dict[tuple[str, str], list[str]] = {}  # (source, extension) -> captions
        self._prompts_for: tuple[str, ...] | None = None  # (source, extension, trigger) of the defaults
        self._loading = False
        # no preset named: the base model's family's own, until the user picks one
        self._preset_picked = preset is not None
        preset = preset or _family_preset(base or "") or "sd15"
        self._build(preset)
        self._set({**_flat(preset_config(preset)), "model.base": base or "",
                   "dataset.source": dataset or ""})
        self.preset_note.value = f"<i>{html.escape(PRESETS[preset].description)}</i>"
        self.check()

    # -- building --------------------------------------------------------------------------------
    def _build(self, preset: str) -> None:
        if preset not in PRESETS:
            raise LoraLabError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
        self.preset = widgets.Dropdown(description="Preset", style=LABEL,
                                       options=[(p.label, p.name) for p in PRESETS.values()],
                                       value=preset)
        self.preset_note = widgets.HTML()
        self.preset_changes = widgets.HTML()
        self.preset_changes.add_class("lora-lab-preset-changes")
        self.preset.observe(self._on_preset, "value")
        self.fields: dict[str, widgets.ValueWidget] = {}
        self.messages: dict[str, widgets.HTML] = {}
        common = [self._row(dotted, label) for dotted, label in COMMON.items()]
        memory = [widgets.HTML("<b>Memory</b> (on a 24 GB card, what lets a large model fit)"),
                  *(self._row(dotted, label, explained=True) for dotted, label in MEMORY.items())]
        advanced: list[widgets.Widget] = []
        for table in _SECTIONS:
            rows = [self._row(d, _label(d)) for d in ADVANCED if d.startswith(f"{table}.")]
            advanced += [widgets.HTML(f"<b>[{table}]</b>"), *rows] if rows else []
        self.advanced = widgets.Accordion([widgets.VBox(advanced)], selected_index=None,
                                          titles=("Advanced: every other setting",))
        self.plan = widgets.HTML()
        self.toml_path = widgets.Text(description="TOML file", style=LABEL,
                                      placeholder="SAVE_NAME.toml, in the current folder")
        self.save_button = widgets.Button(description="Save TOML", icon="save")
        self.train_button = widgets.Button(description="Train", icon="play", button_style="primary")
        self.reason = widgets.HTML()  # why Train is disabled
        self.reason.add_class("lora-lab-train-reason")
        # data-parallel processes (accelerate launch), as `lora-lab train --gpus N`
        self.gpus = widgets.IntText(value=1, description="GPUs", style={"description_width": "40px"},
                                    layout={"width": "110px"})
        self.gpus.observe(lambda _: self._on_change(None), "value")  # the step count divides by it
        self.run_on = run_on_choice()  # this box or the Ray cluster, as `--executor`
        self.run_on.observe(lambda _: self._on_change(None), "value")  # checked against its devices
        self.save_button.on_click(self._on_save)
        self.train_button.on_click(self._on_train)
        self.monitor_box = widgets.VBox()
        self.assistant = SuggestBox(self.ws, lambda: (self._value("dataset.source"), self._value("model.base")),
                                    self.apply_suggestion, self.autostart)
        self.children = [self.assistant, widgets.HBox([self.preset, self.preset_note]), self.preset_changes,
                         *common, *memory, self.advanced, self.plan,
                         widgets.HBox([self.toml_path, self.save_button]),
                         widgets.HBox([self.train_button, self.gpus, self.run_on, self.reason]),
                         self.notice,
                         self.monitor_box]

    def _row(self, dotted: str, label: str, explained: bool = False) -> widgets.HBox:
        self.fields[dotted] = _field(dotted, label, self.ws)
        self.messages[dotted] = widgets.HTML()
        self.fields[dotted].observe(functools.partial(self._on_change, dotted), "value")
        doc = [widgets.HTML(f'<span class="lora-lab-field-doc" style="opacity:0.7">'
                            f'{html.escape(_FIELDS[dotted].metadata["doc"])}</span>')] if explained else []
        return widgets.HBox([self.fields[dotted], *doc, self.messages[dotted]])

    def _set(self, values: dict[str, Any]) -> None:
        """Set fields (dotted key -> TrainConfig value) as the form's own doing, not the user's."""
        self._loading = True
        try:
            for dotted, value in values.items():
                widget = self.fields[dotted]
                widget.value = "\n".join(value) if isinstance(widget, widgets.Textarea) else value
        finally:
            self._loading = False

    @reporting
    def _on_preset(self, change: dict[str, Any]) -> None:
        if not self._loading:
            self._preset_picked = True
        self._apply_preset(change["new"])

    def _follow_base(self) -> None:
        """A base model of another family than the preset's switches to that family's preset,
        unless the user picked the preset."""
        preset = _family_preset(self.fields["model.base"].value)
        if preset and not self._preset_picked and preset != self.preset.value:
            self._loading = True
            try:
                self.preset.value = preset
            finally:
                self._loading = False

    def _apply_preset(self, name: str) -> None:
        """The preset's settings, except in the fields the user edited; say what changed."""
        self.preset_note.value = f"<i>{html.escape(PRESETS[name].description)}</i>"
        changes, kept, updates = [], [], {}
        for dotted, value in _flat(PRESETS[name].overrides).items():
            old = self._value(dotted)
            if old == value:
                continue
            if dotted in self.edited:
                kept.append(f"{dotted} (the preset's: {show_value(value)})")
            else:
                changes.append(f"{dotted} {show_value(old)} → {show_value(value)}")
                updates[dotted] = value
        self._set(updates)
        label = PRESETS[name].label
        text = f"{label} changed " + ", ".join(changes) if changes else f"{label} changed nothing"
        text += f"; kept your edits: {', '.join(kept)}" if kept else ""
        self.preset_changes.value = f"<small>{html.escape(text)}</small>"
        self.check()

    def _on_change(self, dotted: str | None, _: Any = None) -> None:
        if not self._loading:
            if dotted:
                self.edited.add(dotted)
            if dotted == "model.base":
                self._follow_base()
            self.check()

    def apply_suggestion(self, suggestion: Any) -> None:
        """Fill the form with the config assistant's suggestion (lora_lab.assistant); its values
        count as edits, so a preset picked afterwards keeps them."""
        self._loading = True
        try:
            self.preset.value = suggestion.preset
        finally:
            self._loading = False
        self._set(_flat(suggestion.config.to_dict()))
        self._preset_picked = True  # the assistant picked it: a base model typed later keeps it
        self.edited = {key for key in suggestion.reasons if "." in key and not key.startswith("sample.")}
        self.preset_changes.value = "<small>the assistant filled in the form; its reasons are above</small>"
        self.check()

    # -- checking --------------------------------------------------------------------------------
    def _value(self, dotted: str) -> Any:
        value = self.fields[dotted].value
        if isinstance(self.fields[dotted], widgets.Textarea):
            return [line.strip() for line in value.splitlines() if line.strip()]
        return value.strip() if isinstance(value, str) else value

    def values(self) -> dict[str, Any]:
        """The config data the form describes (TrainConfig data)."""
        d: dict[str, dict[str, Any]] = {}
        for dotted in self.fields:
            table, key = dotted.split(".")
            d.setdefault(table, {})[key] = self._value(dotted)
        return d

    def config(self) -> TrainConfig:
        """The form as a valid TrainConfig; ConfigError (every problem) when it is not one."""
        return TrainConfig.from_dict(self.values())

    def check(self) -> bool:
        """Check the form as a job would be checked; show each problem beside its field, the
        step count, and why Train is disabled. Valid?"""
        self._default_prompts()
        plan = self._plan()
        if self._default_every() and self.steps is None:  # samples off made the form valid
            plan = self._plan()
        self.problems = {}
        try:
            check_params("train", {"config": self.values(), "gpus": self.gpus.value}, self.ws,
                         local=chosen(self.run_on.value) == "local")  # a cluster's GPUs are its own
        except LoraLabError as e:
            for line in getattr(e, "problems", None) or [str(e)]:
                key, _, message = line.partition(": ")
                if key in self.fields:
                    self.problems.setdefault(key, message)
                else:
                    self.problems[""] = "\n".join(filter(None, [self.problems.get(""), line]))
        self._show_problems()
        every = self._value("sample.every_n_steps")
        samples = f"; samples every {every} steps" if every else "; no samples"
        self.plan.value = plan if self.steps is None else f"{plan}{html.escape(samples)}"
        self.train_button.disabled = bool(self.problems)
        return not self.problems

    def _default_prompts(self) -> None:
        """Until edited: the trigger word and two of the dataset's most typical captions."""
        key = tuple(self._value(k) for k in ("dataset.source", "dataset.caption_extension",
                                             "dataset.trigger"))
        if "sample.prompts" in self.edited or key == self._prompts_for:
            return
        source, extension, trigger = self._prompts_for = key
        if source and (source, extension) not in self._captions:
            try:
                self._captions[source, extension] = source_captions(source, extension, self.ws).captions
            except LoraLabError:  # the check says what is wrong with the source
                self._captions[source, extension] = []
        self._set({"sample.prompts": sample_prompts(self._captions.get((source, extension), []),
                                                    trigger)})

    def _default_every(self) -> bool:
        """Until edited: samples about four times over the run (none without a prompt).
        Whether that changed the value."""
        prompts, old = self._value("sample.prompts"), self._value("sample.every_n_steps")
        if "sample.every_n_steps" in self.edited or not (self.steps or not prompts):
            return False
        self._set({"sample.every_n_steps": sample_every(self.steps or 0) if prompts else 0})
        return self._value("sample.every_n_steps") != old

    def _plan(self) -> str:
        """Count the steps the trainer will run, as it counts them (aspect-ratio buckets), into
        ``steps``; what the plan line says about them."""
        self.steps = None
        try:
            cfg = self.config()
        except ConfigError:
            cfg = None
        sizes = self._image_sizes(cfg.dataset.source, needs_hashes(cfg)) if cfg else None
        if cfg is None or not isinstance(sizes, list) or not sizes:
            return "<i>steps: fill in a valid form and an existing dataset</i>"
        try:
            plan = steps_for(cfg, sizes, world=self.gpus.value)
        except LoraLabError as e:  # e.g. a resolution the family's default buckets cannot hold
            return f"<i>steps: {html.escape(str(e))}</i>"
        self.steps = plan.total_steps
        return f"<b>{self.steps} steps</b>: {html.escape(plan.explain())}"

    def _image_sizes(self, source: str, hashes: bool) -> list[ImageSize] | str:
        key = (source, hashes)
        if key not in self._sizes:
            try:
                self._sizes[key] = measure_images(source, self.ws, hashes)
            except LoraLabError as e:
                self._sizes[key] = str(e)
        return self._sizes[key]

    def _show_problems(self) -> None:
        for dotted, label in self.messages.items():
            message = self.problems.get(dotted, "")
            label.value = (f'<span class="lora-lab-field-error" style="color:{COLORS["error"]}">'
                           f"{html.escape(message)}</span>" if message else "")
        if self.problems.get(""):
            self.notice.show(self.problems[""], "error")
        elif self.notice.kind == "error":
            self.notice.clear()
        if any(key in ADVANCED for key in self.problems):
            self.advanced.selected_index = 0  # a problem in there must not stay hidden
        keys = [key or "the form" for key in self.problems]
        self.reason.value = (f'<span style="color:{COLORS["error"]}">Train is off until '
                             f"{html.escape(', '.join(keys))} {'is' if len(keys) == 1 else 'are'}"
                             " fixed</span>" if keys else "")

    # -- buttons ---------------------------------------------------------------------------------
    def _valid_config(self) -> TrainConfig:
        self._sizes.clear()  # read the images again: the folder may have changed since
        self._captions.clear()
        self._prompts_for = None
        if not self.check():  # a problem of no one field (e.g. the GPUs) is said as it is
            raise LoraLabError(self.problems.get("")
                               or "fix the fields marked in red first; nothing was saved or started")
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
        self.job = submit("train", {"config": cfg.to_dict(), "gpus": self.gpus.value}, self.ws,
                          executor=self.run_on.value)  # None: the default, refused saying why
        if self.monitor is not None:
            self.monitor.close()
        self.monitor = TrainingMonitor(self.job, self.ws, autostart=self.autostart)
        self.monitor_box.children = [self.monitor]
        where = " on the Ray cluster" if self.job.status().get("executor") == "ray" else ""
        self.notice.show(f"submitted job {self.job.id}{where}", "ok")

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()
        super().close()


def _family_preset(base: str) -> str | None:
    """The default preset of ``base``'s family; None while it names no model of a known family."""
    try:
        return preset_for(detect_family(base)) if base else None
    except LoraLabError:
        return None


def _label(dotted: str) -> str:
    return dotted.split(".")[1].replace("_", " ").capitalize()


def _help(dotted: str) -> str:
    """A field's one-line doc and what it allows: its tooltip."""
    table, key = dotted.split(".")
    hint, meta = _HINTS[table][key], _FIELDS[dotted].metadata
    allowed = (", ".join(map(str, get_args(hint))) if get_origin(hint) is Literal
               else meta["rule"].bounds())
    return f"{dotted}: {meta['doc']}" + (f" [{allowed}]" if allowed else "")


def _field(dotted: str, label: str, ws: Workspace) -> widgets.ValueWidget:
    """The widget for a field, from its type: a choice, a switch, a number, text or lines."""
    table, key = dotted.split(".")
    hint = _HINTS[table][key]
    common: dict[str, Any] = {"description": label, "style": LABEL, "layout": {"width": "460px"},
                              "tooltip": _help(dotted)}
    # text is checked once typed in (Enter, or leaving the box), not at each key: the check
    # reads a folder's captions and image headers, ~0.2 ms an image
    typed = {**common, "continuous_update": False}
    if dotted == "model.base":  # the workspace's models, or any path or Hub id typed in
        return widgets.Combobox(options=[str(p) for p, _ in local_models(ws.models)],
                                ensure_option=False, **typed,
                                placeholder="a model in models/, a path or a Hub id (org/name)")
    if dotted == "dataset.source":  # the workspace's datasets, or any folder typed in
        return widgets.Combobox(options=[d["name"] for d in list_datasets(ws)], ensure_option=False,
                                placeholder="a dataset name or a folder", **typed)
    if get_origin(hint) is Literal:
        return widgets.Dropdown(options=list(get_args(hint)), **common)
    if hint is bool:
        return widgets.Checkbox(indent=True, **common)
    if hint in (int, float):
        return (widgets.IntText if hint is int else widgets.FloatText)(**typed)
    if hint == tuple[str, ...]:
        return widgets.Textarea(rows=3, **typed)
    return widgets.Text(placeholder=_FIELDS[dotted].metadata["doc"], **typed)


def _flat(config: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """TrainConfig data as dotted key -> value."""
    return {f"{table}.{key}": value for table, values in config.items() for key, value in values.items()}
