"""Training on the tiny SD1.5 and SDXL models: the CLI run, its records, and files that load."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lora_lab.jobdir import JobRecord
from lora_lab.training.config import TrainConfig
from lora_lab.training.lora_file import read_lora
from lora_lab.training.trainer import Trainer

PHASES = ["validating", "loading dataset", "preparing model", "caching", "training", "sampling",
          "exporting"]


def config(tiny_models, family="sd15", **sections) -> TrainConfig:
    d = {"model": {"base": str(tiny_models[family])},
         "dataset": {"source": str(tiny_models["samples"]), "resolution": 64, "min_bucket": 64,
                     "max_bucket": 128, "trigger": "sks"},
         "train": {"max_steps": 4, "lr": 1e-3}}
    for name, values in sections.items():
        d.setdefault(name, {}).update(values)
    return TrainConfig.from_dict(d)


def test_cli_trains_with_checkpoints_samples_and_events(cli, ws, tiny_models, tmp_path):
    path = config(tiny_models, train={"max_steps": 6}, save={"every_n_steps": 2, "keep_last": 2},
                  sample={"every_n_steps": 3, "prompts": ["sks, a red circle"], "steps": 2}
                  ).write(tmp_path / "run.toml")
    out = json.loads(cli("train", path, "--json")[1])
    job = JobRecord(ws.jobs / out["job"])
    assert job.status()["state"] == "succeeded" and out["steps"] == 6
    events = job.events()
    phases = [e["phase"] for e in events if e["type"] == "phase"]
    assert phases == PHASES[:5] + ["sampling", "training"] * 2 + ["exporting"]
    assert list(dict.fromkeys(phases)) == PHASES
    kinds = [e["type"] for e in events]
    assert kinds.count("progress") == 6 and kinds[-1] == "done"
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [2, 4]
    assert [e["step"] for e in events if e["type"] == "sample"] == [3, 6]
    progress = [e for e in events if e["type"] == "progress"]
    assert all(np.isfinite(e["loss"]) and e["total"] == 6 and e["lr"] > 0 for e in progress)
    assert sorted(p.name for p in (job.path / "checkpoints").iterdir()) == ["step-000002",
                                                                            "step-000004"]
    assert len(list((job.path / "samples").glob("step-*.png"))) == 2
    tensors, meta = read_lora(out["output"])
    assert all(k.startswith("lora_unet_") for k in tensors)
    assert meta["ss_steps"] == "6" and meta["ss_network_dim"] == "16"
    assert json.loads(meta["ss_dataset_dirs"]) == {"1_samples": {"n_repeats": 1, "img_count": 8}}


def _images(pipe, prompt="sks, a red circle"):
    return pipe(prompt, num_inference_steps=2, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(0)).images[0]


@pytest.mark.parametrize("family, fmt", [("sd15", "kohya"), ("sdxl", "kohya"),
                                         ("sdxl", "diffusers")])
def test_the_saved_lora_reproduces_the_trained_model(ws, tiny_models, family, fmt):
    cfg = config(tiny_models, family, network={"rank": 4, "alpha": 2, "train_text_encoder": True},
                 save={"format": fmt})
    trainer = Trainer(cfg, JobRecord.create("train", {}, ws), ws)
    result = trainer.run()
    for model in trainer.models:
        model.eval()
    trained = _images(trainer.base.pipeline)
    from lora_lab.training.base_model import load_base_model

    fresh = load_base_model(str(tiny_models[family]), family).pipeline
    untouched = _images(fresh)
    fresh.load_lora_weights(str(result.output))
    assert np.array_equal(_images(fresh), trained)
    assert not np.array_equal(untouched, trained)  # the LoRA (UNet and text encoders) did something
