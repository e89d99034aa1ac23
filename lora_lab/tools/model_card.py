"""The model card a LoRA goes to the Hub with: a README.md with the Hub's YAML front matter
(base model, tags, licence, trigger word, widget entries for the sample images), the training
settings, the sample images and loss curves, and how to use the file in diffusers, ComfyUI and
A1111.

Everything comes from the file itself (its ``ss_*`` / ``modelspec.*`` metadata) and, when a
lora-lab job wrote it, from that job's record (:mod:`.lora_run`). Local paths never go into a
card: a folder or file is named by its last part only.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..workspace import Workspace
from .curves import loss_chart
from .lora_run import LoraRun, lora_run

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# the Hub's tags for the families it knows by name
_FAMILY_TAGS = {"sd15": ["stable-diffusion"], "sdxl": ["stable-diffusion-xl"], "flux": ["flux"],
                "flux2klein": ["flux2"], "zimage": ["z-image"], "qwenimage": ["qwen-image"],
                "chroma": ["chroma"]}
# the catalogue's licences as the Hub's licence ids: (license, license_name, license_link)
_LICENCES = {
    "Apache-2.0": ("apache-2.0", None, None),
    "CreativeML OpenRAIL-M": ("creativeml-openrail-m", None, None),
    "CreativeML OpenRAIL++-M": ("openrail++", None, None),
    "FLUX.1 [dev] Non-Commercial License": (
        "other", "flux-1-dev-non-commercial-license",
        "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md"),
}
# (label, ss_* key) of the settings table, in the order a reader looks for them
_SETTINGS = (
    ("Steps", "ss_steps"), ("Epochs", "ss_epoch"), ("Images (with repeats)", "ss_num_train_images"),
    ("Resolution", "ss_resolution"), ("Batch size", "ss_batch_size_per_device"),
    ("Gradient accumulation", "ss_gradient_accumulation_steps"), ("Optimizer", "ss_optimizer"),
    ("Learning rate", "ss_learning_rate"), ("Text encoder learning rate", "ss_text_encoder_lr"),
    ("LR scheduler", "ss_lr_scheduler"), ("Warmup steps", "ss_lr_warmup_steps"),
    ("Mixed precision", "ss_mixed_precision"), ("Seed", "ss_seed"), ("Noise offset", "ss_noise_offset"),
    ("Min-SNR gamma", "ss_min_snr_gamma"), ("Caption dropout", "ss_caption_dropout_rate"),
    ("Network module", "ss_network_module"), ("Network args", "ss_network_args"),
)
# settings whose zero means "off": left out at zero
_OFF_AT_ZERO = {"ss_text_encoder_lr", "ss_lr_warmup_steps", "ss_noise_offset", "ss_min_snr_gamma",
                "ss_caption_dropout_rate"}
_PATH_KEYS = {("model", "base"), ("model", "vae"), ("model", "config"), ("model", "adapter"),
              ("dataset", "source"), ("save", "output_dir")}


@dataclass
class ModelCard:
    readme: str
    images: dict[str, bytes] = field(default_factory=dict)  # path in the repo -> PNG


def model_card(lora: Path, repo_id: str, workspace: Workspace | None = None,
               described: dict[str, Any] | None = None) -> ModelCard:
    """The card of the LoRA file ``lora`` (checked to be one) for the repo ``repo_id``;
    ``described``: what describe_lora says of it, when it was read already."""
    from ..training.lora_file import describe_lora

    described = described or describe_lora(lora)
    meta = described["metadata"]
    run = lora_run(lora, _int(meta.get("ss_steps")), workspace)
    facts = _facts(lora, described, run)
    images: dict[str, bytes] = {}
    widget = []
    for sample in run.samples if run else []:
        name = f"images/sample-{sample.index}.png"
        images[name] = sample.path.read_bytes()
        widget.append({"text": sample.prompt or facts["trigger"] or facts["title"], "output": {"url": name}})
    if run and len(run.losses) > 1:
        images["images/training-loss.png"] = loss_chart(run.losses, "training loss")
    if run and run.validation:
        images["images/validation-loss.png"] = loss_chart(
            run.validation, "validation loss", marked=[run.best] if run.best else [], dots=True)
    front = _front_matter(facts, widget)
    body = _body(lora, repo_id, facts, described, run, images)
    return ModelCard(f"---\n{front}---\n\n{body}", images)


def _facts(lora: Path, described: dict[str, Any], run: LoraRun | None) -> dict[str, Any]:
    from ..training.families import FAMILIES

    meta, config = described["metadata"], run.config if run else {}
    family = FAMILIES.get(described["family"])
    base_name = (config.get("model") or {}).get("base") or meta.get("ss_sd_model_name") or ""
    base_repo, licence = _base_repo(base_name)
    licence = licence or meta.get("modelspec.license")
    trigger = meta.get("modelspec.trigger_phrase") or (config.get("dataset") or {}).get("trigger") or ""
    title = meta.get("modelspec.title") or ""
    if not title or title.startswith("LoRA@"):  # sd-scripts' stand-in for a run without a name
        title = meta.get("ss_output_name") or lora.stem
    return {"family": family, "base_repo": base_repo, "base_name": _shown(base_name),
            "licence": _LICENCES.get(licence, (None, None, None)) if licence else (None, None, None),
            "licence_text": licence, "trigger": trigger,
            "title": title, "prompt": run.samples[0].prompt if run and run.samples else trigger}


def _base_repo(base: str) -> tuple[str | None, str | None]:
    """The Hub id of the base model (a Hub id itself, a folder pulled from one, or a catalogue
    name) and its licence where the catalogue knows it."""
    from ..models.catalogue import CATALOGUE
    from ..models.local import read_record

    repo = None
    if base in CATALOGUE:
        repo = CATALOGUE[base].repo
    elif _HUB_ID.fullmatch(base) and not Path(base).exists():
        repo = base
    elif base and Path(base).is_dir():
        record = read_record(Path(base)) or {}
        repo = record.get("repo") if isinstance(record.get("repo"), str) else None
    licence = next((m.licence for m in CATALOGUE.values() if m.repo == repo), None)
    return repo, licence


def _shown(value: str) -> str:
    """A local path by its last part only (a Hub id or a plain name as it is)."""
    if value.startswith(("/", "~", ".")) or Path(value).exists():
        return Path(value.rstrip("/")).name
    return value


def _front_matter(facts: dict[str, Any], widget: list[dict[str, Any]]) -> str:
    from huggingface_hub import ModelCardData

    family = facts["family"]
    tags = ["text-to-image", "lora", "diffusers", "lora-lab"]
    tags += (_FAMILY_TAGS.get(family.name, [family.name]) if family else []) + ["template:sd-lora"]
    licence, licence_name, licence_link = facts["licence"]
    data = ModelCardData(base_model=facts["base_repo"], license=licence, license_name=licence_name,
                         license_link=licence_link, tags=tags, pipeline_tag="text-to-image",
                         library_name="diffusers", instance_prompt=facts["trigger"] or None,
                         widget=widget or None)
    return data.to_yaml() + "\n"


def _body(lora: Path, repo_id: str, facts: dict[str, Any], described: dict[str, Any],
          run: LoraRun | None, images: dict[str, bytes]) -> str:
    family, trigger = facts["family"], facts["trigger"]
    base = facts["base_repo"] or facts["base_name"] or "its base model"
    lines = [f"# {facts['title']}", "",
             f"A LoRA for {family.title if family else 'an unknown model family'}, trained on "
             f"{_link(facts['base_repo']) if facts['base_repo'] else f'`{base}`'}"
             + (" with lora-lab." if run else "."), ""]
    if trigger:
        lines += [f"**Trigger word:** `{trigger}` (put it in the prompt)", ""]
    samples = [p for p in images if p.startswith("images/sample-")]
    if samples:
        lines += [f"## Samples (step {run.sample_step})", ""]
        lines += [f"![{_escape(s.prompt)}]({p})" for s, p in zip(run.samples, samples)] + [""]
        lines += [f"{i}. `{_escape(s.prompt)}`" for i, s in enumerate(run.samples, 1)] + [""]
    lines += _usage(lora, repo_id, facts)
    lines += _settings(described, run)
    lines += _curves(run, images)
    if facts["licence_text"]:
        lines += ["## Licence", "", f"The base model's licence applies: {facts['licence_text']}.", ""]
    return "\n".join(lines).rstrip() + "\n"


def _usage(lora: Path, repo_id: str, facts: dict[str, Any]) -> list[str]:
    family, prompt = facts["family"], facts["prompt"] or "a photo"
    pipeline = family.pipeline if family else "DiffusionPipeline"
    dtype = "float16" if family and family.denoiser == "unet" else "bfloat16"
    base, note = facts["base_repo"], ""
    if base is None:  # trained on a local model: the family's usual base stands in for it
        base = _family_base(family) or "BASE_MODEL"
        note = f"  # the base it was trained on: {facts['base_name'] or 'unknown'}"
    lines = ["## Use it", "", "### diffusers", "", "```python", "import torch",
             f"from diffusers import {pipeline}", "",
             f'pipe = {pipeline}.from_pretrained("{base}", torch_dtype=torch.{dtype}).to("cuda"){note}',
             f'pipe.load_lora_weights("{repo_id}", weight_name="{lora.name}")',
             f'image = pipe("{prompt}").images[0]', "```", "", "### ComfyUI", "",
             f"Put `{lora.name}` in `ComfyUI/models/loras/` and load it with a **LoraLoader** node"
             + (" (or **LoraLoaderModelOnly**, which adapts the model alone)."
                if family and family.denoiser == "transformer" else "."), ""]
    if family is None or family.denoiser == "unet":
        lines += ["### A1111 / Forge", "",
                  f"Put `{lora.name}` in `models/Lora/` and add `<lora:{lora.stem}:1>` to the prompt.", ""]
    return lines


def _family_base(family: Any) -> str | None:
    from ..models.catalogue import CATALOGUE

    return next((m.repo for m in CATALOGUE.values() if family and m.kind == "base"
                 and m.family == family.name), None)


def _settings(described: dict[str, Any], run: LoraRun | None) -> list[str]:
    meta = described["metadata"]
    rows = [("Format", described["format"]), ("Family", described["family"]),
            ("Ranks", ", ".join(map(str, described["ranks"]))),
            ("Alphas", ", ".join(f"{a:g}" for a in described["alphas"])),
            ("DoRA", "yes" if described["dora"] else "")]
    rows += [(label, meta[key]) for label, key in _SETTINGS if _shows(key, meta.get(key))]
    lines = ["## Training settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {label} | {_escape(str(value))} |" for label, value in rows if value != ""]
    lines += [""] + _top_tags(meta)
    if run:
        import tomli_w

        lines += ["<details><summary>The lora-lab config of the run</summary>", "", "```toml",
                  tomli_w.dumps(_without_paths(run.config)).rstrip(), "```", "", "</details>", ""]
    return lines


def _shows(key: str, value: str | None) -> bool:
    if value in (None, "", "None", "{}"):
        return False
    try:
        return not (key in _OFF_AT_ZERO and float(value) == 0)
    except ValueError:
        return True


def _top_tags(meta: dict[str, str]) -> list[str]:
    try:
        folders = json.loads(meta.get("ss_tag_frequency") or "{}")
    except ValueError:
        return []
    counts: dict[str, int] = {}
    for tags in folders.values() if isinstance(folders, dict) else []:
        for tag, n in tags.items() if isinstance(tags, dict) else []:
            counts[tag] = counts.get(tag, 0) + int(n)
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:15]
    return [f"Most frequent caption tags: {', '.join(f'`{_escape(t)}` ({n})' for t, n in top)}", ""] if top else []


def _without_paths(config: dict[str, Any]) -> dict[str, Any]:
    return {table: {k: _shown(v) if (table, k) in _PATH_KEYS and isinstance(v, str) else v
                    for k, v in values.items() if v is not None}
            for table, values in config.items() if isinstance(values, dict)}


def _curves(run: LoraRun | None, images: dict[str, bytes]) -> list[str]:
    lines = []
    if "images/training-loss.png" in images:
        lines += ["## Training loss", "", "![training loss](images/training-loss.png)", ""]
    if "images/validation-loss.png" in images:
        best = f" The best validation loss, {run.best[1]:.4g}, came at step {run.best[0]}." if run.best else ""
        lines += ["## Validation loss", "",
                  "Measured on held-out images at fixed timesteps and noise, so the curve compares "
                  f"between checkpoints.{best}", "", "![validation loss](images/validation-loss.png)", ""]
    return lines


def _link(repo: str) -> str:
    return f"[{repo}](https://huggingface.co/{repo})"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'").replace("\n", " ")


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
