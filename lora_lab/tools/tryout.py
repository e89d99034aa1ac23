"""Trying LoRAs on their base model: a grid of prompt x seed rows against checkpoint x strength
columns (:mod:`.tryout_grid`), the A1111 XY plot of strength against checkpoint.

One pipeline is loaded, on first use, and kept: each LoRA is loaded into it once as an adapter
named after its sha256 and switched on at a strength with ``set_adapters`` (strength 0 is the
base alone, adapters off), so the base is never loaded twice. Every image is cached under the
workspace's ``cache/tryout/`` by a key over all that made it (the base's files, the LoRA's
sha256, prompt, negative, seed, strength, steps, guidance, size, device): a grid asked for again
renders nothing and loads nothing, and a LoRA file that changed misses.

Everything is checked (strengths, sizes, LoRA files and their family) before anything loads.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_lab import atomic
from lora_lab.errors import LoraLabError
from lora_lab.training.base_model import detect_family, load_base_model
from lora_lab.training.presets import get_preset, preset_for
from lora_lab.training.sections import SampleSection
from lora_lab.workspace import Workspace

from .tryout_grid import Cell, Grid
from .tryout_loras import Checkpoint, read_checkpoints

MAX_STRENGTH = 2.0  # strengths beyond ±2 only burn the image
MAX_CELLS = 400
MAX_SEED = 2**32 - 1
Progress = Callable[[int, int], None]  # (cells done, cells in all)


@dataclass(frozen=True)
class Settings:
    """What each image of a grid is rendered with, checked."""
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    strengths: tuple[float, ...]
    steps: int
    guidance: float
    width: int | None  # None: the pipeline's default
    height: int | None
    negative: str


@dataclass(frozen=True)
class SampleDefaults:
    """What a grid renders with where it is not told: the family's preset's sample settings."""
    preset: str
    steps: int
    guidance: float
    negative: str


def sample_defaults(base: str, family: str) -> SampleDefaults:
    """The steps, guidance and negative prompt base ``base`` (of ``family``) samples with: its
    family's default preset's sample settings (FLUX.1 [dev]'s 50 steps at 3.5, Z-Image Turbo's 8
    without guidance...), [schnell]'s for a FLUX.1 folder without a guidance input, and the
    trainer's sample defaults where the preset sets none (SD1.5, SDXL)."""
    name = preset_for(family)
    if family == "flux" and not _embeds_guidance(Path(base).expanduser()):
        name = "flux-schnell"
    sample = get_preset(name).overrides.get("sample", {})
    return SampleDefaults(name, sample.get("steps", SampleSection.steps),
                          sample.get("guidance", SampleSection.guidance),
                          sample.get("negative", SampleSection.negative))


def _embeds_guidance(base: Path) -> bool:
    """Whether a FLUX.1 diffusers folder's transformer takes a guidance input ([dev]); True where
    its config cannot tell (a checkpoint file, a Hub id): [dev] is what LoRAs train on."""
    try:
        return bool(json.loads((base / "transformer" / "config.json").read_text()).get("guidance_embeds", True))
    except (OSError, ValueError, AttributeError):
        return True


def check_settings(prompts: Sequence[str], strengths: Sequence[float], seeds: Sequence[int],
                   steps: int | None, guidance: float | None, width: int | None, height: int | None,
                   negative: str | None, defaults: SampleDefaults) -> Settings:
    """The settings (``defaults``' where None), or a LoraLabError naming the first one that is wrong."""
    prompts = tuple(dict.fromkeys(p.strip() for p in prompts if p.strip()))
    if not prompts:
        raise LoraLabError("give at least one prompt")
    strengths = tuple(dict.fromkeys(float(s) + 0.0 for s in strengths))  # + 0.0: -0.0 is 0.0
    if not strengths:
        raise LoraLabError("give at least one strength, e.g. 0,0.5,1")
    for s in strengths:
        if not -MAX_STRENGTH <= s <= MAX_STRENGTH:
            raise LoraLabError(f"strength {s:g} is outside -{MAX_STRENGTH:g}..{MAX_STRENGTH:g}: a LoRA "
                               "is tried at 1 and around it (0 is the base alone)")
    seeds = tuple(dict.fromkeys(int(s) for s in seeds))
    if not seeds or any(not 0 <= s <= MAX_SEED for s in seeds):
        raise LoraLabError(f"seeds must be whole numbers from 0 to {MAX_SEED}, at least one")
    steps = defaults.steps if steps is None else int(steps)
    if not 1 <= steps <= 150:
        raise LoraLabError(f"steps must be from 1 to 150, not {steps}")
    guidance = defaults.guidance if guidance is None else float(guidance)
    if not 0 <= guidance <= 30:
        raise LoraLabError(f"guidance must be from 0 to 30, not {guidance:g}")
    if (width is None) != (height is None):
        raise LoraLabError("give both width and height, or neither (the model's own size)")
    for side in (width, height):
        if side is not None and (not 64 <= side <= 4096 or side % 8):
            raise LoraLabError(f"image sides must be multiples of 8 from 64 to 4096, not {side}")
    negative = defaults.negative if negative is None else negative.strip()
    return Settings(prompts, seeds, strengths, steps, guidance, width, height, negative)


