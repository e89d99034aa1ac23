"""What a training job is checked for before it exists, so that a run bound to fail is refused
with the reason instead of failing a second after it started and leaving a record behind:

- the config is valid (every field, and between fields once the model's family is known);
- the base model (and model.vae / model.config) exists and is of a family lora_lab trains;
  a Hub id must be reachable, or cached when the Hub is offline here;
- the packages the optimizer, model.quantize and the trackers asked for ([track]) need are
  installed;
- train.device = "cuda" has a GPU to run on (one the driver shows to this process);
- the dataset exists and has images, and its captions or the trigger word are enough
  (:func:`check_captions` states the rule);
- [validation] leaves images to train on, names images the dataset has, and its second
  dataset (validation.source) is as usable as dataset.source;
- save.name is no other run's: no file ``NAME.safetensors`` or ``NAME-000500.safetensors``
  (an intermediate save) of another job in the output folder, and no queued or running job
  that will write them.

Each check reads only small files (an index, model_index.json, a safetensors header, caption
sidecars, a folder's image headers): no image is decoded and no weight loaded, so the launcher
runs them whenever a field changes (bench/bench_preflight.py measures them).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_type_hints

from ..devices import gpu_ids
from ..errors import Conflict, LoraLabError
from ..jobdir import ACTIVE, JobRecord, list_jobs
from ..workspace import Workspace
from .base_model import check_transformer_file, detect_family, is_hub_id, local_models
from .config import ConfigError, TrainConfig, check_package
from .data import (
    SourceCaptions,
    held_out_count,
    is_dataset_name,
    measure_images,
    source_captions,
    source_files,
)
from .loras import run_files, written_by

_DEFAULTS = {f"{table}.{f.name}": None if f.default is dataclasses.MISSING else f.default
             for table, section in get_type_hints(TrainConfig).items()
             for f in dataclasses.fields(section)}


def check_train(data: Any, workspace: Workspace, folder: Path, local: bool = True) -> TrainConfig:
    """``data`` (TrainConfig data, its paths made absolute against ``folder``) as the config a
    job may start from. Otherwise every problem at once, each line starting with its dotted
    field: a ConfigError, or the one problem alone as it was raised (a taken name: Conflict)."""
    problems: list[LoraLabError] = []
    try:
        config: TrainConfig | None = TrainConfig.from_dict(data)
    except ConfigError as e:
        config = None
        problems.append(e)
    value = _usable(data, _lines(problems))

    def run(keys: tuple[str, ...], check: Callable[..., Any]) -> Any:
        """``check`` on the fields ``keys``, when each is valid on its own."""
        values = [value(k) for k in keys]
        if any(v is None for v in values):
            return None
        try:
            return check(*values)
        except LoraLabError as e:
            problems.append(e)
            return None

    family = run(("model.base",), lambda base: check_base_model(base, workspace, folder))
    for key in ("model.vae", "model.config"):
        run((key,), lambda ref, key=key: check_model_part(key, ref, workspace, folder))
    if family:
        run(("model.base", "model.config"), lambda base, ref: check_transformer_file(base, ref, family))
    run(("model.adapter",), lambda ref: check_adapter(ref, family))
    for key in ("train.optimizer", "model.quantize", "track.mlflow", "track.wandb"):
        run((key,), lambda value, key=key: check_package(key, value))
    if local:  # a cluster's job gets a GPU node from the cluster when it asks for one
        run(("train.device",), check_device)
    run(("dataset.source", "dataset.caption_extension", "dataset.trigger"),
        lambda source, ext, trigger: check_source(source, ext, trigger, workspace))
    run(("dataset.source", "validation.split", "validation.images"),
        lambda source, split, names: check_held_out(source, split, names, workspace))
    run(("validation.source", "dataset.caption_extension", "dataset.trigger"),
        lambda source, ext, trigger: check_validation_source(source, ext, trigger, workspace))
    run(("save.name", "save.output_dir"),
        lambda name, out: check_output_name(name, out, workspace))
    if config is not None and family:  # model.family against the model, buckets at its sizes
        run((), lambda: config.resolved(family))
    if not problems:
        assert config is not None
        return config
    if len(problems) == 1:
        raise problems[0]
    raise ConfigError(_lines(problems))


def _lines(problems: list[LoraLabError]) -> list[str]:
    return [line for e in problems for line in getattr(e, "problems", None) or [str(e)]]


def _usable(data: Any, lines: list[str]) -> Callable[[str], Any]:
    """A field's value (its default when left out) where it is valid on its own, else None."""
    bad = {line.partition(": ")[0] for line in lines}

    def value(dotted: str) -> Any:
        table, key = dotted.split(".")
        section = data.get(table, {}) if isinstance(data, dict) else None
        if not isinstance(section, dict) or dotted in bad or table in bad:
            return None
        return section.get(key, _DEFAULTS[dotted])
    return value


