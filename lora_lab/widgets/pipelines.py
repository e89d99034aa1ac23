"""Headless pipelines: what the notebooks in ``notebooks/pipelines/`` do, one call per cell.

A pipeline notebook is papermill's ``parameters`` cell, then a check of those parameters (a
wrong one raises :class:`LoraLabError` in the first cell after them, so the executed notebook and
papermill's exit status both say what was wrong), then the job, then a readable record of it.
Without ``job_dir`` a pipeline records a job directory of its own, so a papermill run is a job
like any other: ``lora-lab jobs list``, the panels and the server all see it. With ``job_dir``
(the job runner's ``--notebook``) it runs that job, whose spec holds the parameters.
"""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from ..errors import LoraLabError
from ..jobdir import JobRecord
from ..jobs import check_params, run_job
from ..workspace import Workspace

if TYPE_CHECKING:
    pass

CAPTIONS_SHOWN = 24  # images in the caption record's table; the rest are in the dataset
THUMB_PX = 128


class Pipeline:
    """One job run from a notebook, and the record it leaves in that notebook."""

    kind = ""

    def __init__(self, job: JobRecord, resume: bool = False):
        self.job, self.resume = job, resume
        self.ws = job.workspace

    @property
    def params(self) -> dict[str, Any]:
        return self.job.spec()["params"]

    def run(self) -> Any:
        """Run the job in this kernel; its events and status go to its job directory."""
        return run_job(self.job.path, self.resume)

    def events(self, kind: str) -> list[dict[str, Any]]:
        """The job's events of one ``kind`` (progress, sample, done, ...)."""
        return [e for e in self.job.events() if e["type"] == kind]


class TrainPipeline(Pipeline):
    kind = "train"

    @classmethod
    def check(cls, config: str | os.PathLike | None = None, overrides: list[str] | str = (),
              workspace: str | os.PathLike | None = None, resume: bool = False,
              job_dir: str | os.PathLike | None = None) -> TrainPipeline:
        """The notebook's parameters checked, and the job to run (recorded now unless given)."""
        from ..training.config import TrainConfig

        _expect("resume", resume, (bool,), "True or False")
        _expect("workspace", workspace, (str, os.PathLike, type(None)), "a folder path or None")
        overrides = _overrides(overrides)
        if job_dir is not None:
            if config is not None or overrides:
                raise LoraLabError("parameter job_dir runs that job with its own config; leave "
                                   "config and overrides unset")
            return cls(job_of(job_dir, cls.kind), resume)  # its process checks and records the rest
        if config is None:
            raise LoraLabError("parameter config is missing: name a training config, e.g. "
                               "papermill train.ipynb out.ipynb -p config my.toml")
        _expect("config", config, (str, os.PathLike), "a path to a TOML config file")
        _no_resume_without_job(resume)
        cfg = TrainConfig.load(config)
        cfg = cfg.apply_overrides(overrides) if overrides else cfg
        ws = Workspace(workspace)
        return cls(JobRecord.create("train", check_params("train", {"config": cfg.to_dict()}, ws), ws))

    def show_config(self) -> None:
        _markdown(f"Train job `{self.job.id}` in `{self.job.path}`, with this config:\n\n"
                  f"```toml\n{tomli_w.dumps(self.params['config'])}```")

    def show_dataset(self) -> None:
        source = self.params["config"]["dataset"]["source"]
        from ..training.data import is_dataset_name

        _markdown(dataset_markdown(source, self.ws) if is_dataset_name(source)
                  else folder_markdown(source, self.params["config"], self.ws))

    def show_curves(self) -> None:
        """The loss (raw and smoothed) and learning-rate curves, as SVG."""
        from IPython.display import SVG, display

        from .chart import loss_chart_svg, lr_chart_svg

        events = self.job.events()
        display(SVG(loss_chart_svg(events)), SVG(lr_chart_svg(events)))

    def show_samples(self) -> None:
        from IPython.display import Image, display

        samples = self.events("sample")
        if not samples:
            _markdown("No sample images: set `sample.every_n_steps` and `sample.prompts` to get some.")
        for e in samples:
            _markdown(f"**step {e['step']}**: {html.escape(e['prompt'])}")
            display(Image(filename=str(self.job.path / e["path"])))

    def show_validation(self) -> None:
        """The validation loss of each validation (the best marked) and its validation images."""
        from IPython.display import Image, display

        events = {e["step"]: e for e in self.events("validation")}  # a resume's repeat replaces
        if not events:
            _markdown("No validation: set `validation.split`, `validation.images` or "
                      "`validation.source` to hold images out and score them as training goes.")
            return
        _markdown(validation_markdown(self.job.status(), list(events.values())))
        for e in events.values():
            prompts = e.get("prompts") or []
            for i, path in enumerate(e["samples"]):
                prompt = prompts[i] if i < len(prompts) else ""
                _markdown(f"**step {e['step']}** validation: {html.escape(prompt)}")
                display(Image(filename=str(self.job.path / path)))

    def show_output(self) -> None:
        _markdown(output_markdown(self.job))


