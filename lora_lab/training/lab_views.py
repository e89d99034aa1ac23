"""What :class:`.lab.TrainLab` answers with: plain attributes for code and tests, and a rich
display in a notebook (``_repr_html_``: thumbnails side by side with captions, tables, a chart)."""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

THUMB = 128  # px: the longer side of a thumbnail in the display


def to_image(pixels: torch.Tensor) -> Image.Image:
    """A CHW tensor in [-1, 1] as an RGB image."""
    array = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array, "RGB")


def _img_tag(image: Image.Image, title: str = "") -> str:
    thumb = image.copy()
    thumb.thumbnail((THUMB, THUMB))
    scale = THUMB / max(image.size)  # tiny images are drawn larger, pixels kept sharp
    width = round(image.width * scale) if scale > 1 else thumb.width
    buf = io.BytesIO()
    thumb.save(buf, "PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    return (f'<img src="data:image/png;base64,{data}" width="{width}" title="{html.escape(title)}" '
            'style="image-rendering:pixelated;margin:2px">')


def _table(head: list[str], rows: list[list[Any]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


@dataclass(frozen=True)
class TokenCount:
    """A caption's tokens for one text encoder, against how many it reads."""
    encoder: str
    count: int
    limit: int

    @property
    def truncated(self) -> bool:
        return self.count > self.limit

    def __str__(self) -> str:
        return f"{self.count}/{self.limit}" + (" truncated" if self.truncated else "")


@dataclass
class BatchItem:
    """One sample of a micro-batch: the image as the trainer crops and flips it, its caption
    after tag shuffle, tag dropout and caption dropout, and its latents decoded back."""
    path: Path
    flip: bool
    caption: str
    tokens: list[TokenCount]
    image: Image.Image  # bucketed, cropped, flipped (load_pixels)
    decoded: Image.Image  # the VAE's decoding of its latent mean

    @property
    def truncated(self) -> bool:
        return any(t.truncated for t in self.tokens)


@dataclass
class MicroBatch:
    """Micro-batch ``index`` of a run, trained on at optimizer step ``step`` (0-based);
    ``batch`` is the trainer's own :class:`.families.Batch`."""
    index: int
    step: int
    bucket: tuple[int, int]
    items: list[BatchItem]
    batch: Any

    @property
    def captions(self) -> list[str]:
        return [item.caption for item in self.items]

    @property
    def flips(self) -> list[bool]:
        return [item.flip for item in self.items]

    @property
    def params(self) -> torch.Tensor:
        """The latent distributions (mean and log-variance) the loss draws its latents from."""
        return self.batch.params

    def has(self, word: str) -> int:
        """How many of its captions contain ``word`` (as a tag or a word)."""
        return sum(_contains(c, word) for c in self.captions)

    def _repr_html_(self) -> str:
        w, h = self.bucket
        cards = []
        for item in self.items:
            caption = html.escape(item.caption) if item.caption else "<i>(empty: dropped)</i>"
            tokens = ", ".join(f"{t.encoder}: {'<b style=color:#c00>' if t.truncated else ''}{t}"
                               f"{'</b>' if t.truncated else ''}" for t in item.tokens)
            cards.append(f'<div style="display:inline-block;vertical-align:top;width:{2 * THUMB + 12}px;'
                         f'margin:4px">{_img_tag(item.image, "as trained")}'
                         f'{_img_tag(item.decoded, "latents decoded")}<br>'
                         f'<small>{html.escape(item.path.name)}{" · flipped" if item.flip else ""}'
                         f'<br>{caption}<br>tokens {tokens}</small></div>')
        return (f"<div><b>micro-batch {self.index}</b> (step {self.step + 1}), bucket {w}×{h}, "
                f"{len(self.items)} images: as trained | latents decoded<br>{''.join(cards)}</div>")


def _contains(caption: str, word: str) -> bool:
    from ..datasets.captions import split_tags

    return word in split_tags(caption) or word in caption.replace(",", " ").split()


@dataclass
class StepLog:
    """The steps one :meth:`.lab.TrainLab.step` call trained: per step its loss, gradient norm
    (before clipping) and learning rate."""
    rows: list[dict[str, float]] = field(default_factory=list)
    interrupted: str = ""  # why it stopped before its k steps: a Ctrl-C, a cancel

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.rows]

    def _repr_html_(self) -> str:
        rows = [[r["step"], f"{r['loss']:.5f}", f"{r['grad_norm']:.4g}", f"{r['lr']:.3g}"] for r in self.rows]
        note = f"<p><b>{html.escape(self.interrupted)}</b></p>" if self.interrupted else ""
        return _table(["step", "loss", "grad norm", "lr"], rows) + note

    def __repr__(self) -> str:
        lines = [f"step {r['step']}: loss {r['loss']:.5f}  grad norm {r['grad_norm']:.4g}  lr {r['lr']:.3g}"
                 for r in self.rows]
        return "\n".join(lines + ([self.interrupted] if self.interrupted else []))


@dataclass
class TimestepLoss:
    """The loss by timestep bucket, on fixed noise: ``rows`` of (first, last timestep index,
    mean loss)."""
    rows: list[tuple[int, int, float]]
    step: int  # the optimizer steps trained when it was measured

    @property
    def losses(self) -> list[float]:
        return [r[2] for r in self.rows]

    @property
    def image(self) -> Image.Image:
        """The chart: loss against each bucket's middle timestep."""
        from ..tools.curves import loss_chart

        points = [((lo + hi) // 2, loss) for lo, hi, loss in self.rows]
        return Image.open(io.BytesIO(loss_chart(points, f"loss at step {self.step}", dots=True,
                                                by="timestep")))

    def _repr_html_(self) -> str:
        buf = io.BytesIO()
        self.image.save(buf, "PNG")
        chart = f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'
        table = _table(["timesteps", "loss"], [[f"{lo}–{hi}", f"{loss:.5f}"] for lo, hi, loss in self.rows])
        return f'<div style="display:flex;gap:12px;align-items:flex-start">{table}{chart}</div>'


@dataclass
class Samples:
    """Images sampled at a step, one per prompt, saved in the job's samples folder."""
    step: int
    prompts: list[str]
    paths: list[Path]

    @property
    def images(self) -> list[Image.Image]:
        return [Image.open(p).convert("RGB") for p in self.paths]

    def _repr_html_(self) -> str:
        cards = "".join(f'<div style="display:inline-block;vertical-align:top;margin:4px">'
                        f'{_img_tag(img, prompt)}<br><small>{html.escape(prompt)}</small></div>'
                        for img, prompt in zip(self.images, self.prompts))
        return f"<div><b>samples at step {self.step}</b><br>{cards}</div>"
