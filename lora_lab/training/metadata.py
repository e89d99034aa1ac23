"""The facts about a run that kohya's ``ss_*`` metadata records (see lora_file.ss_metadata)."""
from __future__ import annotations

import math
import time
from typing import Any

from ..datasets.captions import split_tags
from .adapters import conv_alpha
from .config import TrainConfig
from .train_image import TrainImage


def run_facts(cfg: TrainConfig, family: str, images: list[TrainImage], *, step: int, total: int,
              steps_per_epoch: int, base_name: str, started_at: float | None,
              job_id: str) -> dict[str, Any]:
    t, n = cfg.train, cfg.network
    tags: dict[str, dict[str, int]] = {}
    dirs: dict[str, dict[str, int]] = {}
    for img in images:
        name = f"{img.repeats}_{img.folder}"  # kohya names dataset dirs by their repeats
        dirs.setdefault(name, {"n_repeats": img.repeats, "img_count": 0})["img_count"] += 1
        freq = tags.setdefault(name, {})
        for tag in split_tags(img.caption):
            freq[tag] = freq.get(tag, 0) + 1
    return {
        "family": family, "network_dim": n.rank, "network_alpha": n.alpha,
        "conv_dim": n.conv_rank if n.targets == "locon" else 0, "conv_alpha": conv_alpha(n),
        "dora": n.dora, "resolution": cfg.dataset.resolution, "tag_frequency": tags,
        "dataset_dirs": dirs, "training_started_at": started_at,
        "training_finished_at": time.time(), "sd_model_name": base_name,
        "steps": step, "epoch": math.ceil(step / steps_per_epoch),
        "num_epochs": math.ceil(total / steps_per_epoch), "max_train_steps": total,
        "learning_rate": t.lr, "unet_lr": t.lr,
        "text_encoder_lr": t.text_encoder_lr if n.train_text_encoder else 0,
        "seed": t.seed, "batch_size_per_device": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum, "optimizer": t.optimizer,
        "lr_scheduler": t.scheduler, "lr_warmup_steps": t.warmup_steps,
        "noise_offset": t.noise_offset, "min_snr_gamma": t.min_snr_gamma,
        "mixed_precision": t.mixed_precision, "max_grad_norm": t.max_grad_norm,
        "gradient_checkpointing": t.gradient_checkpointing,
        "num_train_images": sum(i.repeats for i in images),
        "network_dropout": n.dropout, "caption_dropout_rate": cfg.dataset.caption_dropout,
        "training_comment": cfg.save.comment, "output_name": cfg.save.name,
        "trigger_phrase": cfg.dataset.trigger or None, "session_id": job_id,
    }
