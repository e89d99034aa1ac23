"""The memory options a 24 GB card needs, on the tiny models: a frozen base stored in int8
(torchao), the 8-bit AdamW (bitsandbytes), both through exact resume, and what is refused
before a job exists when a package is missing or a setting cannot go with them (fp8 on a CPU:
test_train_errors)."""
from __future__ import annotations

import importlib.util
import json
import signal

import pytest
import torch
from safetensors.torch import load_file
from test_train import config
from test_train_resume import _run, _same_weights, _start, _wait_for

from lora_lab import Workspace
from lora_lab.errors import LoraLabError
from lora_lab.jobdir import JobRecord
from lora_lab.training.config import ConfigError
from lora_lab.training.preflight import check_train
from lora_lab.training.trainer import Trainer


def _stored_bytes(weight: torch.Tensor) -> int:
    """Bytes a weight holds, a torchao tensor's quantized data and scales included."""
    if type(weight).__name__ in ("Parameter", "Tensor"):
        return weight.nbytes
    return sum(getattr(weight, name).nbytes for name in weight.__tensor_flatten__()[0])


def _dtypes(state: dict) -> set[torch.dtype]:
    """The dtypes of the tensors in an optimizer state, however deep (bitsandbytes nests its own)."""
    return {d for v in state.values() for d in (_dtypes(v) if isinstance(v, dict) else
                                                 {v.dtype} if isinstance(v, torch.Tensor) else ())}


def _train(ws, models, family, quantize):
    cfg = config(models, family, model={"quantize": quantize}, network={"rank": 4})
    trainer = Trainer(cfg, JobRecord.create("train", {}, ws), ws)
    return trainer, trainer.run()


@pytest.mark.parametrize("family", ["sd15", "zimage"])
def test_a_base_stored_in_int8_trains_nearly_the_same_lora(ws, tiny_models, tiny_flow, family):
    models = {**tiny_models, **tiny_flow}
    plain, plain_out = _train(ws, models, family, "none")
    quant, quant_out = _train(ws, models, family, "int8")
    frozen = {type(m.weight).__name__: m.weight for m in quant.base.denoiser.modules()
              if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad}
    assert set(frozen) == {"Int8Tensor"}
    linears = [(m.weight, q.weight) for m, q in zip(plain.base.denoiser.modules(),
                                                     quant.base.denoiser.modules())
               if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad]
    full = sum(_stored_bytes(w) for w, _ in linears)
    assert sum(_stored_bytes(q) for _, q in linears) < 0.4 * full  # fp32 on CPU: 4 bytes -> 1 + scales
    assert all(p.dtype == torch.float32 for p in quant.models[0].parameters() if p.requires_grad)
    a, b = load_file(plain_out.output), load_file(quant_out.output)
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the 8-bit base is not the full-precision one
    flat = [torch.cat([t[k].flatten().float() for k in sorted(t)]) for t in (a, b)]
    assert torch.nn.functional.cosine_similarity(*flat, dim=0) > 0.99


def test_8_bit_adam_on_an_8_bit_base_resumes_exactly_after_kill_9(ws, tiny_flow, tmp_path):
    # rank 32 on the feed-forward: bitsandbytes keeps moments of tensors under 4096 values in fp32
    cfg = config(tiny_flow, "zimage", model={"quantize": "int8"},
                 network={"rank": 32, "targets": "attn_mlp"},
                 train={"max_steps": 8, "optimizer": "adamw8bit", "batch_size": 2},
                 save={"every_n_steps": 4}).write(tmp_path / "run.toml")
    elsewhere = Workspace(tmp_path / "reference")
    reference = load_file(json.loads(_run(elsewhere, "train", cfg, "--json").stdout)["output"])
    proc = _start(ws, "train", cfg)
    job = _wait_for(ws, proc, "checkpoint", 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(job.path / "checkpoints" / "step-000004" / "training.pt", weights_only=True)
    assert torch.uint8 in _dtypes(saved["optimizer"]["state"])  # the moments really are 8-bit
    out = json.loads(_run(ws, "train", "--resume", job.id, "--json").stdout)
    assert out["steps"] == 8
    _same_weights(load_file(out["output"]), reference)


def test_dora_on_an_8_bit_base_is_refused(tiny_models):
    with pytest.raises(ConfigError, match=r"network.dora: DoRA needs the full-precision weights that "
                                          r"model.quantize \(fp8\) stores in 8 bits"):
        config(tiny_models, model={"quantize": "fp8"}, network={"dora": True})


@pytest.mark.parametrize("key, value, package", [("model.quantize", "int8", "torchao"),
                                                 ("train.optimizer", "adamw8bit", "bitsandbytes")])
def test_a_missing_package_is_refused_with_how_to_install_it(ws, tiny_models, monkeypatch, key, value,
                                                          package):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package
                        else real(name, *a))
    data = config(tiny_models).to_dict()
    table, field = key.split(".")
    data[table][field] = value
    with pytest.raises(LoraLabError, match=fr"{key}: {value} needs the {package} package "
                                           r"\(pip install 'lora-lab\[memory\]'\); or set it to"):
        check_train(data, ws, ws.root)
