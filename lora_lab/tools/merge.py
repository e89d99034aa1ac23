"""Merging LoRAs: several of one family into one LoRA file, or into a base model saved as a
diffusers pipeline.

Into one file, by concatenating ranks: module by module the downs are stacked and the ups set
side by side, each LoRA's weight and scale (w * alpha / rank) split between its up and down, so
the merged update is exactly the weighted sum of the updates, at rank = the sum of the ranks and
alpha = that rank. With a target rank, that exact sum is then cut to it by SVD (resize's exact
low-rank SVD: the summed update of each module is never formed). A BFL-fused module keeps its
block-diagonal layout: each part's columns are gathered from every LoRA.
"""
from __future__ import annotations

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

from .pairs import LoraFile, Pair, check_output, read_pairs, save_pairs
from .resize import LayerReport, resize_pairs

_KEPT_META = ("ss_base_model_version", "ss_v2", "ss_network_module", "ss_resolution", "ss_sd_model_name")


@dataclass(frozen=True)
class MergeReport:
    path: str
    files: list[str]
    weights: list[float]
    family: str
    format: str
    rank: int | None  # the target rank (None: concatenated, exact)
    ranks: list[int]  # the merged file's ranks
    modules: int
    layers: list[LayerReport]  # per module, with a target rank

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        how = "concatenated ranks (exact)" if self.rank is None else f"SVD to rank {self.rank}"
        lines = [f"merged {len(self.files)} {self.family} LoRA(s) ({self.format}) by {how}: "
                 f"{self.modules} modules, rank {'/'.join(map(str, self.ranks))} -> {self.path}"]
        lines += [f"  {w:g} x {f}" for f, w in zip(self.files, self.weights)]
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
    """One family, one key layout, no DoRA: refused before anything is written."""
    first = loras[0]
    families = {lora.family for lora in loras}
    if len(families) > 1:
        raise LoraLabError("cannot merge LoRAs of different families: " + ", ".join(
            f"{lora.path.name} is {lora.family}" for lora in loras))
    for lora in loras:
        if lora.dora:
            raise LoraLabError(f"{lora.path.name} is a DoRA: its magnitudes are fitted to its own update, "
                               "so it cannot be summed with others; merge plain LoRAs")
        if (lora.format, lora.unet_names) != (first.format, first.unet_names):
            theirs = lora.format + (f", {lora.unet_names} UNet names" if lora.unet_names else "")
            mine = first.format + (f", {first.unet_names} UNet names" if first.unet_names else "")
            raise LoraLabError(f"{lora.path.name} is in another key layout ({theirs}) than {first.path.name} "
                               f"({mine}): convert first: lora-lab lora convert {lora.path.name} "
                               f"--to {first.format} --out NEW.safetensors")


