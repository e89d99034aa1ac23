"""Where a run's LoRA files go, and whose each one is.

A run named NAME writes ``NAME-000500.safetensors`` at each intermediate save (the step in six
digits, as kohya names them) and ``NAME.safetensors`` at the end, side by side in
save.output_dir. The files carry the job id that wrote them (``ss_session_id``), and a name
belongs to the run whose files hold it: when another run's file holds NAME or one of its step
names, this run's files all become ``NAME-2`` (then ``-3``...). So a later run never overwrites
an earlier one's files, and a resumed run rewrites only its own.

Light on purpose (no torch): job lists and deletions read names and owners from here.
"""
from __future__ import annotations

import contextlib
import glob
import itertools
import json
import os
import re
import struct
from pathlib import Path

SUFFIX = ".safetensors"
_STEP = re.compile(r"-[0-9]{6}")


def lora_name(save_name: str, dataset_source: str, job_id: str) -> str:
    """save.name, or by default the dataset's name and the job's date and time (to the second),
    joined by "_": a "-" and six digits at the end would read as a step (:func:`base_of`)."""
    return save_name or f"{Path(dataset_source).name}-{job_id[:15].replace('-', '_')}"


def lora_path(out_dir: Path, base: str, step: int | None) -> Path:
    """``base.safetensors`` for the final file, ``base-000500.safetensors`` for step 500's."""
    return out_dir / (f"{base}{SUFFIX}" if step is None else f"{base}-{step:06d}{SUFFIX}")


def base_of(path: Path) -> str:
    """The run name a LoRA file is named after: its stem without the step."""
    stem = path.name[:-len(SUFFIX)] if path.name.endswith(SUFFIX) else path.stem
    return stem[:-7] if _STEP.fullmatch(stem[-7:]) else stem


def run_files(out_dir: Path, base: str) -> list[Path]:
    """The LoRA files named after ``base`` in ``out_dir``: the final one and the step ones."""
    found = [Path(p) for p in glob.glob(glob.escape(str(out_dir / base)) + "*" + SUFFIX)]
    return sorted(p for p in found if _owned_by_base(p.name[len(base):-len(SUFFIX)]))


def _owned_by_base(rest: str) -> bool:
    """What follows the base in a name: nothing (the final file) or a step; ``-2`` is another base."""
    return rest == "" or _STEP.fullmatch(rest) is not None


def free_base(out_dir: Path, name: str, job_id: str) -> str:
    """The first of NAME, NAME-2, NAME-3... under which ``out_dir`` holds no other job's file."""
    for n in itertools.count(1):
        base = name if n == 1 else f"{name}-{n}"
        if all(written_by(p) == job_id for p in run_files(out_dir, base)):
            return base


def place_lora(staged: Path, out_dir: Path, name: str, step: int | None, job_id: str) -> Path:
    """Give a saved LoRA its name (see :func:`lora_path`) under this run's base name
    (:func:`free_base`): a file of this job there is replaced, one of another job never is,
    even one written by a run finishing at this very moment."""
    while True:
        target = lora_path(out_dir, free_base(out_dir, name, job_id), step)
        if written_by(target) == job_id:
            os.replace(staged, target)
            return target
        try:
            os.link(staged, target)  # fails if the name is taken, even by a run finishing now
        except FileExistsError:
            continue  # that file is another job's now: the next base
        staged.unlink()
        return target


def written_by(path: Path) -> str | None:
    """The job id a LoRA file records (``ss_session_id``), read from its header alone; None
    for a file that is missing, not safetensors, or written elsewhere."""
    with contextlib.suppress(OSError, ValueError, AttributeError, struct.error):
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100 * 2**20:  # not a safetensors header
                return None
            meta = json.loads(f.read(size)).get("__metadata__")
        session = meta.get("ss_session_id") if isinstance(meta, dict) else None
        return session if isinstance(session, str) else None
    return None
