"""What every caption engine is, and the image preparation they share.

An engine takes an image already prepared by :func:`prepare_image` (upright, RGB, at most
``max_pixels``, JPEG bytes) and a prompt, and returns the model's raw :class:`Answer`; prompts
and clean-up live in :mod:`lora_lab.captioning.prompts`, batches in :mod:`.batch`.

An answer the token limit cut is never passed on as if it were whole: :func:`whole_answer` asks
once more with a larger limit, and an answer cut even then comes back marked ``truncated``.
"""
from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image, ImageOps

from ..errors import LoraLabError

# Qwen2.5-VL turns every 28x28 pixels into one token: 0.5 MP is ~640 image tokens, plenty
# for a caption, and keeps huge photos from asking llama.cpp for tens of GB.
MAX_CAPTION_PIXELS = 512 * 1024
# The most a cut answer's retry asks for: double the limit, but a caption past ~1,500 words is
# a model looping, not describing, and more would only crowd the context.
RETRY_MAX_TOKENS = 2048


class CaptionError(LoraLabError):
    """A caption could not be made (a bad model file, a failed generation)."""


@dataclass(frozen=True)
class Answer:
    """A model's answer to one image and prompt."""
    text: str
    truncated: bool = False  # the token limit cut it even after the retry: may end mid-sentence
    retried: bool = False  # the first answer was cut, so it was asked again with a larger limit


class Captioner(Protocol):
    name: str  # recorded in the dataset index with each caption it makes

    def caption(self, image: bytes, prompt: str) -> Answer:
        """The model's answer for one prepared image (JPEG bytes) and prompt."""

    def close(self) -> None:
        """Free the model."""


def retry_tokens(max_tokens: int) -> int:
    """The larger limit a cut answer is asked again with: double, at most ``RETRY_MAX_TOKENS``."""
    return max(max_tokens, min(2 * max_tokens, RETRY_MAX_TOKENS))


def whole_answer(generate: Callable[[int], tuple[str, str | None]], max_tokens: int) -> Answer:
    """``generate(limit)`` -> (text, finish reason), asked again once with a larger limit when
    the reason is ``"length"`` (the OpenAI name every engine uses for "cut at max_tokens")."""
    text, reason = generate(max_tokens)
    if reason != "length":
        return Answer(text)
    larger = retry_tokens(max_tokens)
    if larger == max_tokens:  # already at the cap: a retry would be cut the same way
        return Answer(text, truncated=True)
    text, reason = generate(larger)
    return Answer(text, truncated=reason == "length", retried=True)


def prepare_image(source: str | Path | bytes, max_pixels: int = MAX_CAPTION_PIXELS) -> bytes:
    """Decode, apply EXIF orientation, convert to RGB, downscale to ``max_pixels``, encode JPEG.

    JPEG because llama.cpp's decoder reads JPEG and PNG but not WebP; quality 92 keeps the
    details a caption mentions.
    """
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            if im.format == "JPEG":  # decode at reduced scale when the image is far too big
                scale = math.sqrt(im.width * im.height / max_pixels)
                if scale >= 2:
                    im.draft("RGB", (int(im.width / scale), int(im.height / scale)))
            im = ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        name = "image" if isinstance(source, bytes) else Path(source).name
        raise CaptionError(f"cannot read {name}: {e}") from None
    if im.width * im.height > max_pixels:
        scale = math.sqrt(max_pixels / (im.width * im.height))
        im = im.resize((max(1, int(im.width * scale)), max(1, int(im.height * scale))),
                       Image.Resampling.BICUBIC, reducing_gap=3.0)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def data_uri(jpeg: bytes) -> str:
    """The OpenAI-style ``image_url`` for prepared JPEG bytes (never a URL: nothing is fetched)."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
