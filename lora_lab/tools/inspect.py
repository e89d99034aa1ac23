"""``lora-lab lora inspect``: what a LoRA file holds, for people and scripts.

Builds on :func:`lora_lab.training.lora_file.describe_lora` (format, family, ranks, alphas,
parts) and adds the targeted modules grouped by kind, sd-scripts' training metadata in readable
form, the dataset's tag frequencies and the hashes A1111 and Civitai show.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from collections import Counter
from typing import Any

from lora_lab.errors import LoraLabError
from lora_lab.training.families import FAMILIES
from lora_lab.training.lora_file import describe_lora, file_model_hash, read_lora

from .layouts import read_modules

# sd-scripts' keys, in the order and words a person reads them
_TRAINING = (
    ("base model", "ss_sd_model_name"), ("base version", "ss_base_model_version"),
    ("resolution", "ss_resolution"), ("images", "ss_num_train_images"), ("epochs", "ss_num_epochs"),
    ("steps", "ss_steps"), ("batch size", "ss_batch_size_per_device"),
    ("gradient accumulation", "ss_gradient_accumulation_steps"), ("learning rate", "ss_learning_rate"),
    ("unet lr", "ss_unet_lr"), ("text encoder lr", "ss_text_encoder_lr"), ("optimizer", "ss_optimizer"),
    ("scheduler", "ss_lr_scheduler"), ("warmup steps", "ss_lr_warmup_steps"), ("seed", "ss_seed"),
    ("mixed precision", "ss_mixed_precision"), ("noise offset", "ss_noise_offset"),
    ("min SNR gamma", "ss_min_snr_gamma"), ("network", "ss_network_module"), ("network dim", "ss_network_dim"),
    ("network alpha", "ss_network_alpha"), ("network args", "ss_network_args"),
    ("title", "modelspec.title"), ("author", "modelspec.author"), ("trigger", "modelspec.trigger_phrase"),
    ("comment", "ss_training_comment"),
)
_DATES = (("started", "ss_training_started_at"), ("finished", "ss_training_finished_at"))
_ABSENT = ("", "None", "{}", "null")
_LIST = re.compile(r"(blocks|block|attentions|resnets|samplers|layers|refiner)$")  # lists of numbered modules


def _date(value: str) -> str | None:
    try:
        return datetime.datetime.fromtimestamp(float(value), datetime.UTC).isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):
        return None


def _json(metadata: dict[str, str], key: str) -> Any:
    try:
        return json.loads(metadata.get(key) or "null")
    except json.JSONDecodeError:
        return None


def training_facts(metadata: dict[str, str]) -> dict[str, Any]:
    """sd-scripts' metadata as {what: value} in reading order, dates as ISO 8601 (UTC), the
    dataset as {folder: {repeats, images}}; keys the file lacks are left out."""
    facts: dict[str, Any] = {label: metadata[key] for label, key in _TRAINING
                             if metadata.get(key) not in (None, *_ABSENT)}
    for label, key in _DATES:
        if metadata.get(key) and (when := _date(metadata[key])):
            facts[label] = when
    dirs = _json(metadata, "ss_dataset_dirs")
    if isinstance(dirs, dict) and dirs:
        facts["dataset"] = {name: {"repeats": d.get("n_repeats"), "images": d.get("img_count")}
                            for name, d in dirs.items() if isinstance(d, dict)}
    return facts


def tag_frequencies(metadata: dict[str, str]) -> dict[str, int]:
    """ss_tag_frequency summed over the dataset's folders, most frequent first."""
    folders = _json(metadata, "ss_tag_frequency")
    counts: Counter[str] = Counter()
    if isinstance(folders, dict):
        for tags in folders.values():
            if isinstance(tags, dict):
                counts.update({str(t).strip(): int(n) for t, n in tags.items() if isinstance(n, (int, float))})
    return dict(counts.most_common())


