"""Captions to text conditioning, cached on disk, so the text encoders can be freed before the loop.

A T5-XXL or a Qwen VLM is 8-16 GB that training never needs once every caption is encoded. A
cache file holds one caption's conditioning, named by a hash of the caption and of the encoders'
fingerprint: the encoding of a fixed probe sentence, which changes with the encoders' weights,
tokenizers, precision and the family's way of encoding, so a changed model misses the cache
instead of training on stale conditioning. Steps read their captions from disk, as latents are.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import atomic

if TYPE_CHECKING:
    from .families import Conditioning, Family

_PROBE = "a photo of lora_lab's text cache probe, 1girl, red hair"


class TextCache:
    """The conditioning of each caption, encoded once with ``spec``'s encoders in ``pipe``."""

    def __init__(self, spec: Family, pipe: Any, device: torch.device, cache_dir: Path):
        self.spec, self.pipe, self.device, self.cache_dir = spec, pipe, device, cache_dir
        self.fingerprint = _fingerprint(spec.name, self._encode(_PROBE))
        self.hits = self.misses = 0

    def fill(self, captions: list[str]) -> None:
        """Encode whatever of ``captions`` is not cached yet (the encoders must still be there)."""
        for caption in captions:
            path = self._path(caption)
            try:
                torch.load(path, weights_only=True)
                self.hits += 1
                continue
            except (FileNotFoundError, RuntimeError, EOFError):  # missing, or damaged
                self.misses += 1
            _save_atomic(self._encode(caption), path)

    def missing(self, captions: list[str]) -> list[str]:
        """Those of ``captions`` that have no cache file."""
        return [c for c in captions if not self._path(c).is_file()]

    def get(self, caption: str) -> Conditioning:
        """A cached caption's conditioning, on the CPU (the objective moves it)."""
        return torch.load(self._path(caption), weights_only=True)

    def _encode(self, caption: str) -> Conditioning:
        with torch.no_grad():
            cond = self.spec.encode(self.pipe, [caption], self.device)
        return tuple(_stored(part) for part in cond)

    def _path(self, caption: str) -> Path:
        name = hashlib.sha256(f"{self.fingerprint}|{caption}".encode()).hexdigest()[:32]
        return self.cache_dir / name[:2] / f"{name}.pt"


def free_text_encoders(spec: Family, pipe: Any) -> None:
    """Drop the pipeline's text encoders, releasing their memory (CPU and GPU): sampling then
    takes prompts encoded beforehand (:meth:`Family.prompt_inputs`)."""
    import gc

    for name in spec.text_encoders:
        setattr(pipe, name, None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _fingerprint(family: str, probe: Conditioning) -> str:
    h = hashlib.sha256(family.encode())
    for part in probe:
        for tensor in part if isinstance(part, list) else [part]:
            if tensor is not None:
                h.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
                h.update(tensor.float().numpy().tobytes())
    return h.hexdigest()[:16]


def _stored(part: Any) -> Any:
    """A conditioning part on the CPU, each tensor in its own storage (a caption cut from a
    padded batch would otherwise save the whole batch)."""
    if isinstance(part, list):
        return [t.cpu().clone() for t in part]
    return part.cpu().clone() if part is not None else None


def _save_atomic(cond: Conditioning, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.writing(path) as f:
        torch.save(cond, f)
