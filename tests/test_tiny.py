"""The tiny models load and run with the real libraries, and fabricate is deterministic."""
from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download

import pytest

from lora_lab.tiny import FLOW_FAMILIES, fabricate
from lora_lab.tiny.samples import SAMPLES

MAX_TOKENS = 12
FLOW_PIPELINES = {"zimage": "ZImagePipeline", "flux": "FluxPipeline", "flux2klein": "Flux2KleinPipeline",
                  "qwenimage": "QwenImagePipeline", "chroma": "ChromaPipeline"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return fabricate(tmp_path_factory.mktemp("tiny"))


def _tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root (weights, configs, tokenizer files), by relative path."""
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def test_fabricate_writes_everything(tiny: dict[str, Path]) -> None:
    assert set(tiny) == {"sd15", "sdxl", "sd15_file", "sdxl_file", "caption_model", "caption_mmproj",
                         "samples", "zimage_file", *FLOW_FAMILIES}
    assert all(path.exists() for path in tiny.values())
    for family in FLOW_FAMILIES:
        assert tiny[family] == tiny["samples"].parent / family
        assert (tiny[family] / "model_index.json").is_file()
        size = sum(f.stat().st_size for f in tiny[family].rglob("*") if f.is_file())
        assert size < 10 * 2**20, (family, size)
    assert tiny["caption_model"].read_bytes()[:4] == b"GGUF"
    assert any(tiny["samples"].glob("*.txt"))


def test_sd15_generates(tiny: dict[str, Path]) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny["sd15"])
    assert pipe.vae_scale_factor == 8
    # the hand-made vocabulary keeps caption words whole, as the real one does
    words = "a photo of green grass".split()
    assert pipe.tokenizer.tokenize(" ".join(words)) == [w + "</w>" for w in words]
    image = pipe(
        "a red circle", num_inference_steps=2, height=64, width=64,
        generator=torch.Generator().manual_seed(0), output_type="np",
    ).images[0]
    assert image.shape == (64, 64, 3)
    assert image.min() >= 0 and image.max() <= 1


def test_sdxl_generates(tiny: dict[str, Path]) -> None:
    import torch
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny["sdxl"])
    assert pipe.vae_scale_factor == 8
    image = pipe(
        "a blue square", num_inference_steps=2, height=64, width=64,
        generator=torch.Generator().manual_seed(0), output_type="np",
    ).images[0]
    assert image.shape == (64, 64, 3)
    assert image.min() >= 0 and image.max() <= 1


def test_caption_pair_captions_an_image(tiny: dict[str, Path]) -> None:
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Qwen25VLChatHandler

    image = tiny["samples"] / "red_circle.jpg"
    data_uri = "data:image/jpeg;base64," + base64.b64encode(image.read_bytes()).decode()
    llm = Llama(
        model_path=str(tiny["caption_model"]),
        chat_handler=Qwen25VLChatHandler(clip_model_path=str(tiny["caption_mmproj"]), verbose=False),
        n_ctx=2048,
        verbose=False,
    )
    reply = llm.create_chat_completion(
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_uri}},
            {"type": "text", "text": "Describe this image."},
        ]}],
        max_tokens=MAX_TOKENS,
        temperature=0.0,
    )
    text = reply["choices"][0]["message"]["content"]
    assert isinstance(text, str) and text.strip()
    assert 0 < reply["usage"]["completion_tokens"] <= MAX_TOKENS


def test_fabricate_is_deterministic(tiny: dict[str, Path], tmp_path: Path) -> None:
    again = fabricate(tmp_path / "again", samples=False)
    for name in ("sd15", "sdxl", *FLOW_FAMILIES):
        assert _tree_bytes(again[name]) == _tree_bytes(tiny[name]), name
    for name in ("caption_model", "caption_mmproj"):
        assert again[name].read_bytes() == tiny[name].read_bytes()
    other = fabricate(tmp_path / "other", sdxl=False, caption=False, samples=False, seed=1)
    for name in ("sd15", *FLOW_FAMILIES):
        assert _tree_bytes(other[name]) != _tree_bytes(tiny[name]), name


def test_fabricate_rejects_an_unknown_flow_family(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sd3"):
        fabricate(tmp_path, sd15=False, sdxl=False, caption=False, samples=False, flow=["flux", "sd3"])
    assert not any(tmp_path.iterdir())


def _load_flow(folder: Path, family: str):
    import diffusers

    pipe = getattr(diffusers, FLOW_PIPELINES[family]).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe):
    import torch

    # The prompt by keyword: Flux.2 klein's first parameter is a conditioning image. Prompts padded
    # to 32 tokens, not the default 512, for speed; the pipelines' defaults otherwise (CFG where
    # the family has it).
    return pipe(prompt="a red circle above green grass", num_inference_steps=2, height=64, width=64,
                max_sequence_length=32, generator=torch.Generator().manual_seed(0), output_type="np").images[0]


@pytest.mark.parametrize("family", FLOW_FAMILIES)
def test_flow_pipeline_generates(tiny: dict[str, Path], family: str) -> None:
    import numpy as np
    from transformers import PreTrainedTokenizerBase

    pipe = _load_flow(tiny[family], family)
    assert pipe.vae_scale_factor == 8
    # the hand-made vocabularies keep the samples' caption words whole, as the real ones do
    tokenizers = [c for c in pipe.components.values() if isinstance(c, PreTrainedTokenizerBase)]
    assert tokenizers
    for tokenizer in tokenizers:
        for caption in (s[4] for s in SAMPLES if s[4]):
            words = caption.replace(",", "").split()
            assert len(tokenizer.tokenize(" ".join(words))) == len(words), (type(tokenizer), caption)
    if family == "qwenimage":  # its system prompt must be the 34 tokens the pipeline drops
        system = pipe.prompt_template_encode.split("{}")[0]
        assert len(pipe.tokenizer(system).input_ids) == pipe.prompt_template_encode_start_idx == 34
    image = _generate(pipe)
    assert image.shape == (64, 64, 3)
    assert np.isfinite(image).all() and image.std() > 0


@pytest.mark.parametrize("family", FLOW_FAMILIES)
def test_flow_lora_saves_and_loads(tiny: dict[str, Path], family: str, tmp_path: Path) -> None:
    """A LoRA on the transformer's attention round-trips through diffusers' LoRA loaders."""
    import numpy as np
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = _load_flow(tiny[family], family)
    base = _generate(pipe)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # init_lora_weights=False: random A and B, so not a no-op
        pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with_lora = _generate(pipe)
    type(pipe).save_lora_weights(
        tmp_path, transformer_lora_layers=get_peft_model_state_dict(pipe.transformer),
        # without it lora_alpha is lost: the LoRA would load with alpha = r
        transformer_lora_adapter_metadata=pipe.transformer.peft_config["default"].to_dict(),
    )
    fresh = _load_flow(tiny[family], family)
    fresh.load_lora_weights(tmp_path)
    reloaded = _generate(fresh)
    assert np.abs(with_lora - base).max() > 1e-3
    np.testing.assert_allclose(reloaded, with_lora, atol=1e-5)


def test_import_is_cheap() -> None:
    code = "import lora_lab.tiny, sys; assert 'torch' not in sys.modules and 'gguf' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_cli_tiny_only_writes_the_parts_named(cli, tmp_path: Path) -> None:
    import json

    _, out, _ = cli("tiny", tmp_path / "tiny", "--only", "chroma", "samples", "--json")
    assert set(json.loads(out)) == {"chroma", "samples"}
    assert {p.name for p in (tmp_path / "tiny").iterdir()} == {"chroma", "samples"}
