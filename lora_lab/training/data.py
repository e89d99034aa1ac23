"""Training data: which images, in which buckets, in which order, with which captions.

Every random choice (epoch order, flips, caption shuffling and dropout) is drawn from a fresh
generator seeded by ``(seed, what, epoch, index)``, never from a global stream, so step N of
a resumed run sees exactly the batch an uninterrupted run saw.
"""
from __future__ import annotations

import contextlib
import hashlib
import random
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..aspect_buckets import assign_bucket, make_buckets
from ..calc import StepPlan, plan_steps
from ..datasets import Dataset
from ..datasets.captions import join_tags, prefix, split_tags
from ..datasets.dataset import read_caption
from ..datasets.images import EXTENSIONS
from ..datasets.index import ImageQuery
from ..errors import LoraLabError, NotFound
from ..workspace import Workspace
from .base_model import detect_family
from .config import TrainConfig
from .train_image import TrainImage

_KOHYA_DIR = re.compile(r"^(\d+)_(.+)$")  # "10_sks woman": 10 repeats


def stable_seed(*key: object) -> int:
    """A seed from a stable hash of ``key`` (Python's ``hash`` is salted per process)."""
    return zlib.crc32(repr(key).encode())


def seeded(seed: int, *key: object) -> random.Random:
    """A generator for one decision: (seed, what, epoch, ...) -> always the same draws."""
    return random.Random(stable_seed(seed, *key))


def gather_images(source: str, repeats: int = 1, caption_extension: str = ".txt",
                  workspace: Workspace | None = None) -> list[TrainImage]:
    """The images of a lora_lab dataset (by name) or of a folder; a folder whose subfolders
    are named ``N_name`` is read kohya-style, N being that subfolder's repeats."""
    ws = workspace or Workspace()
    path = Path(source).expanduser()
    if is_dataset_name(source):
        try:
            return _from_dataset(Dataset.open(source, ws), repeats)
        except NotFound:
            raise LoraLabError(f"dataset.source: {source!r} is neither a dataset in "
                               f"{ws.datasets} nor a folder") from None
    if not path.is_dir():
        raise LoraLabError(f"dataset.source: folder {path} does not exist")
    subdirs = sorted(d for d in path.iterdir() if d.is_dir() and _KOHYA_DIR.match(d.name))
    if subdirs:
        images = [img for d in subdirs
                  for img in _from_folder(d, int(_KOHYA_DIR.match(d.name)[1]), caption_extension)]
    else:
        images = _from_folder(path, repeats, caption_extension)
    if not images:
        raise LoraLabError(f"dataset.source: no images in {path}")
    return images


def is_dataset_name(source: str) -> bool:
    """Whether ``dataset.source`` names a lora_lab dataset rather than a folder: no slash, and
    no folder of that name here."""
    return "/" not in source and not Path(source).expanduser().is_dir()


def held_out_count(split: float, images: int) -> int:
    """How many of ``images`` a validation.split holds out: at least one when split > 0."""
    return max(1, round(split * images)) if split else 0


def held_out(records: Sequence[tuple[str, str]], split: float, names: Sequence[str]) -> set[int]:
    """Which images validation holds out, by index, from each one's (sha256, "folder/file")
    record: ``names`` by file name (or folder/file), else a ``split`` share ranked by a hash of
    each image's bytes, so the same images are held out whatever the file order or the seed.
    The trainer (:func:`hold_out`) and the step count (:func:`steps_for`) both ask here."""
    if names:
        wanted = set(names)
        return {i for i, (_, name) in enumerate(records)
                if name in wanted or name.rpartition("/")[2] in wanted}
    ranked = sorted(range(len(records)),
                    key=lambda i: (stable_seed("validation", records[i][0]), records[i][1]))
    return set(ranked[:held_out_count(split, len(records))])


def hold_out(images: list[TrainImage], split: float, names: Sequence[str]) -> tuple[
        list[TrainImage], list[TrainImage]]:
    """(the images to train on, those held out for validation), as :func:`held_out` picks them."""
    held = held_out([(img.sha256, _folder_file(img.path)) for img in images], split, names)
    return ([img for i, img in enumerate(images) if i not in held],
            [img for i, img in enumerate(images) if i in held])


def _folder_file(path: Path) -> str:
    """An image's name as validation.images matches it: its folder's name and its file name."""
    return f"{path.parent.name}/{path.name}"