def _factors(pair: Pair, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """down, up whose product is weight * scale * up @ down, the factor split evenly."""
    c = weight * pair.scale
    root = abs(c) ** 0.5
    return pair.down.float() * root, pair.up.float() * (root if c >= 0 else -root)


def concat_pairs(loras: Sequence[Sequence[Pair | None]], weights: Sequence[float]) -> Pair:
    """One module's pairs (None where a LoRA lacks it) as one Pair whose update is the weighted
    sum of theirs (scale 1). Fused pairs of the same parts keep the block-diagonal layout."""
    present = [(p, w) for p, w in zip(loras, weights) if p is not None]
    shapes = {(p.up.shape[0], *p.down.shape[1:]) for p, _ in present}
    if len(shapes) > 1:
        raise LoraLabError(f"the LoRAs adapt a module at different sizes {sorted(shapes)}: are they of "
                           "the same base model?")
    parts = {p.parts for p, _ in present}
    n = parts.pop() if len(parts) == 1 else 1
    downs, ups = [], []
    for part in range(n):  # parts == 1: one group, everything in order
        for pair, weight in present:
            down, up = _factors(pair, weight)
            width = pair.rank // (pair.parts if n > 1 else 1)
            downs.append(down[part * width:(part + 1) * width])
            ups.append(up[:, part * width:(part + 1) * width])
    down, up = torch.cat(downs), torch.cat(ups, dim=1)
    return Pair(down, up, float(down.shape[0]), n)


def merged_pairs(loras: Sequence[LoraFile], weights: Sequence[float]) -> dict[str, Pair]:
    """Every module of any of ``loras``, concatenated (see :func:`concat_pairs`)."""
    modules = list(dict.fromkeys(m for lora in loras for m in lora.pairs))
    return {m: concat_pairs([lora.pairs.get(m) for lora in loras], weights) for m in modules}


def _merge_metadata(loras: Sequence[LoraFile], weights: Sequence[float], pairs: dict[str, Pair],
                    rank: int | None, out: Path) -> dict[str, str]:
    first = loras[0]
    meta = {k: v for k, v in first.metadata.items() if k.startswith("modelspec.") or k in _KEPT_META}
    if "modelspec.title" in meta:
        meta["modelspec.title"] = out.stem
    ranks = Counter(p.rank // p.parts for p in pairs.values())
    alphas = Counter(p.alpha / p.parts for p in pairs.values())
    meta["ss_network_dim"] = str(ranks.most_common(1)[0][0]) if len(ranks) == 1 else "Dynamic"
    meta["ss_network_alpha"] = str(alphas.most_common(1)[0][0]) if len(alphas) == 1 else "Dynamic"
    meta["ss_training_comment"] = "merged from " + ", ".join(
        f"{w:g} x {lora.path.name}" for lora, w in zip(loras, weights))
    meta["lora_lab_merge"] = json.dumps({
        "method": "concat" if rank is None else "svd", "rank": rank,
        "files": [{"name": lora.path.name, "weight": w, "model_hash": lora.metadata.get("sshs_model_hash"),
                   "network_dim": lora.metadata.get("ss_network_dim")} for lora, w in zip(loras, weights)],
    })
    return meta


def merge_loras(paths: Sequence[str | os.PathLike], out: str | os.PathLike,
                weights: Sequence[float] | None = None, *, rank: int | None = None) -> MergeReport:
    """Merge LoRA files of one family and layout into the new file ``out`` (weights default to
    1): by concatenated ranks (exact), or with ``rank`` by SVD of each summed update to it."""
    paths = [Path(p) for p in paths]
    weights = _weights(paths, weights)
    out = check_output(out, paths)
    if rank is not None and rank < 1:
        raise LoraLabError(f"--rank must be at least 1, not {rank}")
    loras = [read_pairs(p) for p in paths]
    check_compatible(loras)
    pairs = merged_pairs(loras, weights)
    layers: list[LayerReport] = []
    if rank is not None:
        total = max(p.rank // p.parts for p in pairs.values())
        if rank > total:
            raise LoraLabError(f"--rank {rank} is above the merged rank ({total}); without --rank the "
                               "merge is exact at that rank")
        pairs, layers = resize_pairs(pairs, rank)
    first = loras[0]
    save_pairs(first, pairs, out, _merge_metadata(loras, weights, pairs, rank, out), first.dtype)
    ranks = sorted({p.rank // p.parts for p in pairs.values()})
    return MergeReport(str(out), [str(p) for p in paths], weights, first.family, first.format, rank, ranks,
                       len(pairs), layers)


# ---------------------------------------------------------------- into a base model

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
    loras = [read_pairs(p) for p in paths]
    for lora in loras:
        if lora.family != family:
            raise LoraLabError(f"{lora.path.name} is a LoRA for {lora.family}, base {base} is {family}")
        if lora.dora and lora.format != "diffusers":
            raise LoraLabError(f"{lora.path.name} is a DoRA in kohya's layout, whose dora_scale diffusers "
                               "does not apply; merge it in ComfyUI, or save it with the diffusers format")
    pipe = load_base_model(base, family).pipeline
    names = [f"lora{i}" for i in range(len(paths))]
    for name, path in zip(names, paths):
        try:
            pipe.load_lora_weights(str(path), adapter_name=name)
        except (ValueError, KeyError, RuntimeError, AssertionError) as e:  # diffusers asserts shapes
            raise LoraLabError(f"{path.name} does not fit base {base}: {e or type(e).__name__}") from None
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
