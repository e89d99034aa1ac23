"""Merging LoRAs: several of one family into one LoRA file, or into a base model saved as a
diffusers pipeline.

Into one file, by concatenating ranks: every file is read into diffusers' module names (one
space whatever its layout, :mod:`.layouts`), then module by module the downs are stacked and the
ups set side by side, each LoRA's weight and scale (w * alpha / rank) split between its up and
down, so the merged update is exactly the weighted sum of the updates, at rank = the sum of the
ranks and alpha = that rank. With a target rank, that exact sum is then cut to it by SVD (resize's
exact low-rank SVD: the summed update of each module is never formed). The result is written in
the first file's layout with its keys (fused BFL modules fused again, their parts block-diagonal).
"""
from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lora_lab.errors import LoraLabError

from .files import LoraFile, check_output, read_file, write_file
from .layouts import Lora, module_keys
from .resize import LayerReport, alpha_text, report_names, resize_modules

_KEPT_META = ("ss_base_model_version", "ss_v2", "ss_network_module", "ss_resolution", "ss_sd_model_name")


@dataclass(frozen=True)
class MergeReport:
    path: str
    files: list[str]
    weights: list[float]
    family: str
    format: str  # the layout written: the first file's
    formats: list[str]  # each file's
    rank: int | None  # the target rank (None: concatenated, exact)
    ranks: list[int]  # the merged file's ranks
    modules: int
    layers: list[LayerReport]  # per module, with a target rank

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        how = "concatenated ranks (exact)" if self.rank is None else f"SVD to rank {self.rank}"
        mixed = len(set(self.formats)) > 1
        layout = f"{self.format}, the first file's layout" if mixed else self.format
        lines = [f"merged {len(self.files)} {self.family} LoRA(s) ({layout}) by {how}: "
                 f"{self.modules} modules, rank {'/'.join(map(str, self.ranks))} -> {self.path}"]
        lines += [f"  {w:g} x {f}" + (f" ({fmt})" if mixed else "")
                  for f, w, fmt in zip(self.files, self.weights, self.formats)]
        if self.layers:
            worst = max(self.layers, key=lambda layer: layer.error)
            lines.append(f"largest error {worst.error:.2%} ({worst.module}), mean Frobenius norm kept "
                         f"{sum(r.fro_retained for r in self.layers) / len(self.layers):.2%}")
        return "\n".join(lines)


def _weights(paths: Sequence[Path], weights: Sequence[float] | None) -> list[float]:
    if not paths:
        raise LoraLabError("name at least one LoRA file to merge")
    if weights is None:
        return [1.0] * len(paths)
    if len(weights) != len(paths):
        raise LoraLabError(f"{len(weights)} weight(s) for {len(paths)} LoRA file(s): give one --weights "
                           "value per file, in the same order")
    return [float(w) for w in weights]


def check_compatible(loras: Sequence[LoraFile]) -> None:
    """One family, no DoRA: refused before anything is written (layouts may differ)."""
    families = {lora.family for lora in loras}
    if len(families) > 1:
        raise LoraLabError("cannot merge LoRAs of different families: " + ", ".join(
            f"{lora.path.name} is {lora.family}" for lora in loras))
    for lora in loras:
        if lora.dora:
            raise LoraLabError(f"{lora.path.name} is a DoRA: its magnitudes are fitted to its own update, "
                               "so it cannot be summed with others; merge plain LoRAs")