@contextlib.contextmanager
def _source_dataset(source: str, ws: Workspace) -> Iterator[Dataset]:
    """The dataset dataset.source names, open, its index closed after."""
    try:
        ds = Dataset.open(source, ws)
    except NotFound:
        raise NotFound(f"dataset.source: {source!r} is neither a dataset in {ws.datasets} nor "
                       "a folder (see `lora-lab dataset list`)") from None
    try:
        yield ds
    finally:
        ds.index.close()


def source_files(source: str, workspace: Workspace | None = None) -> list[str]:
    """The file names of the images :func:`gather_images` would find (kohya subfolders as
    ``N_name/file``), cheaply: from a dataset's index, or from the folder's listing."""
    ws = workspace or Workspace()
    if is_dataset_name(source):
        with _source_dataset(source, ws) as ds:
            return ds.index.files(ImageQuery())
    path = Path(source).expanduser()
    subdirs = sorted(d for d in path.iterdir() if d.is_dir() and _KOHYA_DIR.match(d.name))
    if subdirs:
        return [f"{d.name}/{p.name}" for d in subdirs for p in _image_files(d)]
    return [p.name for p in _image_files(path)]


@dataclass(frozen=True)
class ImageSize:
    width: int  # as displayed (EXIF orientation applied)
    height: int
    repeats: int | None  # set by a kohya ``N_name`` folder; None: dataset.repeats applies
    name: str = ""  # "folder/file", as validation.images matches it
    sha256: str = ""  # of the file's bytes: from a dataset's index, for a folder only if asked


def measure_images(source: str, workspace: Workspace | None = None,
                   hashes: bool = False) -> list[ImageSize]:
    """The sizes of the images :func:`gather_images` would find, cheaply: from a dataset's
    index, or from a folder's image headers (nothing decoded; files hashed only with
    ``hashes``, which a validation.split needs: see :func:`needs_hashes`)."""
    ws = workspace or Workspace()
    path = Path(source).expanduser()
    if is_dataset_name(source):
        try:
            ds = Dataset.open(source, ws)
        except NotFound:
            raise LoraLabError(f"{source!r} is neither a dataset in {ws.datasets} nor a folder") from None
        try:
            return [ImageSize(r["width"], r["height"], None, _folder_file(ds.path / r["file"]),
                              r["sha256"]) for r in ds.index.all()]
        finally:
            ds.index.close()
    if not path.is_dir():
        raise LoraLabError(f"folder {path} does not exist")
    subdirs = sorted((d, int(m[1])) for d in path.iterdir()
                     if d.is_dir() and (m := _KOHYA_DIR.match(d.name)))
    folders = subdirs or [(path, None)]
    return [_header_size(p, n, hashes) for d, n in folders for p in _image_files(d)]


def needs_hashes(config: TrainConfig) -> bool:
    """Whether counting ``config``'s steps needs its images' hashes: a validation.split holds
    out images by them (a dataset's index has them; a folder's files must be read)."""
    v = config.validation
    return bool(v.split) and not v.source and not v.images


@dataclass(frozen=True)
class SourceCaptions:
    """Which images of a training source have a caption: what the checks before a job and the
    launcher's default sample prompts read."""
    where: str  # as messages name it: "dataset 'cats'" or "folder /data/cats"
    dataset: str | None  # the dataset's name; None for a folder
    images: int
    uncaptioned: list[str]  # the images without a caption (file names), in order
    captions: list[str]  # the captions there are
    other_sidecars: list[str]  # for a folder: caption-like extensions beside uncaptioned images

    @classmethod
    def of_images(cls, source: str, images: list[TrainImage]) -> SourceCaptions:
        dataset = source if is_dataset_name(source) else None
        return cls(f"dataset {source!r}" if dataset else f"folder {source}", dataset, len(images),
                   [img.path.name for img in images if not img.caption],
                   [img.caption for img in images if img.caption], [])


SIDECARS = (".txt", ".caption", ".tags", ".cap")  # what kohya-style tools name caption files