class CaptionPipeline(Pipeline):
    kind = "caption"

    @classmethod
    def check(cls, workspace: str | os.PathLike | None = None, resume: bool = False,
              job_dir: str | os.PathLike | None = None, **params: Any) -> CaptionPipeline:
        """The notebook's parameters checked (those of a caption job), and the job to run."""
        _expect("resume", resume, (bool,), "True or False")
        _expect("workspace", workspace, (str, os.PathLike, type(None)), "a folder path or None")
        if job_dir is not None:
            if params.get("dataset") is not None:
                raise LoraLabError("parameter job_dir runs that job with its own parameters; "
                                   "leave dataset unset")
            return cls(job_of(job_dir, cls.kind), resume)
        _no_resume_without_job(resume)
        ws = Workspace(workspace)
        return cls(JobRecord.create("caption", check_params("caption", params, ws), ws))

    def show_params(self) -> None:
        shown = {k: v for k, v in self.params.items() if v is not None}  # TOML has no None
        _markdown(f"Caption job `{self.job.id}` in `{self.job.path}`, with these parameters:\n\n"
                  f"```toml\n{tomli_w.dumps(shown)}```")

    def show_report(self) -> None:
        from ..datasets import Dataset

        done = self.events("done")[-1]
        lines = [f"Captioned **{done['captioned']}** of {done['selected']} images in "
                 f"{done['seconds']:.1f} s with `{done['model']}` ({done['already_done']} were "
                 f"already done, {len(done['failed'])} failed).",
                 *(f"- failed `{f['file']}`: {f['error']}" for f in done["failed"]),
                 *_token_limit_markdown(done),
                 f"\nCaptions are beside the images in `{Dataset.open(done['dataset'], self.ws).path}`."]
        _markdown("\n".join(lines))

    def show_dataset(self) -> None:
        _markdown(dataset_markdown(self.params["dataset"], self.ws))

    def show_captions(self) -> None:
        from IPython.display import HTML, display

        display(HTML(captions_html(self.params["dataset"], self.params["files"], self.ws)))


def _token_limit_markdown(done: dict[str, Any]) -> list[str]:
    """What the token limit did to the batch: answers asked again, captions saved cut."""
    lines, truncated = [], done.get("truncated", [])  # absent from jobs of older versions
    if done.get("retried"):
        lines.append(f"\n{done['retried']} answer(s) hit the token limit and were asked again with "
                     "a larger one.")
    if truncated:
        lines.append(f"\n**{len(truncated)} caption(s) still hit it**: saved, but they may "
                     "end mid-sentence and are marked truncated (raise `max_tokens` and caption "
                     "them again with `mode = \"overwrite\"`, or edit them):")
        lines += [f"- truncated `{f}`" for f in truncated]
    return lines


# -- checks ----------------------------------------------------------------------------------------
def _expect(name: str, value: Any, types: tuple[type, ...], what: str) -> None:
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise LoraLabError(f"parameter {name}: {value!r} is not {what}")


def _overrides(overrides: Any) -> list[str]:
    if isinstance(overrides, str):  # papermill's -p passes one as text
        return [overrides]
    if not isinstance(overrides, (list, tuple)) or not all(isinstance(o, str) for o in overrides):
        raise LoraLabError(f"parameter overrides: {overrides!r} is not a list of "
                           "'TABLE.KEY=VALUE' strings, e.g. ['train.max_steps=500']")
    return list(overrides)


def _no_resume_without_job(resume: bool) -> None:
    if resume:
        raise LoraLabError("parameter resume continues the job in job_dir: set job_dir too "
                           "(a folder workspace/jobs/ID)")


def job_of(job_dir: str | os.PathLike, kind: str) -> JobRecord:
    """The job in ``job_dir``, which must be a ``kind`` job."""
    _expect("job_dir", job_dir, (str, os.PathLike), "a job folder path")
    job = JobRecord(Path(job_dir).expanduser().resolve())
    if not (job.path / "spec.json").is_file():
        raise LoraLabError(f"parameter job_dir: {job.path} is not a job folder (no spec.json)")
    if job.spec()["kind"] != kind:
        raise LoraLabError(f"parameter job_dir: {job.id} is a {job.spec()['kind']} job; this "
                           f"notebook runs {kind} jobs")
    return job