def base_identity(base: str) -> str:
    """What tells a base model's version apart, cheaply: its path and each of its files' size and
    modification time (a Hub id: the id)."""
    path = Path(base).expanduser()
    if not path.exists():
        return base
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    stats = [(str(p.relative_to(path)), st.st_size, st.st_mtime_ns)
             for p in files if p.is_file() and not p.name.startswith(".") for st in [p.stat()]]
    return hashlib.sha256(json.dumps([str(path.resolve()), stats]).encode()).hexdigest()


def cell_key(**inputs: Any) -> str:
    """The cache key of an image: a hash of everything that made it."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _device() -> tuple[Any, Any]:
    """Where the pipeline runs: a CUDA GPU in bf16 (fp32 where it lacks bf16), else the CPU in fp32."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.device("cpu"), torch.float32


class Tryout:
    """Grids of LoRAs on the base model ``base`` (a diffusers folder, checkpoint or Hub id), its
    pipeline loaded on first use and kept until :meth:`close`. Safe to use from threads: one
    grid renders at a time, and :meth:`close` waits for a grid under way."""

    def __init__(self, base: str | os.PathLike, workspace: Workspace | str | None = None):
        self.base = str(base)
        self.family = detect_family(self.base)  # a bad base fails now, before any grid
        self.defaults = sample_defaults(self.base, self.family)
        self.ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
        self.cache = self.ws.root / "cache" / "tryout"
        self.pipeline: Any = None
        self.renders = 0  # images rendered (pipeline calls), cache hits aside
        self.loads = 0  # times the pipeline was loaded
        self._adapters: dict[str, str] = {}  # sha256 -> the adapter it is loaded as
        self._identity: str | None = None
        self._device: tuple[Any, Any] | None = None
        self._lock = threading.RLock()

    @property
    def loaded(self) -> bool:
        return self.pipeline is not None

    def grid(self, loras: Sequence[str | os.PathLike], prompts: Sequence[str],
             strengths: Sequence[float] = (0.0, 0.5, 1.0), seeds: Sequence[int] = (0,),
             steps: int | None = None, guidance: float | None = None, width: int | None = None,
             height: int | None = None, negative: str | None = None, progress: Progress | None = None) -> Grid:
        """The grid of ``loras`` (files, folders of them, job ids: each file a checkpoint column
        per strength) against ``prompts`` x ``seeds`` rows; cells in the cache are not rendered.
        ``steps``, ``guidance`` and ``negative`` left None are the family's (:attr:`defaults`)."""
        s = check_settings(prompts, strengths, seeds, steps, guidance, width, height, negative, self.defaults)
        checkpoints = read_checkpoints(loras, self.base, self.family, self.ws)
        columns: list[tuple[Checkpoint | None, float]] = [(None, 0.0)] if 0.0 in s.strengths else []
        columns += [(c, v) for c in checkpoints for v in s.strengths if v != 0.0]
        rows = [(p, seed) for p in s.prompts for seed in s.seeds]
        if len(rows) * len(columns) > MAX_CELLS:
            raise LoraLabError(f"{len(rows)} rows x {len(columns)} columns is more than {MAX_CELLS} images: "
                               "try fewer prompts, seeds, strengths or checkpoints at once")
        with self._lock:
            cells = self._cells(rows, columns, s, progress)
        return Grid(cells, rows, columns, checkpoints, {
            "base": self.base, "family": self.family, "negative": s.negative, "steps": s.steps,
            "guidance": s.guidance, "device": self._where(), "defaults_from": f"preset {self.defaults.preset}"})

    def _cells(self, rows: list[tuple[str, int]], columns: list[tuple[Checkpoint | None, float]],
               s: Settings, progress: Progress | None) -> list[Cell]:
        keys = [[self._key(lora, strength, prompt, seed, s) for lora, strength in columns]
                for prompt, seed in rows]
        cached = {k: self._read(k) for row in keys for k in row}
        needed = {lora.sha256 for row in keys for (lora, _), k in zip(columns, row)
                  if lora is not None and cached[k] is None}
        self._drop_adapters(keep=needed)
        cells, total = [], len(rows) * len(columns)
        for r, (prompt, seed) in enumerate(rows):
            for c, (lora, strength) in enumerate(columns):
                key = keys[r][c]
                image = cached[key]
                hit = image is not None
                if not hit:
                    image = self._render(lora, strength, prompt, seed, s)
                    self._write(key, image)
                cells.append(Cell(r, c, prompt, seed, lora, strength, key, hit, image))
                if progress:
                    progress(len(cells), total)
        return cells

    # ------------------------------------------------------------ the cache

    def _where(self) -> str:
        device, dtype = self._on()
        return f"{device.type}/{str(dtype).removeprefix('torch.')}"

    def _on(self) -> tuple[Any, Any]:
        """The device and dtype this tryout renders with (the cache keys hold them)."""
        if self._device is None:
            self._device = _device()
        return self._device

    def _key(self, lora: Checkpoint | None, strength: float, prompt: str, seed: int, s: Settings) -> str:
        if self._identity is None:
            self._identity = base_identity(self.base)
        return cell_key(base=self._identity, lora=lora.sha256 if lora else None, strength=strength,
                        prompt=prompt, negative=s.negative, seed=seed, steps=s.steps, guidance=s.guidance,
                        width=s.width, height=s.height, device=self._where())

    def _path(self, key: str) -> Path:
        return self.cache / key[:2] / f"{key}.png"

    def _read(self, key: str):
        from PIL import Image

        try:
            with Image.open(self._path(key)) as image:
                image.load()
                return image.copy()
        except (OSError, ValueError):  # not there, or damaged: render it again
            return None

    def _write(self, key: str, image) -> None:
        buf = io.BytesIO()
        image.save(buf, "PNG")
        with contextlib.suppress(OSError):  # a full disk costs the cache, not the grid
            self._path(key).parent.mkdir(parents=True, exist_ok=True)
            atomic.write_bytes(self._path(key), buf.getvalue())

    # ------------------------------------------------------------ the pipeline

    def _pipe(self) -> Any:
        if self.pipeline is None:
            device, dtype = self._on()
            pipe = load_base_model(self.base, self.family).pipeline
            self.pipeline = pipe.to(device, dtype) if device.type != "cpu" else pipe
            self.loads += 1
        return self.pipeline

    def _adapter(self, lora: Checkpoint) -> str:
        """The adapter ``lora`` is loaded as, loading it now if it is not yet."""
        from .merge import load_adapter

        name = self._adapters.get(lora.sha256)
        if name is None:
            name = f"tryout_{lora.sha256[:16]}"
            load_adapter(self._pipe(), lora.path, name, self.base)
            self._adapters[lora.sha256] = name
        return name

    def _drop_adapters(self, keep: set[str]) -> None:
        """Unload the adapters this grid does not need (memory for those it does)."""
        gone = [sha for sha in self._adapters if sha not in keep]
        if gone and self.pipeline is not None:
            self.pipeline.delete_adapters([self._adapters[sha] for sha in gone])
        for sha in gone:
            del self._adapters[sha]

    def _render(self, lora: Checkpoint | None, strength: float, prompt: str, seed: int, s: Settings):
        import torch

        from lora_lab.training.families import get_family

        pipe = self._pipe()
        if lora is None:
            if self._adapters:
                pipe.disable_lora()
        else:
            name = self._adapter(lora)
            pipe.enable_lora()
            pipe.set_adapters([name], [strength])
        device, _ = self._on()
        spec = get_family(self.family)
        with torch.no_grad():
            inputs = spec.prompt_inputs(pipe, prompt, s.negative, s.guidance, device)
            try:
                image = pipe(**inputs, num_inference_steps=s.steps, width=s.width, height=s.height,
                             generator=torch.Generator().manual_seed(seed)).images[0]
            except ValueError as e:  # a size the model refuses
                raise LoraLabError(f"{self.base} cannot render that: {str(e).splitlines()[0]}") from None
        self.renders += 1
        return image

    def close(self) -> None:
        """Let the pipeline go and free its memory (GPU memory on a GPU box); the next grid that
        needs it loads it again. Waits for a grid under way."""
        with self._lock:
            if self.pipeline is None:
                return
            self.pipeline = None
            self._adapters.clear()
            gc.collect()
            import torch

            if torch.cuda.is_available():
                with contextlib.suppress(RuntimeError):
                    torch.cuda.empty_cache()