def _factors(lora: Lora, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """down, up whose product is weight * scale * up @ down, the factor split evenly."""
    c = weight * float(lora.alpha) / lora.rank
    root = abs(c) ** 0.5
    return lora.down.float() * root, lora.up.float() * (root if c >= 0 else -root)


def concat_modules(loras: Sequence[Lora | None], weights: Sequence[float]) -> Lora:
    """One module's LoRAs (None where a file lacks it) as one whose update is the weighted sum
    of theirs (scale 1)."""
    present = [(lora, w) for lora, w in zip(loras, weights) if lora is not None]
    shapes = {(lora.up.shape[0], *lora.down.shape[1:]) for lora, _ in present}
    if len(shapes) > 1:
        raise LoraLabError(f"the LoRAs adapt a module at different sizes {sorted(shapes)}: are they of "
                           "the same base model?")
    downs, ups = zip(*(_factors(lora, weight) for lora, weight in present))
    down, up = torch.cat(downs), torch.cat(ups, dim=1)
    return Lora(down, up, torch.tensor(float(down.shape[0])))


def merged_modules(loras: Sequence[LoraFile], weights: Sequence[float]) -> dict[str, Lora]:
    """Every module of any of ``loras``, concatenated (see :func:`concat_modules`)."""
    modules = list(dict.fromkeys(m for lora in loras for m in lora.modules))
    return {m: concat_modules([lora.modules.get(m) for lora in loras], weights) for m in modules}


def _merge_metadata(loras: Sequence[LoraFile], weights: Sequence[float], modules: dict[str, Lora],
                    rank: int | None, out: Path) -> dict[str, str]:
    first = loras[0]
    meta = {k: v for k, v in first.metadata.items() if k.startswith("modelspec.") or k in _KEPT_META}
    if "modelspec.title" in meta:
        meta["modelspec.title"] = out.stem
    ranks = Counter(m.rank for m in modules.values())
    alphas = Counter(alpha_text(m.alpha) for m in modules.values())
    meta["ss_network_dim"] = str(ranks.most_common(1)[0][0]) if len(ranks) == 1 else "Dynamic"
    meta["ss_network_alpha"] = alphas.most_common(1)[0][0] if len(alphas) == 1 else "Dynamic"
    meta["ss_training_comment"] = "merged from " + ", ".join(
        f"{w:g} x {lora.path.name}" for lora, w in zip(loras, weights))
    meta["lora_lab_merge"] = json.dumps({
        "method": "concat" if rank is None else "svd", "rank": rank, "format": first.format,
        "files": [{"name": lora.path.name, "weight": w, "format": lora.format,
                   "model_hash": lora.metadata.get("sshs_model_hash"),
                   "network_dim": lora.metadata.get("ss_network_dim")} for lora, w in zip(loras, weights)],
    })
    return meta


def merge_loras(paths: Sequence[str | os.PathLike], out: str | os.PathLike,
                weights: Sequence[float] | None = None, *, rank: int | None = None) -> MergeReport:
    """Merge LoRA files of one family, in any layouts, into the new file ``out`` in the first
    file's layout (weights default to 1): by concatenated ranks (exact), or with ``rank`` by SVD
    of each summed update to it."""
    paths = [Path(p) for p in paths]
    weights = _weights(paths, weights)
    out = check_output(out, paths)
    if rank is not None and rank < 1:
        raise LoraLabError(f"--rank must be at least 1, not {rank}")
    loras = [read_file(p) for p in paths]
    check_compatible(loras)
    modules = merged_modules(loras, weights)
    first = loras[0]
    # the first file's keys, and the layout's names for modules only the others adapt
    keys = first.keys | module_keys([m for m in modules if m not in first.keys], first.format, first.family)
    layers: list[LayerReport] = []
    if rank is not None:
        total = max(m.rank for m in modules.values())
        if rank > total:
            raise LoraLabError(f"--rank {rank} is above the merged rank ({total}); without --rank the "
                               "merge is exact at that rank")
        modules, layers = resize_modules(modules, rank, names=report_names(keys))
    write_file(modules, first.format, first.family, out, _merge_metadata(loras, weights, modules, rank, out),
               first.dtype, keys)
    ranks = sorted({m.rank for m in modules.values()})
    return MergeReport(str(out), [str(p) for p in paths], weights, first.family, first.format,
                       [lora.format for lora in loras], rank, ranks, len(modules), layers)


# ---------------------------------------------------------------- into a base model

def for_base(lora: LoraFile, family: str) -> LoraFile:
    """``lora`` as read for a base of ``family``: a Chroma LoRA without sd-scripts' metadata has
    FLUX.1's keys alone, so it reads as flux; on a Chroma base it is taken as Chroma."""
    if lora.family == "flux" and family == "chroma" and "ss_base_model_version" not in lora.metadata:
        return dataclasses.replace(lora, family=family)
    return lora


def check_loadable(lora: LoraFile, base: str, family: str) -> None:
    """Refuse a LoRA that diffusers cannot apply to base ``base`` (of ``family``) as trained:
    another family's, or a DoRA in kohya's layout."""
    if lora.family != family:
        raise LoraLabError(f"{lora.path.name} is a LoRA for {lora.family}, base {base} is {family}")
    if lora.dora and lora.format != "diffusers":
        raise LoraLabError(f"{lora.path.name} is a DoRA in kohya's layout, whose dora_scale diffusers "
                           "does not apply; use it in ComfyUI, or save it with the diffusers format")


def load_adapter(pipe, path: Path, name: str, base: str) -> None:
    """Load the LoRA file ``path`` into the pipeline ``pipe`` of ``base`` as adapter ``name``."""
    try:
        pipe.load_lora_weights(str(path), adapter_name=name)
    except (ValueError, KeyError, RuntimeError, AssertionError) as e:  # diffusers asserts shapes
        raise LoraLabError(f"{path.name} does not fit base {base}: {e or type(e).__name__}") from None


def merge_into_base(paths: Sequence[str | os.PathLike], base: str, out: str | os.PathLike,
                    weights: Sequence[float] | None = None) -> dict:
    """Fuse LoRA files into the base model ``base`` (any family lora-lab trains) at ``weights``
    and save the result as a diffusers pipeline in the new folder ``out``, written beside it
    and renamed into place, so an interrupted merge leaves nothing named ``out``."""
    from lora_lab.training.base_model import detect_family, load_base_model

    paths = [Path(p) for p in paths]
    weights = _weights(paths, weights)
    out = check_output(out, paths, folder=True)
    family = detect_family(base)
    for path in paths:
        check_loadable(for_base(read_file(path), family), base, family)
    pipe = load_base_model(base, family).pipeline
    names = [f"lora{i}" for i in range(len(paths))]
    for name, path in zip(names, paths):
        load_adapter(pipe, path, name, base)
    pipe.set_adapters(names, weights)
    pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
    pipe.unload_lora_weights()
    staging = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    try:
        pipe.save_pretrained(staging)
        os.rename(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"path": str(out), "base": base, "family": family, "files": [str(p) for p in paths],
            "weights": weights}