def source_captions(source: str, caption_extension: str = ".txt",
                    workspace: Workspace | None = None) -> SourceCaptions:
    """The captions :func:`gather_images` would read, cheaply: from a dataset's index, or from
    a folder's caption files (no image opened)."""
    ws = workspace or Workspace()
    if is_dataset_name(source):
        with _source_dataset(source, ws) as ds:
            return SourceCaptions(f"dataset {source!r}", source, ds.index.count(),
                                  ds.index.files(ImageQuery(captioned=False)), ds.index.captions(), [])
    path = Path(source).expanduser()
    if not path.is_dir():
        raise LoraLabError(f"dataset.source: folder {path} does not exist")
    subdirs = sorted(d for d in path.iterdir() if d.is_dir() and _KOHYA_DIR.match(d.name))
    files = [p for d in subdirs or [path] for p in _image_files(d)]
    captions = {p: read_caption(p.with_suffix(caption_extension))
                if p.with_suffix(caption_extension).is_file() else "" for p in files}
    missing = [p for p in files if not captions[p]]
    others = sorted({ext for p in missing for ext in SIDECARS
                     if ext != caption_extension and p.with_suffix(ext).is_file()})
    return SourceCaptions(f"folder {path}", None, len(files), [p.name for p in missing],
                          [c for c in captions.values() if c], others)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in EXTENSIONS and p.is_file() and not p.name.startswith("."))


def _header_size(path: Path, repeats: int | None, hashes: bool = False) -> ImageSize:
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            try:  # orientations 5-8 turn the image a quarter: width and height swap
                turned = im.getexif().get(0x0112) in (5, 6, 7, 8)
            except Exception:  # a broken EXIF block does not stop ingest or training either
                turned = False
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise LoraLabError(f"cannot train on {path}: {e}") from None
    if turned:
        w, h = h, w
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest() if hashes else ""
    return ImageSize(w, h, repeats, _folder_file(path), sha256)


def steps_for(config: TrainConfig, sizes: list[ImageSize], world: int = 1) -> StepPlan:
    """The steps ``config`` trains for on images of ``sizes`` with ``world`` processes, counted
    as the trainer counts them: the images validation holds out left aside, each other image in
    its aspect-ratio bucket, batches per bucket. The family, whose defaults set the buckets, is
    model.family or read from model.base's files."""
    family = config.model.family if config.model.family != "auto" else detect_family(config.model.base)
    d, t = config.resolved(family).dataset, config.train
    trained = training_sizes(config, sizes)
    buckets = assign_buckets(trained, d.resolution, d.min_bucket, d.max_bucket, d.bucket_step)
    counts = samples_per_bucket(buckets, [s.repeats or d.repeats for s in trained])
    fixed = any(s.repeats for s in trained)
    return plan_steps(list(counts.values()), t.batch_size, t.grad_accum, world, t.epochs,
                      t.max_steps, images=len(trained), repeats=None if fixed else d.repeats,
                      held_out=len(sizes) - len(trained))


def training_sizes(config: TrainConfig, sizes: list[ImageSize]) -> list[ImageSize]:
    """The images of ``sizes`` the trainer trains on: all but those validation.split or
    validation.images hold out (validation.source holds out none)."""
    v = config.validation
    if v.source or not (v.split or v.images):
        return sizes
    if needs_hashes(config) and not all(s.sha256 for s in sizes):
        raise ValueError("validation.split needs the images' hashes: measure_images(..., hashes=True)")
    held = held_out([(s.sha256, s.name) for s in sizes], v.split, v.images)
    if len(held) == len(sizes):
        key = "validation.images" if v.images else "validation.split"
        raise LoraLabError(f"{key}: it holds out all {len(held)} images of {config.dataset.source}, "
                           "which leaves no training images; hold out fewer")
    return [s for i, s in enumerate(sizes) if i not in held]


def _from_dataset(ds: Dataset, repeats: int) -> list[TrainImage]:
    ds.sync_if_changed()
    rows = ds.index.all()
    if not rows:
        raise LoraLabError(f"dataset {ds.name!r} has no images")
    return [TrainImage(ds.path / r["file"], r["caption"] or "", r["width"], r["height"],
                       r["sha256"], repeats, ds.name) for r in rows]


def _from_folder(folder: Path, repeats: int, caption_extension: str) -> list[TrainImage]:
    from ..datasets import workers

    paths = _image_files(folder)
    images = []
    for p, info in zip(paths, workers.run_all(workers.file_tasks(paths))):
        if isinstance(info, str):
            raise LoraLabError(f"cannot train on {p}: {info}")
        txt = p.with_suffix(caption_extension)
        caption = read_caption(txt) if txt.is_file() else ""
        images.append(TrainImage(p, caption, info.width, info.height, info.sha256, repeats,
                                 folder.name))
    return images


