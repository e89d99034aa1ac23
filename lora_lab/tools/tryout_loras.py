"""The LoRAs a tryout grid compares, as checkpoints: files, a job's LoRA files, or a folder of
them, each read and hashed once, and all of the base's family, checked before anything loads.

A folder may be a running job's output: its LoRA files are staged under hidden ``.part`` names
and linked into place whole, and checkpoints are built in ``step-*.tmp`` folders, so only the
visible ``.safetensors`` files (complete by then) are taken, in step order, the final file last.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lora_lab.errors import LoraLabError
from lora_lab.jobdir.record import JobRecord, is_job_id, lora_files, open_job
from lora_lab.training.loras import SUFFIX, base_of
from lora_lab.workspace import Workspace


@dataclass(frozen=True)
class Checkpoint:
    """One LoRA file of a grid: a column (per strength) of it."""
    path: Path
    sha256: str
    family: str
    step: int | None  # from its name (NAME-000500) or its job's record; None: a final file

    @property
    def label(self) -> str:
        """What its column says: the file's name, and its step where it has one."""
        return self.path.name.removesuffix(SUFFIX)


def step_of(path: Path) -> int | None:
    """The step a LoRA file's name carries (``NAME-000500.safetensors``), None for a final file."""
    stem, base = path.name.removesuffix(SUFFIX), base_of(path)
    return int(stem[len(base) + 1:]) if stem != base else None


def folder_files(folder: Path) -> list[Path]:
    """The complete LoRA files in ``folder``, by step, the final ones last: no hidden file (a
    save staged as ``.JOB.part.safetensors``, an atomic write's temp file), no folder."""
    try:
        entries = list(os.scandir(folder))
    except OSError as e:
        raise LoraLabError(f"cannot list the LoRA folder {folder} ({e.strerror})") from None
    files = [Path(e.path) for e in entries
             if e.name.endswith(SUFFIX) and not e.name.startswith(".") and e.is_file()]
    return sorted(files, key=lambda p: (step_of(p) is None, step_of(p) or 0, p.name))


def _job_files(job: JobRecord) -> list[tuple[Path, int | None]]:
    """A job's LoRA files as it recorded them (by step, the final file last), those deleted
    since left out."""
    found = [(Path(f["path"]), f["step"]) for f in lora_files(job.status()) if not f.get("missing")]
    if not found:
        raise LoraLabError(f"job {job.id} has saved no LoRA file (yet): pick a job that has, or "
                           "name its files")
    return found


def expand(item: str | os.PathLike, ws: Workspace) -> list[tuple[Path, int | None]]:
    """(file, step) for each LoRA file ``item`` names: a file, a folder of them, or a job id;
    a bare name is looked for in the workspace's loras/ too."""
    path = Path(item).expanduser()
    if not path.exists() and not path.is_absolute() and (ws.loras / path).exists():
        path = ws.loras / path
    if path.is_file():
        return [(path, step_of(path))]
    if path.is_dir() and is_job_id(path.name) and (path / "status.json").is_file():
        return _job_files(JobRecord(path))  # a job's folder: its LoRA files
    if path.is_dir():
        files = folder_files(path)
        if not files:
            hint = (": a job's checkpoints hold its training state; name the job (its id or folder) "
                    "for its LoRA files" if any(path.glob("step-*")) else "")
            raise LoraLabError(f"{path} holds no complete .safetensors LoRA file (yet){hint}")
        return [(p, step_of(p)) for p in files]
    if is_job_id(str(item)):
        return _job_files(open_job(str(item), ws))
    raise LoraLabError(f"LoRA {item} not found: name a .safetensors file, a folder of them or a job id")


def _read(path: Path, step: int | None, base: str, family: str) -> Checkpoint:
    from .files import read_file  # torch: not for a panel that only lists files
    from .merge import check_loadable, for_base

    lora = for_base(read_file(path), family)  # refuses what is no LoRA, or of no family lora-lab knows
    if lora.family == family:
        check_loadable(lora, base, family)
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return Checkpoint(path, digest, lora.family, step)


def read_checkpoints(items: Sequence[str | os.PathLike], base: str, family: str,
                     ws: Workspace) -> list[Checkpoint]:
    """The checkpoints ``items`` name, each file once, in order; refused unless all are LoRAs
    of ``family`` (base ``base``'s) that diffusers can load."""
    if not items:
        raise LoraLabError("name at least one LoRA: a .safetensors file, a folder of them or a job id")
    named = dict(pair for item in items for pair in expand(item, ws))  # each file once, in order
    found = [_read(path, step, base, family) for path, step in named.items()]
    families: dict[str, Checkpoint] = {}
    for c in found:
        families.setdefault(c.family, c)
    if len(families) > 1:
        raise LoraLabError("cannot compare LoRAs of different families in one grid: " + ", ".join(
            f"{c.path.name} is {c.family}" for c in families.values()))
    if found[0].family != family:
        raise LoraLabError(f"{found[0].path.name} is a LoRA for {found[0].family}, base {base} is {family}")
    return found