# -- the record ------------------------------------------------------------------------------------
def _markdown(text: str) -> None:
    """Markdown, also as plain text: papermill's log and a terminal read the same record."""
    from IPython.display import display

    display({"text/markdown": text, "text/plain": text}, raw=True)


def dataset_markdown(name: str, ws: Workspace) -> str:
    """A dataset's stats as Markdown: counts, formats, sizes, top tags."""
    from ..datasets import Dataset
    from ..datasets.stats import dataset_stats

    s = dataset_stats(Dataset.open(name, ws), top_tags=15)
    rows = [("images", s["images"]), ("captioned", s["captioned"]),
            ("uncaptioned", s["uncaptioned"]), ("near duplicates", s["near_duplicates"]),
            ("size", f"{s['bytes'] / 1e6:.1f} MB"), ("formats", _counts(s["formats"])),
            ("megapixels", _counts(s["megapixels"])),
            ("caption words", f"{s['caption_words']['min']}-{s['caption_words']['max']}, "
                              f"mean {s['caption_words']['mean']}"),
            ("top tags", _counts(s["tags"]) or "none")]
    return f"Dataset **{name}**\n\n" + _table(rows)


def folder_markdown(source: str, config: dict[str, Any], ws: Workspace) -> str:
    """What the trainer reads from a folder ``source``: images, captions, sizes."""
    from ..training.data import gather_images

    d = config["dataset"]
    images = gather_images(source, d["repeats"], d["caption_extension"], ws)
    unique = {img.path: img for img in images}.values()
    sides = [min(img.width, img.height) for img in unique]
    rows = [("images", len(unique)), ("with repeats", sum(img.repeats for img in images)),
            ("captioned", sum(1 for img in unique if img.caption)),
            ("shortest side", f"{min(sides)}-{max(sides)} px")]
    return f"Folder **{source}**\n\n" + _table(rows)


def output_markdown(job: JobRecord) -> str:
    """Where the LoRA is, and how the run went."""
    status = job.status()
    output = Path(status["output"])
    rows = [("LoRA", f"`{output}` ({output.stat().st_size / 1e6:.1f} MB)"),
            ("steps", status["steps"]), ("final loss", f"{status['loss']:.4f}"),
            ("time", f"{status['seconds']:.1f} s"), ("job", f"`{job.path}`")]
    if status.get("best_step") is not None:
        rows[3:3] = [("best validation loss", f"{status['best_val_loss']:.4f} at step {status['best_step']}"),
                     ("best LoRA", f"`{status.get('best_lora', output)}`")]
    return _table(rows)


def validation_markdown(status: dict[str, Any], events: list[dict[str, Any]]) -> str:
    """The validation losses by step, and the best step with its LoRA file."""
    rows = [(f"step {e['step']}", f"{e['loss']:.4f}" + (" (best so far)" if e["best"] else ""))
            for e in events]
    best = (f"Best validation loss **{status['best_val_loss']:.4f}** at step "
            f"**{status['best_step']}**: `{status.get('best_lora', status.get('output'))}`\n\n"
            if status.get("best_step") is not None else "")
    return best + _table(rows)


def captions_html(name: str, files: list[str] | None, ws: Workspace) -> str:
    """A table of thumbnails and their captions (the first :data:`CAPTIONS_SHOWN`)."""
    from ..datasets import Dataset
    from ..datasets.thumbs import thumbnail_path

    ds = Dataset.open(name, ws)
    files = files or [r["file"] for r in ds.index.all()]
    rows = []
    for file in files[:CAPTIONS_SHOWN]:
        thumb = base64.b64encode(thumbnail_path(ds, file, THUMB_PX).read_bytes()).decode()
        rows.append(f'<tr><td><img src="data:image/jpeg;base64,{thumb}" alt="{html.escape(file)}">'
                    f"</td><td><code>{html.escape(file)}</code><br>"
                    f"{html.escape(ds.caption(file) or '(no caption)')}</td></tr>")
    more = f"<p>and {len(files) - CAPTIONS_SHOWN} more</p>" if len(files) > CAPTIONS_SHOWN else ""
    return f"<table>{''.join(rows)}</table>{more}"


def _counts(counts: dict[str, int]) -> str:
    """``name count, ...`` with names (tags are user text) safe inside a Markdown table."""
    return ", ".join(f"{html.escape(k).replace('|', '&#124;')} {v}" for k, v in counts.items())


def _table(rows: list[tuple[str, Any]]) -> str:
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
