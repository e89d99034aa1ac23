"""Rank reduction of a LoRA by SVD, to a fixed rank or per layer by kohya's dynamic rules.

Each module's update is up @ down (scaled by alpha / rank), of rank at most the LoRA's rank r,
so its SVD comes exactly from two thin QRs and the SVD of an r x r core:
up = Qu Ru, down^T = Qd Rd, up @ down = Qu (Ru Rd^T) Qd^T. That costs O((out + in) r^2) instead of
the O(out * in * min(out, in)) of an SVD of the full update, and modules of one shape go through
in one batched call. The new LoRA is up = U S, down = V^T over the kept singular values and
keeps each module's scale (alpha = old alpha / old rank * new rank), as sd-scripts'
resize_lora.py writes it; its dynamic methods choose the rank per module the same way:

- sv_ratio X: keep the singular values above the largest / X;
- sv_fro X: keep the fewest whose squares hold X of the squared Frobenius norm;
- sv_cumulative X: keep the fewest whose sum holds X of the sum of all;

each capped at ``rank`` (at ``conv_rank`` for convolutions larger than 1x1). Modules are those of
diffusers (:mod:`.layouts`): a BFL-fused module of Flux/Chroma/FLUX.2 (q/k/v side by side, see
bfl_names) is resized part by part, each to its own rank, and fused again when written (the up
block-diagonal, its blocks as wide as the parts' new ranks).
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from lora_lab.errors import LoraLabError

from .files import LoraFile, check_output, read_file, write_file
from .layouts import Lora

Method = Literal["fixed", "sv_ratio", "sv_fro", "sv_cumulative"]
METHODS: tuple[str, ...] = ("fixed", "sv_ratio", "sv_fro", "sv_cumulative")
_IN_BLOCK = re.compile(r"^.+?\.\d+\.")  # "transformer.transformer_blocks.0." of a part
MIN_SV = 1e-6  # sd-scripts': an update this small is a zero matrix, kept at rank 1


@dataclass(frozen=True)
class LayerReport:
    """How one module was resized: its ranks, the relative Frobenius error of its update
    (||delta - resized|| / ||delta||) and the share of the norm and of the singular values kept."""
    module: str
    old_rank: int
    new_rank: int
    error: float
    fro_retained: float
    sum_retained: float


@dataclass(frozen=True)
class ResizeReport:
    path: str | None
    method: str
    param: float | None
    rank: int
    original_rank: int
    layers: list[LayerReport]

    @property
    def max_error(self) -> float:
        return max((layer.error for layer in self.layers), default=0.0)

    def to_dict(self) -> dict:
        return {**asdict(self), "max_error": self.max_error,
                "mean_fro_retained": _mean(layer.fro_retained for layer in self.layers)}

    def table(self) -> str:
        """One line per module and a summary, as the CLI prints it."""
        width = max((len(layer.module) for layer in self.layers), default=6)
        lines = [f"{'module':<{width}}  rank      error  fro kept  sum kept"]
        lines += [f"{layer.module:<{width}}  {layer.old_rank:>3}->{layer.new_rank:<3} {layer.error:>7.2%}"
                  f"  {layer.fro_retained:>8.2%}  {layer.sum_retained:>8.2%}" for layer in self.layers]
        how = self.method if self.param is None else f"{self.method} {self.param:g}"
        lines.append(f"{len(self.layers)} modules resized ({how}, rank <= {self.rank}) from rank "
                     f"{self.original_rank}: largest error {self.max_error:.2%}, mean Frobenius norm "
                     f"kept {_mean(layer.fro_retained for layer in self.layers):.2%}"
                     + (f"; written to {self.path}" if self.path else ""))
        return "\n".join(lines)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 1.0


# ---------------------------------------------------------------- the SVD of up @ down

def lora_svds(loras: Sequence[Lora]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(U, S, Vh) of each LoRA's unscaled up @ down (flattened to 2-D), exact, thin: U [out, k],
    S [k], Vh [k, in * kh * kw] with k <= rank. LoRAs of one shape are done in one batch."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, lora in enumerate(loras):
        groups[(tuple(lora.up.shape), tuple(lora.down.shape), lora.up.device)].append(i)
    out: list = [None] * len(loras)
    for indices in groups.values():
        up = torch.stack([loras[i].up.flatten(1) for i in indices]).float()
        down_t = torch.stack([loras[i].down.flatten(1) for i in indices]).float().transpose(1, 2)
        q_up, r_up = torch.linalg.qr(up)
        q_down, r_down = torch.linalg.qr(down_t)
        u, s, vh = torch.linalg.svd(r_up @ r_down.transpose(1, 2), full_matrices=False)
        u, vh = q_up @ u, vh @ q_down.transpose(1, 2)
        for j, i in enumerate(indices):
            out[i] = (u[j], s[j], vh[j])
    return out


def keep_count(s: torch.Tensor, cap: int, method: str = "fixed", param: float | None = None) -> int:
    """How many singular values (``s``, descending) a module keeps: sd-scripts' rank_resize."""
    n = len(s)
    if method == "sv_ratio":
        k = int((s > s[0] / param).sum())
    elif method == "sv_cumulative":
        k = int(torch.searchsorted(torch.cumsum(s, 0) / s.sum(), torch.tensor(param, dtype=s.dtype))) + 1
    elif method == "sv_fro":
        squares = s.pow(2)
        k = int(torch.searchsorted(torch.cumsum(squares, 0) / squares.sum(),
                                   torch.tensor(param ** 2, dtype=s.dtype))) + 1
    else:
        k = cap
    if n == 0 or float(s[0]) <= MIN_SV:
        return 1
    return max(1, min(k, n, cap))