# -- the base model ---------------------------------------------------------------------------------
def check_base_model(base: str, workspace: Workspace, folder: Path) -> str:
    """model.base's family. One that leads to no model says so, naming the models the
    workspace's models/ holds."""
    try:
        if is_hub_id(base):
            _check_hub_ref("model.base", base, (folder, workspace.root), "model_index.json")
        return detect_family(base)
    except LoraLabError as e:
        raise LoraLabError(f"{e}{models_hint(workspace)}") from None


def check_model_part(key: str, ref: str, workspace: Workspace, folder: Path) -> None:
    """model.vae / model.config: empty, an existing path, or a reachable Hub id."""
    if not ref or Path(ref).expanduser().exists():
        return
    if not is_hub_id(ref):
        raise LoraLabError(f"{key}: {ref} does not exist")
    _check_hub_ref(key, ref, (folder, workspace.root),
                   "config.json" if key == "model.vae" else "model_index.json")


def check_adapter(ref: str, family: str | None) -> None:
    """model.adapter: empty, or a LoRA file of the base model's family."""
    if not ref:
        return
    from .lora_file import describe_lora

    try:
        described = describe_lora(Path(ref).expanduser())
    except LoraLabError as e:  # missing, unreadable, or no LoRA
        raise LoraLabError(f"model.adapter: {e}") from None
    if family and described["family"] not in (family, "unknown"):
        raise LoraLabError(f"model.adapter: {Path(ref).name} is a {described['family']} LoRA; "
                           f"the base model is {family}")


def _check_hub_ref(key: str, ref: str, folders: tuple[Path, ...], probe: str) -> None:
    """A Hub id (org/name) is taken at its word, unless it is a mistyped path (its "org" is a
    folder here, such as the workspace's models/) or the Hub is offline and the model is not
    cached."""
    org = ref.split("/")[0]
    for folder in folders:
        if (folder / org).is_dir():
            raise LoraLabError(f"{key}: {folder / ref} does not exist")
    if _hub_offline() and not _cached(ref, probe):
        raise LoraLabError(f"{key}: {ref!r} reads as a Hugging Face Hub id, but the Hub is offline "
                           "here (HF_HUB_OFFLINE) and it is not in the local cache; name a local "
                           "model instead")


def _hub_offline() -> bool:
    """As huggingface_hub reads it when the job's process starts."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _cached(repo: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo, filename), str)
    except ValueError:  # not a valid repo id after all
        return False


def models_hint(workspace: Workspace) -> str:
    """What a message about a base model adds: the models the workspace's models/ holds."""
    found = local_models(workspace.models)
    if not found:
        return (f"; {workspace.models} holds no base model (put a diffusers folder or a "
                ".safetensors checkpoint there)")
    shown = ", ".join(f"{path.relative_to(workspace.models)} ({family})" for path, family in found[:8])
    more = f" and {len(found) - 8} more" if len(found) > 8 else ""
    return f"; models in {workspace.models}: {shown}{more}"


def check_device(device: str) -> None:
    """train.device = "cuda" needs a GPU this process may use, read without torch (the server
    runs this check); whether torch can use it, the trainer checks when the run starts."""
    if device == "cuda" and not gpu_ids():
        raise LoraLabError('train.device: "cuda", but this machine shows no GPU (no NVIDIA driver, '
                           'or CUDA_VISIBLE_DEVICES hides them); set it to "auto" to train on the '
                           "CPU, or train on a GPU box (`lora-lab doctor` says what this one has)")


# -- the dataset ------------------------------------------------------------------------------------
def check_source(source: str, caption_extension: str, trigger: str, workspace: Workspace) -> None:
    """The dataset or folder exists, has images that open, and captions enough for them."""
    captions = source_captions(source, caption_extension, workspace)
    check_captions(captions, trigger)
    if captions.dataset is None:  # a dataset's index holds only images that open
        try:
            measure_images(source, workspace)  # their headers: a file that is no image fails
        except LoraLabError as e:
            raise LoraLabError(f"dataset.source: {e}; remove or replace that file") from None


def check_held_out(source: str, split: float, names: tuple[str, ...], workspace: Workspace) -> None:
    """validation.split / validation.images hold out images the source has, and leave at
    least one to train on."""
    if not (split or names):
        return
    try:
        files = source_files(source, workspace)
    except (LoraLabError, OSError):
        return  # dataset.source's own check says what is wrong with it
    where = f"dataset {source!r}" if is_dataset_name(source) else f"folder {source}"
    if names:
        key, known = "validation.images", set(files) | {f.rpartition("/")[2] for f in files}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise LoraLabError(f"{key}: {', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''} "
                               f"{'is' if len(unknown) == 1 else 'are'} not in {where}; name its "
                               "image files (e.g. " + ", ".join(files[:2]) + ")")
        held = sum(1 for f in files if f in names or f.rpartition("/")[2] in names)
    else:
        key, held = "validation.split", held_out_count(split, len(files))
    if files and held >= len(files):
        raise LoraLabError(f"{key}: holding out {held} of the {len(files)} images in {where} leaves "
                           "no training images; hold out fewer, add images, or validate on a "
                           "second dataset (validation.source)")