def file_hashes(path: str | os.PathLike, metadata: dict[str, str]) -> dict[str, Any]:
    """sha256 of the file (Civitai's SHA256; its first 10 digits are A1111's and Civitai's
    AutoV2), the "addnet" hash of the tensor bytes A1111 shows for LoRAs (sd-scripts stores it as
    sshs_model_hash: whether the stored one still matches is said too)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    addnet = file_model_hash(path)
    stored = metadata.get("sshs_model_hash")
    return {"sha256": digest.hexdigest(), "autov2": digest.hexdigest()[:10], "addnet": addnet,
            "addnet_short": addnet[:12], "stored_model_hash": stored,
            "stored_hash_matches": None if stored is None else stored == addnet}


def _kind(path: str) -> tuple[str, str]:
    """(block list, module in a block) of a module path: ("down_blocks", "attn1.to_q") of
    "down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q"."""
    parts = path.split(".")
    last = max((i for i in range(1, len(parts)) if parts[i].isdigit() and _LIST.search(parts[i - 1])), default=-1)
    return parts[0] if last > 0 else "", ".".join(parts[last + 1:])


def module_groups(path: str | os.PathLike, family: str, fmt: str) -> dict[str, dict[str, int]]:
    """The adapted modules by part and block list, counted per module kind, in diffusers' names
    whatever the layout: {"unet down_blocks": {"attn1.to_q": 2, ...}, "text_encoder text_model": ...}."""
    tensors, metadata = read_lora(path)
    try:
        names = list(read_modules(tensors, metadata, fmt, family))
    except LoraLabError:  # a layout the converter does not read: the file's own names
        names = [k.rsplit(".lora", 1)[0] for k in tensors if k.endswith((".lora_down.weight", ".lora_A.weight"))]
    groups: dict[str, Counter[str]] = {}
    for name in sorted(names):
        component, _, rest = name.partition(".")
        block, module = _kind(rest)
        groups.setdefault(f"{component} {block}".strip(), Counter())[module] += 1
    return {g: dict(c) for g, c in groups.items()}


def inspect_lora(path: str | os.PathLike) -> dict[str, Any]:
    """Everything `lora-lab lora inspect` shows, as JSON-ready data: describe_lora's facts plus
    groups, training, tags and hashes (the raw metadata stays under "metadata")."""
    described = describe_lora(path)
    metadata = described["metadata"]
    family = described["family"]
    groups = module_groups(path, family, described["format"]) if family in FAMILIES else {}
    return {**described, "groups": groups, "training": training_facts(metadata),
            "tags": tag_frequencies(metadata), "hashes": file_hashes(path, metadata)}


def render(report: dict[str, Any], top_tags: int = 20) -> str:
    """The report as text for a terminal."""
    title = FAMILIES[report["family"]].title if report["family"] in FAMILIES else report["family"]
    names = f" (UNet names: {report['unet_names']})" if report.get("unet_names") else ""
    lines = [
        f"{report['path']}",
        f"  format   {report['format']}{names}",
        f"  family   {title}",
        f"  ranks    {', '.join(map(str, report['ranks']))}    alphas {', '.join(f'{a:g}' for a in report['alphas'])}",
        "  modules  " + ", ".join(f"{part} {n}" for part, n in report["modules"].items() if n)
        + (f"; {report['conv_modules']} conv" if report["conv_modules"] else "") + ("; DoRA" if report["dora"] else ""),
        f"  dtypes   {', '.join(report['dtypes'])}    size {report['size_bytes']:,} bytes",
    ]
    if report["groups"]:
        lines.append("targets")
        lines += [f"  {group}: " + ", ".join(f"{module} ×{n}" for module, n in kinds.items())
                  for group, kinds in report["groups"].items()]
    if report["training"]:
        lines.append("training")
        for label, value in report["training"].items():
            if label == "dataset":
                value = "; ".join(f"{name}: {d['images']} images × {d['repeats']}" for name, d in value.items())
            lines.append(f"  {label:22s}{value}")
    if report["tags"]:
        shown = list(report["tags"].items())[:top_tags]
        more = len(report["tags"]) - len(shown)
        lines.append(f"tags ({len(report['tags'])})")
        lines.append("  " + ", ".join(f"{tag} {n}" for tag, n in shown) + (f", … {more} more" if more > 0 else ""))
    h = report["hashes"]
    stored = "" if h["stored_hash_matches"] is None else \
        "  (sshs_model_hash matches)" if h["stored_hash_matches"] else "  (sshs_model_hash is stale)"
    lines += ["hashes", f"  sha256   {h['sha256']}", f"  AutoV2   {h['autov2']}",
              f"  addnet   {h['addnet_short']}{stored}"]
    return "\n".join(lines)