def _truncated(lora: Lora, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, k: int) -> Lora:
    down = vh[:k].reshape(k, *lora.down.shape[1:])
    up = (u[:, :k] * s[:k]).reshape(lora.up.shape[0], k, *lora.up.shape[2:])
    return Lora(down, up, torch.tensor(float(lora.alpha) / lora.rank * k))  # the scale kept


def _report(module: str, lora: Lora, s: torch.Tensor, k: int) -> LayerReport:
    squares = s.double().pow(2)
    total, kept = float(squares.sum()), float(squares[:k].sum())
    fro = (kept / total) ** 0.5 if total > 0 else 1.0
    error = (max(total - kept, 0.0) / total) ** 0.5 if total > 0 else 0.0
    sums = float(s.double().abs().sum())
    return LayerReport(module, lora.rank, k, error, fro, float(s[:k].double().abs().sum()) / sums if sums else 1.0)


def _is_conv(lora: Lora) -> bool:
    """A convolution larger than 1x1 (--conv-rank's)."""
    return lora.down.dim() == 4 and tuple(lora.down.shape[2:]) != (1, 1)


def resize_modules(modules: Mapping[str, Lora], rank: int, *, conv_rank: int | None = None,
                   method: str = "fixed", param: float | None = None, names: Mapping[str, str] | None = None
                   ) -> tuple[dict[str, Lora], list[LayerReport]]:
    """Every module resized (see the module's doc) and a report per module, in ``modules``' order,
    each named as ``names`` says (default: the module)."""
    order = list(modules)
    svds = lora_svds([modules[m] for m in order])
    out, reports = {}, []
    for module, (u, s, vh) in zip(order, svds):
        lora = modules[module]
        cap = min((conv_rank or rank) if _is_conv(lora) else rank, lora.rank)
        k = keep_count(s, cap, method, param)
        out[module] = _truncated(lora, u, s, vh, k)
        reports.append(_report((names or {}).get(module, module), lora, s, k))
    return out, reports


def report_names(keys: Mapping[str, str]) -> dict[str, str]:
    """Each module by its key in the file (``keys``), a part of a fused BFL module as the fused
    key and the part's diffusers name in brackets: ``…img_attn.qkv[attn.to_q]``."""
    shared = Counter(keys.values())
    return {m: key if shared[key] == 1 else f"{key}[{_IN_BLOCK.sub('', m)}]" for m, key in keys.items()}


# ---------------------------------------------------------------- files

