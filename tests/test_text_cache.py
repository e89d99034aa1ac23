"""Text-encoder outputs cached to disk and the encoders freed: every family's encoded sample
prompts give its pipeline's own images, the cache is reused and follows the encoders, and runs
whose captions change every step keep their encoders."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_train import config

from lora_lab.errors import LoraLabError
from lora_lab.jobdir import JobRecord
from lora_lab.tiny import FLOW_FAMILIES
from lora_lab.training.base_model import load_base_model
from lora_lab.training.families import get_family
from lora_lab.training.text_cache import TextCache, free_text_encoders
from lora_lab.training.trainer import Trainer

CPU = torch.device("cpu")


def _string_call(family: str, guidance: float, negative: str) -> dict:
    """How a user calls the family's pipeline with prompts as text, CFG on."""
    if family == "qwenimage":
        return {"true_cfg_scale": guidance, "negative_prompt": negative}
    if family in ("flux", "flux2klein"):  # no negative prompt without true CFG; always ""
        return {"guidance_scale": guidance}
    return {"guidance_scale": guidance, "negative_prompt": negative}


@pytest.mark.parametrize("family", ["sd15", "sdxl", *FLOW_FAMILIES])
def test_encoded_prompts_give_the_pipelines_own_images(tiny_models, tiny_flow, family):
    pipe = load_base_model(str({**tiny_models, **tiny_flow}[family]), family).pipeline
    spec = get_family(family)

    def images(**inputs):
        return pipe(**inputs, num_inference_steps=2, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]

    own = images(prompt="sks, a red circle", **_string_call(family, 4.0, "blurry, dark"))
    with torch.no_grad():
        inputs = spec.prompt_inputs(pipe, "sks, a red circle", "blurry, dark", 4.0, CPU)
    free_text_encoders(spec, pipe)
    assert all(getattr(pipe, name) is None for name in spec.text_encoders)
    assert np.allclose(images(**inputs), own, atol=1e-6)


def test_the_cache_is_reused_and_follows_the_encoders(tiny_models, tmp_path):
    pipe = load_base_model(str(tiny_models["sd15"]), "sd15").pipeline
    spec = get_family("sd15")
    cache = TextCache(spec, pipe, CPU, tmp_path)
    cache.fill(["a red circle", "a blue square"])
    assert cache.misses == 2
    with torch.no_grad():
        assert torch.equal(cache.get("a red circle")[0], spec.encode(pipe, ["a red circle"], CPU)[0])
    again = TextCache(spec, pipe, CPU, tmp_path)
    again.fill(["a red circle", "a blue square", "a green star"])
    assert (again.hits, again.misses) == (2, 1)
    for f in tmp_path.rglob("*.pt"):  # a damaged file is encoded again, not trusted
        f.write_bytes(f.read_bytes()[:10])
    again.fill(["a red circle"])
    assert again.misses == 2 and torch.equal(again.get("a red circle")[0], cache.get("a red circle")[0])
    with torch.no_grad():
        pipe.text_encoder.get_input_embeddings().weight.mul_(1.5)  # another encoder: all misses
    other = TextCache(spec, pipe, CPU, tmp_path)
    other.fill(["a red circle"])
    assert other.misses == 1 and not torch.equal(other.get("a red circle")[0], cache.get("a red circle")[0])


def _cached(ws, cfg) -> Trainer:
    trainer = Trainer(cfg, JobRecord.create("train", {}, ws), ws)
    trainer.load_data()
    trainer.load_model()
    trainer.cache()
    return trainer


def test_a_run_frees_its_encoders_and_the_next_reuses_the_cache(ws, tiny_models):
    cfg = config(tiny_models, "sdxl", sample={"prompts": ["sks, a red circle"]})
    first = _cached(ws, cfg)
    assert first.base.text_encoders == [None, None] and len(first.prompts) == 1
    captions = len({first.rules.caption(img.caption, None) for img in first.images})
    second = _cached(ws, cfg)
    assert (second.text_cache.hits, second.text_cache.misses) == (captions, 0)
    second.micro_batch_loss(0).backward()


@pytest.mark.parametrize("sections, why", [
    ({"dataset": {"shuffle_tags": True}}, "captions change every step"),
    ({"dataset": {"cache_text": False}}, "dataset.cache_text is off"),
    ({"network": {"train_text_encoder": True}}, "network.train_text_encoder is on"),
])
def test_runs_whose_captions_change_keep_their_encoders(ws, tiny_models, sections, why):
    trainer = _cached(ws, config(tiny_models, "sd15", **sections))
    assert trainer.text_cache is None and trainer.base.text_encoders[0] is not None
    assert any(why in e.get("message", "") for e in trainer.job.events())
    trainer.micro_batch_loss(0).backward()


def test_a_text_cache_that_cannot_be_written_is_a_clear_error(ws, tiny_models):
    (ws.root / "cache").mkdir(exist_ok=True)
    (ws.root / "cache" / "text").write_text("a file where the cache folder goes")
    with pytest.raises(LoraLabError, match="could not write the text cache .* dataset.cache_text = false"):
        _cached(ws, config(tiny_models, "sd15"))