def check_validation_source(source: str, caption_extension: str, trigger: str,
                            workspace: Workspace) -> None:
    """validation.source: empty, or a dataset or folder as usable as dataset.source."""
    if not source:
        return
    try:
        check_source(source, caption_extension, trigger, workspace)
    except LoraLabError as e:
        raise type(e)("validation.source: " + str(e).removeprefix("dataset.source: ")) from None


def check_captions(source: SourceCaptions, trigger: str) -> None:
    """The rule: a source needs images, and each image needs something to be trained on.

    An image trains on its caption with the trigger word put first, or on the trigger word
    alone when it has no caption (the classic kohya "instance token" run: captions optional).
    Without a trigger word an uncaptioned image would train on an empty caption, teaching the
    LoRA's look to the unconditional prediction, which leaks into every prompt: so with no
    trigger word set, every image must have a caption (a non-empty one)."""
    if not source.images:
        raise LoraLabError(f"dataset.source: {source.where} has no images; {_add_images(source)}")
    missing = source.uncaptioned
    if missing and not trigger:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise LoraLabError(
            f"dataset.trigger: {len(missing)} of {source.images} images have no caption "
            f"(e.g. {shown}) in {source.where}, and no trigger word is set; "
            f"{_caption_them(source)}, or set dataset.trigger so that they train on the "
            "trigger word alone")


def _add_images(source: SourceCaptions) -> str:
    if source.dataset:
        return (f"add some with `lora-lab dataset ingest FOLDER_OR_ZIP --name {source.dataset} "
                "--add` or the captioning panel's upload")
    return "copy images (.jpg, .png, .webp, .bmp) into it, or into kohya N_name subfolders"


def _caption_them(source: SourceCaptions) -> str:
    if source.dataset:
        return f"caption them (`lora-lab caption {source.dataset}`, or the captioning panel)"
    if source.other_sidecars:
        return (f"their captions seem to be the {', '.join(source.other_sidecars)} files beside "
                f"them: set dataset.caption_extension to {source.other_sidecars[0]!r}")
    return "write a caption file beside each (same name, dataset.caption_extension)"


# -- the output name --------------------------------------------------------------------------------
def check_output_name(name: str, output_dir: str, workspace: Workspace) -> None:
    """save.name must be no other run's: a later run never replaces an earlier one's LoRA
    files, final or intermediate. An empty name is always free: the default name carries the
    new job's own date and time."""
    if not name:
        return
    out_dir = Path(output_dir).expanduser() if output_dir else workspace.loras
    taken = run_files(out_dir, name)
    if taken:
        raise Conflict(f"save.name: {name!r} is taken: {taken[0]} "
                       f"{_holder(written_by(taken[0]), workspace)}")
    for job in list_jobs(workspace):
        if _will_write(job, out_dir, name, workspace.loras):
            raise Conflict(f"save.name: {name!r} is taken: job {job.id} ({job.view()['state']}) "
                           f"will write {out_dir / name}.safetensors; choose another save.name, "
                           f"or cancel that job (`lora-lab jobs cancel {job.id}`)")


def _holder(job_id: str | None, workspace: Workspace) -> str:
    """Who holds a taken file, and how to free it."""
    other = "choose another save.name, or "
    if job_id is None:
        return f"exists (not written by a lora_lab job); {other}move or delete that file"
    holder = JobRecord(workspace.jobs / job_id)
    if not (holder.path / "status.json").is_file():
        return f"is the LoRA of job {job_id}, since deleted; {other}move or delete that file"
    try:
        still = holder.view()["state"]
    except (OSError, ValueError, KeyError):  # a job folder damaged by hand: it has ended
        still = "damaged"
    if still in ACTIVE:
        return (f"is the LoRA of job {job_id}, still {still}; {other}cancel that job, then "
                f"delete it with its LoRA (`lora-lab jobs rm {job_id} --lora remove`)")
    return (f"is the LoRA of job {job_id}; {other}delete that job with its LoRA "
            f"(`lora-lab jobs rm {job_id} --lora remove`)")


def _will_write(job: JobRecord, out_dir: Path, name: str, loras: Path) -> bool:
    """Whether ``job`` is a queued or running train job whose LoRA is ``out_dir/name``."""
    try:
        if job.status()["state"] not in ACTIVE or job.view()["state"] not in ACTIVE:
            return False  # status first: most jobs have ended, and it is the cheaper read
        spec = job.spec()
        save = spec["params"]["config"]["save"] if spec["kind"] == "train" else {}
    except (OSError, ValueError, KeyError, TypeError):  # a job folder damaged by hand
        return False
    theirs = Path(save["output_dir"]).expanduser() if save.get("output_dir") else loras
    return save.get("name") == name and theirs.resolve() == out_dir.resolve()