def check_resize(lora: LoraFile, rank: int, conv_rank: int | None, method: str, param: float | None) -> None:
    """Refuse what cannot be resized, before anything is written."""
    if method not in METHODS:
        raise LoraLabError(f"unknown resize method {method!r}: use one of {', '.join(METHODS)}")
    if rank < 1 or (conv_rank is not None and conv_rank < 1):
        raise LoraLabError(f"--rank must be at least 1, not {min(rank, conv_rank or rank)}")
    if method != "fixed":
        if param is None or param <= 0:
            raise LoraLabError(f"--dynamic {method} needs a positive --dynamic-param (sv_ratio: e.g. 2 "
                               "keeps singular values above max/2; sv_fro and sv_cumulative: a share, 0-1)")
        if method != "sv_ratio" and param > 1:
            raise LoraLabError(f"--dynamic-param for {method} is a share of the norm, at most 1, not {param:g}")
    elif param is not None:
        raise LoraLabError("--dynamic-param needs --dynamic sv_ratio|sv_fro|sv_cumulative")
    if lora.dora:
        raise LoraLabError(f"{lora.path.name} is a DoRA: its magnitudes are fitted to the exact update, "
                           "so a resized one would not be what was trained; resize is for plain LoRAs")
    if method == "fixed" and rank > lora.max_rank:
        raise LoraLabError(f"--rank {rank} is above the LoRA's rank ({lora.max_rank}): resize only "
                           "reduces the rank")
    convs = [m.rank for m in lora.modules.values() if _is_conv(m)]
    if method == "fixed" and conv_rank is not None and convs and conv_rank > max(convs):
        raise LoraLabError(f"--conv-rank {conv_rank} is above the LoRA's convolution rank ({max(convs)})")


def alpha_text(alpha: torch.Tensor | float) -> str:
    """An alpha as sd-scripts' metadata writes it ("1.5", "4.0"), a float32 one without its noise."""
    return str(torch.as_tensor(alpha).float().numpy())


def resize_metadata(lora: LoraFile, new: Mapping[str, Lora], reports: Sequence[LayerReport], *, rank: int,
                    conv_rank: int | None, method: str, param: float | None) -> dict[str, str]:
    """The file's metadata with the resize recorded as sd-scripts records it (ss_network_dim and
    _alpha, "Dynamic" for dynamic methods; ss_training_comment) plus ``lora_lab_resize``."""
    meta = dict(lora.metadata)
    comment = meta.get("ss_training_comment", "")
    old_dim = meta.get("ss_network_dim", str(lora.max_rank))
    if method == "fixed":
        alphas = Counter(alpha_text(m.alpha) for m in new.values())
        meta["ss_training_comment"] = f"dimension is resized from {old_dim} to {rank}; {comment}"
        meta["ss_network_dim"], meta["ss_network_alpha"] = str(rank), alphas.most_common(1)[0][0]
    else:
        meta["ss_training_comment"] = f"Dynamic resize with {method}: {param} from {old_dim}; {comment}"
        meta["ss_network_dim"] = meta["ss_network_alpha"] = "Dynamic"
    meta["lora_lab_resize"] = json.dumps({
        "method": method, "param": param, "rank": rank, "conv_rank": conv_rank,
        "original_rank": lora.max_rank, "original_network_dim": old_dim,
        "original_network_alpha": lora.metadata.get("ss_network_alpha"),
        "original_file": lora.path.name, "original_model_hash": lora.metadata.get("sshs_model_hash"),
        "new_ranks": sorted({m.rank for m in new.values()}),
        "max_error": max((r.error for r in reports), default=0.0),
        "mean_fro_retained": _mean(r.fro_retained for r in reports),
    })
    return meta


def resize_lora(path: str | os.PathLike, out: str | os.PathLike, rank: int, *, conv_rank: int | None = None,
                method: str = "fixed", param: float | None = None) -> ResizeReport:
    """Resize the LoRA file ``path`` into the new file ``out`` (same layout, dtype and
    metadata, the resize recorded in it) and report the error per module. ``rank`` is the rank
    (the cap, for a dynamic ``method``); nothing is written when the request is refused."""
    path = Path(path)
    out = check_output(out, [path])
    lora = read_file(path)
    check_resize(lora, rank, conv_rank, method, param)
    names = report_names(lora.keys or {m: m for m in lora.modules})
    new, reports = resize_modules(lora.modules, rank, conv_rank=conv_rank, method=method, param=param, names=names)
    meta = resize_metadata(lora, new, reports, rank=rank, conv_rank=conv_rank, method=method, param=param)
    write_file(new, lora.format, lora.family, out, meta, lora.dtype, lora.keys)  # the same keys
    return ResizeReport(str(out), method, param, rank, lora.max_rank, reports)
