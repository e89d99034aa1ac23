"""Images to VAE latents, cached on disk.

The cache holds each image's latent *distribution* (mean and log-variance), not a sample, so
a cached run draws the same fresh VAE noise per step as an uncached one. A cache file is named
by a hash of the image's bytes, its bucket, its flip and the VAE's weights: a changed image,
resolution or VAE misses the cache instead of training on stale latents.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .. import atomic
from .train_image import TrainImage


def fit(width: int, height: int, bucket: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """The size an image is scaled to so that it covers ``bucket``, and the (top, left) of
    the centred crop to the bucket (SDXL is conditioned on it)."""
    scale = max(bucket[0] / width, bucket[1] / height)
    size = (max(bucket[0], round(width * scale)), max(bucket[1], round(height * scale)))
    return size, ((size[1] - bucket[1]) // 2, (size[0] - bucket[0]) // 2)


def load_pixels(image: TrainImage, bucket: tuple[int, int], flip: bool) -> torch.Tensor:
    """The image upright, scaled to cover ``bucket`` and centre-cropped to it, in [-1, 1], CHW."""
    width, height = bucket
    with Image.open(image.path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
    size, (top, left) = fit(im.width, im.height, bucket)
    im = im.resize(size, Image.Resampling.LANCZOS)
    im = im.crop((left, top, left + width, top + height))
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def vae_fingerprint(vae: torch.nn.Module) -> str:
    """A hash of the VAE's weights (the encoder half is what makes latents)."""
    h = hashlib.sha256()
    for name, tensor in sorted(vae.encoder.state_dict().items()) + sorted(
            vae.quant_conv.state_dict().items() if vae.quant_conv is not None else []):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class LatentEncoder:
    """Latent distributions for (image, bucket, flip); cached under ``cache_dir`` when given."""

    def __init__(self, vae: torch.nn.Module, cache_dir: Path | None = None):
        self.vae = vae
        # read once: a diffusers model walks all its modules to answer .device or .dtype
        self.device, self.dtype = vae.device, vae.dtype
        self.frames = takes_frames(vae)
        self.cache_dir = cache_dir
        self.fingerprint = vae_fingerprint(vae) if cache_dir else ""
        self.hits = self.misses = 0

    def _path(self, image: TrainImage, bucket: tuple[int, int], flip: bool) -> Path:
        key = hashlib.sha256(f"{image.sha256}|{bucket}|{flip}|{self.fingerprint}".encode())
        name = key.hexdigest()[:32]
        return self.cache_dir / name[:2] / f"{name}.pt"

    def batch(self, images: list[TrainImage], bucket: tuple[int, int],
              flips: list[bool]) -> torch.Tensor:
        """``params`` of images sharing ``bucket``, stacked, on the CPU as cached ones are (the
        objectives draw their noise there); uncached, in one VAE call."""
        if self.cache_dir is None:
            return self.encode(images, bucket, flips).cpu()
        return torch.stack([self.params(image, bucket, flip) for image, flip in zip(images, flips)])

    def params(self, image: TrainImage, bucket: tuple[int, int], flip: bool) -> torch.Tensor:
        """Mean and log-variance, stacked on the channel axis (8 channels for SD)."""
        if self.cache_dir is None:
            return self.encode([image], bucket, [flip])[0].cpu()
        path = self._path(image, bucket, flip)
        try:
            params = torch.load(path, weights_only=True)
            self.hits += 1
            return params
        except (FileNotFoundError, RuntimeError, EOFError):  # missing, or torn by a kill
            self.misses += 1
        params = self.encode([image], bucket, [flip])[0].cpu()
        _save_atomic(params, path)
        return params

    @torch.no_grad()
    def encode(self, images: list[TrainImage], bucket: tuple[int, int],
               flips: list[bool]) -> torch.Tensor:
        """Latent distributions, left on the VAE's device; (B, 2C, H, W) from a video VAE too."""
        pixels = torch.stack([load_pixels(image, bucket, flip) for image, flip in zip(images, flips)])
        pixels = pixels.to(self.device, self.dtype)
        if self.frames:
            return self.vae.encode(pixels.unsqueeze(2)).latent_dist.parameters.squeeze(2).float()
        return self.vae.encode(pixels).latent_dist.parameters.float()


def takes_frames(vae: torch.nn.Module) -> bool:
    """Whether ``vae`` is a video VAE (Qwen-Image's, Wan's): 3-D convolutions, input (B, C, T, H, W),
    an image being one frame."""
    return any(isinstance(m, torch.nn.Conv3d) for m in vae.encoder.modules())


def sample_latents(params: torch.Tensor, generator: torch.Generator, scaling: float,
                   shift: float | None = None) -> torch.Tensor:
    """A VAE latent drawn from cached distribution parameters, scaled for the UNet."""
    mean, logvar = params.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    latents = mean + std * torch.randn(mean.shape, generator=generator).to(mean)
    return (latents - (shift or 0.0)) * scaling


def _save_atomic(tensor: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.writing(path) as f:
        torch.save(tensor.contiguous(), f)


@torch.no_grad()
def decode_params(vae: torch.nn.Module, params: torch.Tensor, frames: bool) -> torch.Tensor:
    """Pixels in [-1, 1] (B, 3, H, W) that ``vae`` decodes from the means of latent distributions
    ``params``: what the latents a batch trains on hold, before their noise is drawn; ``frames``:
    a video VAE (:func:`takes_frames`)."""
    mean = params.chunk(2, dim=1)[0].to(vae.device, vae.dtype)
    if frames:
        return vae.decode(mean.unsqueeze(2)).sample.squeeze(2).float().cpu().clamp(-1, 1)
    return vae.decode(mean).sample.float().cpu().clamp(-1, 1)