def assign_buckets(images: Sequence[TrainImage | ImageSize], resolution: int, min_side: int,
                   max_side: int, step: int = 64) -> list[tuple[int, int]]:
    """Each image's (width, height) bucket: the closest aspect ratio within the pixel budget."""
    buckets = make_buckets(resolution, min_side, max_side, step)
    chosen: dict[tuple[int, int], tuple[int, int]] = {}  # photos share a few sizes: once each
    for img in images:
        size = (img.width, img.height)
        if size not in chosen:
            chosen[size] = assign_bucket(*size, buckets)
    return [chosen[img.width, img.height] for img in images]


def samples_per_bucket(buckets: list[tuple[int, int]], repeats: list[int]) -> dict[tuple[int, int], int]:
    """How many samples (images x repeats) each bucket holds in one epoch, by bucket."""
    counts: dict[tuple[int, int], int] = {}
    for bucket, n in zip(buckets, repeats):
        counts[bucket] = counts.get(bucket, 0) + n
    return dict(sorted(counts.items()))


@dataclass(frozen=True)
class Sample:
    image: int  # index into the image list
    flip: bool
    caption: str


class BatchPlan:
    """The batches of every epoch: each image ``repeats`` times, batches never mixing buckets,
    bucket order and batch order shuffled per epoch; padded (by wrapping) to a multiple of
    ``world`` so that every data-parallel rank runs the same number of batches."""

    def __init__(self, images: list[TrainImage], buckets: list[tuple[int, int]], batch_size: int,
                 seed: int, world: int = 1):
        self.images, self.buckets, self.batch_size = images, buckets, batch_size
        self.seed, self.world = seed, world
        self.bucket_samples = samples_per_bucket(buckets, [img.repeats for img in images])
        self.batches_per_epoch = plan_steps(list(self.bucket_samples.values()), batch_size,
                                            world=world).batches_per_epoch

    def samples(self, index: int, rules: CaptionRules) -> list[Sample]:
        """Micro-batch ``index`` (counted from the start of training, over all ranks)."""
        epoch, k = divmod(index, self.batches_per_epoch)
        batches, slots = self._epoch(epoch)
        return [rules.sample(self.images, i, self.seed, epoch, slot)
                for i, slot in zip(batches[k], slots[k])]

    @lru_cache(maxsize=2)  # noqa: B019 (one plan a run: the cache lives and dies with it)
    def _epoch(self, epoch: int) -> tuple[list[list[int]], list[list[int]]]:
        """The epoch's batches (image indices), and for each use of an image its slot: how
        often that image appeared before in the epoch (a repeat gets a fresh augmentation)."""
        rng = seeded(self.seed, "order", epoch)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (img, bucket) in enumerate(zip(self.images, self.buckets)):
            groups.setdefault(bucket, []).extend([i] * img.repeats)
        batches = []
        for bucket in sorted(groups):
            members = groups[bucket]
            rng.shuffle(members)
            batches += [members[k:k + self.batch_size] for k in range(0, len(members), self.batch_size)]
        rng.shuffle(batches)
        batches = (batches * self.world)[:self.batches_per_epoch]
        seen: dict[int, int] = {}
        slots = []
        for batch in batches:
            slots.append([seen.get(i, 0) for i in batch])
            for i in batch:
                seen[i] = seen.get(i, 0) + 1
        return batches, slots


@dataclass(frozen=True)
class CaptionRules:
    trigger: str = ""
    shuffle_tags: bool = False
    keep_tokens: int = 0
    caption_dropout: float = 0.0
    tag_dropout: float = 0.0
    flip: bool = False

    @property
    def randomised(self) -> bool:
        """Whether one image's caption can differ between steps (then text cannot be cached)."""
        return self.shuffle_tags or self.caption_dropout > 0 or self.tag_dropout > 0

    def sample(self, images: list[TrainImage], image: int, seed: int, epoch: int,
               slot: int) -> Sample:
        """Image ``image``'s flip and caption for its ``slot``-th use in ``epoch``."""
        rng = seeded(seed, "aug", epoch, image, slot)
        flip = self.flip and rng.random() < 0.5
        return Sample(image, flip, self.caption(images[image].caption, rng))

    def caption(self, text: str, rng: random.Random) -> str:
        if self.trigger:
            text = prefix(text, self.trigger) if text else self.trigger
        if self.caption_dropout and rng.random() < self.caption_dropout:
            return ""
        if not (self.shuffle_tags or self.tag_dropout):
            return text
        tags = split_tags(text)
        keep, rest = tags[:self.keep_tokens], tags[self.keep_tokens:]
        if self.tag_dropout:
            rest = [t for t in rest if rng.random() >= self.tag_dropout]
        if self.shuffle_tags:
            rng.shuffle(rest)
        return join_tags(keep + rest)
