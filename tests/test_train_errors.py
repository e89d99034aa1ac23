"""Bad training input: a clear message naming the cause, before the expensive work, nothing
half-written."""
from __future__ import annotations

import errno
import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_train import config

from lora_lab.errors import LoraLabError
from lora_lab.jobdir import JobRecord
from lora_lab.training.config import TrainConfig
from lora_lab.training.job import train


def run(ws, cfg, resume=False, job=None):
    job = job or JobRecord.create("train", {"config": cfg.to_dict()}, ws)
    train(cfg, job, resume=resume, workspace=ws)
    return job


def fails(ws, cfg, match, **kw) -> JobRecord:
    job = JobRecord.create("train", {"config": cfg.to_dict()}, ws)
    with pytest.raises(LoraLabError, match=match):
        run(ws, cfg, job=job, **kw)
    assert job.status()["state"] == "failed"
    # no final LoRA, not even a partial one; intermediate saves already written are whole
    assert not [p for p in ws.loras.iterdir() if not re.search(r"-\d{6}\.safetensors$", p.name)]
    for p in ws.loras.iterdir():
        load_file(p)
    return job


def test_invalid_config_through_the_cli(cli, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[model]\nbase = "m"\n[dataset]\nsource = "d"\n[train]\nlr = -1\noptimiser = "adamw"\n')
    rc, _, err = cli("train", path, ok=False)
    assert rc == 1 and "train.lr: -1 is out of range" in err
    assert "train.optimiser: unknown key (did you mean train.optimizer?)" in err
    assert "lora-lab train --init" in cli.fails("train", tmp_path / "missing.toml")


def test_bad_base_models(ws, tiny_models, tmp_path):
    def with_base(base):
        return config(tiny_models, model={"base": str(base)})

    fails(ws, with_base(tmp_path / "nowhere"), "model.base: .*nowhere does not exist")
    fails(ws, with_base(tmp_path), "is a folder but not a diffusers model")
    lora = tmp_path / "a_lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, lora)
    fails(ws, with_base(lora), "not an SD1.5, SDXL or Z-Image checkpoint")
    (tmp_path / "fake.safetensors").write_bytes(b"not safetensors")
    fails(ws, with_base(tmp_path / "fake.safetensors"), "not a readable .safetensors file")


def test_datasets_that_cannot_train(ws, tiny_models, tmp_path):
    (tmp_path / "empty").mkdir()
    fails(ws, config(tiny_models, dataset={"source": str(tmp_path / "empty")}), "no images in")
    fails(ws, config(tiny_models, dataset={"source": "nosuchset"}),
          "'nosuchset' is neither a dataset")
    fails(ws, config(tiny_models, dataset={"trigger": ""}),
          r"3 of 8 images have no caption \(e.g. purple_square.jpg")


def test_sizes_the_model_cannot_take(ws, tiny_models, tmp_path):
    small = shutil.copytree(tiny_models["sd15"], tmp_path / "native256")
    unet_config = small / "unet" / "config.json"
    unet_config.write_text(json.dumps({**json.loads(unet_config.read_text()), "sample_size": 32}))
    fails(ws, config(tiny_models, model={"base": str(small)}),
          "dataset.resolution: 64 is below this model's minimum 128")
    fails(ws, config(tiny_models, dataset={"bucket_step": 8, "resolution": 128, "max_bucket": 256}),
          "does not fit this model: sides must be multiples of 16")


def test_missing_optimizer_package_and_fp16_or_fp8_on_cpu(ws, tiny_models):
    fails(ws, config(tiny_models, train={"optimizer": "prodigy"}),
          "needs the prodigyopt package")
    fails(ws, config(tiny_models, train={"mixed_precision": "fp16"}), "fp16 needs a CUDA GPU")
    fails(ws, config(tiny_models, model={"quantize": "fp8"}),
          "model.quantize: fp8 needs a GPU with fp8 support .*; use int8, which runs anywhere")


def test_nan_loss_stops_before_the_update(ws, tiny_models, tmp_path):
    broken = shutil.copytree(tiny_models["sd15"], tmp_path / "nan-model")
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["conv_out.bias"] = torch.full_like(tensors["conv_out.bias"], float("nan"))
    save_file(tensors, weights)
    job = fails(ws, config(tiny_models, model={"base": str(broken)}),
                "the loss became nan at step 1, so training stopped before that update; "
                "no checkpoint was saved")
    assert not [e for e in job.events() if e["type"] == "progress"]


def _checkpointed(ws, tiny_models) -> tuple[TrainConfig, JobRecord]:
    """A run killed after its checkpoint at step 2 (as if: it ran to the end, the LoRA deleted)."""
    cfg = config(tiny_models, train={"max_steps": 3}, save={"every_n_steps": 2})
    job = run(ws, cfg)
    for f in ws.loras.iterdir():
        f.unlink()
    return cfg, job


def test_resume_refuses_a_family_change_and_a_damaged_checkpoint(ws, tiny_models):
    cfg, job = _checkpointed(ws, tiny_models)
    sdxl = config(tiny_models, "sdxl", train={"max_steps": 3}, save={"every_n_steps": 2})
    with pytest.raises(LoraLabError, match="cannot resume from step-000002: it trained a sd15 "
                                           "model, the config names a sdxl one"):
        run(ws, sdxl, resume=True, job=job)
    changed = config(tiny_models, train={"max_steps": 3, "lr": 5e-4}, save={"every_n_steps": 2})
    with pytest.raises(LoraLabError, match="the training settings changed"):
        run(ws, changed, resume=True, job=job)
    state = job.path / "checkpoints" / "step-000002" / "training.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(LoraLabError, match="checkpoint .*step-000002 is damaged .*delete that "
                                           "folder to resume from the one before it"):
        run(ws, cfg, resume=True, job=job)


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(ws, tiny_models, monkeypatch):
    cfg = config(tiny_models, train={"max_steps": 5}, save={"every_n_steps": 2})
    real_save, calls = torch.save, []

    def save(obj, f, *a, **kw):
        if not hasattr(f, "write"):  # a checkpoint file, not the latent cache's open file
            calls.append(f)
        if len(calls) > 2:  # rng + training state of the first checkpoint, then a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    job = fails(ws, cfg, r"could not save the checkpoint at step 4 \(\[Errno 28\] No space left "
                         r"on device\); step-000002 is intact")
    assert [p.name for p in (job.path / "checkpoints").iterdir()] == ["step-000002"]


def test_a_full_disk_while_caching_latents(ws, tiny_models, monkeypatch):
    def save(obj, f, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)
    fails(ws, config(tiny_models), r"could not write the latent cache .*No space left on device.*"
                                   "dataset.cache_latents = false")
