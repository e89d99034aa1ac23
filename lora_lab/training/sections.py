"""The eight tables of a training config: each field's type, default, one-line doc and limits.

``config.py`` reads, validates and writes whole configs; this module only declares what each
field is, once: the validator, the starter TOML's comments and the launcher's choices read it.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Rule:
    """What a value must satisfy beyond its type."""
    lo: float | None = None     # inclusive lower bound
    above: float | None = None  # exclusive lower bound (lr > 0)
    hi: float | None = None     # inclusive upper bound
    zero: bool = False          # 0 is allowed besides the range: "auto", "off", "same as ..."
    multiple: int = 0           # a non-zero value must be a multiple of this
    pattern: str = ""           # a string must fullmatch this ...
    what: str = ""              # ... which reads as this
    nonempty: bool = False

    def bounds(self) -> str:
        if self.above is not None:
            text = f"> {self.above}" + (f" and ≤ {self.hi}" if self.hi is not None else "")
        elif self.lo is not None:
            text = f"{self.lo}..{self.hi}" if self.hi is not None else f"≥ {self.lo}"
        else:
            return ""
        text += f", a multiple of {self.multiple}" if self.multiple else ""
        return f"0 or {text}" if self.zero else text

    def check(self, v: Any) -> str | None:
        """The problem with ``v`` (already of the field's type), or None."""
        if isinstance(v, str):
            if self.nonempty and not v:
                return "must not be empty"
            if self.pattern and not re.fullmatch(self.pattern, v):
                return f"{show_value(v)} is not {self.what}"
        elif isinstance(v, (int, float)) and not (self.zero and v == 0):
            if ((self.lo is not None and v < self.lo) or (self.above is not None and v <= self.above)
                    or (self.hi is not None and v > self.hi)):
                return f"{show_value(v)} is out of range (must be {self.bounds()})"
            if self.multiple and v % self.multiple:
                return f"{show_value(v)} is not a multiple of {self.multiple}"
        return None


def _f(default: Any = dataclasses.MISSING, doc: str = "", **rule: Any) -> Any:
    """A field with its one-line doc (the starter config's comment) and its Rule."""
    return field(default=default, metadata={"doc": doc, "rule": Rule(**rule)})


_SIDE = dict(zero=True, lo=64, hi=4096, multiple=64)  # a pixel size; 0 = the family's
_SAMPLE_SIDE = dict(zero=True, lo=64, hi=4096, multiple=8)
_SEED = dict(lo=0, hi=2**32 - 1)
_SHARE = dict(lo=0, hi=1)  # a probability or a fraction
_SUFFIX = dict(pattern=r"\.[A-Za-z0-9_-]{1,15}", what="a file extension like .txt")
_STEM = dict(pattern=r"[A-Za-z0-9_-](?:[A-Za-z0-9_.-]{0,98}[A-Za-z0-9_-])?",
             what="a safe file name (up to 100 letters, digits, '-', '_' or '.', no '.' at either end)")


@dataclass(frozen=True)
class ModelSection:
    base: str = _f(doc="a diffusers folder, a .safetensors/.ckpt file or a Hub id (org/name)", nonempty=True)
    family: Literal["auto", "sd15", "sdxl", "zimage", "flux", "chroma", "qwenimage",
                    "flux2klein"] = _f(
        "auto", "model family; auto detects it from the model")
    vae: str = _f("", "a VAE to use instead of the base model's own (empty = its own)")
    config: str = _f("", "for a single-file base: a diffusers folder or Hub id with its configs "
                         "and tokenizers (empty = the SD1.5 / SDXL base repo)")
    prediction: Literal["auto", "epsilon", "v_prediction"] = _f("auto", "auto = as the model says")
    adapter: str = _f("", "a training adapter: a LoRA merged into the base for training and taken "
                          "out of the samples (Z-Image Turbo's de-distilling LoRA); empty = none")
    quantize: Literal["none", "int8", "fp8"] = _f("none", "store the frozen base's weights in 8 bits "
                                                   "(torchao): about half the memory of bf16")


@dataclass(frozen=True)
class DatasetSection:
    source: str = _f(doc="a dataset name or a folder (kohya N_name subfolders repeat N times)", nonempty=True)
    repeats: int = _f(1, "times each image is seen per epoch", lo=1, hi=10_000)
    resolution: int = _f(0, "training resolution; 0 = the family's (512 sd15, 1024 the others)", **_SIDE)
    min_bucket: int = _f(0, "smallest bucket side; 0 = the family's", **_SIDE)
    max_bucket: int = _f(0, "largest bucket side; 0 = the family's", **_SIDE)
    bucket_step: Literal[8, 16, 32, 64] = _f(64, "bucket sides are multiples of this")
    cache_latents: bool = _f(True, "encode the images once, before training (faster)")
    cache_text: bool = _f(True, "encode the captions once, to disk, and free the text encoders "
                                "(far less memory; needs fixed captions and a frozen text encoder)")
    flip: bool = _f(False, "random horizontal flips (not for asymmetric subjects or text)")
    trigger: str = _f("", "word put in front of every caption that lacks it")
    shuffle_tags: bool = _f(False, "shuffle comma-separated tags every step")
    keep_tokens: int = _f(0, "leading tags kept in place when shuffling", lo=0)
    caption_dropout: float = _f(0.0, "chance of training an image with an empty caption", **_SHARE)
    tag_dropout: float = _f(0.0, "chance of dropping each tag", **_SHARE)
    caption_extension: str = _f(".txt", "caption files beside the images end with this", **_SUFFIX)


@dataclass(frozen=True)
class NetworkSection:
    rank: int = _f(16, "LoRA rank: bigger learns more detail and makes a bigger file", lo=1, hi=1024)
    alpha: float = _f(0.0, "LoRA alpha, scales the update by alpha/rank; 0 = rank", lo=0)
    dropout: float = _f(0.0, "dropout inside the LoRA layers", **_SHARE)
    targets: Literal["attn", "attn_mlp", "locon"] = _f("attn", "attention, + feed-forward, + convolutions")
    conv_rank: int = _f(0, "rank of the convolution adapters (locon only); 0 = rank", lo=0, hi=1024)
    dora: bool = _f(False, "DoRA: magnitude and direction apart (slower, often better; exact in ComfyUI, not A1111)")
    train_text_encoder: bool = _f(False, "adapt the text encoder(s) too")


@dataclass(frozen=True)
class TrainSection:
    batch_size: int = _f(1, "images per step", lo=1, hi=256)
    grad_accum: int = _f(1, "steps whose gradients add up before an update", lo=1, hi=256)
    epochs: int = _f(10, "passes over the dataset (with repeats)", lo=1)
    max_steps: int = _f(0, "stop after this many updates; 0 = from epochs, else it wins", lo=0)
    lr: float = _f(1e-4, "learning rate (prodigy wants 1.0)", above=0, hi=1)
    text_encoder_lr: float = _f(0.0, "text encoder learning rate; 0 = lr", lo=0, hi=1)
    scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                       "polynomial"] = _f("constant", "how the learning rate changes over training")
    warmup_steps: int = _f(0, "updates over which the learning rate ramps up from 0", lo=0)
    optimizer: Literal["adamw", "adamw8bit", "prodigy"] = _f("adamw", "adamw8bit saves memory")
    weight_decay: float = _f(1e-2, "pulls weights toward 0 each update", **_SHARE)
    max_grad_norm: float = _f(1.0, "clip gradients to this norm; 0 = no clipping", lo=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = _f("no", "compute dtype; bf16 on recent GPUs")
    device: Literal["auto", "cuda", "cpu"] = _f("auto", "auto: a CUDA GPU when torch can use one, "
                                                "else the CPU (the log says so); cuda: refuse to "
                                                "start without one; cpu: the CPU even with a GPU")
    gradient_checkpointing: bool = _f(False, "recompute activations: less memory, about 30% slower")
    seed: int = _f(0, "random seed for noise, shuffling and dropout", **_SEED)
    noise_offset: float = _f(0.0, "offset noise, helps very dark or bright images (0.05-0.1)", **_SHARE)
    min_snr_gamma: float = _f(0.0, "Min-SNR loss weighting; 0 = off, 5 is typical", zero=True, lo=1, hi=20)


@dataclass(frozen=True)
class SaveSection:
    name: str = _f("", "file name of the LoRA, without extension; empty = the dataset's name and "
                   "the job's date and time; a name another run's LoRA files hold is refused",
                   pattern=f"(?:{_STEM['pattern']})?", what=f"{_STEM['what']} or empty")
    format: Literal["kohya", "diffusers"] = _f("kohya", "kohya: what ComfyUI/A1111/Forge load (ComfyUI's "
                                               "layout for Z-Image, Flux, Chroma); diffusers: peft keys")
    every_n_steps: int = _f(0, "also save NAME-000500.safetensors and a resumable checkpoint every "
                            "this many updates; 0 = only at the end", lo=0)
    keep_last: int = _f(3, "resumable checkpoints kept in the job folder; older ones are deleted "
                        "(the intermediate LoRA files all stay)", lo=1)
    output_dir: str = _f("", "where LoRAs go; empty = the workspace's loras/")
    comment: str = _f("", "note stored in the file's metadata")


@dataclass(frozen=True)
class SampleSection:
    every_n_steps: int = _f(0, "render sample images every this many updates; 0 = off", lo=0)
    prompts: tuple[str, ...] = _f((), "sample prompts, one image each")
    negative: str = _f("", "negative prompt for the samples")
    seed: int = _f(0, "seed for the samples, the same each time so they compare", **_SEED)
    steps: int = _f(20, "denoising steps per sample", lo=1, hi=150)
    guidance: float = _f(7.0, "classifier-free guidance scale", lo=0, hi=30)
    width: int = _f(0, "sample width; 0 = dataset.resolution", **_SAMPLE_SIDE)
    height: int = _f(0, "sample height; 0 = dataset.resolution", **_SAMPLE_SIDE)


@dataclass(frozen=True)
class ValidationSection:
    """Held-out images scored as training goes (training/validation.py): off unless split,
    images or source names some."""
    split: float = _f(0.0, "share of the dataset's images held out for validation, never trained "
                      "on; 0 = none", lo=0, hi=0.9)
    images: tuple[str, ...] = _f((), "dataset images held out for validation by file name, never "
                                 "trained on")
    source: str = _f("", "a second dataset or folder to validate on (instead of holding images out)")
    every_n_steps: int = _f(100, "validate every this many updates, and at the end", lo=1)
    draws: int = _f(4, "fixed noise and timestep draws per validation image (more: a smoother "
                    "curve, slower)", lo=1, hi=64)
    seed: int = _f(0, "seed of the validation noise, timesteps and images: the same at every "
                   "validation, so runs and resumes compare", **_SEED)
    prompts: tuple[str, ...] = _f((), "prompts rendered at each validation with the fixed seed "
                                  "(sample.steps, guidance and size), for side-by-side comparison")


_TRACKER = "pip install 'lora-lab[track]'"


@dataclass(frozen=True)
class TrackSection:
    """Where the run is recorded besides the TensorBoard event files every run writes in its
    job folder (training/tracking.py)."""
    mlflow: bool = _f(False, f"also log the run to MLflow ({_TRACKER})")
    wandb: bool = _f(False, f"also log the run to Weights & Biases ({_TRACKER})")
    project: str = _f("lora-lab", "the MLflow experiment and the W&B project the run goes in",
                      pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}",
                      what="a name of up to 128 letters, digits, '-', '_' or '.'")
    run_name: str = _f("", "the run's name in MLflow and W&B; empty = the LoRA's name",
                       pattern=r"[^/\\#?%:\n]{0,128}", what="a name of up to 128 characters without / \\ # ? % :")
    mlflow_uri: str = _f("", "the MLflow tracking server (http(s)://host:port, or databricks); empty = "
                         "$MLFLOW_TRACKING_URI, else the workspace's own store (mlflow/mlflow.db)",
                         pattern=r"(?:https?://[^\s@/]+(?:/\S*)?|databricks(?:://[A-Za-z0-9_.-]+)?)?",
                         what="an http(s):// address without credentials (they go in "
                              "MLFLOW_TRACKING_USERNAME / _PASSWORD), databricks, or empty")
    wandb_mode: Literal["auto", "online", "offline"] = _f(
        "auto", "online uploads as it trains (after `wandb login`); offline keeps the run in the job "
                "folder for `wandb sync`; auto = $WANDB_MODE, else online")


def show_value(v: Any) -> str:
    """A value as the user wrote it, shortened."""
    if isinstance(v, bool):
        return "true" if v else "false"
    s = repr(v) if isinstance(v, (str, list)) else str(v)
    return s if len(s) <= 60 else s[:57] + "..."
